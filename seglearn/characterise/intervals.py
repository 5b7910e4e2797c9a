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
more plausible segmentation). Cheap numbers (fractions, face-counted interfaces, CBD coverage) use
``intervals.n_samples`` draws, the costly ones (meshes, size distributions, tortuosity, geodesic
tortuosity) the first ``intervals.n_samples_slow``. Options: ``configs/characterise.yaml``
``intervals``. docs/characterise.md, "Uncertainty intervals".
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np

log = logging.getLogger("seglearn")

#: steps whose numbers get intervals and the cheap subset run on every sample
SLOW_STEPS = ("fractions", "depth", "interfaces", "sizes", "tortuosity", "geodesic")
FAST_STEPS = ("fractions", "depth", "interfaces")
#: key columns that identify a row of a table across samples; other numeric columns get intervals
KEYS = {"fractions": ("phase",), "fractions_by_depth": ("region",), "interfaces": ("phase_a", "phase_b"),
        "surface": ("phase",), "size_distribution": ("phase", "radius_um"), "tortuosity": ("phase", "direction")}
SKIP = {"id", "value", "region", "start_um", "stop_um", "radius_um", "diameter_um", "iterations", "seconds",
        "flux_spread", "percolating", "converged"}


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
    """Gaussian random field of unit variance, Gaussian-correlated with ``sigma`` voxels per axis (wrapped)."""
    from scipy import ndimage as ndi

    g = rng.standard_normal(shape, dtype=np.float32)
    if not any(s > 0 for s in sigma):
        return g
    g = ndi.gaussian_filter(g, sigma, mode="wrap", truncate=3.0)
    var = 1.0
    for s in sigma:  # exact variance of filtered white noise: the product of the 1D kernels' sums of squares
        if s > 0:
            r = int(3.0 * s + 0.5)
            w = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
            w /= w.sum()
            var *= float((w * w).sum())
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

def _num(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def _row_key(table: str, row: dict) -> str:
    return "/".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in KEYS[table])


def flatten(rep: dict, tables: dict) -> dict[str, float]:
    """Every number that gets an interval, by path (``fractions/pore/fraction``, ``tortuosity/pore/z/tau``).

    Not finite values (a phase that does not percolate, no constrictivity) are None.
    """
    flat: dict[str, Any] = {}
    for t in KEYS:
        for row in tables.get(t) or []:
            key = _row_key(t, row)
            for col, v in row.items():
                if col not in SKIP and col not in KEYS[t] and (v is None or _num(v)):
                    flat[f"{t}/{key}/{col}"] = v
    for k, v in (rep.get("cbd_coverage_of_am") or {}).items():
        flat[f"cbd_coverage_of_am/{k}"] = v
    for name, p in ((rep.get("size_distribution") or {}).get("phases") or {}).items():
        for k, v in p.items():
            if not isinstance(v, list):
                flat[f"size_distribution/{name}/{k}"] = v
    for r in (rep.get("geodesic_tortuosity") or {}).get("results") or []:
        for k in ("mean", "median", "std"):
            flat[f"geodesic_tortuosity/{r['d_um']:.4g}/{k}"] = r[k]
        for p, v in (r.get("percentiles") or {}).items():
            flat[f"geodesic_tortuosity/{r['d_um']:.4g}/p{p}"] = v
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in flat.items()}


def interval(values, level: float = 0.95) -> dict:
    """Prediction interval of one more draw from ``values`` (None entries: not finite, counted apart).

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
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


# ------------------------------------------------------------------------------------------ driver

def add_intervals(rep: dict, tables: dict, probs: np.ndarray, measure: Callable[[np.ndarray, list], tuple],
                  options: dict) -> None:
    """Draw segmentations from ``probs``, measure them, and add the intervals to ``rep`` and ``tables``.

    Parameters
    ----------
    rep, tables : dict
        The point estimate's report and tables (changed in place: rows get ``<col>_low`` /
        ``<col>_high``, ``rep["intervals"]`` the method and every interval by path).
    probs : (K, Z, Y, X) ndarray
    measure : callable
        ``measure(labels, steps) -> (rep, tables)`` of one sample.
    options : dict
        ``configs/characterise.yaml`` ``intervals``.
    """
    o = options
    n, n_slow = int(o["n_samples"]), min(int(o["n_samples_slow"]), int(o["n_samples"]))
    p = np.asarray(probs, dtype=np.float32)
    logp = np.log(np.clip(p / np.clip(p.sum(0, keepdims=True), 1e-12, None), 1e-12, None))
    if o["correlation_length"] in (None, "auto"):
        length = correlation_length(p)
    else:
        cl = o["correlation_length"]
        length = [float(v) for v in (cl if isinstance(cl, (list, tuple)) else [cl] * 3)]
    sigma = [float(o["correlation_scale"]) * v / 2 for v in length]
    rng = np.random.default_rng(int(o["seed"]))
    point = flatten(rep, tables)
    draws: dict[str, list] = {k: [] for k in point}
    for i in range(n):
        lab = sample_labels(logp, sigma, rng)
        steps = list(SLOW_STEPS if i < n_slow else FAST_STEPS)
        r, t = measure(lab, steps)
        f = flatten(r, t)
        for k in draws:  # a fast sample's None is "not measured" (meshes), not "not finite"
            if k in f and (i < n_slow or f[k] is not None):
                draws[k].append(f[k])
        log.info("intervals: sample %d of %d measured (%s)", i + 1, n, "all steps" if i < n_slow else "fast steps")
    ivs = {k: {"value": point[k], **interval(v, float(o["level"]))} for k, v in draws.items() if v}
    for t in KEYS:  # the CSV / HTML tables carry the bounds next to each number
        for row in tables.get(t) or []:
            key = _row_key(t, row)
            for col in list(row):
                iv = ivs.get(f"{t}/{key}/{col}")
                if iv is not None:
                    row[f"{col}_low"], row[f"{col}_high"] = iv["low"], iv["high"]
    tables["intervals"] = [{"number": k, **v} for k, v in ivs.items()]
    rep["intervals"] = {"method": "correlated Gumbel-max sampling of the probabilities",
                        "level": float(o["level"]), "n_samples": n, "n_samples_slow": n_slow,
                        "correlation_length_voxels": [round(v, 3) for v in length],
                        "sigma_voxels": [round(v, 3) for v in sigma], "seed": int(o["seed"]), "values": ivs}
