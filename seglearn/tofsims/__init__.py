"""ToF-SIMS imaging: SurfaceLab ASCII / TIFF ion maps -> fused phase map -> microstructure numbers.

Modules, one job each: :mod:`~seglearn.tofsims.ascii` (SurfaceLab text format),
:mod:`~seglearn.tofsims.ions` (finding and loading the requested ions),
:mod:`~seglearn.tofsims.preprocess` (current collector, rotation, crop),
:mod:`~seglearn.tofsims.fusion` (normalisation, argmax and NMF fusion, binary maps),
:mod:`~seglearn.tofsims.particles` (watershed), :mod:`~seglearn.tofsims.measure` (2D numbers),
:mod:`~seglearn.tofsims.simulate` (forward model for tests), :mod:`~seglearn.tofsims.pipeline`
(the whole run). Entry point: ``python tofsims.py input=FOLDER ions=[Ni+,C2H-,C7H7+] output=DIR``.
"""

from seglearn.tofsims.ascii import IonImage, read_ascii, write_ascii
from seglearn.tofsims.fusion import binary_maps, fuse_argmax, fuse_nmf, normalise
from seglearn.tofsims.ions import IonStack, load_ions, match_ion
from seglearn.tofsims.pipeline import Result, process, run, slicegan_rgb, write_outputs
from seglearn.tofsims.simulate import IonModel, SimConfig, default_ions, simulate_counts, write_export

__all__ = [
    "IonImage", "read_ascii", "write_ascii", "binary_maps", "fuse_argmax", "fuse_nmf", "normalise",
    "IonStack", "load_ions", "match_ion", "Result", "process", "run", "slicegan_rgb", "write_outputs",
    "IonModel", "SimConfig", "default_ions", "simulate_counts", "write_export",
]
