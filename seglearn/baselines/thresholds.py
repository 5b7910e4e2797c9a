"""Global grey-value thresholds: double threshold, triple threshold (depth-2 tree), Otsu, multi-Otsu.

Every method is ``fit(channels, detectors, train_labels, **params) -> model`` and
``predict(model, channels, detectors) -> (Z, Y, X) uint8`` (see :mod:`seglearn.baselines.registry`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from seglearn.baselines.common import channel, need_labels, range_classes
from seglearn.baselines.threshold_fit import apply_double_threshold, best_double_threshold
from seglearn.errors import InputError

log = logging.getLogger("seglearn")


# ---- double threshold (seed 002, 3.1) ----
def fit_double(channels, detectors, train_labels=None, *, detector: str = "SE2", thresholds=None,
               order=(1, 2, 3), n_bins: int = 256) -> dict:
    """Two thresholds on one detector, given (``thresholds=[t1, t2]``) or fitted to minimise awe on the labels."""
    img = channel(channels, detectors, detector)
    if thresholds is not None:
        if len(thresholds) != 2 or float(thresholds[0]) > float(thresholds[1]):
            raise InputError(f"double_threshold: thresholds must be [t1, t2] with t1 <= t2, got {list(thresholds)}")
        return {"detector": detector, "thresholds": [float(t) for t in thresholds], "order": [int(o) for o in order]}
    fit = best_double_threshold(img, need_labels(train_labels, "double_threshold"), 3, n_bins=n_bins)
    log.info("double threshold on %s: %s, order %s (awe on labels %.1f %%)", detector, fit["thresholds"], fit["order"], fit["awe"])
    return {"detector": detector, "thresholds": list(fit["thresholds"]), "order": list(fit["order"])}


def predict_double(model, channels, detectors) -> np.ndarray:
    return apply_double_threshold(channel(channels, detectors, model["detector"]), model["thresholds"], model["order"])


# ---- triple threshold by a depth-2 decision tree (seed 002, 3.2) ----
def fit_triple(channels, detectors, train_labels=None, *, detector: str = "SE2", max_depth: int = 2,
               criterion: str = "entropy", class_weight: str | None = "balanced", seed: int = 0) -> dict:
    """Up to ``2**max_depth`` grey-value ranges with one class each, from a decision tree on one detector."""
    from sklearn.tree import DecisionTreeClassifier

    img = channel(channels, detectors, detector)
    lab = need_labels(train_labels, "triple_threshold")
    sel = lab > 0
    x = img[sel].astype(np.float64)[:, None]
    tree = DecisionTreeClassifier(max_depth=int(max_depth), criterion=criterion, class_weight=class_weight,
                                  random_state=seed).fit(x, lab[sel])
    t = tree.tree_
    thr = sorted({float(v) for f, v in zip(t.feature, t.threshold) if f >= 0})
    # class of each range: evaluate the tree at a point inside each range
    edges = [-np.inf] + thr + [np.inf]
    mids = [thr[0] - 1.0 if i == 0 else (thr[-1] + 1.0 if i == len(thr) else 0.5 * (edges[i] + edges[i + 1]))
            for i in range(len(thr) + 1)] if thr else [0.0]
    classes = [int(c) for c in tree.predict(np.asarray(mids)[:, None])]
    log.info("triple threshold on %s: thresholds %s, classes %s", detector, [round(v, 2) for v in thr], classes)
    return {"detector": detector, "thresholds": thr, "classes": classes}


def apply_ranges(img: np.ndarray, thresholds: Sequence[float], classes: Sequence[int]) -> np.ndarray:
    """Class of each voxel from sorted thresholds (range i is ``(t[i-1], t[i]]``, as a tree splits)."""
    lut = np.asarray(classes, dtype=np.uint8)
    if not len(thresholds):
        return np.full(img.shape, lut[0], dtype=np.uint8)
    idx = np.searchsorted(np.asarray(thresholds, dtype=np.float64), img, side="left")
    return lut[idx]


def predict_triple(model, channels, detectors) -> np.ndarray:
    return apply_ranges(channel(channels, detectors, model["detector"]), model["thresholds"], model["classes"])


# ---- Otsu and multi-Otsu ----
def fit_otsu(channels, detectors, train_labels=None, *, detector: str = "SE2", classes=None, nbins: int = 256) -> dict:
    """One Otsu threshold of the whole volume; each side gets the majority training class (or ``classes``)."""
    from skimage.filters import threshold_otsu

    img = channel(channels, detectors, detector)
    t = float(threshold_otsu(img, nbins=nbins))
    bins = np.digitize(img, [t], right=True).astype(np.uint8)  # Otsu: foreground is img > t
    cls = list(classes) if classes is not None else range_classes(bins, train_labels, 2, (1, 3))
    return {"detector": detector, "thresholds": [t], "classes": [int(c) for c in cls]}


def fit_multi_otsu(channels, detectors, train_labels=None, *, detector: str = "SE2", n_classes: int = 3,
                   classes=None, nbins: int = 256) -> dict:
    """``n_classes - 1`` multi-Otsu thresholds; each range gets the majority training class (or ``classes``)."""
    from skimage.filters import threshold_multiotsu

    img = channel(channels, detectors, detector)
    t = [float(v) for v in threshold_multiotsu(img, classes=int(n_classes), nbins=nbins)]
    bins = np.digitize(img, t, right=True).astype(np.uint8)
    default = list(range(1, int(n_classes) + 1))
    cls = list(classes) if classes is not None else range_classes(bins, train_labels, int(n_classes), default)
    return {"detector": detector, "thresholds": t, "classes": [int(c) for c in cls]}


def predict_otsu(model, channels, detectors) -> np.ndarray:
    img = channel(channels, detectors, model["detector"])
    lut = np.asarray(model["classes"], dtype=np.uint8)
    return lut[np.digitize(img, model["thresholds"], right=True)]
