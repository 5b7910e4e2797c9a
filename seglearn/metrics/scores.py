"""Segmentation scores of seed 002: per-class IoU and the average weighted error.

``awe = (1 - sum_i IoU_i * p_i) * 100 %`` with ``p_i`` the fraction of class ``i`` among the
scored voxels of the truth. Voxels where the truth is 0 are not scored. Counts are made once in a
confusion matrix and every score is derived from it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.errors import InputError

Box = Sequence[tuple[int, int]]


def _roi(a: np.ndarray, roi: Box | None) -> np.ndarray:
    if roi is None:
        return a
    if len(roi) != a.ndim:
        raise InputError(f"roi needs {a.ndim} (start, stop) pairs, got {len(roi)}")
    return a[tuple(slice(int(s), int(e)) for s, e in roi)]


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, n_classes: int, *, roi: Box | None = None) -> np.ndarray:
    """Counts ``C[t, p]`` of truth class ``t`` predicted as ``p`` over scored voxels.

    Parameters
    ----------
    pred, truth : (..., ) int ndarray
        Same shape; ids ``1..K``; voxels with ``truth == 0`` are not scored. A prediction of 0
        (or > K) on a scored voxel counts as wrong.
    n_classes : int
        K.
    roi : sequence of (start, stop), optional
        Restrict scoring to a box (one pair per axis).

    Returns
    -------
    (K, K) int64 ndarray
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise InputError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    pred, truth = _roi(pred, roi).ravel(), _roi(truth, roi).ravel()
    scored = (truth > 0) & (truth <= n_classes)
    t = truth[scored].astype(np.int64) - 1
    p = pred[scored].astype(np.int64) - 1
    valid = (p >= 0) & (p < n_classes)
    k1 = n_classes + 1
    # wrong/unknown predictions go to an extra column that is dropped: they only add to the union
    p = np.where(valid, p, n_classes)
    cm = np.bincount(t * k1 + p, minlength=n_classes * k1).reshape(n_classes, k1)
    return cm


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU ``tp / (tp + fp + fn)``; NaN for a class absent from truth and prediction."""
    k = cm.shape[0]
    tp = np.diag(cm[:, :k]).astype(np.float64)
    fn = cm.sum(axis=1) - tp
    fp = cm[:, :k].sum(axis=0) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


def awe(iou: np.ndarray, fractions: np.ndarray) -> float:
    """Average weighted error in percent: ``(1 - sum_i IoU_i p_i) * 100``."""
    iou = np.nan_to_num(np.asarray(iou, dtype=np.float64), nan=0.0)
    return float((1.0 - np.sum(iou * np.asarray(fractions, dtype=np.float64))) * 100.0)


def score(pred: np.ndarray, truth: np.ndarray, n_classes: int, *, roi: Box | None = None,
          class_names: Sequence[str] | None = None) -> dict:
    """All scores of one prediction against one truth.

    Returns
    -------
    dict
        ``iou`` (list, per class), ``iou_by_class`` (dict), ``miou``, ``awe`` (percent),
        ``fractions_truth``, ``fractions_pred`` (over scored voxels), ``accuracy``, ``n_scored``,
        ``confusion`` (list of lists).
    """
    cm = confusion_matrix(pred, truth, n_classes, roi=roi)
    n = int(cm.sum())
    if n == 0:
        raise InputError("no scored voxel: the truth holds no label 1..K in the scored region")
    iou = iou_from_confusion(cm)
    p_truth = cm.sum(axis=1) / n
    p_pred = cm[:, :n_classes].sum(axis=0) / n
    names = list(class_names) if class_names is not None else [str(i + 1) for i in range(n_classes)]
    return {
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "iou_by_class": {names[i]: (None if np.isnan(iou[i]) else float(iou[i])) for i in range(n_classes)},
        "miou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0,
        "awe": awe(iou, p_truth),
        "fractions_truth": [float(v) for v in p_truth],
        "fractions_pred": [float(v) for v in p_pred],
        "accuracy": float(np.trace(cm[:, :n_classes]) / n),
        "n_scored": n,
        "confusion": cm[:, :n_classes].tolist(),
    }


def volume_fractions(labels: np.ndarray, n_classes: int, *, ignore_zero: bool = True) -> np.ndarray:
    """Fraction of each class ``1..K`` among labelled voxels (or all voxels), shape ``(K,)``."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n_classes + 1)[: n_classes + 1]
    total = counts[1:].sum() if ignore_zero else labels.size
    return counts[1:] / max(int(total), 1)


def percent_differ(a: np.ndarray, b: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Percentage of voxels where two segmentations differ (within ``mask`` if given)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"segmentations differ in shape: {a.shape} vs {b.shape}")
    diff = a != b
    if mask is not None:
        diff = diff[np.asarray(mask, dtype=bool)]
    return float(diff.mean() * 100.0) if diff.size else 0.0


def fraction_std(segmentations: Sequence[np.ndarray], class_id: int, *, ddof: int = 1) -> float:
    """Standard deviation across segmentations of the volume fraction of ``class_id``."""
    fr = [float(np.mean(np.asarray(s) == class_id)) for s in segmentations]
    if len(fr) < 2:
        return 0.0
    return float(np.std(fr, ddof=ddof))
