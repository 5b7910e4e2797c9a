"""95 % intervals of the microstructure numbers from class probabilities (issue 27).

Plausible segmentations are drawn from the probabilities ``p`` ``(K, Z, Y, X)`` by *correlated
Gumbel-max sampling*: for every class a Gaussian white-noise volume is smoothed by a Gaussian of
``sigma`` voxels (per axis), scaled to unit variance, mapped through the normal CDF to uniform
marginals and then to Gumbel noise ``g_k``; the sample is ``argmax_k (log p_k + g_k)``. At every
voxel the sample is class ``k`` with probability exactly ``p_k`` (Gumbel-max trick: the noises of
the classes are independent), while neighbouring voxels share their noise over ``~2 sigma``
voxels, so boundaries move and small features appear/vanish in coherent pieces instead of as
speckle. ``sigma`` = ``scale`` × half the 1/e autocorrelation length of the probabilities along
each axis (smoothed white noise of ``sigma`` has correlation ``exp(-r² / 4 sigma²)``).

Each sample is characterised; the interval of a number is the normal-theory *prediction*
interval of one more draw, ``mean ± t_{n-1} · std · sqrt(1 + 1/n)`` (the truth is treated as one
more plausible segmentation), stretched to span the argmax's value ± the same half width
(``intervals.span_point``), clipped to the number's range (:func:`clip_to_range`). Cheap
numbers (fractions, face-counted interfaces, CBD coverage, sections, RVE) use
``intervals.n_samples`` draws, the costly ones (meshes, size distributions, tortuosity, geodesic
tortuosity, inner pores, particles) the first ``intervals.n_samples_slow``. Which numbers get
intervals and where the bounds go: :mod:`.intervals_numbers`. Options:
``configs/characterise.yaml`` ``intervals``. docs/characterise.md, "Uncertainty intervals".
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

from seglearn.characterise.core import measure as characterise  # the numbers alone (no intervals, files)
from seglearn.characterise.intervals_numbers import annotate, flatten, is_fraction
from seglearn.errors import InputError

log = logging.getLogger("seglearn")

__all__ = ["FAST_STEPS", "SLOW_STEPS", "add_intervals", "characterise_intervals", "clip_to_range", "correlation_length",
           "flatten", "interval", "sample_labels"]

#: steps measured on every draw, and on the first ``n_samples_slow`` draws (all of them)
FAST_STEPS = ("fractions", "depth", "interfaces", "sections", "rve")
SLOW_STEPS = ("fractions", "depth", "interfaces", "sizes", "tortuosity", "geodesic", "inner_pores", "sections", "rve",
              "particles")


# ------------------------------------------------------------------------------------------ sampling

def correlation_length(probs: np.ndarray, *, max_lag: int = 32, max_edge: int = 96) -> list[float]:
    """1/e autocorrelation length (voxels) of the centred probabilities along z, y, x.

    Parameters
    ----------
    probs : (K, Z, Y, X) ndarray
    max_lag : int
        Longest lag tried (the result is capped there).
    max_edge : int
        A central crop of at most this many voxels per axis is used.

    Returns
    -------
    list of 3 float
    """
    sl = tuple(slice(max(0, (n - max_edge) // 2), max(0, (n - max_edge) // 2) + max_edge) for n in probs.shape[1:])
    c = np.asarray(probs[(slice(None),) + sl], dtype=np.float32)
    c = c - c.mean(axis=(1, 2, 3), keepdims=True)
    var = float((c * c).mean(axis=(1, 2, 3)).sum())
    out = []
    for ax in (1, 2, 3):
        n = c.shape[ax]
        if var <= 0 or n < 2:
            out.append(1.0)
            continue
        prev, length = 1.0, float(min(max_lag, n - 1))
        for lag in range(1, min(max_lag, n - 1) + 1):
            a = np.take(c, np.arange(0, n - lag), axis=ax)
            b = np.take(c, np.arange(lag, n), axis=ax)
            r = float((a * b).mean(axis=(1, 2, 3)).sum()) / var
            if r < 1 / math.e:
                length = lag - 1 + (prev - 1 / math.e) / max(prev - r, 1e-9)
                break
            prev = r
        out.append(max(length, 0.5))
    return out


def _unit_field(shape, sigma, rng) -> np.ndarray:
    """Gaussian random field of unit variance, Gaussian-correlated with ``sigma`` voxels per axis (wrapped).

    The variance of filtered white noise is the product over axes of the sum of squares of the
    filter's impulse response. With ``mode="wrap"`` the kernel folds onto itself on axes shorter
    than its support (a single slice keeps all of its weight), so the response is measured on the
    axis's real length rather than taken from the unfolded kernel.
    """
    from scipy import ndimage as ndi

    g = rng.standard_normal(shape, dtype=np.float32)
    if not any(s > 0 for s in sigma):
        return g
    g = ndi.gaussian_filter(g, sigma, mode="wrap", truncate=3.0)
    var = 1.0
    for n, s in zip(shape, sigma):
        if s > 0:
            impulse = np.zeros(n, np.float64)
            impulse[0] = 1.0
            h = ndi.gaussian_filter1d(impulse, s, mode="wrap", truncate=3.0)
            var *= float((h * h).sum())
    return g / np.float32(math.sqrt(var))


def sample_labels(log_probs: np.ndarray, sigma, rng: np.random.Generator) -> np.ndarray:
    """One plausible segmentation: ``argmax_k (log p_k + g_k)`` with correlated Gumbel noise ``g_k``.

    Parameters
    ----------
    log_probs : (K, Z, Y, X) float32 ndarray
        ``log p`` (clipped away from -inf).
    sigma : (3,) float
        Smoothing of the noise in voxels (0 = independent voxels).
    rng : numpy Generator

    Returns
    -------
    (Z, Y, X) uint8 ndarray
        Class ids ``1..K``.
    """
    from scipy.special import ndtr

    best = out = None
    for k in range(log_probs.shape[0]):
        u = ndtr(_unit_field(log_probs.shape[1:], sigma, rng)).astype(np.float32)
        np.clip(u, 1e-7, 1 - 1e-7, out=u)
        score = log_probs[k] - np.log(-np.log(u))
        if best is None:
            best, out = score, np.ones(score.shape, np.uint8)
        else:
            take = score > best
            best = np.where(take, score, best)
            out[take] = k + 1
    return out


# ------------------------------------------------------------------------------------------ numbers

def interval(values, level: float = 0.95, point: float | None = None) -> dict:
    """Prediction interval of one more draw from ``values`` (None entries: not finite, counted apart).

    With ``point`` (the argmax segmentation's value) the interval spans both centres:
    ``[min(mean, point) - half, max(mean, point) + half]``. The draws differ from the argmax
    systematically (a draw's boundaries are rougher, so its face-counted areas are larger; its
    fractions are the mean of ``p``, not the mode's), and the truth is closer to neither by rule.

    Returns
    -------
    dict
        ``low``, ``high``, ``mean``, ``std``, ``n`` (finite values), ``n_missing``; ``low``/``high``
        None with fewer than 2 finite values.
    """
    from scipy.stats import t as student

    v = np.array([x for x in values if x is not None], dtype=np.float64)
    out = {"low": None, "high": None, "mean": float(v.mean()) if v.size else None,
           "std": float(v.std(ddof=1)) if v.size > 1 else None, "n": int(v.size),
           "n_missing": int(len(values) - v.size)}
    if v.size > 1:
        half = float(student.ppf(0.5 + level / 2, v.size - 1)) * out["std"] * math.sqrt(1 + 1 / v.size)
        lo, hi = out["mean"], out["mean"]
        if point is not None and math.isfinite(point):
            lo, hi = min(lo, float(point)), max(hi, float(point))
        out["low"], out["high"] = lo - half, hi + half
    return out


def _finite(x) -> float | None:
    """``x`` as a float when it is a finite number, else None."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def clip_to_range(path: str, iv: dict, values) -> dict:
    """``iv`` with its bounds clipped to the range the number can take (changed in place, returned).

    Every reported number whose draws are all >= 0 (fractions, areas, τ, sizes, counts, spreads)
    gets ``low >= 0``; a fraction (:func:`.intervals_numbers.is_fraction`) whose draws all lie in
    [0, 1] also ``high <= 1``. The normal-theory interval of a number near its limit (a rare phase,
    a few particles) would otherwise reach past it.
    """
    v = [x for x in values if x is not None]
    if iv["low"] is None or not v:
        return iv
    if min(v) >= 0:
        iv["low"] = max(iv["low"], 0.0)
        if max(v) <= 1 and is_fraction(path):
            iv["high"] = min(iv["high"], 1.0)
    return iv


# ------------------------------------------------------------------------------------------ driver

def _sigma(p: np.ndarray, o: dict) -> tuple[list, list]:
    """Correlation length (voxels, per axis) and the noise's smoothing ``sigma``."""
    if o["correlation_length"] in (None, "auto"):
        length = correlation_length(p)
    else:
        cl = o["correlation_length"]
        length = [float(v) for v in (cl if isinstance(cl, (list, tuple)) else [cl] * 3)]
    return length, [float(o["correlation_scale"]) * v / 2 for v in length]


def add_intervals(rep: dict, tables: dict, probs: np.ndarray, measure: Callable[[np.ndarray, list, bool], tuple],
                  options: dict, steps=SLOW_STEPS) -> None:
    """Draw segmentations from ``probs``, measure them, and add the intervals to ``rep`` and ``tables``.

    Parameters
    ----------
    rep, tables : dict
        The point estimate's report and tables (changed in place: rows and dicts of named quantities
        get ``<name>_low`` / ``<name>_high``, ``rep["intervals"]`` the method and every interval by
        path, ``tables["intervals"]`` the same as rows).
    probs : (K, Z, Y, X) ndarray
    measure : callable
        ``measure(labels, steps, full) -> (rep, tables)`` of one sample (``full``: one of the first
        ``n_samples_slow`` draws, measured with every step and meshes).
    options : dict
        ``configs/characterise.yaml`` ``intervals``.
    steps : sequence of str
        The steps of the report: the draws run those of them in :data:`SLOW_STEPS` / :data:`FAST_STEPS`.
    """
    o = options
    n, n_slow = int(o["n_samples"]), min(int(o["n_samples_slow"]), int(o["n_samples"]))
    p = np.asarray(probs, dtype=np.float32)
    logp = np.log(np.clip(p / np.clip(p.sum(0, keepdims=True), 1e-12, None), 1e-12, None))
    length, sigma = _sigma(p, o)
    rng = np.random.default_rng(int(o["seed"]))
    point = flatten(rep, tables)
    draws: dict[str, list] = {k: [] for k in point}
    slow = [s for s in SLOW_STEPS if s in steps]
    fast = [s for s in FAST_STEPS if s in steps]
    for i in range(n):
        lab = sample_labels(logp, sigma, rng)
        r, t = measure(lab, slow if i < n_slow else fast, i < n_slow)
        f = flatten(r, t)
        for k in draws:  # a fast sample's None is "not measured" (meshes), not "not finite"
            if k in f and (i < n_slow or f[k] is not None):
                draws[k].append(f[k])
        log.info("intervals: sample %d of %d measured (%s)", i + 1, n, "all steps" if i < n_slow else "fast steps")
    span = bool(o["span_point"])
    ivs = {k: {"value": point[k], **clip_to_range(k, interval(v, float(o["level"]), _finite(point[k]) if span
                                                             else None), v)}
           for k, v in draws.items() if v}
    annotate(rep, tables, ivs)  # the CSV / HTML tables carry the bounds next to each number
    tables["intervals"] = [{"number": k, **v} for k, v in ivs.items()]
    rep["intervals"] = {"method": "correlated Gumbel-max sampling of the probabilities",
                        "level": float(o["level"]), "span_point": span, "n_samples": n, "n_samples_slow": n_slow,
                        "steps_every_draw": fast, "steps_slow_draws": slow,
                        "correlation_length_voxels": [round(v, 3) for v in length],
                        "sigma_voxels": [round(v, 3) for v in sigma], "seed": int(o["seed"]), "values": ivs}


def draw_instances(instances: np.ndarray | None, lab: np.ndarray, sample: np.ndarray, active: int | None,
                   grow_voxels: float = 2.0) -> np.ndarray | None:
    """The particle ids of a drawn segmentation: ``instances`` (of the argmax ``lab``) follow the drawn active phase.

    Voxels where the draw and the argmax agree keep their id; an active voxel of the argmax that
    the draw makes another class loses it; a voxel the draw makes active takes the id of the
    nearest particle within ``grow_voxels`` (``skimage.segmentation.expand_labels``), else none.
    The same draw as the argmax gives the same instances.
    """
    if instances is None or not active:
        return instances
    from skimage.segmentation import expand_labels

    act, was = sample == active, lab == active
    out = np.where(was & ~act, 0, instances)
    new = act & ~was
    if new.any():
        out[new] = expand_labels(out, distance=grow_voxels)[new]
    return out


#: options of the report that the draws do not take (the draws write nothing and log little)
_NOT_FOR_DRAWS = ("steps", "plots", "html", "overwrite", "progress", "source", "intervals", "values")


def characterise_intervals(rep: dict, tables: dict, lab: np.ndarray, probabilities: np.ndarray, spacing, classes,
                           opts: dict, instances: np.ndarray | None = None, roles: dict | None = None) -> None:
    """Intervals of every number of ``rep`` from segmentations drawn from ``probabilities``.

    Parameters
    ----------
    rep, tables : dict
        The argmax's report and tables (changed in place, :func:`add_intervals`).
    lab : (Z, Y, X) ndarray
        The measured labels, ids ``1..K``.
    probabilities : (K, Z, Y, X) ndarray
    spacing : (3,) float
        Voxel size in nm.
    classes : list of str
    opts : dict
        The merged options of :func:`seglearn.characterise.characterise`.
    instances : (Z, Y, X) int ndarray, optional
        Particle ids of the argmax; each draw's follow its active phase (:func:`draw_instances`).
    roles : dict, optional
        ``{"active": id, ...}`` (:func:`seglearn.characterise.labels.find_roles`).
    """
    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(classes),) + lab.shape:
        raise InputError(f"{opts['source'] or 'probabilities'}: probabilities of shape {probabilities.shape}, expected "
                         f"(K={len(classes)}, Z, Y, X) = {(len(classes),) + lab.shape}")
    sub = {k: v for k, v in opts.items() if k not in _NOT_FOR_DRAWS}
    sub |= {"values": list(range(1, len(classes) + 1)), "progress": False, "plots": False, "html": False}
    active = (roles or {}).get("active")

    def measure(sample, steps, full):
        t: dict = {}
        mesh = bool(full and opts["interfaces"]["mesh"])  # the fast draws count faces only
        inst = draw_instances(instances, lab, sample, active) if "particles" in steps else None
        r = characterise(sample, spacing, classes, instances=inst, steps=steps, tables_out=t,
                         **(sub | {"interfaces": {**opts["interfaces"], "mesh": mesh}}))
        return r, t

    level = logging.getLogger("seglearn").level
    logging.getLogger("seglearn").setLevel(max(level, logging.WARNING))  # the samples' step logs are noise
    try:
        add_intervals(rep, tables, probabilities, measure, opts["intervals"], steps=opts["steps"])
    finally:
        logging.getLogger("seglearn").setLevel(level)
