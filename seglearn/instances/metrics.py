"""Instance metrics through ``stardist.matching``: precision, recall, F1, AP and panoptic quality."""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
KEYS = ("precision", "recall", "f1", "accuracy", "panoptic_quality", "mean_matched_score", "tp", "fp", "fn",
        "n_true", "n_pred")


def _as_dict(stats) -> dict:
    d = stats._asdict()
    out = {k: (int(d[k]) if k in ("tp", "fp", "fn", "n_true", "n_pred") else float(d[k])) for k in KEYS}
    out["ap"] = out.pop("accuracy")  # tp / (tp + fp + fn), StarDist's "average precision"
    return out


def _int_labels(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"instance labels must be integers, got {a.dtype}")
    return a.astype(np.int64, copy=False) if a.dtype == np.uint64 else a


def instance_scores(true: np.ndarray, pred: np.ndarray, *, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Match predicted to true instances (2D or 3D) at several IoU thresholds.

    Parameters
    ----------
    true, pred : (Y, X) or (Z, Y, X) int ndarrays
        Instance ids, 0 = background.
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    dict
        ``{iou_threshold (str, e.g. "0.5"): {precision, recall, f1, ap, panoptic_quality, tp, fp, fn,
        n_true, n_pred, mean_matched_score}}``.
    """
    from stardist.matching import matching

    true, pred = _int_labels(true), _int_labels(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and predicted {pred.shape} instances differ in shape")
    stats = matching(true, pred, thresh=list(thresholds))
    return {f"{t:g}": _as_dict(s) for t, s in zip(thresholds, stats)}


def instance_scores_2d(true: np.ndarray, pred: np.ndarray, *, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Like :func:`instance_scores` over the 2D slices of a stack (counts pooled over slices).

    Parameters
    ----------
    true, pred : (S, H, W) int ndarrays
        2D instance ids per slice.
    """
    from stardist.matching import matching_dataset

    true, pred = _int_labels(true), _int_labels(pred)
    stats = matching_dataset(list(true), list(pred), thresh=list(thresholds), show_progress=False)
    return {f"{t:g}": _as_dict(s) for t, s in zip(thresholds, stats)}
