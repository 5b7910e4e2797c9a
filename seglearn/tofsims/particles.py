"""Watershed separation of touching particles in a binary phase map (2D, scan by scan)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def watershed_particles(binary: np.ndarray, *, opening_radius: int = 1, min_distance_px: int = 3,
                        peak_fraction: float = 0.3, min_area_px: int = 4, compactness: float = 0.0) -> np.ndarray:
    """Split a binary map into particles with a distance-transform watershed.

    The recipe of the seed (OpenCV tutorial): open the binary map, take the Euclidean distance
    to the background, keep as seeds the local maxima at least ``min_distance_px`` apart and
    higher than ``peak_fraction`` of the largest distance, flood the inverted distance from the
    seeds inside the mask (:func:`skimage.segmentation.watershed`), drop particles smaller than
    ``min_area_px``.

    Parameters
    ----------
    binary : (Z, Y, X) or (Y, X) bool ndarray
        One phase; each scan is processed on its own.
    opening_radius : int
        Disk radius of the morphological opening that removes specks (0 = none).
    min_distance_px : int
        Minimum distance between two seeds.
    peak_fraction : float
        Seeds lower than this fraction of the scan's largest distance are ignored (0..1).
    min_area_px : int
        Smaller particles are removed.
    compactness : float
        Compact watershed (0 = classic).

    Returns
    -------
    (Z, Y, X) uint32 ndarray
        Particle ids, unique within each scan; 0 = background.
    """
    from skimage.feature import peak_local_max
    from skimage.morphology import disk, remove_small_objects
    from skimage.segmentation import watershed

    b = np.asarray(binary, dtype=bool)
    if b.ndim == 2:
        b = b[None]
    out = np.zeros(b.shape, dtype=np.uint32)
    for z, plane in enumerate(b):
        if opening_radius > 0:
            plane = ndi.binary_opening(plane, structure=disk(opening_radius))
        if min_area_px > 1:
            plane = remove_small_objects(plane, max_size=min_area_px - 1) if _has_max_size() else \
                remove_small_objects(plane, min_size=min_area_px)
        if not plane.any():
            continue
        dist = ndi.distance_transform_edt(plane)
        comp, _ = ndi.label(plane)
        peaks = peak_local_max(dist, min_distance=max(1, int(min_distance_px)), labels=comp,
                               threshold_abs=peak_fraction * dist.max(), exclude_border=False)
        markers = np.zeros(plane.shape, dtype=np.int64)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # components without a seed above the threshold still become one particle each
        seeded = np.unique(comp[markers > 0])
        missing = np.setdiff1d(np.arange(1, comp.max() + 1), seeded)
        if missing.size:
            pos = ndi.maximum_position(dist, comp, index=missing)
            start = markers.max() + 1
            for i, (rr, cc) in enumerate(pos):
                markers[rr, cc] = start + i
        lab = watershed(-dist, markers, mask=plane, compactness=compactness)
        if min_area_px > 1:
            sizes = np.bincount(lab.ravel())
            lab[sizes[lab] < min_area_px] = 0
        from skimage.segmentation import relabel_sequential

        out[z] = relabel_sequential(lab)[0].astype(np.uint32)
    return out


def _has_max_size() -> bool:
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters
