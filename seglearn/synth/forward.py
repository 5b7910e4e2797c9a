"""FIB-SEM forward model: what the SE2 and InLens detectors see of each cut face.

Slice ``z`` is the face exposed after milling away slices ``< z``; material at ``z' > z`` is
still in the block. In an open pore the detector sees the material behind the face
(shine-through), darker and blurrier the deeper it lies, until the cut reaches it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from seglearn.synth.config import DetectorModel, PhantomConfig
from seglearn.synth.fiducial import fiducial_band
from seglearn.synth.fields import smooth_noise
from seglearn.synth.microstructure import AM, CBD, PORE

_NONE = np.int32(10_000)  # depth of "nothing behind within the volume"
_DEPTH_BINS = (1, 2, 3, 5, 8, 12, 20)


def depth_behind(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth (slices) to the first solid voxel at or behind each voxel, and that voxel's z.

    Returns
    -------
    depth : (Z, Y, X) int32
        0 on solid voxels; ``_NONE`` where no solid lies behind.
    z_hit : (Z, Y, X) int32
        The z of the solid voxel seen (``-1`` where none).
    """
    solid = labels != PORE
    z_n = labels.shape[0]
    depth = np.empty(labels.shape, dtype=np.int32)
    z_hit = np.empty(labels.shape, dtype=np.int32)
    depth[-1] = np.where(solid[-1], 0, _NONE)
    z_hit[-1] = np.where(solid[-1], z_n - 1, -1)
    for z in range(z_n - 2, -1, -1):
        depth[z] = np.where(solid[z], 0, np.minimum(depth[z + 1] + 1, _NONE))
        z_hit[z] = np.where(solid[z], z, z_hit[z + 1])
    return depth, z_hit


def material_levels(labels: np.ndarray, instances: np.ndarray, det: DetectorModel,
                    rng: np.random.Generator, texture: np.ndarray, particle_offset: np.ndarray) -> np.ndarray:
    """Grey level of each solid voxel's cut face (texture and per-particle brightness included)."""
    level = np.zeros(labels.shape, dtype=np.float32)
    am = labels == AM
    cbd = labels == CBD
    level[am] = det.level_am + det.texture_am * texture[am] + particle_offset[instances[am]]
    level[cbd] = det.level_cbd + det.texture_cbd * texture[cbd]
    return level


def render_detector(labels: np.ndarray, depth: np.ndarray, z_hit: np.ndarray, level: np.ndarray,
                    det: DetectorModel, cfg: PhantomConfig, shared: dict, rng: np.random.Generator) -> np.ndarray:
    """Noise-free-then-noisy grey image ``(Z, Y, X)`` float32 in ``[0, 1]`` for one detector."""
    z_n, y_n, x_n = labels.shape
    pore = labels == PORE
    zz, yy, xx = np.indices(labels.shape, sparse=True)
    behind = level[np.clip(z_hit, 0, z_n - 1), yy, xx]
    has = z_hit >= 0
    d = np.where(has, depth, 0).astype(np.float32)
    att = np.exp(-np.maximum(d - 1, 0) / det.shine_length).astype(np.float32)
    shine = det.level_background + det.shine_gain * (behind - det.level_background) * att
    shine = np.where(has, shine, det.level_background).astype(np.float32)
    # blur grows with depth: blur the whole map at a few widths and pick by depth
    bins = np.digitize(d, _DEPTH_BINS)
    blurred = np.empty_like(shine)
    for b in range(len(_DEPTH_BINS) + 1):
        sel = pore & (bins == b)
        if not sel.any():
            continue
        depth_b = _DEPTH_BINS[b - 1] if b > 0 else 1
        sigma = det.shine_blur * depth_b
        blurred[sel] = ndi.gaussian_filter(shine, (0, sigma, sigma))[sel] if sigma > 0.3 else shine[sel]
    img = np.where(pore, blurred, level)
    # pore walls just behind the face glow (SE2 sees them at grazing angles)
    glow = det.wall_glow * np.exp(-np.maximum(d - 1, 0) / 1.5) * (pore & has & (d <= 4))
    img = img + glow.astype(np.float32)
    # edges facing the detector (at the top of the image) are bright
    img = img + det.edge_gain * shared["edge"]
    # re-deposition grows in deep pores with slice index
    deep = pore & ((depth >= cfg.redeposition_depth) | ~has)
    img = img + (cfg.redeposition * shared["redep"]) * deep
    if det.deep_glow > 0:
        img = img + det.deep_glow * shared["bright"] * deep
    # curtaining stripes, brightness gradient over the face and between slices
    img = img + det.curtain * shared["curtain"]
    if shared.get("fiducial") is not None:  # the Pt cap above the face: no sample, no curtains
        img[:, : cfg.fiducial] = shared["fiducial"]
    img = img * shared["gain"]
    # noise (signal-dependent)
    img = img + det.noise * np.sqrt(np.clip(img, 0.02, None)) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def shared_fields(labels: np.ndarray, cfg: PhantomConfig, rng: np.random.Generator) -> dict:
    """Artefact fields common to both detectors (edges, re-deposition, curtains, gains, fiducial band)."""
    z_n, y_n, x_n = labels.shape
    solid = (labels != PORE).astype(np.float32)
    sm = ndi.gaussian_filter(solid, (0, 1.0, 1.0))
    gy = ndi.sobel(sm, axis=1) / 8.0
    gx = ndi.sobel(sm, axis=2) / 8.0
    edge = 0.5 * np.hypot(gy, gx) + np.clip(gy, 0, None)
    edge = edge / max(float(edge.max()), 1e-6)
    # re-deposited material: smooth texture, more in large pores, growing with slice index
    pore2d = labels == PORE
    room = np.stack([ndi.distance_transform_edt(p) for p in pore2d]).astype(np.float32)
    room = np.clip(room / 10.0, 0, 1)
    tex = 0.5 + 0.5 * np.tanh(smooth_noise(labels.shape, (3, 4, 4), rng))
    growth = (np.arange(z_n, dtype=np.float32) / max(z_n - 1, 1))[:, None, None]
    redep = (growth * room * tex).astype(np.float32)
    # curtaining: vertical stripes (constant along y, varying along x), slowly evolving with z
    base = smooth_noise((1, 1, x_n), (0, 0, 1.2), rng)
    stripes = np.empty((z_n, 1, x_n), dtype=np.float32)
    cur = base[0]
    for z in range(z_n):
        cur = 0.97 * cur + 0.24 * smooth_noise((1, x_n), (0, 1.2), rng)
        stripes[z] = cur
    fade = (0.4 + 0.6 * (1 - np.arange(y_n, dtype=np.float32) / y_n))[None, :, None]
    curtain = stripes * fade
    # brightness: falls from top to bottom of the face; random walk between slices
    face = 1.0 - cfg.gradient_face * (np.arange(y_n, dtype=np.float32) / y_n)[None, :, None]
    face = face * (1.0 - 0.5 * cfg.gradient_face * (np.arange(x_n, dtype=np.float32) / x_n))[None, None, :]
    walk = np.cumsum(rng.normal(0, cfg.gradient_slices, z_n)) * 0.3
    walk = np.exp(walk - walk.mean()).astype(np.float32)[:, None, None]
    # patches of bright background in deep pores (SE2), drawn from their own stream so that
    # switching them on leaves every other random draw of the phantom as it was
    bright = None
    if any(getattr(cfg, d.lower()).deep_glow > 0 for d in cfg.detectors):
        own = np.random.default_rng([cfg.seed, 2024])
        bright = np.minimum(np.clip(smooth_noise(labels.shape, (4, 12, 12), own) - 0.4, 0, None) * 2.5, 1.0)
        bright = bright.astype(np.float32)
    fid = fiducial_band(cfg.fiducial, x_n, cfg.seed) if cfg.fiducial > 0 else None
    return {"edge": edge.astype(np.float32), "redep": redep, "bright": bright, "curtain": curtain.astype(np.float32),
            "gain": (face * walk).astype(np.float32), "fiducial": fid}


def apply_drift(images: dict[str, np.ndarray], drift_px: float, rng: np.random.Generator) -> np.ndarray:
    """Shift each slice by a random-walk translation (in place); returns shifts ``(Z, 2)`` (dy, dx)."""
    z_n = next(iter(images.values())).shape[0]
    shifts = np.cumsum(rng.normal(0, drift_px, (z_n, 2)), axis=0)
    shifts -= shifts[z_n // 2]
    for img in images.values():
        for z in range(z_n):
            img[z] = ndi.shift(img[z], shifts[z], order=1, mode="nearest")
    return shifts


def render(labels: np.ndarray, instances: np.ndarray, cfg: PhantomConfig,
           rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Render every configured detector.

    With ``cfg.fiducial > 0`` the top ``cfg.fiducial`` rows of every slice show the Pt cap with a
    milled mark (:func:`~seglearn.synth.fiducial.fiducial_band`, the same in every slice) with the
    detector's gain and noise, drawn before the drift so that it drifts with the slice.

    Returns
    -------
    images : dict of str to (Z, Y, X) uint8/uint16
    shifts : (Z, 2) float ndarray or None
        The drift applied (images only; labels stay in the registered frame).
    """
    depth, z_hit = depth_behind(labels)
    shared = shared_fields(labels, cfg, rng)
    texture = smooth_noise(labels.shape, (0.7, 1.0, 1.0), rng)
    n_inst = int(instances.max()) + 1
    offsets = rng.normal(0, 0.04, n_inst).astype(np.float32)
    offsets[0] = 0
    out: dict[str, np.ndarray] = {}
    for name in cfg.detectors:
        det = cfg.se2 if name == "SE2" else cfg.inlens
        level = material_levels(labels, instances, det, rng, texture, offsets)
        out[name] = render_detector(labels, depth, z_hit, level, det, cfg, shared, rng)
    shifts = apply_drift(out, cfg.drift_px, rng) if cfg.drift_px > 0 else None
    top = 255 if cfg.bit_depth == 8 else 65535
    dtype = np.uint8 if cfg.bit_depth == 8 else np.uint16
    images = {k: np.round(v * top).astype(dtype) for k, v in out.items()}
    return images, shifts
