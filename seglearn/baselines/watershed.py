"""Marker watershed with generous / conservative seeding windows (seed 003 gWS / cWS).

Seeds come from two thresholds (given, or the double threshold fitted to the training labels);
grey values within ``window`` of a threshold are left unseeded and the watershed on the
gradient magnitude assigns them. gWS = small window (few voxels left), cWS = large window.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from seglearn.baselines.common import channel, need_labels
from seglearn.baselines.threshold_fit import best_double_threshold
from seglearn.errors import InputError
from seglearn.features.filters import gaussian_derivatives

log = logging.getLogger("seglearn")


def fit(channels, detectors, train_labels=None, *, detector: str = "SE2", thresholds=None, order=(1, 2, 3),
        window: float = 5.0, prefilter_sigma: float = 1.1, gradient_sigma: float = 1.0, dims: int = 2,
        compactness: float = 0.0) -> dict:
    """Thresholds (given or fitted on the pre-filtered detector) and the seeding window (grey levels)."""
    if dims not in (2, 3):
        raise InputError(f"watershed: dims must be 2 or 3, got {dims}")
    params = {"detector": detector, "window": float(window), "prefilter_sigma": float(prefilter_sigma),
              "gradient_sigma": float(gradient_sigma), "dims": int(dims), "compactness": float(compactness)}
    if thresholds is not None:
        return {**params, "thresholds": [float(t) for t in thresholds], "order": [int(o) for o in order]}
    img = _prefilter(channel(channels, detectors, detector), prefilter_sigma, dims)
    fit_ = best_double_threshold(img, need_labels(train_labels, "watershed"), 3)
    log.info("watershed seeds on %s: thresholds %s, order %s, window %g", detector, fit_["thresholds"], fit_["order"], window)
    return {**params, "thresholds": list(fit_["thresholds"]), "order": list(fit_["order"])}


def _prefilter(img: np.ndarray, sigma: float, dims: int) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if sigma <= 0:
        return img
    return ndi.gaussian_filter(img, (sigma if dims == 3 else 0, sigma, sigma))


def gradient_magnitude(img: np.ndarray, sigma: float, dims: int) -> np.ndarray:
    """Gaussian gradient magnitude in-plane (``dims=2``) or in 3D."""
    orders = [(0, 1, 0), (0, 0, 1)] + ([(1, 0, 0)] if dims == 3 else [])
    d = gaussian_derivatives(img, (sigma if dims == 3 else 0.0, sigma, sigma), orders)
    return np.sqrt(sum(v * v for v in d.values())).astype(np.float32)


def seeds(img: np.ndarray, thresholds, order, window: float) -> np.ndarray:
    """Markers ``(Z, Y, X)`` uint8: class ids where the grey value is ``window`` away from both thresholds, else 0."""
    t1, t2 = (float(t) for t in thresholds)
    w = float(window)
    out = np.zeros(img.shape, dtype=np.uint8)
    out[img < t1 - w] = order[0]
    out[(img >= t1 + w) & (img < t2 - w)] = order[1]
    out[img >= t2 + w] = order[2]
    return out


def predict(model, channels, detectors) -> np.ndarray:
    from skimage.segmentation import watershed

    m = model
    dims = m["dims"]
    img = _prefilter(channel(channels, detectors, m["detector"]), m["prefilter_sigma"], dims)
    markers = seeds(img, m["thresholds"], m["order"], m["window"])
    gs = m["gradient_sigma"]
    grad = gradient_magnitude(img, gs, dims) if gs > 0 else img
    if dims == 3:
        out = watershed(grad, markers, compactness=m["compactness"])
    else:
        out = np.stack([watershed(g, mk, compactness=m["compactness"]) if mk.any() else mk
                        for g, mk in zip(grad, markers)])
    return out.astype(np.uint8)
