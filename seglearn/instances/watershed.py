"""Baseline: the classical distance-transform watershed on a particle foreground mask."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.instances.fusion import relabel_sequential

log = logging.getLogger("seglearn")


def threshold_foreground(images: np.ndarray, *, channel: int | None = None, sigma: float = 1.0,
                         fill_holes: bool = True) -> np.ndarray:
    """Particle foreground from grey values: Otsu threshold of a smoothed channel.

    Parameters
    ----------
    images : (C, Z, Y, X) ndarray
        Active material is assumed brighter than its surroundings.
    channel : int, optional
        Channel to threshold; default the mean of the standardised channels.
    sigma : float
        Gaussian pre-filter (voxels).
    fill_holes : bool
        Fill holes enclosed in 3D (inner pores, closed cracks).

    Returns
    -------
    (Z, Y, X) bool ndarray
    """
    from skimage.filters import threshold_otsu

    images = np.asarray(images, np.float32)
    if channel is None:
        grey = np.mean([(c - c.mean()) / (c.std() + 1e-6) for c in images], axis=0)
    else:
        grey = images[channel]
    smooth = ndi.gaussian_filter(grey, sigma)
    fg = smooth > threshold_otsu(smooth)
    return ndi.binary_fill_holes(fg) if fill_holes else fg


def distance_watershed(mask: np.ndarray, *, spacing: Sequence[float] | None = None, min_distance: int = 5,
                       h: float = 1.0, min_size: int = 20) -> np.ndarray:
    """Split a foreground into particles by a watershed of its distance transform.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
    spacing : (z, y, x) floats, optional
        Voxel size for the distance transform (anisotropic voxels); distances are then divided
        by the smallest spacing so ``h`` stays in voxels.
    min_distance : int
        Seeds closer than this (voxels) merge (maximum filter footprint radius).
    h : float
        Minimum dynamic of a seed in voxels of distance (suppresses seeds on shallow necks).
    min_size : int
        Particles with fewer voxels are dropped.

    Returns
    -------
    (Z, Y, X) uint32 ndarray
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if spacing is not None:
        dist = ndi.distance_transform_edt(mask, sampling=spacing) / float(min(spacing))
    else:
        dist = ndi.distance_transform_edt(mask)
    q = np.round(dist * 10).astype(np.int32)
    peaks = h_maxima(q, max(int(round(h * 10)), 1)).astype(bool) & mask
    if min_distance > 1:
        peaks &= ndi.maximum_filter(dist, size=2 * min_distance + 1) <= dist + 1e-6
    markers, n = ndi.label(peaks, structure=np.ones((3,) * mask.ndim))
    labels = watershed(-dist, markers, mask=mask)
    if min_size > 1 and labels.max():
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    log.info("distance watershed: %d seeds", n)
    return relabel_sequential(labels)
