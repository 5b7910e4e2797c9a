"""Volume fractions: global, per depth region, from 2D sections, and against sub-volume size.

All functions take a ``(Z, Y, X)`` label volume with ids ``1..K`` (0 = outside, left out of every
fraction) and return plain numpy / dict results.
"""

from __future__ import annotations

import numpy as np

from seglearn.errors import InputError

AXES = {"z": 0, "y": 1, "x": 2}


def phase_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Voxel count of ids ``0..K`` ``(K + 1,)`` int64, counted by slabs of ~16 M voxels (bounded memory)."""
    lab = np.asarray(labels)
    flat = lab.reshape(lab.shape[0], -1) if lab.ndim > 1 else lab.reshape(1, -1)
    step = max(1, 2**24 // max(1, flat.shape[1]))
    counts = np.zeros(n_classes + 1, np.int64)
    for i in range(0, flat.shape[0], step):
        counts += np.bincount(flat[i:i + step].ravel(), minlength=n_classes + 1)[: n_classes + 1]
    return counts


def volume_fractions(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of each class ``1..K`` among the measured (non-zero) voxels, ``(K,)``.

    Fractions sum to 1 (NaN when no voxel is measured).
    """
    c = phase_counts(labels, n_classes)[1:]
    total = c.sum()
    return c / total if total else np.full(n_classes, np.nan)


def _axis(axis) -> int:
    if isinstance(axis, str):
        if axis.lower() not in AXES:
            raise InputError(f"axis must be one of z, y, x, got {axis!r}")
        return AXES[axis.lower()]
    return int(axis)


def fractions_along(labels: np.ndarray, n_classes: int, axis="z") -> np.ndarray:
    """Fractions of each class in every slice across ``axis``: ``(n_slices, K)``.

    Slices without measured voxels are NaN.
    """
    ax = _axis(axis)
    lab = np.moveaxis(np.asarray(labels), ax, 0)
    n = lab.shape[0]
    out = np.empty((n, n_classes))
    for i in range(n):
        c = np.bincount(lab[i].ravel(), minlength=n_classes + 1)[1: n_classes + 1]
        out[i] = c / c.sum() if c.sum() else np.nan
    return out


def fractions_by_region(labels: np.ndarray, n_classes: int, *, n_regions: int, axis="z",
                        spacing_nm: float = 1.0) -> dict:
    """Fractions in ``n_regions`` equal slabs along ``axis`` (seed 001: evolution with depth).

    Returns
    -------
    dict
        ``start``, ``stop`` (slice index), ``start_nm``, ``stop_nm``: lists of length n;
        ``fractions``: ``(n, K)`` ndarray.
    """
    ax = _axis(axis)
    size = labels.shape[ax]
    n_regions = max(1, min(int(n_regions), size))
    edges = np.linspace(0, size, n_regions + 1).round().astype(int)
    fr = np.empty((n_regions, n_classes))
    for i in range(n_regions):
        sl = [slice(None)] * 3
        sl[ax] = slice(edges[i], edges[i + 1])
        fr[i] = volume_fractions(labels[tuple(sl)], n_classes)
    return {"axis": "zyx"[ax], "start": edges[:-1].tolist(), "stop": edges[1:].tolist(),
            "start_nm": (edges[:-1] * spacing_nm).tolist(), "stop_nm": (edges[1:] * spacing_nm).tolist(),
            "fractions": fr}


def section_fractions(labels: np.ndarray, n_classes: int) -> dict:
    """Fractions estimated from 2D sections in the xy, xz and yz planes against the 3D value.

    Seed 002 Fig. 6b: every slice normal to z (xy plane), y (xz) and x (yz) gives an estimate;
    their mean and standard deviation are compared with the 3D fraction.

    Returns
    -------
    dict
        ``per_slice``: {plane: (n, K) ndarray}; ``mean``, ``std``: {plane: (K,) ndarray};
        ``volume``: (K,) ndarray (the 3D fractions).
    """
    planes = {"xy": "z", "xz": "y", "yz": "x"}
    per = {p: fractions_along(labels, n_classes, a) for p, a in planes.items()}
    return {"per_slice": per,
            "mean": {p: np.nanmean(v, axis=0) for p, v in per.items()},
            "std": {p: np.nanstd(v, axis=0) for p, v in per.items()},
            "volume": volume_fractions(labels, n_classes)}


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-volume table with a zero border: ``S[z, y, x] = mask[:z, :y, :x].sum()``."""
    s = np.zeros(tuple(n + 1 for n in mask.shape), np.int64 if mask.size >= 2**31 else np.int32)
    np.cumsum(mask, axis=0, out=s[1:, 1:, 1:], dtype=s.dtype)
    np.cumsum(s[1:, 1:, 1:], axis=1, out=s[1:, 1:, 1:])
    np.cumsum(s[1:, 1:, 1:], axis=2, out=s[1:, 1:, 1:])
    return s


def _box_sums(s: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray, size) -> np.ndarray:
    dz, dy, dx = size
    z1, y1, x1 = z + dz, y + dy, x + dx
    return (s[z1, y1, x1] - s[z, y1, x1] - s[z1, y, x1] - s[z1, y1, x] + s[z, y, x1] + s[z, y1, x]
            + s[z1, y, x] - s[z, y, x]).astype(np.int64)


def representative_volume(labels: np.ndarray, n_classes: int, *, n_sizes: int, n_samples: int,
                          tolerance: float, min_edge: int = 8, seed: int = 0) -> dict:
    """How each phase's fraction converges with the edge of cubic sub-volumes.

    For edges ``L`` from ``min_edge`` voxels to the smallest dimension (geometric steps),
    ``n_samples`` random sub-volumes of ``L^3`` voxels (clipped to the volume) are drawn; the mean and
    standard deviation of their fractions are reported. The representative edge of a phase is the
    smallest ``L`` whose standard deviation is at most ``tolerance`` (absolute fraction).

    Returns
    -------
    dict
        ``edge`` (m,) voxels, ``mean`` and ``std`` (m, K), ``rve_edge`` (K,) voxels or None each.
    """
    labels = np.asarray(labels)
    shape = np.array(labels.shape)
    top = int(shape.min())
    lo = min(max(2, int(min_edge)), top)
    edges = np.unique(np.geomspace(lo, top, max(2, int(n_sizes))).round().astype(int))
    rng = np.random.default_rng(seed)
    starts = []
    for L in edges:
        size = np.minimum(L, shape)
        starts.append((size, [rng.integers(0, shape[a] - size[a] + 1, n_samples) for a in range(3)]))
    measured = _integral(labels > 0)
    totals = [np.maximum(_box_sums(measured, *st, size), 1) for size, st in starts]
    del measured
    mean = np.empty((len(edges), n_classes))
    std = np.empty((len(edges), n_classes))
    for k in range(n_classes):
        s = _integral(labels == k + 1)
        for i, (size, st) in enumerate(starts):
            f = _box_sums(s, *st, size) / totals[i]
            mean[i, k], std[i, k] = f.mean(), f.std()
        del s
    rve = []
    for k in range(n_classes):
        ok = np.nonzero(std[:, k] <= tolerance)[0]
        # the first edge from which every larger edge also meets the tolerance
        first = None
        for i in ok:
            if np.all(std[i:, k] <= tolerance):
                first = int(edges[i])
                break
        rve.append(first)
    return {"edge": edges, "mean": mean, "std": std, "rve_edge": rve, "tolerance": tolerance,
            "n_samples": n_samples}
