"""FIB-SEM forward model, family b: an independent formulation of what SE2 and InLens record.

Each voxel is a mix of an opaque part, which emits with its material's yield, and an open part
``p`` (1 in a pore, the sub-voxel porosity in the carbon-binder, 0 in active material) through
which the detector sees what lies behind the face. The signal of a face voxel is

    F = (1 - p) * Y * (1 + topo) + p * shine_gain * S

with ``S`` the depth-integrated shine-through: the emission ``e = (1 - p) Y (1 + wall)`` of every
voxel at depth ``d`` behind, weighted by ``exp(-d / collection_nm)``, spread by a tent-shaped
escape kernel whose width grows with depth (the detector's escape cone), shifted by the oblique
view (parallax) and transmitted through the open share of the voxels in front of it. Then
charging, chamber fog, curtains, trench shadowing, slow drift over z, Poisson shot noise for the
dwell time, amplifier smear along the scan line, read and scan-line noise, and a soft-saturating
detector response. See ``docs/synth.md`` for the assumptions next to those of family a.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from seglearn.synth import fields_b as fb_fields
from seglearn.synth.config import PhantomConfig
from seglearn.synth.config_b import DetectorB, FamilyB
from seglearn.synth.fiducial import fiducial_band
from seglearn.synth.forward import apply_drift
from seglearn.synth.microstructure import AM, CBD

#: independent random streams of the effects (so one can be switched off without moving the others)
_STREAMS = ("porosity", "grains", "redeposit", "curtain", "drift", "vignette", "noise", "fiducial")


def tent(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-plane tent blur (two box passes) with standard deviation about ``sigma_px``; < 0.4 = none."""
    size = int(round(sigma_px * np.sqrt(6.0)))
    if size < 2:
        return img
    size += 1 - size % 2
    out = ndi.uniform_filter(img, (1, size, size), mode="nearest")
    return ndi.uniform_filter(out, (1, size, size), mode="nearest")


def _shift_y(img: np.ndarray, s: int) -> np.ndarray:
    """Material at row ``y + s`` shown at row ``y`` (the last row repeated)."""
    if s <= 0:
        return img
    s = min(s, img.shape[1] - 1)
    return np.concatenate([img[:, s:], np.repeat(img[:, -1:], s, axis=1)], axis=1)


def shine_through(emission: np.ndarray, open_: np.ndarray, det: DetectorB, vs, max_depth_nm: float) -> np.ndarray:
    """Depth-integrated signal seen through the open share of each voxel.

    ``S(z) = sum_d exp(-(d - 1) dz / L) * K_d[e](z + d) * prod_{0<k<d} K_k[p](z + k)`` with
    ``K_d`` the escape kernel at depth ``d`` (tent of width ``cone * d * dz``, shifted by
    ``parallax * d * dz`` along -y). The stack is mirrored beyond its last slice so the last
    slices have material behind them too.

    Parameters
    ----------
    emission, open_ : (Z, Y, X) float32
    det : DetectorB
    vs : (3,) voxel size in nm

    Returns
    -------
    (Z, Y, X) float32
    """
    z_n = emission.shape[0]
    dz, dy = float(vs[0]), float(vs[1])
    depth = int(min(np.ceil(max_depth_nm / dz), np.ceil(4.0 * det.collection_nm / dz)))
    out = np.zeros(emission.shape, dtype=np.float32)
    if depth < 1 or det.shine_gain <= 0:
        return out
    pad = min(depth, z_n - 1)
    e = np.pad(emission, ((0, pad), (0, 0), (0, 0)), mode="reflect") if pad > 0 else emission
    p = np.pad(open_, ((0, pad), (0, 0), (0, 0)), mode="reflect") if pad > 0 else open_
    n = e.shape[0]
    trans = np.ones(emission.shape, dtype=np.float32)
    for d in range(1, min(depth, n - 1) + 1):
        sig = det.cone * d * dz / dy
        shift = int(round(det.parallax * d * dz / dy))
        w = np.float32(np.exp(-(d - 1) * dz / det.collection_nm))
        seen = _shift_y(tent(e[d:d + z_n], sig), shift)
        m = seen.shape[0]
        out[:m] += w * seen * trans[:m]
        trans[:m] *= _shift_y(tent(p[d:d + m], sig), shift)
        if float(trans.max()) < 1e-3:
            break
    return out


def topography(solid: np.ndarray, vs, edge_nm: float) -> dict[str, np.ndarray]:
    """In-plane geometry of the cut face near solid edges.

    Returns
    -------
    dict with (Z, Y, X) float32 arrays
        ``dist_nm`` (in-plane distance from a solid voxel to the nearest open voxel), ``facing``
        (y-component of the outward normal turned towards the top of the image, in [-1, 1]) and
        ``convex`` (curvature of the contour, >= 0, in 1 / px scaled by 3 px, clipped to 1).
    """
    dy, dx = float(vs[1]), float(vs[2])
    dist = np.empty(solid.shape, dtype=np.float32)
    for z in range(solid.shape[0]):
        dist[z] = ndi.distance_transform_edt(solid[z], sampling=(dy, dx)) if solid[z].any() else 0.0
    sigma = max(1.0, edge_nm / dy)
    f = ndi.gaussian_filter(solid.astype(np.float32), (0, sigma, sigma))
    gy, gx = np.gradient(f, axis=(1, 2))
    norm = np.hypot(gy, gx) + 1e-6
    ny, nx = -gy / norm, -gx / norm  # outward normal of the solid
    div = np.gradient(ny, axis=1) + np.gradient(nx, axis=2)
    convex = np.clip(3.0 * div * (norm > 1e-3), 0.0, 1.0)
    return {"dist_nm": dist, "facing": (-ny).astype(np.float32), "convex": convex.astype(np.float32)}


def detector_signal(labels: np.ndarray, open_: np.ndarray, grains: np.ndarray, redep: np.ndarray,
                    topo: dict, det: DetectorB, fam: FamilyB, vs) -> np.ndarray:
    """Noise-free signal ``(Z, Y, X)`` of one detector before curtains, shadowing and drift."""
    y = np.zeros(labels.shape, dtype=np.float32)
    am = labels == AM
    y[am] = det.yield_am * (1.0 + det.grain_contrast * grains[am])
    y[labels == CBD] = det.yield_cbd
    y[redep] = det.yield_redep
    opaque = 1.0 - open_
    # pore walls seen at grazing angles behind the face: solid voxels with open neighbours in-plane
    wall = np.clip(1.0 - tent(opaque, 1.0), 0.0, 1.0) * 2.0
    s = shine_through(opaque * y * (1.0 + det.wall_gain * wall), open_, det, vs, fam.max_depth_nm)
    near = np.exp(-topo["dist_nm"] / max(det.edge_nm, 1e-6))
    edge = det.edge_gain * ((1.0 - det.edge_direction) + det.edge_direction * (1.0 + topo["facing"]))
    face = y * (1.0 + near * (edge + det.curvature_gain * topo["convex"]))
    sig = opaque * face + open_ * det.shine_gain * s
    if det.charging > 0 or det.charging_tail > 0:
        insulating = np.where(labels == CBD, 1.0, 0.4).astype(np.float32) * opaque
        src = insulating * np.exp(-topo["dist_nm"] / (3.0 * max(det.edge_nm, 1e-6)))
        q = ndi.gaussian_filter(src, (0, 2.0, 2.0))
        sig = sig + det.charging * q - det.charging_tail * fb_fields.scan_smear(q, 12.0)
    if det.fog > 0:
        sig = sig + det.fog * ndi.gaussian_filter(sig, (0, 20.0, 20.0), mode="nearest")
    return sig.astype(np.float32)


def acquire(sig: np.ndarray, open_: np.ndarray, det: DetectorB, fam: FamilyB, curtain: np.ndarray | None,
            fid: np.ndarray | None, n_fid: int, rngs: dict) -> np.ndarray:
    """Curtains, shadowing, drift, noise and detector response: the recorded image in [0, 1]."""
    z_n, y_n, x_n = sig.shape
    if curtain is not None and det.curtain > 0:
        hx = np.gradient(curtain, axis=2)
        hx /= max(float(hx.std()), 1e-6)
        sig = sig * (1.0 + det.curtain * (1.0 - open_) * (curtain + det.curtain_slope * hx))
    if fid is not None:
        sig[:, :n_fid] = fid
    off, gain = fb_fields.drift_over_z(z_n, fam.drift_brightness, fam.drift_contrast, fam.jumps,
                                       np.random.default_rng(rngs["drift"]))
    vig = fb_fields.vignette(y_n, x_n, det.vignette, np.random.default_rng(rngs["vignette"]))
    sig = np.clip(sig * vig[None] * gain[:, None, None], 0.0, None)
    rng = np.random.default_rng(rngs["noise"])
    dose = det.electrons * fam.dwell_us
    sig = (rng.poisson(sig * dose) / dose).astype(np.float32)
    sig = fb_fields.scan_smear(sig, det.bandwidth_px)
    sig = sig + det.read_noise * rng.standard_normal(sig.shape, dtype=np.float32)
    if det.line_noise > 0:
        sig = sig + fb_fields.line_noise(sig.shape, det.line_noise, rng)
    out = det.brightness + off[:, None, None] + det.contrast * np.tanh(sig / det.contrast)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def render_b(labels: np.ndarray, instances: np.ndarray, cfg: PhantomConfig,
             rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Render every configured detector with family b; same outputs as :func:`~seglearn.synth.forward.render`.

    Parameters
    ----------
    labels : (Z, Y, X) uint8
        1 pore, 2 carbon-binder, 3 active material.
    instances : (Z, Y, X) uint32
        Unused by family b (grains are drawn independently of particles); kept for the signature.
    cfg : PhantomConfig
        ``cfg.b`` holds the family-b settings; ``drift_px``, ``fiducial``, ``bit_depth`` and the
        voxel size are shared with family a.
    rng : numpy Generator
        One draw from it seeds an independent stream per effect.

    Returns
    -------
    images : dict of str to (Z, Y, X) uint8/uint16
    shifts : (Z, 2) float ndarray or None
    """
    fam: FamilyB = cfg.b
    vs = cfg.voxel_size_nm
    base = int(rng.integers(2**31))
    rngs = {name: [base, i] for i, name in enumerate(_STREAMS)}
    open_ = fb_fields.transparency(labels, fam.cbd_nanoporosity, fam.cbd_texture_nm, vs,
                                   np.random.default_rng(rngs["porosity"]))
    grains = fb_fields.grain_field(labels, fam.grain_nm, vs, np.random.default_rng(rngs["grains"]))
    redep = fb_fields.redeposit(labels, fam.redeposition, fam.redep_nm, vs, np.random.default_rng(rngs["redeposit"]))
    open_[redep] = 0.2
    topo = topography(open_ < 0.5, vs, max(fam.se2.edge_nm, fam.inlens.edge_nm))
    curtain = None
    if any(getattr(fam, d.lower()).curtain > 0 for d in cfg.detectors):
        curtain = fb_fields.curtain_heights(labels.shape, fam.curtain_beta, fam.curtain_z_nm, vs,
                                            np.random.default_rng(rngs["curtain"]))
    fid = fiducial_band(cfg.fiducial, labels.shape[2], cfg.seed) if cfg.fiducial > 0 else None
    out: dict[str, np.ndarray] = {}
    for k, name in enumerate(cfg.detectors):
        det = fam.se2 if name == "SE2" else fam.inlens
        sig = detector_signal(labels, open_, grains, redep, topo, det, fam, vs)
        # each detector has its own noise; the drift over z and the shadowing are shared draws
        streams = {**rngs, "noise": [base, len(_STREAMS) + k]}
        fid_det = None if fid is None else fid * (det.yield_am / 0.6)
        out[name] = acquire(sig, open_, det, fam, curtain, fid_det, cfg.fiducial, streams)
    shifts = apply_drift(out, cfg.drift_px, rng) if cfg.drift_px > 0 else None
    top = 255 if cfg.bit_depth == 8 else 65535
    dtype = np.uint8 if cfg.bit_depth == 8 else np.uint16
    return {k: np.round(v * top).astype(dtype) for k, v in out.items()}, shifts
