"""Domain randomisation of the FIB-SEM phantom: every parameter drawn from a range in config.

A *range spec* is a mapping ``name -> [lo, hi]`` (uniform; ``log: true`` entries are drawn
log-uniformly) over the keys of :data:`DEFAULT_RANGES`. :func:`sample_config` turns one draw into
a :class:`~seglearn.synth.config.PhantomConfig`; :func:`draw_phantom` renders it (microstructure
generated, or cropped from a segmented volume, e.g. those of ``../shared/data/real``, read at run
time only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.tiff import read_stack
from seglearn.paths import load_config
from seglearn.synth.config import DetectorModel, PhantomConfig
from seglearn.synth.config_b import sample_family_b
from seglearn.synth.forward import render
from seglearn.synth.forward_b import render_b
from seglearn.synth.microstructure import generate_microstructure, microstructure_from_volume

log = logging.getLogger("seglearn")

#: name -> [lo, hi] of every randomised parameter: ``configs/pretrain_ranges.yaml`` (their one home)
DEFAULT_RANGES: dict[str, list[float]] = {k: [float(a) for a in v] for k, v in load_config("pretrain_ranges.yaml").items()}
#: probability of drawing the microstructure from a segmented volume (when any is available): ``p_real``
P_REAL_SOURCE = float(load_config("model/unet_pretrain.yaml")["p_real"])
#: probability of a 2D-like sample (a single slice repeated along z: what a micrograph looks like): ``p_flat``
P_FLAT = float(load_config("model/unet_pretrain.yaml")["p_flat"])

REAL_SOURCES = ("electrode_nmc_3phase_256.tif", "microstructure_3phase_100.tif", "bilayer_3phase_240.tif",
                "nmc_binary_128.tif")


@dataclass
class Randomiser:
    """Draws randomised phantom configs.

    Parameters
    ----------
    ranges : mapping of str to [lo, hi]
        Overrides of :data:`DEFAULT_RANGES` (unknown names are refused).
    detectors : sequence of str
        ``["SE2", "InLens"]`` or one detector; a single detector is drawn with SE2-like or
        InLens-like physics at random (the single-detector base model is detector-agnostic).
    shape : (Z, Y, X)
        Size of each phantom (small: the stream cuts patches from it).
    sources : sequence of path
        Segmented volumes used as microstructure with probability ``p_real``; missing files are
        skipped silently (``../shared`` is optional).
    p_family_b : float
        Share of phantoms rendered with the second forward model (``family: b``,
        :mod:`seglearn.synth.forward_b`, its settings drawn by
        :func:`~seglearn.synth.config_b.sample_family_b`): 0 = family a only (no extra random draw,
        so the stream is as before), 1 = family b only, in between a mix.
    """

    ranges: Mapping[str, Sequence[float]]
    detectors: Sequence[str] = ("SE2", "InLens")
    shape: Sequence[int] = (24, 96, 96)
    sources: Sequence[str] = ()
    p_real: float = P_REAL_SOURCE
    p_flat: float = P_FLAT
    p_family_b: float = 0.0

    def __post_init__(self):
        if not 0.0 <= float(self.p_family_b) <= 1.0:
            raise InputError(f"pretrain: p_family_b must be in [0, 1], got {self.p_family_b!r}")
        self.ranges = resolve_ranges(self.ranges)
        self.detectors = tuple(self.detectors)
        self.sources = tuple(str(s) for s in self.sources if Path(s).is_file())
        self._volumes: dict[str, np.ndarray] = {}

    def _u(self, rng: np.random.Generator, name: str) -> float:
        lo, hi = self.ranges[name]
        return float(rng.uniform(lo, hi)) if hi > lo else float(lo)

    def sample_config(self, rng: np.random.Generator) -> tuple[PhantomConfig, dict]:
        """One randomised :class:`PhantomConfig` plus the acquisition draws (gain, offset, gamma, flat)."""
        u = lambda n: self._u(rng, n)  # noqa: E731
        xy = u("voxel_xy_nm")
        vs = (xy * u("anisotropy"), xy, xy)
        dets = {}
        for name in ("SE2", "InLens"):
            bg = u("level_background")
            am = max(u("level_am"), bg + 0.2)
            dets[name] = DetectorModel(
                level_am=am, level_cbd=bg + u("cbd_contrast") * (am - bg), level_background=bg,
                shine_length=u("shine_length"), shine_gain=u("shine_gain"), shine_blur=u("shine_blur"),
                wall_glow=u("wall_glow"), edge_gain=u("edge_gain"), noise=u("noise"), curtain=u("curtain"),
                texture_am=u("texture_am"), texture_cbd=u("texture_cbd"))
        if len(self.detectors) == 2:
            # keep the physical ordering of the pair: InLens sees less of the depth and less glow than SE2
            se2, inl = dets["SE2"], dets["InLens"]
            if inl.shine_length > se2.shine_length:
                se2.shine_length, inl.shine_length = inl.shine_length, se2.shine_length
            if inl.wall_glow > se2.wall_glow:
                se2.wall_glow, inl.wall_glow = inl.wall_glow, se2.wall_glow
            if inl.edge_gain > se2.edge_gain:
                se2.edge_gain, inl.edge_gain = inl.edge_gain, se2.edge_gain
        am_f = u("am_fraction")
        cbd_f = min(u("cbd_fraction"), 0.9 - am_f)
        cfg = PhantomConfig(
            shape=tuple(int(s) for s in self.shape), voxel_size_nm=vs, seed=int(rng.integers(2**31)),
            am_fraction=am_f, cbd_fraction=cbd_f, particle_radius_nm=u("particle_radius_nm"),
            particle_radius_cv=u("particle_radius_cv"), surface_roughness=u("surface_roughness"),
            inner_pores_per_particle=u("inner_pores_per_particle"), crack_probability=u("crack_probability"),
            cbd_porosity=u("cbd_porosity"), cbd_patchiness=u("cbd_patchiness"),
            detectors=("SE2", "InLens") if len(self.detectors) == 2 else ("SE2",),
            se2=dets["SE2"] if len(self.detectors) == 2 or rng.random() < 0.5 else dets["InLens"],
            inlens=dets["InLens"], gradient_face=u("gradient_face"), gradient_slices=u("gradient_slices"),
            redeposition=u("redeposition"), drift_px=u("drift_px"), test_gap=0, n_train_slices=0)
        if self.p_family_b >= 1.0 or (self.p_family_b > 0.0 and rng.random() < self.p_family_b):
            cfg.family = "b"
            cfg.b = sample_family_b(rng)
            if len(self.detectors) == 1 and rng.random() < 0.5:
                cfg.b.se2 = cfg.b.inlens  # a single detector: SE2-like or InLens-like physics
        acq = {"gain": u("gain"), "offset": u("offset"), "gamma": u("gamma"), "flat": bool(rng.random() < self.p_flat),
               "source": None}
        if self.sources and rng.random() < self.p_real:
            acq["source"] = self.sources[int(rng.integers(len(self.sources)))]
        return cfg, acq

    def _volume(self, path: str) -> np.ndarray:
        if path not in self._volumes:
            self._volumes[path] = np.asarray(read_stack(path)[0])
        return self._volumes[path]

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        """One randomised phantom.

        Returns
        -------
        images : (C, Z, Y, X) uint8
            Detector images in :attr:`detectors` order.
        truth : (Z, Y, X) uint8
            1 pore, 2 carbon-binder, 3 active material.
        info : dict
            The draw (config and acquisition parameters), for logging.
        """
        cfg, acq = self.sample_config(rng)
        z, y, x = cfg.shape
        if acq["source"]:
            vol = self._volume(acq["source"])
            stride = 2 if cfg.voxel_size_nm[0] > 1.5 * cfg.voxel_size_nm[1] and vol.shape[0] >= 2 * z else 1
            need = (z * stride, y, x)
            if any(v < n for v, n in zip(vol.shape, need)):
                acq["source"] = None
            else:
                o = [int(rng.integers(0, v - n + 1)) for v, n in zip(vol.shape, need)]
                crop = vol[o[0]:o[0] + need[0]:stride, o[1]:o[1] + y, o[2]:o[2] + x]
                truth, inst = microstructure_from_volume(crop, cfg, acq["source"])
        if not acq["source"]:
            truth, inst = generate_microstructure(cfg, rng)
        if acq["flat"]:
            # a 2D image: one slice seen through a flat, infinitely deep section (no shine-through context)
            k = int(rng.integers(z))
            truth = np.repeat(truth[k:k + 1], z, axis=0)
            inst = np.repeat(inst[k:k + 1], z, axis=0)
        images, _ = (render_b if cfg.family == "b" else render)(truth, inst, cfg, rng)
        out = np.stack([images["SE2"] if (d == "SE2" or len(self.detectors) == 1) else images[d]
                        for d in self.detectors]).astype(np.float32) / 255.0
        out = np.clip(out * acq["gain"] + acq["offset"], 0.0, 1.0) ** acq["gamma"]
        info = {"config": cfg.to_dict(), **acq}
        return np.round(out * 255).astype(np.uint8), truth.astype(np.uint8), info


def resolve_ranges(ranges: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """:data:`DEFAULT_RANGES` updated by ``ranges``; checks names and ``lo <= hi``."""
    out = {k: list(v) for k, v in DEFAULT_RANGES.items()}
    for k, v in dict(ranges or {}).items():
        if k not in out:
            raise InputError(f"pretrain ranges: unknown parameter {k!r}; known: {sorted(out)}")
        v = [float(a) for a in (v if isinstance(v, (list, tuple)) or hasattr(v, "__len__") else [v, v])]
        if len(v) != 2 or v[0] > v[1]:
            raise InputError(f"pretrain ranges: {k} must be [lo, hi] with lo <= hi, got {v}")
        out[k] = v
    return out


def make_randomiser(s: Mapping[str, Any], shape=None) -> "Randomiser":
    """A :class:`Randomiser` from pretraining-style settings (``detectors``, ``ranges``, ``sources``,
    ``p_real``, ``p_flat``, ``p_family_b``, ``phantom_shape``); ``sources: None`` = :func:`default_sources`."""
    sources = default_sources() if s.get("sources") is None else list(s["sources"])
    return Randomiser(ranges=s.get("ranges") or {}, detectors=list(s["detectors"]),
                      shape=tuple(shape or s["phantom_shape"]), sources=sources, p_real=float(s["p_real"]),
                      p_flat=float(s["p_flat"]), p_family_b=float(s.get("p_family_b", 0.0)))


def default_sources(root: str | Path | None = None) -> list[str]:
    """Paths of the segmented volumes of ``../shared/data/real`` that exist (none when absent)."""
    if root is None:
        root = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
    return [str(Path(root) / n) for n in REAL_SOURCES if (Path(root) / n).is_file()]
