"""Two-stage z-gradient segmentation after Salzer et al. (2012), as used in seed 002 (3.3).

Stage 1 (void): in an open pore the grey value keeps rising over the next slices, until the cut
reaches the material seen through the pore; a voxel is void when its (in-plane smoothed) grey
value rises by more than ``rise`` within the next ``window`` slices, or when it is darker than
``dark`` (deep pore background). Stage 2: the remaining voxels are carbon-binder where the
second detector (InLens) is below ``split``, else active material.

The three thresholds are given, or fitted on the training labels (grid search: best void/solid
IoU for stage 1, then the split with the lowest awe).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from seglearn.baselines.common import channel, need_labels
from seglearn.metrics import score

log = logging.getLogger("seglearn")


def rise_ahead(img: np.ndarray, window: int, presmooth: float) -> tuple[np.ndarray, np.ndarray]:
    """``(smoothed image, max(I(z+1..z+window)) - I(z))``, slices past the end repeat the last one."""
    f = np.asarray(img, dtype=np.float32)
    if presmooth > 0:
        f = ndi.gaussian_filter(f, (0, presmooth, presmooth))
    z_n = f.shape[0]
    best = np.full(f.shape, -np.inf, dtype=np.float32)
    for k in range(1, int(window) + 1):
        idx = np.minimum(np.arange(z_n) + k, z_n - 1)
        np.maximum(best, f[idx], out=best)
    return f, best - f


def _iou_binary(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.sum(pred & truth)
    union = np.sum(pred | truth)
    return float(inter / union) if union else 0.0


def fit(channels, detectors, train_labels=None, *, void_detector: str = "SE2", split_detector: str = "InLens",
        window: int = 8, presmooth: float = 1.0, rise=None, dark=None, split=None,
        classes=(1, 2, 3), n_grid: int = 40) -> dict:
    """Thresholds given or fitted; ``classes`` = ids of (void, low-split phase, high-split phase)."""
    params = {"void_detector": void_detector, "split_detector": split_detector, "window": int(window),
              "presmooth": float(presmooth), "classes": [int(c) for c in classes]}
    if split_detector not in detectors:
        split_detector = void_detector
        params["split_detector"] = void_detector
    if rise is not None and dark is not None and split is not None:
        return {**params, "rise": float(rise), "dark": float(dark), "split": float(split)}
    lab = need_labels(train_labels, "zgradient")
    f, r = rise_ahead(channel(channels, detectors, void_detector), window, presmooth)
    sel = lab > 0
    y = lab[sel]
    fv, rv = f[sel], r[sel]
    void = y == classes[0]
    if rise is None or dark is None:
        r_grid = np.quantile(rv, np.linspace(0.3, 0.99, n_grid)) if rise is None else np.array([float(rise)])
        d_grid = np.quantile(fv, np.linspace(0.0, 0.6, n_grid)) if dark is None else np.array([float(dark)])
        best = (-1.0, 0.0, 0.0)
        for tr in r_grid:
            by_rise = rv > tr
            for td in d_grid:
                iou = _iou_binary(by_rise | (fv < td), void)
                if iou > best[0]:
                    best = (iou, float(tr), float(td))
        rise, dark = best[1], best[2]
    pred_void = (rv > float(rise)) | (fv < float(dark))
    if split is None:
        s = channel(channels, detectors, split_detector)[sel].astype(np.float32)
        cand = np.unique(np.quantile(s, np.linspace(0.01, 0.99, 99)))
        best = (np.inf, float(cand[0]))
        k = len(classes)
        for t in cand:
            pred = np.where(pred_void, classes[0], np.where(s < t, classes[1], classes[2]))
            a = score(pred, y, k)["awe"]
            if a < best[0]:
                best = (a, float(t))
        split = best[1]
    log.info("zgradient: rise %.2f, dark %.2f, split %.2f", rise, dark, split)
    return {**params, "rise": float(rise), "dark": float(dark), "split": float(split)}


def predict(model, channels, detectors) -> np.ndarray:
    m = model
    f, r = rise_ahead(channel(channels, detectors, m["void_detector"]), m["window"], m["presmooth"])
    void = (r > m["rise"]) | (f < m["dark"])
    del f, r
    s = channel(channels, detectors, m["split_detector"])
    c = m["classes"]
    return np.where(void, c[0], np.where(s < m["split"], c[1], c[2])).astype(np.uint8)
