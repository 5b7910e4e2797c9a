"""Synthetic FIB-SEM phantom with ground truth: microstructure, detector forward model, annotations."""

from seglearn.synth.config import PhantomConfig
from seglearn.synth.phantom import Phantom, make_phantom, write_phantom

__all__ = ["PhantomConfig", "Phantom", "make_phantom", "write_phantom"]
