"""Unsupervised "users" of seed 003: simple thresholds S1/S2/S3 and watershed gWS/cWS.

S2 is the grey value a user picks by eye (simulated by their habitual rule plus a personal
offset); S1 and S3 are S2 -/+ ``step`` grey levels. The watershed seeds AM above
``S2 + window / 2`` and non-AM below ``S2 - window / 2`` and floods the rest over the gradient
magnitude; a small window is the generous watershed (gWS), a large one the conservative (cWS).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from seglearn.ct.annotators import Annotator, perceived_labels
from seglearn.ct.phantom import AM, NON_AM
from seglearn.errors import InputError

log = logging.getLogger("seglearn")


def _sample(image: np.ndarray, max_n: int = 400_000) -> np.ndarray:
    flat = np.asarray(image).ravel()
    step = max(1, flat.size // max_n)
    return flat[::step]


def pick_threshold(image: np.ndarray, user: Annotator, *, truth_slice: np.ndarray | None = None,
                   image_slice: np.ndarray | None = None, rng: np.random.Generator | None = None) -> float:
    """The S2 a user picks "by eye".

    Parameters
    ----------
    image : (Z, Y, X) ndarray
        Grey values the histogram is built from.
    user : Annotator
        ``threshold_rule`` and ``threshold_offset`` are used.
    truth_slice, image_slice : (Y, X) ndarray, optional
        Needed by the ``eye`` rule: the user sets the threshold so the AM area in this slice of
        the image matches the AM area they see (their ``boundary_bias`` included).

    Returns
    -------
    float
        Threshold in grey values; voxels ``>= S2`` are AM.
    """
    from skimage import filters

    vals = _sample(image).astype(np.float64)
    # values clipped at the ends of the grey scale are not part of either phase's peak
    inner = vals[(vals > vals.min()) & (vals < vals.max())]
    if inner.size > 0.5 * vals.size:
        vals = inner
    rule = user.threshold_rule
    try:
        if rule == "otsu":
            t = filters.threshold_otsu(vals)
        elif rule == "minimum":
            t = filters.threshold_minimum(vals)
        elif rule == "li":
            t = filters.threshold_li(vals)
        elif rule == "isodata":
            t = filters.threshold_isodata(vals)
        elif rule == "mean":
            t = filters.threshold_mean(vals)
        elif rule == "eye":
            if truth_slice is None or image_slice is None:
                raise InputError("threshold rule 'eye' needs a truth slice and its image slice")
            seen = perceived_labels(truth_slice, user, rng or np.random.default_rng(0))
            t = float(np.quantile(image_slice, 1.0 - float((seen == AM).mean())))
        else:
            raise InputError(f"unknown threshold rule {rule!r}")
    except RuntimeError:  # threshold_minimum finds no valley in a unimodal histogram
        log.debug("user %s: rule %s failed, falling back to otsu", user.name, rule)
        t = filters.threshold_otsu(vals)
    lo, hi = np.quantile(vals, [0.02, 0.98])
    if not lo <= t <= hi:  # a user looking at the result would not accept an (almost) empty phase
        log.debug("user %s: rule %s gave %.1f outside [%.1f, %.1f], using otsu", user.name, rule, t, lo, hi)
        t = filters.threshold_otsu(vals)
    return float(t) + float(user.threshold_offset)


def apply_threshold(image: np.ndarray, t: float) -> np.ndarray:
    """Binary segmentation: ``2`` (AM) where ``image >= t`` else ``1``.

    Returns
    -------
    (Z, Y, X) uint8
    """
    return np.where(np.asarray(image) >= t, AM, NON_AM).astype(np.uint8)


def gradient_magnitude(image: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """Gaussian gradient magnitude (float32), the landscape the watershed floods."""
    return ndi.gaussian_gradient_magnitude(np.asarray(image, np.float32), sigma)


def watershed_segment(image: np.ndarray, s2: float, window: float, *,
                      gradient: np.ndarray | None = None) -> np.ndarray:
    """Seeded watershed of seed 003.

    Parameters
    ----------
    image : (Z, Y, X) ndarray
    s2 : float
        The user's threshold.
    window : float
        Width (grey levels) of the unseeded band centred on ``s2``.
    gradient : (Z, Y, X) float ndarray, optional
        Precomputed :func:`gradient_magnitude` of ``image``.

    Returns
    -------
    (Z, Y, X) uint8
        1 non-AM, 2 AM.
    """
    from skimage.segmentation import watershed

    if window < 0:
        raise InputError(f"watershed window must be >= 0, got {window}")
    image = np.asarray(image)
    markers = np.zeros(image.shape, np.uint8)
    markers[image <= s2 - window / 2] = NON_AM
    markers[image >= s2 + window / 2] = AM
    if not (markers == AM).any() or not (markers == NON_AM).any():
        return apply_threshold(image, s2)
    if gradient is None:
        gradient = gradient_magnitude(image)
    return watershed(gradient, markers).astype(np.uint8)
