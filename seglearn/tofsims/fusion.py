"""Fusing several ion maps into one phase map: per-pixel argmax (the seed's method) or NMF.

Inputs are ion stacks ``(N, Z, Y, X)``; outputs are label maps ``(Z, Y, X)`` uint8 with ids
``1..N`` in the order of the ions (0 = no ion above the noise threshold, or outside the
electrode).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError

log = logging.getLogger("seglearn")


def normalise(counts: np.ndarray, valid: np.ndarray | None = None, *, percentile: float = 99.5,
              smooth_sigma: float = 0.0, per_slice: bool = True) -> np.ndarray:
    """Scale each ion map to the 8-bit range 0..255.

    Parameters
    ----------
    counts : (N, Z, Y, X) ndarray
    valid : (Z, Y, X) bool ndarray, optional
        Only these pixels set the scale.
    percentile : float
        Each ion is divided by this percentile of its valid pixels (100 = its maximum), then
        clipped, so one hot pixel does not darken the whole map.
    smooth_sigma : float
        Gaussian smoothing in pixels (within each scan) before scaling; 0 = none. Helps at low
        counts, where Poisson noise dominates.
    per_slice : bool
        Scale each depth scan on its own (sputter yields drift with depth) or the stack as a whole.

    Returns
    -------
    (N, Z, Y, X) float64 ndarray in [0, 255]
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 4:
        raise InputError(f"expected an (N, Z, Y, X) ion stack, got shape {counts.shape}")
    if smooth_sigma > 0:
        counts = ndi.gaussian_filter(counts, sigma=(0, 0, smooth_sigma, smooth_sigma))
    if valid is None:
        valid = np.ones(counts.shape[1:], dtype=bool)
    out = np.zeros_like(counts)
    groups = [slice(z, z + 1) for z in range(counts.shape[1])] if per_slice else [slice(None)]
    for i in range(counts.shape[0]):
        for g in groups:
            vals = counts[i, g][valid[g]]
            ref = float(np.percentile(vals, percentile)) if vals.size else 0.0
            if ref <= 0:
                ref = float(vals.max()) if vals.size and vals.max() > 0 else 1.0
            out[i, g] = np.clip(counts[i, g] / ref * 255.0, 0.0, 255.0)
    return out


def _weights(n: int, advantage: float, am_index: int | None) -> np.ndarray:
    w = np.ones(n)
    if am_index is not None:
        if not 0 <= am_index < n:
            raise InputError(f"active-material index {am_index} is not one of the {n} ions")
        if advantage <= 0:
            raise InputError(f"advantage factor must be > 0, got {advantage}")
        w[am_index] = advantage
    return w


def fuse_argmax(norm: np.ndarray, valid: np.ndarray | None = None, *, noise_threshold: float = 0.0,
                advantage: float = 1.0, am_index: int | None = 0, boost: float = 0.0) -> np.ndarray:
    """Assign every pixel to the ion with the highest normalised intensity.

    Parameters
    ----------
    norm : (N, Z, Y, X) ndarray
        8-bit-scaled ion maps (see :func:`normalise`).
    valid : (Z, Y, X) bool ndarray, optional
    noise_threshold : float
        Values below this (0..255) count as noise and are set to 0 before the argmax; a pixel
        with no ion left is 0 (unassigned).
    advantage : float
        Factor on the active material's map (ion ``am_index``) after thresholding: > 1 favours
        it, < 1 disfavours it.
    boost : float
        Optional brightening: maps are multiplied by ``1 + boost`` and clipped at 255 before
        thresholding (0 = off, as in the seed).

    Returns
    -------
    (Z, Y, X) uint8 ndarray
        Ids ``1..N``; 0 = unassigned or invalid.
    """
    x = np.asarray(norm, dtype=np.float64)
    if boost:
        x = np.clip(x * (1.0 + boost), 0.0, 255.0)
    x = np.where(x >= noise_threshold, x, 0.0)
    x = x * _weights(x.shape[0], advantage, am_index)[:, None, None, None]
    labels = (np.argmax(x, axis=0) + 1).astype(np.uint8)
    labels[x.max(axis=0) <= 0] = 0
    if valid is not None:
        labels[~valid] = 0
    return labels


def binary_maps(norm: np.ndarray, thresholds: float | Sequence[float]) -> np.ndarray:
    """One binary map per ion: normalised intensity above that ion's threshold.

    Returns
    -------
    (N, Z, Y, X) bool ndarray
    """
    n = norm.shape[0]
    th = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n,)) if np.ndim(thresholds) == 0 \
        else np.asarray(thresholds, dtype=np.float64)
    if th.shape != (n,):
        raise InputError(f"binary thresholds {list(np.atleast_1d(thresholds))} must be one value or one per ion ({n})")
    return norm > th[:, None, None, None]


def fuse_nmf(norm: np.ndarray, valid: np.ndarray | None = None, *, n_components: int | None = None,
             noise_threshold: float = 0.0, advantage: float = 1.0, am_index: int | None = 0,
             max_pixels: int = 50_000, seed: int = 0, max_iter: int = 500,
             tol: float = 1e-4) -> tuple[np.ndarray, dict]:
    """Phase map from a non-negative matrix factorisation of the ion stack.

    The pixels x ions matrix ``V`` is factorised as ``W H`` (scikit-learn NMF, NNDSVDa start);
    each component is matched one-to-one to the ion it holds the largest share of (Hungarian
    assignment), and each pixel takes the component that contributes most to its
    reconstruction. Unlike the argmax, an ion that appears in several phases (a shared
    fragment, a matrix effect) is split between them instead of being read as one phase.

    Parameters
    ----------
    norm : (N, Z, Y, X) ndarray
        8-bit-scaled ion maps.
    n_components : int, optional
        Default: the number of ions, so ids keep the meaning ``1..N`` of :func:`fuse_argmax`.
    noise_threshold, advantage, am_index
        As in :func:`fuse_argmax`; the threshold applies to the largest reconstructed value.
    max_pixels : int
        The factorisation is fitted on at most this many random valid pixels, then applied to all.

    Returns
    -------
    labels : (Z, Y, X) uint8 ndarray
        Ids ``1..N`` (the matched ion), 0 = unassigned or invalid.
    info : dict
        ``components`` (K, N) loadings ``H`` and ``ion_of_component``.
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.decomposition import NMF

    n = norm.shape[0]
    k = int(n_components or n)
    if not 1 <= k <= n:
        raise InputError(f"NMF n_components must be between 1 and the number of ions ({n}), got {k}")
    v = norm.reshape(n, -1).T / 255.0
    mask = np.ones(v.shape[0], dtype=bool) if valid is None else valid.ravel()
    idx = np.nonzero(mask)[0]
    if idx.size == 0:
        raise InputError("no valid pixels to factorise")
    rng = np.random.default_rng(seed)
    fit_idx = rng.choice(idx, size=max_pixels, replace=False) if idx.size > max_pixels else idx
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter, tol=tol)
    model.fit(v[fit_idx])
    h = model.components_  # (K, N)
    share = h / np.maximum(h.sum(axis=0, keepdims=True), 1e-12)  # each ion's share in each component
    comp, ion = linear_sum_assignment(-share)
    ion_of = np.full(k, -1)
    ion_of[comp] = ion
    w = model.transform(v)  # (P, K)
    contrib = w * h.sum(axis=1)[None, :] * 255.0 / n
    recon_max = (w @ h).max(axis=1) * 255.0
    weights = _weights(n, advantage, am_index)
    contrib = contrib * weights[ion_of][None, :]
    best = np.argmax(contrib, axis=1)
    labels = (ion_of[best] + 1).astype(np.uint8)
    labels[(recon_max < noise_threshold) | (contrib.max(axis=1) <= 0)] = 0
    labels[~mask] = 0
    return labels.reshape(norm.shape[1:]), {"components": h.tolist(), "ion_of_component": ion_of.tolist(),
                                            "reconstruction_err": float(model.reconstruction_err_)}
