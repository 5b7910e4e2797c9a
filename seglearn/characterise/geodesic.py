"""Geodesic tortuosity of paths through a phase (seed 002, section 3.7.2).

For every start voxel of the phase on a boundary, the shortest path through the phase to the set of
phase voxels at distance ``d`` from that boundary is found, and ``tau = length / d``; over all
start voxels this gives a distribution for each ``d``. The boundary is a face of the box (paths
from ``z = 0`` into the depth of an electrode) or, given a distance map, any surface (the
particle boundary of the seed). Paths are 26-connected with exact step lengths in nm
(``skimage.graph.MCP_Geometric``); only the region closer than ``d`` to the boundary is searched, which
is exact because a path first reaches the target set there.
"""

from __future__ import annotations

import logging

import numpy as np

from seglearn.characterise.sizes import sample_box

log = logging.getLogger("seglearn")


def geodesic_tortuosity(mask: np.ndarray, distance_nm: np.ndarray, d_nm: float,
                        spacing_nm=(1.0, 1.0, 1.0), *, start_band_nm: float | None = None,
                        max_starts: int | None = None, seed: int = 0) -> dict:
    """Distribution of geodesic tortuosity from a boundary to the set at distance ``d_nm``.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
        The phase the paths go through.
    distance_nm : (Z, Y, X) float ndarray
        Distance of every voxel from the start boundary (``z * dz`` for the face ``z = 0``).
    d_nm : float
        Distance of the target set.
    spacing_nm : (z, y, x) floats
    start_band_nm : float, optional
        Start voxels are the phase voxels with distance below this (default: half the finest
        voxel size, i.e. the boundary layer itself).
    max_starts : int, optional
        Keep at most this many start voxels (random sample) in the summary.

    Returns
    -------
    dict
        ``d_nm``; ``tau`` (n,) per reached start voxel; ``mean``, ``std``, ``median``; ``n_starts``;
        ``reached`` (fraction of start voxels connected to the target set).
    """
    from skimage.graph import MCP_Geometric

    mask = np.asarray(mask, bool)
    spacing = tuple(float(s) for s in spacing_nm)
    band = start_band_nm if start_band_nm is not None else 0.5 * min(spacing)
    dist = np.asarray(distance_nm, np.float32)
    # crop to the bounding box of the region that can matter: distance <= d
    region = dist <= d_nm + 1e-6 * max(spacing)
    if not region.any():
        return _empty(d_nm)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(region))
    m = mask[box]
    di = dist[box]
    target = m & (di >= d_nm - 1e-6 * max(spacing))
    starts = m & (di < band)
    if not target.any() or not starts.any():
        return _empty(d_nm, n_starts=int(starts.sum()))
    # the search region: phase voxels up to the target distance
    inside = m & (region[box] | target)
    costs = np.where(inside, 1.0, np.inf)
    mcp = MCP_Geometric(costs, fully_connected=True, sampling=spacing)
    cum, _ = mcp.find_costs(np.argwhere(target))
    length = cum[starts]
    start_d = di[starts]
    ok = np.isfinite(length)
    # a path from a start voxel at distance s covers at least d - s
    tau = length[ok] / np.maximum(d_nm - start_d[ok], 1e-9)
    n = int(starts.sum())
    if max_starts is not None and tau.size > max_starts:
        tau = np.random.default_rng(seed).choice(tau, max_starts, replace=False)
    return {"d_nm": float(d_nm), "tau": tau, "n_starts": n, "reached": float(ok.mean()) if n else 0.0,
            "mean": float(tau.mean()) if tau.size else None, "std": float(tau.std()) if tau.size else None,
            "median": float(np.median(tau)) if tau.size else None}


def _empty(d_nm: float, n_starts: int = 0) -> dict:
    return {"d_nm": float(d_nm), "tau": np.zeros(0), "n_starts": n_starts, "reached": 0.0,
            "mean": None, "std": None, "median": None}


def face_distance(shape, face: str, spacing_nm) -> np.ndarray:
    """Distance (nm) of every voxel centre from the voxel layer of a box face (``z0``, ``x1``...)."""
    ax = "zyx".index(face[0])
    n = shape[ax]
    idx = np.arange(n, dtype=np.float32)
    if face[1] == "1":
        idx = idx[::-1].copy()
    idx *= float(spacing_nm[ax])
    view = [1, 1, 1]
    view[ax] = n
    return np.broadcast_to(idx.reshape(view), shape)


def sampled_geodesic(mask: np.ndarray, face: str, d_nm: float, spacing_nm, *, max_starts: int | None,
                     max_voxels: int | None, phase: int | None = None) -> dict:
    """:func:`geodesic_tortuosity` from a box face, its search region cut to at most ``max_voxels``.

    The region searched is the slab within ``d_nm`` of ``face``; when it has more voxels than
    ``max_voxels`` a central window across the face's axis is kept (paths then cannot leave it,
    which can only lengthen them; the error is measured in docs/characterise.md). With ``phase``,
    ``mask`` is a (Z, Y, X) label volume and the phase is taken inside the window only (memory of
    the window, not of the volume). Returns the dict of :func:`geodesic_tortuosity` with ``box``
    (``[start, stop]`` per axis of the window).
    """
    ax = "zyx".index(face[0])
    n_ax = mask.shape[ax]
    depth = min(n_ax, int(np.ceil(d_nm / float(spacing_nm[ax]))) + 2)
    slab = [slice(None)] * 3
    slab[ax] = slice(0, depth) if face[1] == "0" else slice(n_ax - depth, n_ax)
    shape = list(mask.shape)
    shape[ax] = depth
    box = list(sample_box(shape, ax, max_voxels))
    box[ax] = slab[ax]
    box = tuple(slice(*b.indices(n)) for b, n in zip(box, mask.shape))
    sub = np.ascontiguousarray(mask[box] if phase is None else mask[box] == phase)
    g = geodesic_tortuosity(sub, face_distance(sub.shape, face, spacing_nm), d_nm, spacing_nm, max_starts=max_starts)
    g["box"] = [[b.start, b.stop] for b in box]
    return g
