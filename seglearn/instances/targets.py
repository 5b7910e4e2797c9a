"""Training targets, normalisation and the three slice views of a volume.

Targets are stardist's own: ``edt_prob`` (object-normalised Euclidean distance transform, the
object probability) and ``star_dist`` (distance to the object border along ``n_rays`` rays),
both sampled on the output grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.io.normalise import apply_normalisation
from seglearn.io.normalise import fit_normalisation as _fit

VIEWS = ("xy", "xz", "yz")
# the volume axis a view slices along; a slice keeps the other two axes in (Z, Y, X) order
VIEW_AXIS = {"xy": 0, "xz": 1, "yz": 2}


def view_stack(vol: np.ndarray, view: str) -> np.ndarray:
    """Put the slicing axis of ``view`` first.

    Parameters
    ----------
    vol : (..., Z, Y, X) ndarray
        Leading axes (channels) are kept in front.
    view : {"xy", "xz", "yz"}

    Returns
    -------
    (..., S, H, W) ndarray
        A view (no copy): ``xy`` -> (Z, Y, X), ``xz`` -> (Y, Z, X), ``yz`` -> (X, Z, Y).
    """
    lead = vol.ndim - 3
    ax = lead + VIEW_AXIS[view]
    return np.moveaxis(vol, ax, lead)


def unview_stack(stack: np.ndarray, view: str) -> np.ndarray:
    """Inverse of :func:`view_stack`."""
    lead = stack.ndim - 3
    return np.moveaxis(stack, lead, lead + VIEW_AXIS[view])


def fit_normalisation(images: np.ndarray, percentiles: Sequence[float], max_samples: int = 2_000_000,
                      seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel ``lo`` and ``hi`` percentiles of ``images`` ``(C, ...)``, as the checkpoint stores them
    (:func:`seglearn.io.normalise.fit_normalisation`)."""
    ranges = _fit(images, percentiles, max_samples=max_samples, seed=seed)
    return [r[0] for r in ranges], [r[1] for r in ranges]


def normalise(images: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    """``(x - lo) / (hi - lo)`` per channel, float32, not clipped, a new array; ``images`` is ``(C, ...)``."""
    return apply_normalisation(images, list(zip(lo, hi)), clip=False, copy=True)


def relabel_slice(lbl: np.ndarray) -> np.ndarray:
    """Split ids that fall into several disconnected pieces in a 2D slice (star_dist needs one
    connected region per id); returns consecutive int32 ids."""
    from skimage.measure import label

    return label(lbl, background=0, connectivity=1).astype(np.int32)


def slice_targets(lbl: np.ndarray, *, n_rays: int = 32, grid: Sequence[int] = (2, 2)) -> tuple[np.ndarray, np.ndarray]:
    """StarDist targets of one 2D label image.

    Parameters
    ----------
    lbl : (H, W) int ndarray
        Instance ids, 0 = background; H and W multiples of ``grid``.

    Returns
    -------
    prob : (H/gy, W/gx) float32
        ``edt_prob`` on the grid (1 at an object's centre, falling to 0 at its border).
    dist : (n_rays, H/gy, W/gx) float32
        ``star_dist`` on the grid, in full-resolution pixels.
    """
    from stardist import edt_prob, star_dist

    lbl = relabel_slice(lbl)
    gy, gx = grid
    if lbl.max() == 0:
        h, w = lbl.shape[0] // gy, lbl.shape[1] // gx
        return np.zeros((h, w), np.float32), np.zeros((n_rays, h, w), np.float32)
    prob = edt_prob(lbl)[::gy, ::gx].astype(np.float32)
    dist = star_dist(lbl, n_rays, grid=(gy, gx)).astype(np.float32)
    return prob, np.moveaxis(dist, -1, 0).copy()
