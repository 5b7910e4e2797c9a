"""From network outputs to 2D instances: stardist's NMS and ``polygons_to_label``, and the search
for the probability / NMS thresholds on validation slices."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger("seglearn")


def instances_2d(prob: np.ndarray, dist: np.ndarray, shape: Sequence[int], *, grid: Sequence[int] = (2, 2),
                 prob_thresh: float = 0.5, nms_thresh: float = 0.4, border: int = 0) -> np.ndarray:
    """Star-convex polygons that survive non-maximum suppression, drawn into a label image.

    Parameters
    ----------
    prob : (h, w) ndarray
        Object probability on the grid.
    dist : (R, h, w) ndarray
        Radial distances on the grid, in full-resolution pixels.
    shape : (H, W)
        The full-resolution image shape.
    grid : (gy, gx)
    prob_thresh, nms_thresh : float
        Candidates need ``prob > prob_thresh``; a polygon is suppressed by a better one when
        their overlap (intersection over the smaller area) exceeds ``nms_thresh``.
    border : int
        Ignore candidates this many grid pixels from the image border (stardist's ``b``).

    Returns
    -------
    (H, W) int32 ndarray
        Instance ids 1..n (0 = background).
    """
    from stardist import non_maximum_suppression, polygons_to_label

    prob = np.ascontiguousarray(prob, dtype=np.float32)
    # distances below 1e-3 clipped as in stardist's predict (degenerate polygons upset the NMS)
    d = np.maximum(np.moveaxis(np.asarray(dist, np.float32), 0, -1), np.float32(1e-3))
    if not np.any(prob > prob_thresh):
        return np.zeros(tuple(shape), np.int32)
    points, scores, d = non_maximum_suppression(d, prob, grid=tuple(grid), b=border, nms_thresh=nms_thresh,
                                                prob_thresh=prob_thresh)
    lbl = polygons_to_label(d, points, shape=tuple(shape), prob=scores)
    return lbl.astype(np.int32, copy=False)


def optimize_thresholds(probs: Sequence[np.ndarray], dists: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                        grid: Sequence[int] = (2, 2), prob_grid: Sequence[float] = tuple(np.round(np.arange(0.3, 0.86, 0.05), 2)),
                        nms_grid: Sequence[float] = (0.3, 0.4, 0.5), iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
                        border: int = 0) -> dict:
    """Grid search of (prob_thresh, nms_thresh) maximising the mean F1 over ``iou_thresholds``.

    StarDist optimises the same pair on validation images (its ``optimize_thresholds``).

    Parameters
    ----------
    probs, dists : sequences of (h, w) and (R, h, w) arrays
        Network outputs on validation images.
    labels : sequence of (H, W) int arrays
        Their true instances.

    Returns
    -------
    dict
        ``prob_thresh``, ``nms_thresh``, ``score`` (the best mean F1) and ``table`` (all tried).
    """
    from stardist.matching import matching_dataset

    labels = [np.asarray(y).astype(np.int32) for y in labels]
    best = {"prob_thresh": 0.5, "nms_thresh": 0.4, "score": -1.0}
    table = []
    for nms in nms_grid:
        for pt in prob_grid:
            preds = [instances_2d(p, d, y.shape, grid=grid, prob_thresh=float(pt), nms_thresh=float(nms), border=border)
                     for p, d, y in zip(probs, dists, labels)]
            stats = matching_dataset(labels, preds, thresh=list(iou_thresholds), show_progress=False)
            score = float(np.mean([s.f1 for s in stats]))
            table.append({"prob_thresh": float(pt), "nms_thresh": float(nms), "score": score})
            if score > best["score"]:
                best = {"prob_thresh": float(pt), "nms_thresh": float(nms), "score": score}
    log.info("thresholds: prob %.2f, nms %.2f (mean F1 at IoU %s on validation: %.3f)", best["prob_thresh"],
             best["nms_thresh"], list(iou_thresholds), best["score"])
    best["table"] = table
    return best
