"""Robust percentile normalisation of image channels: the one normaliser of the package.

:func:`fit_normalisation` gives each channel's ``[lo, hi]`` grey values at two percentiles (on a fixed
random subset of voxels); :func:`apply_normalisation` maps ``lo`` to 0 and ``hi`` to 1. Each caller
passes its own settings, from its YAML: the U-Net (``configs/model/unet.yaml`` ``percentiles``, clipped
to ``[0, 1]``) and the particle model (``configs/model/stardist.yaml`` ``percentiles``, not clipped).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.errors import InputError


def fit_normalisation(x: np.ndarray, percentiles: Sequence[float], *, max_samples: int = 2_000_000,
                      seed: int = 0) -> list[list[float]]:
    """Robust ``[lo, hi]`` range per channel.

    Parameters
    ----------
    x : (C, ...) ndarray
        Any number of axes after the channel axis (a ``(C, Z, Y, X)`` volume).
    percentiles : (low, high) floats
        In percent.
    max_samples : int
        Voxels sampled per channel (a fixed random subset without repetition; deterministic for ``seed``).

    Returns
    -------
    list of [lo, hi] per channel
        ``hi = lo + 1`` for a channel without contrast between the percentiles.
    """
    c = x.shape[0]
    flat = x.reshape(c, -1)
    n = flat.shape[1]
    if n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        flat = flat[:, idx]
    out = []
    for ch in flat:
        lo, hi = np.percentile(ch.astype(np.float64), [percentiles[0], percentiles[1]])
        if hi - lo < 1e-6:
            hi = lo + 1.0
        out.append([float(lo), float(hi)])
    return out


def apply_normalisation(x: np.ndarray, ranges: Sequence[Sequence[float]], *, clip: bool = True,
                        copy: bool = False) -> np.ndarray:
    """Map each channel's ``[lo, hi]`` range to ``[0, 1]``, float32.

    Parameters
    ----------
    x : (C, ...) ndarray
    ranges : list of [lo, hi], one per channel
    clip : bool
        Clip the result to ``[0, 1]``.
    copy : bool
        Never write into ``x`` (by default float32 input is normalised in place).

    Returns
    -------
    (C, ...) float32 ndarray
    """
    x = np.array(x, dtype=np.float32) if copy else np.asarray(x, dtype=np.float32)
    if x.shape[0] != len(ranges):
        raise InputError(f"normalisation has {len(ranges)} channels, image has {x.shape[0]}")
    for i, (lo, hi) in enumerate(ranges):
        x[i] -= lo
        x[i] *= 1.0 / (hi - lo)
    if clip:
        np.clip(x, 0.0, 1.0, out=x)
    return x
