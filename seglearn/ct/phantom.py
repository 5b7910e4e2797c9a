"""Synthetic lab X-ray CT of a segmented electrode: attenuation, blur, noise, rings.

Seed 003 separates two phases in CT: active material (AM, bright, strongly attenuating metal
oxide) against everything else (pore + carbon-binder, dark). The phantom keeps the three-phase
geometry for the attenuation map and scores against the binary truth
``1 = non-AM (pore + CBD)``, ``2 = AM``. Voxels are isotropic.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.io import read_stack
from seglearn.synth.config import PhantomConfig
from seglearn.synth.microstructure import generate_microstructure, microstructure_from_volume

log = logging.getLogger("seglearn")

NON_AM, AM = 1, 2
CLASS_NAMES = ("non_active", "active_material")


@dataclass
class CTConfig:
    """Parameters of one synthetic CT volume.

    Attributes
    ----------
    shape : (Z, Y, X)
        Size of the volume (a source volume is cropped from its centre).
    voxel_size_nm : float
        Isotropic voxel edge.
    source : str or None
        A segmented volume (TIFF; 2 or 3 grey values, see
        :func:`seglearn.synth.microstructure.microstructure_from_volume`); None draws one with
        :func:`seglearn.synth.microstructure.generate_microstructure`.
    source_classes : (pore, cbd, am) grey values of ``source`` or None (guessed).
    seed : int
    am_fraction, cbd_fraction, particle_radius_nm : float
        Geometry of a generated microstructure.
    mu_pore, mu_cbd, mu_am : float
        Attenuation (arbitrary units) of each phase.
    blur : float
        Gaussian point-spread function, sigma in voxels (partial volume at the interfaces).
    snr : float
        Signal-to-noise ratio: (mean AM - mean non-AM attenuation) / noise std.
    noise_corr : float
        Correlation length (voxels) of the reconstruction noise (0 = white).
    rings : float
        Amplitude of ring artefacts in units of the AM/non-AM contrast (0 = none).
    n_rings : int
        Number of rings around the rotation axis (z, through the centre of each slice).
    """

    shape: tuple[int, int, int] = (96, 96, 96)
    voxel_size_nm: float = 100.0
    source: str | None = None
    source_classes: tuple[int, int, int] | None = None
    seed: int = 0
    am_fraction: float = 0.50
    cbd_fraction: float = 0.15
    particle_radius_nm: float = 700.0
    mu_pore: float = 0.10
    mu_cbd: float = 0.30
    mu_am: float = 1.00
    blur: float = 0.8
    snr: float = 1.5
    noise_corr: float = 0.6
    rings: float = 0.0
    n_rings: int = 6

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | None) -> "CTConfig":
        """Build from a partial mapping (OmegaConf accepted); unknown keys are refused."""
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise InputError(f"ct phantom config: unknown key(s) {unknown}; known: {sorted(names)}")
        for k in ("shape", "source_classes"):
            if cfg.get(k) is not None:
                cfg[k] = tuple(int(v) for v in cfg[k])
        out = cls(**cfg)
        if len(out.shape) != 3 or min(out.shape) < 8:
            raise InputError(f"ct phantom config: shape must be 3 ints >= 8, got {out.shape}")
        if out.snr <= 0:
            raise InputError(f"ct phantom config: snr must be > 0, got {out.snr}")
        if not out.mu_am > max(out.mu_pore, out.mu_cbd):
            raise InputError("ct phantom config: mu_am must exceed mu_pore and mu_cbd (AM is the bright phase)")
        return out


@dataclass
class CTPhantom:
    """A synthetic CT volume and its answers.

    Attributes
    ----------
    image : (Z, Y, X) uint8
        Reconstructed grey values (0..255).
    truth : (Z, Y, X) uint8
        1 non-AM (pore + carbon-binder), 2 AM.
    phases : (Z, Y, X) uint8
        Three-phase map (1 pore, 2 CBD, 3 AM) the image was rendered from.
    config : CTConfig
    info : dict
        ``am_fraction`` of the truth, ``noise_std_grey`` and ``contrast_grey`` (grey levels).
    """

    image: np.ndarray
    truth: np.ndarray
    phases: np.ndarray
    config: CTConfig
    info: dict = field(default_factory=dict)


def _phases(cfg: CTConfig, rng: np.random.Generator) -> np.ndarray:
    vs = float(cfg.voxel_size_nm)
    pcfg = PhantomConfig(shape=tuple(cfg.shape), voxel_size_nm=(vs, vs, vs), seed=cfg.seed,
                         source_classes=cfg.source_classes, am_fraction=cfg.am_fraction,
                         cbd_fraction=cfg.cbd_fraction, particle_radius_nm=cfg.particle_radius_nm,
                         inner_pore_radius_nm=1.5 * vs, crack_width_nm=1.2 * vs)
    if cfg.source is None:
        labels, _ = generate_microstructure(pcfg, rng)
        return labels
    path = Path(cfg.source)
    vol, _ = read_stack(path)
    if any(s < t for s, t in zip(vol.shape, cfg.shape)):
        raise InputError(f"{path}: source volume {vol.shape} is smaller than the phantom shape {cfg.shape}")
    lo = [(s - t) // 2 for s, t in zip(vol.shape, cfg.shape)]
    vol = vol[tuple(slice(a, a + t) for a, t in zip(lo, cfg.shape))]
    labels, _ = microstructure_from_volume(np.ascontiguousarray(vol), pcfg, str(path))
    return labels


def ring_pattern(shape_yx: tuple[int, int], n_rings: int, rng: np.random.Generator) -> np.ndarray:
    """Concentric rings around the slice centre, zero mean, peak amplitude about 1.

    Returns
    -------
    (Y, X) float32 ndarray
    """
    ny, nx = shape_yx
    yy, xx = np.mgrid[:ny, :nx].astype(np.float32)
    r = np.hypot(yy - (ny - 1) / 2, xx - (nx - 1) / 2)
    out = np.zeros((ny, nx), np.float32)
    rmax = float(r.max())
    for _ in range(int(n_rings)):
        r0 = rng.uniform(0.05, 0.95) * rmax
        width = rng.uniform(0.6, 1.5)
        out += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((r - r0) / width) ** 2)
    return out


def render_ct(phases: np.ndarray, cfg: CTConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Turn a three-phase map into an 8-bit CT volume.

    Parameters
    ----------
    phases : (Z, Y, X) uint8
        1 pore, 2 CBD, 3 AM.

    Returns
    -------
    image : (Z, Y, X) uint8
    info : dict
    """
    mu = np.array([0.0, cfg.mu_pore, cfg.mu_cbd, cfg.mu_am], np.float32)
    att = mu[phases]
    if cfg.blur > 0:
        att = ndi.gaussian_filter(att, cfg.blur)
    am = phases == 3
    non = ~am
    mean_non = float(mu[phases[non]].mean()) if non.any() else cfg.mu_pore
    contrast = cfg.mu_am - mean_non
    noise = rng.standard_normal(att.shape).astype(np.float32)
    if cfg.noise_corr > 0:
        noise = ndi.gaussian_filter(noise, cfg.noise_corr)
        noise /= max(float(noise.std()), 1e-12)
    att += noise * (contrast / cfg.snr)
    if cfg.rings > 0:
        rings = ring_pattern(att.shape[1:], cfg.n_rings, rng)
        drift = 1.0 + 0.1 * np.cumsum(rng.standard_normal(att.shape[0])) / np.sqrt(att.shape[0])
        att += cfg.rings * contrast * drift[:, None, None].astype(np.float32) * rings[None]
    # the reconstruction's grey scale: a window around the two phase levels, as a CT operator sets it
    lo = mean_non - 3.5 * contrast / cfg.snr - 0.3 * contrast
    hi = cfg.mu_am + 3.5 * contrast / cfg.snr + 0.3 * contrast
    scale = 255.0 / (hi - lo)
    image = np.clip((att - lo) * scale, 0, 255).round().astype(np.uint8)
    info = {"contrast_grey": float(contrast * scale), "noise_std_grey": float(contrast / cfg.snr * scale)}
    return image, info


def make_ct_phantom(cfg: CTConfig | Mapping[str, Any] | None = None) -> CTPhantom:
    """Draw (or load) a microstructure and render its CT volume.

    Parameters
    ----------
    cfg : CTConfig or mapping
        See :class:`CTConfig`.

    Returns
    -------
    CTPhantom
    """
    cfg = cfg if isinstance(cfg, CTConfig) else CTConfig.from_dict(cfg)
    rng = np.random.default_rng(cfg.seed)
    phases = _phases(cfg, rng)
    image, info = render_ct(phases, cfg, rng)
    truth = np.where(phases == 3, AM, NON_AM).astype(np.uint8)
    info["am_fraction"] = float((truth == AM).mean())
    info["config"] = asdict(cfg)
    log.info("CT phantom %s: AM fraction %.3f, SNR %.2f, rings %.2f", cfg.shape, info["am_fraction"], cfg.snr, cfg.rings)
    return CTPhantom(image=image, truth=truth, phases=phases, config=cfg, info=info)


def gaussian_prefilter(image: np.ndarray, sigma: float = 1.1) -> np.ndarray:
    """3D Gaussian filter of seed 003 (sigma 1.1 voxel, kernel size factor 2), rounded to the input dtype.

    Parameters
    ----------
    image : (Z, Y, X) ndarray

    Returns
    -------
    (Z, Y, X) ndarray, same dtype
    """
    out = ndi.gaussian_filter(np.asarray(image, np.float32), sigma, truncate=2.0)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(out.round(), info.min, info.max)
    return out.astype(image.dtype)
