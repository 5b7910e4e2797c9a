"""Input channels of the segmenter: detectors plus derived differences, and their normalisation.

A derived channel is named ``"A-B"`` (detector A minus detector B, computed on the raw grey
values); ``derived="auto"`` adds ``SE2-InLens`` when both detectors are present, the most useful
input for finding carbon-binder in FIB-SEM (seed 002). Every channel is mapped to ``[0, 1]`` by
robust percentiles fitted on the training volume; the ranges go into the checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.errors import InputError

AUTO_DERIVED = (("SE2", "InLens"),)


def resolve_derived(detectors: Sequence[str], derived) -> list[str]:
    """Names of the derived channels for ``detectors``.

    Parameters
    ----------
    detectors : sequence of str
    derived : "auto", None, or sequence of "A-B" str
        ``"auto"``: ``SE2-InLens`` when both exist; None or ``[]``: none.

    Returns
    -------
    list of str
    """
    if derived is None or derived == "none":
        return []
    if isinstance(derived, str) and derived == "auto":
        return [f"{a}-{b}" for a, b in AUTO_DERIVED if a in detectors and b in detectors]
    if isinstance(derived, str):
        derived = [derived]
    out = []
    for name in derived:
        parts = str(name).split("-")
        if len(parts) != 2 or parts[0] not in detectors or parts[1] not in detectors:
            raise InputError(f"derived channel {name!r}: expected 'A-B' with A and B among the detectors {list(detectors)}")
        out.append(str(name))
    return out


def compute_channels(images: np.ndarray, detectors: Sequence[str], derived: Sequence[str],
                     smooth: Sequence[float] | None = None) -> np.ndarray:
    """Stack the detector images and the derived channels as float32.

    Parameters
    ----------
    images : (C, Z, Y, X) ndarray
        Raw detector images in the order of ``detectors``.
    detectors : sequence of str
    derived : sequence of "A-B" str
    smooth : sequence of float, optional
        In-plane Gaussian ``sigma`` (px) per detector, applied before the differences (0 = none;
        fine-tuning sets it for data noisier than the base model's phantoms,
        :mod:`seglearn.pretrain.noise`).

    Returns
    -------
    (C + len(derived), Z, Y, X) float32 ndarray
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != len(detectors):
        raise InputError(f"expected images of shape (C={len(detectors)}, Z, Y, X) for detectors {list(detectors)}, "
                         f"got shape {images.shape}")
    out = np.empty((len(detectors) + len(derived), *images.shape[1:]), dtype=np.float32)
    out[: len(detectors)] = images
    if smooth is not None and any(float(v) > 0 for v in smooth):
        from scipy import ndimage as ndi

        if len(smooth) != len(detectors):
            raise InputError(f"smoothing has {len(smooth)} sigma(s), expected one per detector {list(detectors)}")
        for i, sig in enumerate(smooth):
            if float(sig) > 0:
                out[i] = ndi.gaussian_filter(out[i], (0.0, float(sig), float(sig)))
    for i, name in enumerate(derived):
        a, b = name.split("-")
        np.subtract(out[detectors.index(a)], out[detectors.index(b)], out=out[len(detectors) + i])
    return out


def fit_normalisation(x: np.ndarray, percentiles: Sequence[float] = (0.1, 99.9), *, max_samples: int = 2_000_000,
                      seed: int = 0) -> list[list[float]]:
    """Robust ``[lo, hi]`` range per channel.

    Parameters
    ----------
    x : (C, Z, Y, X) ndarray
    percentiles : (low, high) floats
    max_samples : int
        Voxels sampled per channel (a fixed random subset; deterministic for ``seed``).

    Returns
    -------
    list of [lo, hi] per channel
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


def apply_normalisation(x: np.ndarray, ranges: Sequence[Sequence[float]]) -> np.ndarray:
    """Map each channel to ``[0, 1]`` by its ``[lo, hi]`` range (clipped), in place on float32 input.

    Parameters
    ----------
    x : (C, Z, Y, X) float32 ndarray
    ranges : list of [lo, hi]

    Returns
    -------
    (C, Z, Y, X) float32 ndarray
    """
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] != len(ranges):
        raise InputError(f"normalisation has {len(ranges)} channels, image has {x.shape[0]}")
    for i, (lo, hi) in enumerate(ranges):
        x[i] -= lo
        x[i] *= 1.0 / (hi - lo)
    np.clip(x, 0.0, 1.0, out=x)
    return x
