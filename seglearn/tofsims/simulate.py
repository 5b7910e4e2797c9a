"""A ToF-SIMS forward model for tests and benchmarks: phase map -> per-ion Poisson counts.

For each ion the expected counts per pixel are its yield in the phase under the beam (plus,
for an interphase ion, an extra yield on the boundary between two phases), blurred by the
Gaussian beam profile, plus a flat background, all times the primary-ion ``dose``; the
measured counts are Poisson draws. Low doses give the grainy maps of real ToF-SIMS imaging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.tofsims.ascii import write_ascii


@dataclass
class IonModel:
    """One secondary ion of the simulation.

    Attributes
    ----------
    name : str
    yields : list of float
        Mean counts per pixel at dose 1 in phases ``1..P`` (index 0 = phase 1).
    background : float
        Counts per pixel at dose 1 everywhere (detector noise, stray ions).
    interphase : (int, int) or None
        This ion also marks the boundary between these two phases (ids ``1..P``) ...
    interphase_yield : float
        ... with this extra yield on a band ``interphase_width_px`` wide.
    """

    name: str
    yields: Sequence[float]
    background: float = 0.02
    interphase: tuple[int, int] | None = None
    interphase_yield: float = 0.0


@dataclass
class SimConfig:
    """Simulation settings (see :func:`simulate_counts`)."""

    ions: list[IonModel] = field(default_factory=lambda: default_ions())
    dose: float = 1.0
    blur_px: float = 0.7
    interphase_width_px: int = 1
    seed: int = 0


def default_ions(interphase: bool = False) -> list[IonModel]:
    """An NMC cathode in epoxy: phase 1 active material (Ni+), 2 carbon-binder (C2H-), 3 pore/epoxy (C7H7+).

    Yields differ by ion (Ni+ is bright, the organics dim) and each ion has some cross-talk in
    the other phases (fragments, matrix effects), as in real spectra. With ``interphase`` a
    fourth ion (LiF2-) marks the active material / carbon-binder boundary (a CEI-like layer).
    """
    ions = [IonModel("Ni+", [12.0, 0.6, 0.3]),
            IonModel("C2H-", [0.4, 4.0, 1.0]),
            IonModel("C7H7+", [0.2, 0.5, 2.5])]
    if interphase:
        ions.append(IonModel("LiF2-", [0.1, 0.1, 0.05], interphase=(1, 2), interphase_yield=3.0))
    return ions


def _boundary(phase: np.ndarray, a: int, b: int, width: int) -> np.ndarray:
    """Pixels of ``a`` or ``b`` within ``width`` of the other phase, per scan."""
    fp = np.zeros((1, 3, 3), dtype=bool)
    fp[0] = ndi.generate_binary_structure(2, 1)
    near_a = ndi.binary_dilation(phase == a, structure=fp, iterations=width)
    near_b = ndi.binary_dilation(phase == b, structure=fp, iterations=width)
    return ((phase == a) & near_b) | ((phase == b) & near_a)


def expected_counts(phase: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Mean counts ``(N, Z, Y, X)`` of every ion for a phase map ``(Z, Y, X)`` (ids ``1..P``, 0 = no signal)."""
    phase = np.asarray(phase)
    if phase.ndim == 2:
        phase = phase[None]
    p = int(phase.max())
    out = np.empty((len(cfg.ions), *phase.shape), dtype=np.float64)
    for i, ion in enumerate(cfg.ions):
        if len(ion.yields) < p:
            raise InputError(f"ion {ion.name}: {len(ion.yields)} yields for a phase map with ids up to {p}")
        lut = np.concatenate([[0.0], np.asarray(ion.yields, dtype=np.float64)])
        lam = lut[np.clip(phase, 0, len(lut) - 1)]
        if ion.interphase is not None:
            lam = lam + ion.interphase_yield * _boundary(phase, *ion.interphase, cfg.interphase_width_px)
        if cfg.blur_px > 0:
            lam = ndi.gaussian_filter(lam, sigma=(0, cfg.blur_px, cfg.blur_px))
        out[i] = cfg.dose * (lam + ion.background)
    return out


def simulate_counts(phase: np.ndarray, cfg: SimConfig | None = None, **overrides) -> np.ndarray:
    """Poisson counts ``(N, Z, Y, X)`` int64 for a phase map ``(Y, X)`` or ``(Z, Y, X)`` with ids ``1..P``.

    Parameters
    ----------
    phase : (Y, X) or (Z, Y, X) int ndarray
        The truth; a depth profile is simulated scan by scan.
    cfg : SimConfig, optional
        Ions, dose, beam blur, seed; keyword ``overrides`` replace its fields.
    """
    cfg = cfg or SimConfig()
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise InputError(f"unknown simulation setting {k!r}")
        setattr(cfg, k, v)
    rng = np.random.default_rng(cfg.seed)
    return rng.poisson(expected_counts(phase, cfg)).astype(np.int64)


def write_export(folder: str | os.PathLike, counts: np.ndarray, names: Sequence[str], *, fov_um: float | None = None,
                 layout: str = "matrix", prefix: str = "sim", overwrite: bool = False) -> list[Path]:
    """Write one SurfaceLab ASCII file per ion, named ``{prefix} - {ion}.txt`` as SurfaceLab does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if counts.shape[0] != len(names):
        raise InputError(f"{folder}: {counts.shape[0]} ion maps but {len(names)} names")
    return [write_ascii(folder / f"{prefix} - {n}.txt", c, name=n, fov_um=fov_um, layout=layout,
                        overwrite=overwrite) for n, c in zip(names, counts)]


def phase_map_from_real(raw: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Relabel a segmented image: ``order[i]`` is the raw value that becomes phase ``i + 1``."""
    out = np.zeros(raw.shape, dtype=np.uint8)
    for i, v in enumerate(order):
        out[raw == v] = i + 1
    return out
