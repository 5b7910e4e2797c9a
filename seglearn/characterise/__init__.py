"""Microstructure characterisation of a label volume (issue 6).

:func:`characterise` measures volume fractions (global, per depth region, from 2D sections,
against sub-volume size), interface areas (voxel faces and marching cubes), specific surface areas
and carbon-binder coverage, size distributions (local thickness / granulometry), sphere intrusion
and constrictivity, tortuosity factors (taufactor), geodesic tortuosity, inner pores by a rolling
ball and the local solid fraction against distance to the particle boundary, and per-particle
sizes from instances; with ``out_dir`` it writes ``report.json``, CSV tables, PNG plots and
``report.html``. ``python characterise.py input=labels.tif`` runs it on a file.
"""

from seglearn.characterise.core import STEPS, default_options
from seglearn.characterise.pipeline import characterise

__all__ = ["characterise", "default_options", "STEPS"]
