"""Voxel-wise calibration of class probabilities: temperature scaling, ECE and an uncertainty map.

Temperature scaling (Guo et al. 2017) divides the logits by one scalar ``T`` fitted by minimising
the negative log-likelihood on held-out labelled voxels; it changes no argmax (the labels stay
the same) and only makes the probabilities honest. Pure numpy.

Examples
--------
>>> t = fit_temperature(logits, labels)            # doctest: +SKIP
>>> p = softmax(logits / t)                        # doctest: +SKIP
>>> u = uncertainty_map(p)                         # (Z, Y, X) float16 in [0, 1]
"""

from __future__ import annotations

import math

import numpy as np

from seglearn.errors import InputError

#: the bounded search interval of the temperature (log-spaced golden-section search)
T_BOUNDS = (0.05, 20.0)
#: the interval when the calibration voxels are scribbles: they lie inside the phases, where the network is
#: right and less sure than it could be, never on the boundaries where its errors are, so they can show
#: over-confidence (T > 1) but not a network too unsure to trust (T < 1 sharpened the test slices of
#: family a and of the demo: docs/characterise.md, "Voxel calibration")
SCRIBBLE_T_BOUNDS = (1.0, T_BOUNDS[1])


def temperature_bounds(scribbles: bool) -> tuple[float, float]:
    """The search interval of ``T``: :data:`SCRIBBLE_T_BOUNDS` when the calibration voxels are scribbles,
    else :data:`T_BOUNDS` (a dense test slice or volume sees the boundaries)."""
    return SCRIBBLE_T_BOUNDS if scribbles else T_BOUNDS


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax of ``logits`` along ``axis`` (float32 or float64 as given)."""
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _flat(x: np.ndarray, labels: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K)`` float64 values and ``(N,)`` 0-based labels of the labelled voxels (labels 1..K, 0 = none)."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    labels = np.asarray(labels)
    if x.shape[:-1] != labels.shape:
        raise InputError(f"calibration: probabilities of shape {x.shape[:-1]} (class axis {axis} removed) do not "
                         f"match labels of shape {labels.shape}")
    m = labels > 0
    k = x.shape[-1]
    if np.any(labels[m] > k):
        raise InputError(f"calibration: labels hold ids up to {int(labels.max())}, expected 1..{k}")
    return x[m].astype(np.float64), labels[m].astype(np.int64) - 1


def _as_logits(x: np.ndarray, probs: bool | None) -> np.ndarray:
    """Logits ``(N, K)``: ``x`` itself, or ``log(x)`` when ``x`` holds probabilities (sum to 1, in [0, 1])."""
    if probs is None:
        probs = bool(x.size) and x.min() >= 0 and x.max() <= 1 and np.allclose(x.sum(1), 1, atol=1e-3)
    return np.log(np.clip(x, 1e-12, None)) if probs else x


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of 0-based labels ``y (N,)`` under ``softmax(logits (N, K) / T)``."""
    z = logits / float(temperature)
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(logits_or_probs: np.ndarray, labels: np.ndarray, *, axis: int = 0,
                    probs: bool | None = None, bounds=T_BOUNDS, max_voxels: int = 200_000, seed: int = 0) -> float:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on the labelled voxels.

    Parameters
    ----------
    logits_or_probs : (..., K, ...) ndarray
        Logits, or probabilities (then ``log p`` stands for the logits: the same softmax).
    labels : ndarray
        Shape of ``logits_or_probs`` without the class axis; ids ``1..K``, 0 = unlabelled.
    axis : int
        The class axis (0 for ``(K, Z, Y, X)``; 1 for ``(Z, K, Y, X)`` slices of logits).
    probs : bool, optional
        Whether the input holds probabilities (default: detected).
    bounds : (float, float)
        The search interval; the NLL is unimodal in ``log T``, found by golden-section search.
    max_voxels : int
        At most this many labelled voxels (a seeded random subset) are used.

    Returns
    -------
    float
        ``T`` (1.0 when fewer than 10 labelled voxels).
    """
    x, y = _flat(logits_or_probs, labels, axis)
    if len(y) < 10:
        return 1.0
    if len(y) > max_voxels:
        pick = np.random.default_rng(seed).choice(len(y), max_voxels, replace=False)
        x, y = x[pick], y[pick]
    z = _as_logits(x, probs)
    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(z, y, math.exp(c)), nll(z, y, math.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(z, y, math.exp(d))
    return float(min(max(math.exp((a + b) / 2), bounds[0]), bounds[1]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15, *, axis: int = 0) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins, weighted by count).

    Parameters
    ----------
    probs : (K, ...) ndarray
        Probabilities (class axis ``axis``).
    labels : ndarray
        Ids ``1..K`` of the same shape without the class axis; 0 = not scored.
    bins : int

    Returns
    -------
    float
        ``sum_b n_b / N * |accuracy_b - confidence_b|`` in [0, 1]; NaN without labelled voxels.
    """
    p, y = _flat(probs, labels, axis)
    if not len(y):
        return float("nan")
    conf = p.max(1)
    hit = (p.argmax(1) == y).astype(np.float64)
    idx = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    s_conf = np.bincount(idx, conf, minlength=bins)
    s_hit = np.bincount(idx, hit, minlength=bins)
    return float(np.abs(s_hit - s_conf).sum() / len(y))


def calibration_record(logits: np.ndarray, labels: np.ndarray, *, scribbles: bool, source: str, axis: int = 0,
                       bins: int = 15) -> dict:
    """``meta["calibration"]`` of a checkpoint: the fitted temperature and the ECE before and after.

    ``logits`` with class axis ``axis``; ``labels`` ids 1..K, 0 = unlabelled; ``scribbles``: whether those
    labels are scribbles (:func:`temperature_bounds`); ``source`` describes them in the record.
    """
    t = fit_temperature(logits, labels, axis=axis, probs=False, bounds=temperature_bounds(scribbles))
    lg = np.asarray(logits, dtype=np.float64)
    before = expected_calibration_error(softmax(lg, axis), labels, bins, axis=axis)
    after = expected_calibration_error(softmax(lg / t, axis), labels, bins, axis=axis)
    return {"temperature": round(t, 4), "ece_before": round(before, 5), "ece_after": round(after, 5),
            "n_voxels": int((np.asarray(labels) > 0).sum()), "source": source}


def temperature_of(meta) -> float:
    """The temperature stored in a checkpoint's meta (``meta["calibration"]["temperature"]``), else 1.0."""
    cal = (meta or {}).get("calibration") or {}
    t = float(cal.get("temperature") or 1.0)
    return t if t > 0 else 1.0


def uncertainty_map(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy of the class probabilities: 0 = certain, 1 = uniform over the K classes.

    ``H(p) / log K`` is chosen over ``1 - max p`` (it sees all classes, not only the top one) and
    over ensemble disagreement (it needs only one probability volume, so it works for a single
    network, an averaged ensemble, TTA and the forest alike), and it lies in [0, 1] for any K.

    Parameters
    ----------
    probs : (K, Z, Y, X) ndarray

    Returns
    -------
    (Z, Y, X) float16 ndarray in [0, 1]
    """
    p = np.asarray(probs)
    k = p.shape[0]
    if k < 2:
        return np.zeros(p.shape[1:], np.float16)
    out = np.zeros(p.shape[1:], np.float32)
    for c in range(k):  # one class at a time: memory of two float32 volumes
        pc = np.clip(p[c].astype(np.float32), 1e-12, 1.0)
        out -= pc * np.log(pc)
    out /= math.log(k)
    return np.clip(out, 0.0, 1.0).astype(np.float16)
