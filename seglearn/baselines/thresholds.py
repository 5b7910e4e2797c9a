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
def histogram_thresholds(img: np.ndarray, n_classes: int = 3, *, n_samples: int = 200_000, seed: int = 0) -> list[float]:
    """Thresholds read off the grey-value histogram alone, as an operator sets them (seed 002, 3.1).

    A Gaussian mixture with ``n_classes`` components is fitted to the grey values (a random
    sample of ``n_samples`` voxels); the thresholds are where the most probable component changes
    between consecutive components, i.e. the flanks of the middle (carbon-binder) peak.

    Parameters
    ----------
    img : (Z, Y, X) ndarray
        One detector.

    Returns
    -------
    list of float
        ``n_classes - 1`` increasing thresholds in grey values.
    """
    from sklearn.mixture import GaussianMixture

    flat = np.asarray(img).ravel()
    rng = np.random.default_rng(seed)
    x = flat[rng.integers(0, flat.size, min(int(n_samples), flat.size))].astype(np.float64)[:, None]
    gmm = GaussianMixture(int(n_classes), random_state=seed).fit(x)
    rank = np.argsort(np.argsort(gmm.means_.ravel()))  # component -> rank by mean grey value
    lo, hi = float(flat.min()), float(flat.max())
    grid = np.linspace(lo, hi, 4096)
    comp = rank[gmm.predict(grid[:, None])]
    comp = np.maximum.accumulate(comp)  # one switch per boundary, dark to bright
    out = []
    for k in range(1, int(n_classes)):
        idx = np.flatnonzero(comp >= k)
        out.append(float(grid[idx[0]]) if idx.size else hi)
    return out


def fit_double(channels, detectors, train_labels=None, *, detector: str = "SE2", fit: str = "histogram",
               thresholds=None, order=(1, 2, 3), n_bins: int = 256, seed: int = 0) -> dict:
    """Two thresholds on one detector: given, read off the histogram, or fitted to the labels.

    ``thresholds=[t1, t2]`` uses them as given. Otherwise ``fit="histogram"`` (the seed-002
    protocol: thresholds set from the histogram, no labels; :func:`histogram_thresholds`) or
    ``fit="labels"`` (exhaustive search for the pair with the lowest awe on the labelled voxels).
    """
    img = channel(channels, detectors, detector)
    if thresholds is not None:
        if len(thresholds) != 2 or float(thresholds[0]) > float(thresholds[1]):
            raise InputError(f"double_threshold: thresholds must be [t1, t2] with t1 <= t2, got {list(thresholds)}")
        return {"detector": detector, "thresholds": [float(t) for t in thresholds], "order": [int(o) for o in order]}
    if fit == "histogram":
        thr = histogram_thresholds(img, 3, seed=seed)
        log.info("double threshold on %s from the histogram: %s, order %s", detector, [round(t, 2) for t in thr], list(order))
        return {"detector": detector, "thresholds": thr, "order": [int(o) for o in order]}
    if fit != "labels":
        raise InputError(f"double_threshold: fit must be 'histogram' or 'labels', got {fit!r}")
    res = best_double_threshold(img, need_labels(train_labels, "double_threshold"), 3, n_bins=n_bins)
    log.info("double threshold on %s: %s, order %s (awe on labels %.1f %%)", detector, res["thresholds"], res["order"], res["awe"])
    return {"detector": detector, "thresholds": list(res["thresholds"]), "order": list(res["order"])}


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
