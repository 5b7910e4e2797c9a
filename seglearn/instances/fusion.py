"""3D particles by view fusion (seed 004): average the xy, xz and yz probability maps, then
group voxels that climb to the same maximum of the fused map.

StarDist's probability is the object-normalised distance to the particle border, so the fused
map has one peak per particle and valleys where particles touch, whatever the cracks and inner
pores inside them. Seeds are the regional maxima of the (lightly smoothed) fused map that stand
out by at least ``h``; a watershed on the inverted map inside the fused foreground (the voxels
covered by the 2D polygons in at least ``fg_vote`` of the views) assigns every voxel to the seed
its steepest ascent reaches (the fixed-point clustering of the seed's viewFusion).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger("seglearn")


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n (keeping the order of the old ids); uint32, or uint64 past 2**32 - 1 particles."""
    from skimage.segmentation import relabel_sequential as _rs

    out, _, _ = _rs(labels)
    n = int(out.max()) if out.size else 0
    return out.astype(np.uint32 if n < 2**32 else np.uint64, copy=False)


def fuse_views(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None, *, fg_vote: float = 0.5,
               fg_prob: float = 0.5, seed_thresh: float = 0.5, h: float = 0.1, sigma: float = 1.0,
               min_size: int = 20) -> np.ndarray:
    """3D instances from per-view probability maps.

    Parameters
    ----------
    probs : sequence of (Z, Y, X) float arrays
        Object probability of each view at full resolution.
    masks : sequence of (Z, Y, X) bool arrays, optional
        Foreground of each view (its 2D polygons); without them the foreground is
        ``fused prob > fg_prob``.
    fg_vote : float
        Share of the views that must cover a voxel for it to be foreground.
    seed_thresh : float
        Seeds must have a fused probability above this.
    h : float
        Minimum dynamic (height above the saddle) of a seed maximum.
    sigma : float
        Gaussian smoothing (voxels) of the fused map before finding seeds.
    min_size : int
        Particles with fewer voxels are dropped.

    Returns
    -------
    (Z, Y, X) uint32 ndarray
        Particle ids 1..n.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    fused = np.mean(np.stack([np.asarray(p, np.float32) for p in probs]), axis=0)
    if masks is not None:
        fg = np.mean(np.stack([np.asarray(m, bool) for m in masks]), axis=0) >= fg_vote - 1e-6
    else:
        fg = fused > fg_prob
    smooth = ndi.gaussian_filter(fused, sigma) if sigma > 0 else fused
    q = np.round(smooth * 1000).astype(np.int32)
    peaks = h_maxima(q, max(int(round(h * 1000)), 1)).astype(bool) & (smooth > seed_thresh) & fg
    markers, n_seeds = ndi.label(peaks, structure=np.ones((3, 3, 3)))
    labels = watershed(-smooth, markers, mask=fg)
    # foreground pieces no seed reached become particles of their own
    rest, n_rest = ndi.label(fg & (labels == 0))
    if n_rest:
        labels = np.where(rest > 0, rest + labels.max(), labels)
    if min_size > 1 and labels.max():
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    log.info("view fusion: %d seeds, %d particles", n_seeds, len(np.unique(labels)) - 1)
    return relabel_sequential(labels)
