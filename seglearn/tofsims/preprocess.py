"""Geometric clean-up of an ion stack: current collector, rotation, cropping.

All functions take ``counts`` of shape ``(N, Z, Y, X)`` (ions, depth scans, rows, columns) and a
boolean ``valid`` mask ``(Z, Y, X)`` (pixels that belong to the electrode), and return both.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError

log = logging.getLogger("seglearn")


def to_8bit(image: np.ndarray, *, percentile: float = 100.0, axis=None) -> np.ndarray:
    """Scale non-negative intensities to 0..255 by their ``percentile`` (clipped).

    Parameters
    ----------
    image : ndarray
    percentile : float
        100 scales by the maximum; lower values are robust to a few hot pixels.
    axis : int or tuple, optional
        Axes over which the reference value is taken (others keep their own scale).

    Returns
    -------
    ndarray of float64 in [0, 255]
    """
    ref = np.percentile(image, percentile, axis=axis, keepdims=True) if axis is not None else \
        np.percentile(image, percentile)
    ref = np.where(ref > 0, ref, 1.0)
    return np.clip(image / ref * 255.0, 0.0, 255.0)


def remove_current_collector(counts: np.ndarray, valid: np.ndarray, *, threshold: float | None,
                             ion: int | None = None) -> np.ndarray:
    """Mark the current collector invalid where the total (or one ion's) 8-bit intensity exceeds ``threshold``.

    Parameters
    ----------
    counts : (N, Z, Y, X) ndarray
    valid : (Z, Y, X) bool ndarray
    threshold : float or None
        8-bit (0..255) intensity above which a pixel is current collector; None skips the step.
    ion : int, optional
        Index of the ion that marks the collector (e.g. Al+); default the sum of all ions.

    Returns
    -------
    valid : (Z, Y, X) bool ndarray
        The mask with the collector pixels removed.
    """
    if threshold is None:
        return valid
    ref = counts.sum(axis=0) if ion is None else counts[ion]
    grey = to_8bit(ndi.gaussian_filter(ref, sigma=(0, 1, 1)), axis=(1, 2))
    cc = grey > float(threshold)
    log.info("current collector: %.1f %% of pixels above %g (8-bit)", 100 * cc.mean(), threshold)
    return valid & ~cc


def rotate(counts: np.ndarray, valid: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate every map by ``angle_deg`` (counter-clockwise) about the image centre, keeping its size.

    Pixels rotated in from outside the image are marked invalid.
    """
    if not angle_deg:
        return counts, valid
    rot = ndi.rotate(counts, angle_deg, axes=(3, 2), reshape=False, order=1, mode="constant", cval=0.0)
    vrot = ndi.rotate(valid.astype(np.float32), angle_deg, axes=(2, 1), reshape=False, order=1,
                      mode="constant", cval=0.0) > 0.999
    return np.clip(rot, 0, None), vrot


def crop_box(valid: np.ndarray, counts: np.ndarray, *, mode: str = "auto",
             rows: Sequence[int] | None = None, cols: Sequence[int] | None = None) -> tuple[slice, slice]:
    """Row and column slices to keep.

    Parameters
    ----------
    valid : (Z, Y, X) bool ndarray
    counts : (N, Z, Y, X) ndarray
    mode : {"auto", "manual", "none"}
        ``auto`` drops border rows/columns that hold no valid pixel with counts in any scan
        (the empty border, the removed collector, rotated-in corners of whole rows);
        ``manual`` keeps ``rows = [up, down]`` and ``cols = [left, right]`` (pixel indices,
        end exclusive; None = image edge).
    """
    ny, nx = valid.shape[1:]
    if mode == "none":
        return slice(0, ny), slice(0, nx)
    if mode == "manual":
        r = list(rows) if rows is not None else [None, None]
        c = list(cols) if cols is not None else [None, None]
        if len(r) != 2 or len(c) != 2:
            raise InputError(f"crop limits must be [start, end] pairs, got rows={rows}, cols={cols}")
        r0, r1 = int(r[0] or 0), int(r[1] if r[1] is not None else ny)
        c0, c1 = int(c[0] or 0), int(c[1] if c[1] is not None else nx)
        if not (0 <= r0 < r1 <= ny and 0 <= c0 < c1 <= nx):
            raise InputError(f"crop rows {r0}:{r1}, cols {c0}:{c1} do not fit the {ny} x {nx} image (rows x cols)")
        return slice(r0, r1), slice(c0, c1)
    if mode != "auto":
        raise InputError(f"crop mode must be 'auto', 'manual' or 'none', got {mode!r}")
    filled = (valid & (counts.sum(axis=0) > 0)).any(axis=0)
    if not filled.any():
        raise InputError("no pixel with counts left after current-collector removal; check cc_threshold")
    rr = np.nonzero(filled.any(axis=1))[0]
    cc = np.nonzero(filled.any(axis=0))[0]
    return slice(int(rr[0]), int(rr[-1]) + 1), slice(int(cc[0]), int(cc[-1]) + 1)


def crop(counts: np.ndarray, valid: np.ndarray, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Apply a :func:`crop_box`."""
    r, c = box
    return counts[..., r, c], valid[:, r, c]
