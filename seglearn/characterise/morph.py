"""Euclidean distance maps and ball dilations with anisotropic voxels (scipy.ndimage)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

FACES = {"z0": (0, 0), "z1": (0, -1), "y0": (1, 0), "y1": (1, -1), "x0": (2, 0), "x1": (2, -1)}


def distance_inside(mask: np.ndarray, spacing_nm) -> np.ndarray:
    """Distance (nm) from each voxel of ``mask`` to the nearest voxel outside it; 0 outside.

    The faces of the box are open (a phase touching them is not bounded there).
    """
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    if mask.all():
        return np.full(mask.shape, np.inf, np.float32)
    return ndi.distance_transform_edt(mask, sampling=spacing_nm).astype(np.float32)


def dilate_reference(mask: np.ndarray, radius_nm: float, spacing_nm) -> np.ndarray:
    """:func:`dilate` through a full Euclidean distance transform (slow; the reference in tests)."""
    if not mask.any():
        return np.zeros(mask.shape, bool)
    if mask.all():
        return np.ones(mask.shape, bool)
    return ndi.distance_transform_edt(~mask, sampling=spacing_nm) < radius_nm


def dilate(mask: np.ndarray, radius_nm: float, spacing_nm) -> np.ndarray:
    """Voxels closer than ``radius_nm`` to ``mask`` (dilation by an open Euclidean ball).

    Exact, and much faster than a full distance transform for small radii: the squared distance is
    built axis by axis as a min-plus convolution over offsets ``|k| <= radius / spacing`` only, since
    no voxel farther along one axis can be within the radius.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
    radius_nm : float
    spacing_nm : (z, y, x) floats

    Returns
    -------
    (Z, Y, X) bool ndarray
    """
    mask = np.asarray(mask, bool)
    if radius_nm <= 0 or not mask.any():
        return np.zeros(mask.shape, bool)
    if mask.all():
        return np.ones(mask.shape, bool)
    spacing = np.asarray([float(s) for s in spacing_nm])
    iso = bool(np.all(spacing == spacing[0]))
    unit = spacing[0] if iso else 1.0
    s2 = (spacing / unit) ** 2
    r2 = (radius_nm / unit) ** 2
    wins = [int(np.floor(radius_nm / s * (1 - 1e-12))) for s in spacing]
    if iso and r2 < 16000:  # exact integer squared distances; big + r2 still fits int16
        dtype, big = np.int16, np.int16(16384)
    else:
        dtype, big = np.float32, np.float32(np.inf)
    d = np.where(mask, dtype(0), big).astype(dtype, copy=False)
    tmp = np.empty_like(d)
    for ax in range(3):
        w = min(wins[ax], mask.shape[ax] - 1)
        if w <= 0:
            continue
        src = d.copy()
        for k in range(1, w + 1):
            add = dtype(k * k * s2[ax])
            hi = [slice(None)] * 3
            lo = [slice(None)] * 3
            hi[ax], lo[ax] = slice(k, None), slice(None, -k)
            hi, lo = tuple(hi), tuple(lo)
            t = tmp[lo]
            np.add(src[lo], add, out=t)
            np.minimum(d[hi], t, out=d[hi])
            np.add(src[hi], add, out=t)
            np.minimum(d[lo], t, out=d[lo])
        if dtype is np.int16:
            np.minimum(d, big, out=d)  # "far" stays at big, so big + k^2 cannot wrap
        del src
    return d < dtype(r2) if dtype is not np.int16 else d.astype(np.float32) < r2


def erode(mask: np.ndarray, radius_nm: float, spacing_nm) -> np.ndarray:
    """Voxels of ``mask`` at least ``radius_nm`` from every voxel outside it (box faces open)."""
    mask = np.asarray(mask, bool)
    if mask.all():
        return mask.copy()
    return ~dilate(~mask, radius_nm, spacing_nm)


def radii_grid(max_nm: float, spacing_nm, *, n_linear: int, growth: float) -> np.ndarray:
    """Radii (nm) up to ``max_nm``: one voxel steps for ``n_linear`` voxels, then steps of ``growth``."""
    v = float(min(spacing_nm))
    r = [v * k for k in range(1, n_linear + 1)]
    while r[-1] * growth <= max_nm:
        r.append(r[-1] * growth)
    return np.asarray([x for x in r if x <= max(max_nm, v)], np.float64)


def face_mask(shape, faces) -> np.ndarray:
    """Boolean mask of the voxels on the named box faces (``z0``, ``x1``, ... or ``all``)."""
    if isinstance(faces, str):
        faces = list(FACES) if faces == "all" else [faces]
    m = np.zeros(shape, bool)
    for f in faces:
        ax, idx = FACES[f]
        sl = [slice(None)] * len(shape)
        sl[ax] = idx
        m[tuple(sl)] = True
    return m


def connected_to(mask: np.ndarray, seeds: np.ndarray, *, full: bool = True) -> np.ndarray:
    """Voxels of ``mask`` in a connected component (26- or 6-connected) that holds a seed."""
    if not mask.any():
        return mask.copy()
    structure = ndi.generate_binary_structure(mask.ndim, mask.ndim if full else 1)
    lab, n = ndi.label(mask, structure=structure)
    hit = np.unique(lab[seeds & mask])
    hit = hit[hit > 0]
    if len(hit) == n:
        return mask.copy()
    keep = np.zeros(n + 1, bool)
    keep[hit] = True
    return keep[lab]
