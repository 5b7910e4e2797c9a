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


def _overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts of every (true id, pred id) pair that overlaps, ``t`` and ``p`` > 0."""
    both = (true > 0) & (pred > 0)
    t, p = true[both].astype(np.int64), pred[both].astype(np.int64)
    code = t * (int(p.max(initial=0)) + 1) + p
    key, n = np.unique(code, return_counts=True)
    return key // (int(p.max(initial=0)) + 1), key % (int(p.max(initial=0)) + 1), n


def _boundary_iou(true: np.ndarray, pred: np.ndarray, pairs: Sequence[tuple[int, int]]) -> float:
    """Mean IoU of the 1-voxel inner boundaries of matched ``(true id, pred id)`` pairs."""
    from skimage.segmentation import find_boundaries

    if not len(pairs):
        return float("nan")
    bt = np.where(find_boundaries(true, connectivity=1, mode="inner"), true, 0)
    bp = np.where(find_boundaries(pred, connectivity=1, mode="inner"), pred, 0)
    nt = np.bincount(bt.ravel().astype(np.int64), minlength=int(true.max()) + 1)
    npr = np.bincount(bp.ravel().astype(np.int64), minlength=int(pred.max()) + 1)
    ti, pi, inter = _overlaps(bt, bp)
    lookup = dict(zip(zip(ti.tolist(), pi.tolist()), inter.tolist()))
    ious = []
    for t, p in pairs:
        i = lookup.get((int(t), int(p)), 0)
        u = nt[t] + npr[p] - i
        ious.append(i / u if u else 0.0)
    return float(np.mean(ious))


def error_breakdown(true: np.ndarray, pred: np.ndarray, *, split_share: float = 0.2) -> dict:
    """Where instance errors come from: merged, split, lost and false particles, and boundary quality.

    Each true particle's *main* prediction is the one holding most of its voxels, each prediction's
    main true particle the one holding most of the prediction's voxels.

    Parameters
    ----------
    true, pred : (Z, Y, X) or (Y, X) int ndarrays
        Instance ids, 0 = background.
    split_share : float
        A piece counts towards a split when it holds at least this share of the true particle.

    Returns
    -------
    dict
        ``n_true``, ``n_pred``, ``f1_0.5``, ``f1_0.75``, ``merged`` (true particles whose main
        prediction is the main prediction of another true particle too), ``split`` (true particles
        with two or more predictions, each holding >= ``split_share`` of it, whose main true
        particle it is), ``lost`` (true particles less than half covered by predictions), ``false``
        (predictions lying mostly on background), ``mean_iou`` (matched at IoU 0.5) and
        ``boundary_iou`` (mean IoU of the 1-voxel inner boundaries of the pairs matched at 0.5).
    """
    from stardist.matching import matching

    true, pred = _int_labels(true), _int_labels(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and predicted {pred.shape} instances differ in shape")
    n_t, n_p = int(true.max(initial=0)), int(pred.max(initial=0))
    size_t = np.bincount(true.ravel(), minlength=n_t + 1)
    size_p = np.bincount(pred.ravel(), minlength=n_p + 1)
    ti, pi, ov = _overlaps(true, pred)
    present_t = np.flatnonzero(size_t[1:]) + 1
    present_p = np.flatnonzero(size_p[1:]) + 1
    # main prediction of each true particle and main true particle of each prediction
    main_p = np.zeros(n_t + 1, np.int64)
    best = np.zeros(n_t + 1, np.int64)
    covered = np.bincount(ti, weights=ov, minlength=n_t + 1)
    main_t = np.zeros(n_p + 1, np.int64)
    best_p = np.zeros(n_p + 1, np.int64)
    for t, p, n in zip(ti, pi, ov):
        if n > best[t]:
            best[t], main_p[t] = n, p
        if n > best_p[p]:
            best_p[p], main_t[p] = n, t
    owners = np.bincount(main_p[present_t], minlength=n_p + 1)
    merged = int(sum(1 for t in present_t if main_p[t] and owners[main_p[t]] > 1))
    big = (ov >= split_share * size_t[ti]) & (main_t[pi] == ti)
    pieces = np.bincount(ti[big], minlength=n_t + 1)
    split = int(np.count_nonzero(pieces[present_t] >= 2))
    lost = int(np.count_nonzero(covered[present_t] < 0.5 * size_t[present_t]))
    false = int(np.count_nonzero(best_p[present_p] < 0.5 * size_p[present_p]))
    s50, s75 = matching(true, pred, thresh=[0.5, 0.75])
    m = matching(true, pred, thresh=0.5, report_matches=True)
    pairs = [(int(t), int(p)) for (t, p), s in zip(m.matched_pairs, m.matched_scores) if s >= 0.5]
    return {"n_true": len(present_t), "n_pred": len(present_p), "f1_0.5": float(s50.f1), "f1_0.75": float(s75.f1),
            "merged": merged, "split": split, "lost": lost, "false": false,
            "mean_iou": float(s50.mean_matched_score), "boundary_iou": _boundary_iou(true, pred, pairs)}
