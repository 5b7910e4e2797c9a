"""3D particles by linking per-slice 2D labels across consecutive slices (Hungarian assignment).

For every pair of consecutive slices the candidate links are the object pairs whose centroids lie
within ``max_distance`` pixels; a link costs ``(1 - IoU) + distance / max_distance``. The
candidate graph is split into connected groups and each group is solved exactly with scipy's
``linear_sum_assignment`` (seed 004's ``hungarianlinker``), so dense slices with tens of thousands
of objects stay cheap. Unlinked objects start new particles; empty slices end every track.
Particle ids are int64 internally and written as uint32 (uint64 past 2**32 - 1).
"""

from __future__ import annotations

import logging

import numpy as np

from seglearn.instances.fusion import relabel_sequential

log = logging.getLogger("seglearn")


def _objects(lbl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids, areas and centroids (n, 2) of the objects of a 2D label image."""
    flat = lbl.ravel()
    nz = np.flatnonzero(flat)
    if nz.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2))
    ids, inv, areas = np.unique(flat[nz], return_inverse=True, return_counts=True)
    yy, xx = np.divmod(nz, lbl.shape[1])
    cy = np.bincount(inv, weights=yy) / areas
    cx = np.bincount(inv, weights=xx) / areas
    return ids.astype(np.int64), areas, np.stack([cy, cx], axis=1)


def link_pair(prev: np.ndarray, cur: np.ndarray, *, max_distance: float = 10.0) -> dict[int, int]:
    """Hungarian links between the objects of two consecutive 2D label images.

    Parameters
    ----------
    prev, cur : (H, W) int ndarray
        Label images (ids need not be consecutive).
    max_distance : float
        Largest centroid distance (pixels) of a link.

    Returns
    -------
    dict
        ``{id in cur: id in prev}`` for the linked objects.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    ia, aa, ca = _objects(prev)
    ib, ab, cb = _objects(cur)
    if len(ia) == 0 or len(ib) == 0:
        return {}
    pairs = cKDTree(ca).sparse_distance_matrix(cKDTree(cb), max_distance, output_type="coo_matrix")
    ra, rb, dist = pairs.row, pairs.col, pairs.data
    # sparse_distance_matrix drops zero distances: add coincident centroids back
    zero = cKDTree(ca).query_ball_tree(cKDTree(cb), 1e-9)
    extra = [(i, j) for i, js in enumerate(zero) for j in js]
    if extra:
        ea, eb = np.array(extra).T
        ra, rb, dist = np.r_[ra, ea], np.r_[rb, eb], np.r_[dist, np.zeros(len(ea))]
    if len(ra) == 0:
        return {}
    key, first = np.unique(ra.astype(np.int64) * len(ib) + rb, return_index=True)
    ra, rb, dist = ra[first], rb[first], dist[first]
    # pixel overlaps of the candidate pairs
    both = (prev > 0) & (cur > 0)
    pa = np.searchsorted(ia, prev[both].astype(np.int64))
    pb = np.searchsorted(ib, cur[both].astype(np.int64))
    ov = coo_matrix((np.ones(len(pa)), (pa, pb)), shape=(len(ia), len(ib))).tocsr()
    inter = np.asarray(ov[ra, rb]).ravel()
    iou = inter / (aa[ra] + ab[rb] - inter)
    cost = (1.0 - iou) + dist / max_distance
    graph = coo_matrix((np.ones(len(ra)), (ra, len(ia) + rb)), shape=(len(ia) + len(ib),) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ra]
    n_edges = np.bincount(edge_comp)
    # a group with a single candidate pair needs no assignment
    single = n_edges[edge_comp] == 1
    links: dict[int, int] = dict(zip(ib[rb[single]].tolist(), ia[ra[single]].tolist()))
    multi = np.flatnonzero(~single)
    order = multi[np.argsort(edge_comp[multi], kind="stable")]
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for group in np.split(order, bounds) if len(order) else []:
        ga, gb = np.unique(ra[group], return_inverse=True), np.unique(rb[group], return_inverse=True)
        big = 1e6
        m = np.full((len(ga[0]), len(gb[0])), big)
        m[ga[1], gb[1]] = cost[group]
        r, c = linear_sum_assignment(m)
        for i, j in zip(r, c):
            if m[i, j] < big:
                links[int(ib[gb[0][j]])] = int(ia[ga[0][i]])
    return links


def link_slices(labels: np.ndarray, *, max_distance: float = 10.0, min_slices: int = 1,
                progress: bool = True) -> np.ndarray:
    """Join per-slice 2D labels into 3D particles.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        2D instance ids per slice (ids may repeat between slices).
    max_distance : float
        Maximum linking distance between centroids (pixels).
    min_slices : int
        Tracks spanning fewer slices are dropped.

    Returns
    -------
    (Z, Y, X) uint32 ndarray (uint64 when more than 2**32 - 1 particles)
        Particle ids 1..n.
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.int64)
    next_id = 1
    first = np.zeros(1, np.int64)  # first slice of each track, index = track id
    last = np.zeros(1, np.int64)
    prev_ids = np.zeros(0, np.int64)  # 2D ids of the previous slice and their track ids
    prev_tracks = np.zeros(0, np.int64)
    for z in tqdm(range(labels.shape[0]), desc="linking", disable=not progress, leave=False):
        cur = labels[z]
        ids = np.unique(cur[cur > 0]).astype(np.int64)
        if ids.size == 0:
            prev_ids, prev_tracks = ids, ids
            continue
        links = link_pair(labels[z - 1], cur, max_distance=max_distance) if z > 0 and prev_ids.size else {}
        tracks = np.zeros(len(ids), np.int64)
        if links:
            src = np.array(list(links.keys()), np.int64)
            dst = np.array(list(links.values()), np.int64)
            tracks[np.searchsorted(ids, src)] = prev_tracks[np.searchsorted(prev_ids, dst)]
        new = tracks == 0
        n_new = int(new.sum())
        if n_new:
            tracks[new] = np.arange(next_id, next_id + n_new)
            first = np.r_[first, np.full(n_new, z)]
            last = np.r_[last, np.full(n_new, z)]
            next_id += n_new
        last[tracks] = z
        idx = np.clip(np.searchsorted(ids, cur.astype(np.int64)), 0, len(ids) - 1)
        out[z] = np.where(cur > 0, tracks[idx], 0)
        prev_ids, prev_tracks = ids, tracks
    if min_slices > 1 and next_id > 1:
        short = (last - first + 1) < min_slices
        short[0] = False
        out[short[out]] = 0
    n = int(out.max()) if out.size else 0
    log.info("linking: %d particles", n)

    return relabel_sequential(out)
