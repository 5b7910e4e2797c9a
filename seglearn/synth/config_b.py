"""Parameters of the second FIB-SEM forward model (``family: b``, :mod:`seglearn.synth.forward_b`).

Family b is formulated independently of family a (:mod:`seglearn.synth.forward`): lengths are in
nm (so they follow the voxel size), detector physics are yields, collection lengths and escape
cones, and every artefact has its own model (see ``docs/synth.md``). Each strength set to 0
switches its effect off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from seglearn.errors import InputError


@dataclass
class DetectorB:
    """One detector of family b (signals on a 0..1 scale before the detector response).

    Attributes
    ----------
    yield_am, yield_cbd, yield_redep : float
        Secondary-electron yield of a flat cut face of active material, of fully dense
        carbon-binder, of re-deposited material (compositional contrast).
    grain_contrast : float
        Standard deviation of the per-grain yield of the active material (channelling contrast of
        the primary grains inside a secondary particle).
    collection_nm : float
        Collection length: material at depth ``d`` behind the face, seen through a pore, is weighted
        by ``exp(-d / collection_nm)``.
    shine_gain : float
        Brightness of material seen through a pore relative to a cut face (0 = no shine-through).
    wall_gain : float
        Extra yield of the pore walls seen at grazing angles through the pore.
    cone : float
        Tangent of the half-angle of the escape cone: the lateral spread (nm per nm of depth) of the
        tent kernel that blurs material seen through a pore.
    parallax : float
        Lateral shift (nm per nm of depth, along -y) of material seen through a pore (oblique view).
    edge_gain : float
        Topographic brightening of solid edges at the cut face (secant law near the rounded edge).
    edge_nm : float
        Decay length of the edge brightening into the solid.
    edge_direction : float
        Share of the edge term that depends on the in-plane normal facing the detector (+y).
    curvature_gain : float
        Extra brightening of convex edges (positive curvature of the in-plane contour).
    fog : float
        Large-scale haze of electrons scattered back from the chamber (SE3), share of the local
        mean signal.
    charging : float
        Bright halo of charge near pore edges of insulating material (binder more than oxide).
    charging_tail : float
        Dark undershoot after a charged region along the fast-scan direction (+x).
    electrons : float
        Detected electrons per µs of dwell at signal 1 (Poisson shot noise).
    read_noise : float
        Standard deviation of the additive (amplifier) noise on the 0..1 scale.
    line_noise : float
        Standard deviation of a per-scan-line offset (line-to-line hum).
    bandwidth_px : float
        Decay length (px) of the amplifier's exponential smear along the fast-scan direction.
    curtain : float
        Modulation of the face signal by curtain heights (multiplicative).
    curtain_slope : float
        Topographic contrast of the curtain grooves' flanks (SE2 sees the slopes).
    vignette : float
        Loss of signal towards the trench bottom / side (shadowing by the trench walls).
    contrast, brightness : float
        Detector response ``brightness + contrast * tanh(signal / contrast)`` (soft saturation).
    """

    yield_am: float = 0.60
    yield_cbd: float = 0.42
    yield_redep: float = 0.38
    grain_contrast: float = 0.035
    collection_nm: float = 220.0
    shine_gain: float = 0.75
    wall_gain: float = 0.35
    cone: float = 0.15
    parallax: float = 0.25
    edge_gain: float = 0.5
    edge_nm: float = 60.0
    edge_direction: float = 0.6
    curvature_gain: float = 0.25
    fog: float = 0.06
    charging: float = 0.08
    charging_tail: float = 0.05
    electrons: float = 25.0
    read_noise: float = 0.02
    line_noise: float = 0.015
    bandwidth_px: float = 0.8
    curtain: float = 0.10
    curtain_slope: float = 0.5
    vignette: float = 0.25
    contrast: float = 0.95
    brightness: float = 0.04


def _se2_b() -> DetectorB:
    return DetectorB()


def _inlens_b() -> DetectorB:
    return DetectorB(yield_am=0.78, yield_cbd=0.22, yield_redep=0.30, grain_contrast=0.06, collection_nm=70.0,
                     shine_gain=0.6, wall_gain=0.05, cone=0.12, parallax=0.25, edge_gain=0.10, edge_nm=20.0,
                     edge_direction=0.0, curvature_gain=0.05, fog=0.0, charging=0.12, charging_tail=0.08,
                     electrons=15.0, read_noise=0.025, line_noise=0.02, bandwidth_px=0.5, curtain=0.06,
                     curtain_slope=0.1, vignette=0.08, contrast=0.95, brightness=0.03)


@dataclass
class FamilyB:
    """Family-b settings shared by both detectors, plus one :class:`DetectorB` each.

    Attributes
    ----------
    cbd_nanoporosity : (float, float)
        Range of the sub-voxel porosity of the carbon-binder (a fine random texture): a binder
        voxel shows ``(1 - phi)`` of its own yield and ``phi`` of what lies behind it.
    cbd_texture_nm : float
        Correlation length of that texture.
    grain_nm : float
        Mean size of the primary grains of the active material.
    dwell_us : float
        Dwell time per pixel (µs): more dwell, more electrons, less shot noise.
    curtain_beta : float
        Exponent of the milling-rate spectrum ``1 / f**beta`` along x that shapes the curtains.
    curtain_z_nm : float
        Length over which the curtain pattern renews along z (the milling spectrum wanders).
    redeposition : float
        Density of re-deposited grains on pore walls at the last slice (0 = none); grows with the
        volume milled before each slice.
    redep_nm : float
        Size of the re-deposited grains.
    drift_brightness, drift_contrast : float
        Amplitudes of the slow brightness (offset) and contrast (gain) drift over z.
    jumps : int
        Number of slices at which the operator re-adjusts brightness/contrast (steps over z).
    max_depth_nm : float
        Depth behind the face up to which shine-through is integrated.
    se2, inlens : DetectorB
    """

    cbd_nanoporosity: tuple[float, float] = (0.25, 0.65)
    cbd_texture_nm: float = 25.0
    grain_nm: float = 160.0
    dwell_us: float = 3.0
    curtain_beta: float = 1.4
    curtain_z_nm: float = 900.0
    redeposition: float = 0.35
    redep_nm: float = 35.0
    drift_brightness: float = 0.03
    drift_contrast: float = 0.06
    jumps: int = 2
    max_depth_nm: float = 900.0
    se2: DetectorB = field(default_factory=_se2_b)
    inlens: DetectorB = field(default_factory=_inlens_b)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> "FamilyB":
        """Defaults updated by a (possibly partial) mapping; unknown keys raise :class:`InputError`."""
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise InputError(f"phantom config: unknown key(s) {unknown} in b; known: {sorted(names)}")
        kwargs: dict[str, Any] = {}
        det_names = {f.name for f in fields(DetectorB)}
        for k, v in cfg.items():
            if k in ("se2", "inlens"):
                v = asdict(v) if isinstance(v, DetectorB) else dict(v or {})
                bad = sorted(set(v) - det_names)
                if bad:
                    raise InputError(f"phantom config: unknown detector key(s) {bad} in b.{k}")
                base = _se2_b() if k == "se2" else _inlens_b()
                kwargs[k] = DetectorB(**{**asdict(base), **v})
            elif k == "cbd_nanoporosity":
                kwargs[k] = tuple(float(a) for a in v)
            else:
                kwargs[k] = v
        out = cls(**kwargs)
        out.validate()
        return out

    def validate(self) -> None:
        lo, hi = self.cbd_nanoporosity
        if not 0 <= lo <= hi <= 1:
            raise InputError(f"phantom config: b.cbd_nanoporosity must be [lo, hi] in [0, 1], got {[lo, hi]}")
        if self.dwell_us <= 0 or self.max_depth_nm < 0:
            raise InputError(f"phantom config: b.dwell_us must be > 0 and b.max_depth_nm >= 0, got "
                             f"{self.dwell_us}, {self.max_depth_nm}")
        for name in ("se2", "inlens"):
            d = getattr(self, name)
            if d.collection_nm <= 0 or d.contrast <= 0 or d.electrons <= 0:
                raise InputError(f"phantom config: b.{name}.collection_nm, contrast and electrons must be > 0")
            neg = [f.name for f in fields(DetectorB) if getattr(d, f.name) < 0]
            if neg:
                raise InputError(f"phantom config: b.{name} values must be >= 0, got negative {neg}")


#: ranges of the randomised pretraining stream for family b: each detector value is the default
#: times a factor drawn log-uniformly in [1 / s, s] (s below), yields keep their order per detector
SCALE_B: dict[str, float] = {
    "yield_am": 1.25, "yield_cbd": 1.5, "yield_redep": 1.5, "grain_contrast": 2.0, "collection_nm": 2.0,
    "shine_gain": 1.4, "wall_gain": 2.0, "cone": 1.8, "parallax": 2.0, "edge_gain": 2.0, "edge_nm": 1.6,
    "curvature_gain": 2.0, "fog": 2.0, "charging": 2.5, "charging_tail": 2.5, "electrons": 3.0, "read_noise": 2.0,
    "line_noise": 2.5, "bandwidth_px": 2.0, "curtain": 2.5, "curtain_slope": 2.0, "vignette": 2.0,
}


def sample_family_b(rng: np.random.Generator, *, p_off: float = 0.1) -> FamilyB:
    """A randomised :class:`FamilyB`: defaults scaled by :data:`SCALE_B`, each artefact off with ``p_off``.

    Examples
    --------
    >>> fb = sample_family_b(np.random.default_rng(0))
    >>> fb.se2.yield_am > fb.se2.yield_cbd
    True
    """
    def det(base: DetectorB) -> DetectorB:
        d = asdict(base)
        for k, s in SCALE_B.items():
            d[k] = float(d[k] * np.exp(rng.uniform(-np.log(s), np.log(s))))
            if k not in ("yield_am", "yield_cbd", "yield_redep", "collection_nm", "electrons") and rng.random() < p_off:
                d[k] = 0.0
        d["yield_am"] = min(max(d["yield_am"], d["yield_cbd"] + 0.12), 0.95)
        return DetectorB(**d)

    lo = float(rng.uniform(0.05, 0.45))
    return FamilyB(cbd_nanoporosity=(lo, min(lo + float(rng.uniform(0.1, 0.45)), 0.9)),
                   cbd_texture_nm=float(rng.uniform(12.0, 50.0)), grain_nm=float(rng.uniform(80.0, 300.0)),
                   dwell_us=float(np.exp(rng.uniform(np.log(0.5), np.log(10.0)))),
                   curtain_beta=float(rng.uniform(0.8, 2.2)),
                   curtain_z_nm=float(rng.uniform(300.0, 3000.0)),
                   redeposition=float(rng.uniform(0.0, 0.7)), redep_nm=float(rng.uniform(20.0, 70.0)),
                   drift_brightness=float(rng.uniform(0.0, 0.06)), drift_contrast=float(rng.uniform(0.0, 0.12)),
                   jumps=int(rng.integers(0, 4)), se2=det(_se2_b()), inlens=det(_inlens_b()))
