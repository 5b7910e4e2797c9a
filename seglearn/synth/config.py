"""Every parameter of the phantom, with the defaults of the benchmark phantom."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from seglearn.errors import InputError
from seglearn.synth.config_b import FamilyB


@dataclass
class DetectorModel:
    """Forward-model parameters of one electron detector (grey levels on a 0..1 scale).

    Attributes
    ----------
    level_am, level_cbd : float
        Grey level of a cut face of active material / carbon-binder.
    level_background : float
        Grey level of an open pore with nothing behind within reach.
    shine_length : float
        Attenuation length of pore shine-through, in slices: how deep the detector sees.
    shine_gain : float
        Brightness of the material behind the face relative to a cut face.
    shine_blur : float
        Blur (px) added per slice of depth behind the face.
    wall_glow : float
        Extra brightness of pore walls just behind the face (makes void brighter than solid).
    edge_gain : float
        Brightening of solid edges facing the detector (SE2 topographic contrast).
    deep_glow : float
        Brightness added in patches of deep open pores (SE2's bright background: electrons from the
        far pore walls reach the off-axis detector; seed 002's "void again" grey-value range).
    noise : float
        Standard deviation of the noise at grey level 1.
    curtain : float
        Amplitude of curtaining stripes.
    texture_am, texture_cbd : float
        Amplitude of fine grey-value texture inside each phase.
    """

    level_am: float = 0.62
    level_cbd: float = 0.42
    level_background: float = 0.06
    shine_length: float = 8.0
    shine_gain: float = 0.85
    shine_blur: float = 0.6
    wall_glow: float = 0.30
    edge_gain: float = 0.30
    deep_glow: float = 0.0
    noise: float = 0.07
    curtain: float = 0.06
    texture_am: float = 0.04
    texture_cbd: float = 0.08


def _se2() -> DetectorModel:
    return DetectorModel()


def _inlens() -> DetectorModel:
    return DetectorModel(level_am=0.70, level_cbd=0.30, level_background=0.04, shine_length=4.0,
                         shine_gain=0.70, shine_blur=0.5, wall_glow=0.10, edge_gain=0.10, noise=0.08,
                         curtain=0.06, texture_am=0.04, texture_cbd=0.08)


@dataclass
class PhantomConfig:
    """Parameters of a synthetic FIB-SEM dataset (see ``configs/synth.yaml``).

    Geometry is drawn in physical units, then sampled on the anisotropic voxel grid
    ``voxel_size_nm = (z, y, x)``; z is the milling direction.
    """

    shape: tuple[int, int, int] = (128, 256, 256)
    voxel_size_nm: tuple[float, float, float] = (30.0, 15.0, 15.0)
    seed: int = 0
    # microstructure
    source: str | None = None  # a segmented volume to use instead of generated particles
    source_classes: tuple[int, int, int] | None = None  # grey values of pore, cbd, am in source
    am_fraction: float = 0.50
    cbd_fraction: float = 0.15
    particle_radius_nm: float = 420.0
    particle_radius_cv: float = 0.35
    particle_min_gap: float = 0.78  # centres at least this times (r1 + r2) apart: touching allowed
    surface_roughness: float = 0.08
    inner_pores_per_particle: float = 3.0
    inner_pore_radius_nm: float = 45.0
    crack_probability: float = 0.35
    crack_width_nm: float = 20.0
    cbd_porosity: float = 0.25
    cbd_patchiness: float = 0.6
    # forward model
    family: str = "a"  # a = seglearn.synth.forward; b = seglearn.synth.forward_b (independent formulation)
    detectors: tuple[str, ...] = ("SE2", "InLens")
    se2: DetectorModel = field(default_factory=_se2)
    inlens: DetectorModel = field(default_factory=_inlens)
    b: FamilyB = field(default_factory=FamilyB)  # family-b settings (seglearn/synth/config_b.py)
    gradient_face: float = 0.25  # brightness falls by this share from top to bottom of the face
    gradient_slices: float = 0.04  # std of the slice-to-slice gain random walk
    redeposition: float = 0.25  # grey level of re-deposited material in deep pores at the last slice
    redeposition_depth: float = 6.0  # slices of depth from which a pore counts as deep
    drift_px: float = 0.0  # std of the per-slice drift random walk (0 = registered stack)
    fiducial: int = 0  # rows at the top of each slice showing the Pt cap with a milled mark (0 = none)
    bit_depth: int = 8
    # annotations
    test_slice: int | None = None  # default: the middle slice
    test_gap: int = 30  # no training labels within +- this many slices of the test slice
    n_train_slices: int = 8
    scribble_coverage: float = 0.01  # share of a training slice that is scribbled
    scribble_erosion_px: int = 2

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> "PhantomConfig":
        """Build from a (possibly partial, possibly OmegaConf) mapping; unknown keys are refused."""
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise InputError(f"phantom config: unknown key(s) {unknown}; known: {sorted(names)}")
        kwargs: dict[str, Any] = {}
        for k, v in cfg.items():
            if k in ("se2", "inlens"):
                base = _se2() if k == "se2" else _inlens()
                v = dict(v or {})
                bad = sorted(set(v) - {f.name for f in fields(DetectorModel)})
                if bad:
                    raise InputError(f"phantom config: unknown detector key(s) {bad} in {k}")
                kwargs[k] = DetectorModel(**{**asdict(base), **v})
            elif k == "b":
                kwargs[k] = FamilyB.from_dict(asdict(v) if isinstance(v, FamilyB) else v)
            elif k in ("shape", "voxel_size_nm", "detectors", "source_classes") and v is not None:
                kwargs[k] = tuple(v)
            else:
                kwargs[k] = v
        out = cls(**kwargs)
        out.validate()
        return out

    def validate(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"phantom config: shape must be 3 positive ints (Z, Y, X), got {self.shape}")
        if min(self.shape[1:]) < 16:
            raise InputError(f"phantom config: Y and X must be >= 16, got {self.shape}")
        if not 0 < self.am_fraction < 1 or not 0 <= self.cbd_fraction < 1 or self.am_fraction + self.cbd_fraction >= 1:
            raise InputError("phantom config: am_fraction and cbd_fraction must be in (0, 1) and sum below 1")
        unknown = set(self.detectors) - {"SE2", "InLens"}
        if unknown or not self.detectors:
            raise InputError(f"phantom config: detectors must be a subset of [SE2, InLens], got {list(self.detectors)}")
        if not isinstance(self.fiducial, (int, np.integer)) or isinstance(self.fiducial, bool) \
                or not 0 <= self.fiducial <= self.shape[1] - 16:
            raise InputError(f"phantom config: fiducial must be an int of rows in [0, Y - 16] = "
                             f"[0, {self.shape[1] - 16}], got {self.fiducial!r}")
        if self.family not in ("a", "b"):
            raise InputError(f"phantom config: family must be a or b, got {self.family!r}")
        if self.bit_depth not in (8, 16):
            raise InputError(f"phantom config: bit_depth must be 8 or 16, got {self.bit_depth}")

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("shape", "voxel_size_nm", "detectors", "source_classes"):
            if d[k] is not None:
                d[k] = list(d[k])
        d["b"]["cbd_nanoporosity"] = list(d["b"]["cbd_nanoporosity"])
        return d
