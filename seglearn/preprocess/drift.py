"""Drift between the slices of a stack: pairwise shifts (sub-pixel phase correlation, refined by
re-estimation, or TV-L1 optical flow), slice positions solved from them by weighted least squares, the
crop common to every shifted slice, and the residual against a known drift. Pure numpy functions used
by the ``register`` step (:mod:`seglearn.preprocess.registration`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import spsolve

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

METHODS = ("phase", "tvl1")


def _inner(image: np.ndarray, margin: float, roi=None) -> np.ndarray:
    """The rectangle ``roi = (y0, y1, x0, x1)`` of a slice, or its central part (a ``margin``
    share of each side left out) when ``roi`` is None."""
    if roi is not None:
        y0, y1, x0, x1 = roi
        return image[y0:y1, x0:x1]
    my, mx = int(image.shape[0] * margin), int(image.shape[1] * margin)
    return image[my: image.shape[0] - my or None, mx: image.shape[1] - mx or None]


def pair_shift(reference: np.ndarray, moving: np.ndarray, *, method: str = "phase", upsample: int = 20,
               margin: float = 0.1, roi=None, tvl1_downsample: int = 1, refine: int = 1,
               return_error: bool = False) -> np.ndarray | tuple[np.ndarray, float]:
    """Translation that registers ``moving`` onto ``reference``.

    Parameters
    ----------
    reference, moving : (Y, X) ndarray
        Two slices of the same shape.
    method : {"phase", "tvl1"}
        ``phase``: :func:`skimage.registration.phase_cross_correlation` with sub-pixel
        refinement (``upsample``: 1/upsample px precision, no spectral whitening, which suits
        noisy FIB-SEM slices better). ``tvl1``: :func:`skimage.registration.optical_flow_tvl1`
        dense flow reduced to its median (a rigid translation robust to local structure change).
    margin : float
        Share of each border left out of the estimate (edge effects, drifted-in borders).
    roi : (4,) sequence of int or None
        ``(y0, y1, x0, x1)``: estimate on this rectangle of both slices only (e.g. around a
        fiducial mark that does not change with depth) instead of the ``margin`` crop.
    tvl1_downsample : int
        Block-average both slices by this factor before TV-L1 (it is slow on large slices).
    refine : int
        Re-estimation passes: ``moving`` is shifted by the estimate (cubic spline) and the
        remaining shift is added. A single estimate between two crops of the same window is
        pulled towards 0 (the window does not move with the content; on phantoms it recovers
        only 75-85 % of the true step); one pass removes most of that bias
        (``docs/bench_preprocess.md``).
    return_error : bool
        Also return the phase-correlation error (``1 - normalised peak``, 0..1; 0 for TV-L1),
        used as a confidence weight.

    Returns
    -------
    (2,) ndarray
        ``(dy, dx)``: ``scipy.ndimage.shift(moving, shift)`` matches ``reference``.
    """
    moving = np.asarray(moving, dtype=np.float32)
    shift, error = _pair_shift_once(reference, moving, method=method, upsample=upsample, margin=margin, roi=roi,
                                    tvl1_downsample=tvl1_downsample)
    for _ in range(max(int(refine), 0)):
        if not np.any(shift):
            break
        moved = ndi.shift(moving, shift, order=3, mode="nearest")
        delta, error = _pair_shift_once(reference, moved, method=method, upsample=upsample, margin=margin, roi=roi,
                                        tvl1_downsample=tvl1_downsample)
        shift = shift + delta
        if np.abs(delta).max() < 0.5 / max(int(upsample), 1):
            break
    return (shift, error) if return_error else shift


def _pair_shift_once(reference, moving, *, method, upsample, margin, roi, tvl1_downsample) -> tuple[np.ndarray, float]:
    a = _inner(np.asarray(reference, dtype=np.float32), margin, roi)
    b = _inner(np.asarray(moving, dtype=np.float32), margin, roi)
    if method == "phase":
        from skimage.registration import phase_cross_correlation  # deferred: skimage.registration is slow to import

        if a.std() == 0 or b.std() == 0:
            return np.zeros(2), 1.0
        shift, error, _ = phase_cross_correlation(a, b, upsample_factor=upsample, normalization=None)
        return np.asarray(shift, dtype=np.float64), float(np.clip(error, 0.0, 1.0))
    if method == "tvl1":
        from skimage.registration import optical_flow_tvl1
        from skimage.transform import downscale_local_mean

        f = max(int(tvl1_downsample), 1)
        if f > 1:
            a, b = downscale_local_mean(a, (f, f)), downscale_local_mean(b, (f, f))
        v, u = optical_flow_tvl1(a, b)
        return -np.array([np.median(v), np.median(u)], dtype=np.float64) * f, 0.0
    raise InputError(f"registration method must be one of {METHODS}, got {method!r}")


def solve_positions(pairs: list[tuple[int, int, np.ndarray, float]], n: int, *, tolerance: float = 1.0) -> np.ndarray:
    """Per-slice shifts from pairwise estimates by weighted least squares.

    Parameters
    ----------
    pairs : list of (i, j, s, w)
        ``s`` (2,): shift registering slice j onto slice i (``shift[j] - shift[i] = s``), weight
        ``w`` >= 0. The consecutive pairs ``(i, i + 1)`` must all be present (they chain the
        stack); longer lags add redundant constraints.
    n : int
        Number of slices.
    tolerance : float
        A pair ``(i, j)`` with ``j - i > 1`` whose estimate differs from the sum of the
        consecutive estimates over the same span by more than ``tolerance * sqrt(j - i)`` px is
        dropped (a failed match between slices whose structure has changed too much).

    Returns
    -------
    (n, 2) ndarray
        Shifts with ``shift[0] = 0`` (re-anchor afterwards). With consecutive pairs only this
        is their cumulative sum.
    """
    if n <= 1:
        return np.zeros((max(n, 0), 2))
    chain = np.zeros((n, 2))
    have = np.zeros(n, bool)
    for i, j, s, _ in pairs:
        if j == i + 1:
            chain[j] = s
            have[j] = True
    if not have[1:].all():
        raise InputError(f"registration: consecutive-slice estimates missing for slices {np.flatnonzero(~have[1:]) + 1}")
    chain = np.cumsum(chain, axis=0)
    rows, cols, vals, rhs, dropped = [], [], [], [], 0
    for i, j, s, w in pairs:
        if w <= 0:
            if j - i > 1:
                continue
            w = 1e-6  # a consecutive pair keeps the stack connected, however unreliable
        if j - i > 1 and np.abs(np.asarray(s) - (chain[j] - chain[i])).max() > tolerance * math.sqrt(j - i):
            dropped += 1
            continue
        r = len(rhs)
        rows += [r, r]
        cols += [i, j]
        vals += [-math.sqrt(w), math.sqrt(w)]
        rhs.append(math.sqrt(w) * np.asarray(s, float))
    if all(j - i == 1 for i, j, _, _ in pairs):
        return chain  # consecutive pairs only: the least-squares solution is the chain itself
    # gauge: slice 0 at 0
    r = len(rhs)
    rows.append(r)
    cols.append(0)
    vals.append(1.0)
    rhs.append(np.zeros(2))
    a = sparse.csr_matrix((vals, (rows, cols)), shape=(r + 1, n))
    b = np.asarray(rhs)
    ata = (a.T @ a).tocsc()
    out = np.column_stack([spsolve(ata, a.T @ b[:, k]) for k in range(2)])
    if dropped:
        log.info("register: %d long-lag estimate(s) disagreed with the consecutive chain and were dropped", dropped)
    return out - out[0]


def common_crop(shifts: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box ``(y0, y1, x0, x1)`` valid in every slice after shifting slice z by ``shifts[z]``.

    A shifted slice holds original data in ``[s, N + s)`` along each axis; the box keeps only
    whole pixels inside that range for all slices.
    """
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    ny, nx = shape
    y0 = max(0, math.ceil(shifts[:, 0].max() - 1e-6))
    x0 = max(0, math.ceil(shifts[:, 1].max() - 1e-6))
    y1 = min(ny, math.floor(ny + shifts[:, 0].min() + 1e-6))
    x1 = min(nx, math.floor(nx + shifts[:, 1].min() + 1e-6))
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise InputError(f"registration: drift of up to {np.abs(shifts).max():.1f} px leaves no area common "
                         f"to all slices of {ny} x {nx}; check the stack or set crop: false")
    return y0, y1, x0, x1


def residual_rms(shifts: np.ndarray, true_drift: np.ndarray, *, anchor: int | None = None) -> dict:
    """Residual misalignment after registration against a known drift (phantom ``drift.csv``).

    The phantom moves slice z's content by ``true_drift[z]``; registration moves it back by
    ``shifts[z]``, so the residual position error is ``shifts + true_drift``.

    Returns
    -------
    dict
        ``absolute_rms``: RMS length of the residual with the mean (a common offset of the
        frame) removed; ``anchored_rms``: without removing it (the frame of the labels, when the
        anchor is the phantom's zero-drift slice); ``pairwise_rms``: RMS length of the residual
        between consecutive slices (what a viewer sees as jitter).
    """
    r = np.asarray(shifts, float) + np.asarray(true_drift, float)
    centred = r - r.mean(axis=0)
    d = np.diff(r, axis=0)
    return {"absolute_rms": float(np.sqrt((centred ** 2).sum(1).mean())),
            "anchored_rms": float(np.sqrt((r ** 2).sum(1).mean())),
            "pairwise_rms": float(np.sqrt((d ** 2).sum(1).mean())) if len(d) else 0.0}
