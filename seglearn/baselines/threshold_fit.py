"""Exhaustive fitting of global grey-value thresholds from labelled voxels (histogram based)."""

from __future__ import annotations

import itertools

import numpy as np

from seglearn.errors import InputError


def quantise(image: np.ndarray, n_bins: int = 256) -> tuple[np.ndarray, float, float]:
    """Map grey values to bins ``0..n_bins-1`` over the image's range; returns (bins, lo, hi)."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and n_bins == 256:
        return image, 0.0, 255.0
    lo, hi = float(image.min()), float(image.max())
    scale = (n_bins - 1) / max(hi - lo, 1e-12)
    return np.clip(((image - lo) * scale).round(), 0, n_bins - 1).astype(np.int64), lo, hi


def best_double_threshold(image: np.ndarray, labels: np.ndarray, n_classes: int = 3, *,
                          n_bins: int = 256) -> dict:
    """Two global thresholds (and the class order) that minimise awe on the labelled voxels.

    Every pair ``t1 <= t2`` and every order of the K = 3 classes over the three grey-value
    ranges is scored from per-class histograms, so the search is exact and fast.

    Parameters
    ----------
    image : (Z, Y, X) ndarray
        One detector.
    labels : (Z, Y, X) int ndarray
        0 = not used, 1..3 labelled voxels (sparse scribbles or a dense truth).

    Returns
    -------
    dict
        ``thresholds`` (t1, t2) in grey values, ``order`` (class id of the dark, middle, bright
        range), ``awe`` (percent on the labelled voxels).
    """
    if n_classes != 3:
        raise InputError(f"double threshold separates 3 classes, got {n_classes}")
    bins, lo, hi = quantise(image, n_bins)
    sel = labels > 0
    if not sel.any():
        raise InputError("double threshold: no labelled voxel to fit on")
    hist = np.stack([np.bincount(bins[labels == k].ravel(), minlength=n_bins)[:n_bins] for k in (1, 2, 3)])
    total = hist.sum(axis=1).astype(np.float64)
    p = total / total.sum()
    cum = np.concatenate([np.zeros((3, 1)), np.cumsum(hist, axis=1)], axis=1)  # cum[:, t] = count < t
    t = np.arange(n_bins + 1)
    t1, t2 = np.meshgrid(t, t, indexing="ij")
    valid = t1 <= t2
    best = (np.inf, None, None)
    for order in itertools.permutations(range(3)):
        # counts of each true class in each of the 3 ranges: [0, t1), [t1, t2), [t2, n)
        ranges = [cum[:, t1], cum[:, t2] - cum[:, t1], total[:, None, None] - cum[:, t2]]
        iou_sum = np.zeros(t1.shape)
        for r, cls in enumerate(order):
            tp = ranges[r][cls]
            pred = sum(ranges[r][k] for k in range(3))
            union = total[cls] + pred - tp
            iou_sum += p[cls] * np.where(union > 0, tp / np.maximum(union, 1), 0)
        err = np.where(valid, (1 - iou_sum) * 100, np.inf)
        i = np.unravel_index(np.argmin(err), err.shape)
        if err[i] < best[0]:
            best = (float(err[i]), (int(i[0]), int(i[1])), order)
    scale = (hi - lo) / (n_bins - 1) if not (np.asarray(image).dtype == np.uint8 and n_bins == 256) else 1.0
    thr = tuple(lo + v * scale for v in best[1])
    return {"thresholds": thr, "order": [k + 1 for k in best[2]], "awe": best[0]}


def apply_double_threshold(image: np.ndarray, thresholds, order) -> np.ndarray:
    """Labels ``(Z, Y, X)`` uint8 from two thresholds and the class of each range."""
    t1, t2 = thresholds
    lut = np.asarray(order, dtype=np.uint8)
    idx = (image >= t1).astype(np.uint8) + (image >= t2).astype(np.uint8)
    return lut[idx]
