"""Separable Gaussian-derivative filters and closed-form eigenvalues of symmetric tensors.

All Gaussian derivatives of one scale share their 1D passes: the image is filtered along z with
orders 0, 1, 2 once, each of those along y, then along x, so a full Hessian plus gradient costs
19 one-dimensional passes instead of 10 full n-dimensional filters. The results equal
``scipy.ndimage.gaussian_filter(image, sigma, order=...)`` exactly (same kernels, same order).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

MODE = "reflect"
TRUNCATE = 4.0


def kernel_radius(sigma: float, truncate: float = TRUNCATE) -> int:
    """Half-width in voxels of scipy's Gaussian kernel for ``sigma`` (0 when no filtering)."""
    return int(truncate * float(sigma) + 0.5) if sigma > 0 else 0


def _pass(a: np.ndarray, sigma: float, axis: int, order: int, truncate: float) -> np.ndarray:
    if sigma <= 0:
        if order == 0:
            return a
        # no smoothing along this axis: plain central differences of the given order
        k = np.array([-0.5, 0.0, 0.5]) if order == 1 else np.array([1.0, -2.0, 1.0])
        return ndi.correlate1d(a, k, axis=axis, mode=MODE)
    return ndi.gaussian_filter1d(a, sigma, axis=axis, order=order, mode=MODE, truncate=truncate)


def gaussian_derivatives(image: np.ndarray, sigma: Sequence[float], orders: Iterable[tuple[int, ...]], *,
                         truncate: float = TRUNCATE, crop: tuple[int, int] | None = None) -> dict:
    """Gaussian derivatives of ``image`` for several derivative orders, sharing 1D passes.

    Parameters
    ----------
    image : (Z, Y, X) or (Y, X) float32 ndarray
    sigma : sequence of float
        One sigma per axis (voxels); 0 means no smoothing along that axis.
    orders : iterable of tuple of int
        Derivative order per axis, e.g. ``(0, 0, 0)`` (smoothing), ``(0, 1, 1)`` (d2/dydx).
    crop : (start, stop), optional
        After the first axis' pass keep only ``image[start:stop]`` along axis 0 (the halo of a
        chunk is used for the first pass only, then dropped).

    Returns
    -------
    dict of tuple to ndarray
        One array per requested order (cropped along axis 0 when ``crop`` is given).
    """
    orders = [tuple(int(o) for o in od) for od in orders]
    ndim = image.ndim
    cache: dict[tuple, np.ndarray] = {(): image}
    for od in orders:
        for depth in range(1, ndim + 1):
            key = od[:depth]
            if key in cache:
                continue
            prev = cache[key[:-1]]
            out = _pass(prev, float(sigma[depth - 1]), depth - 1, key[-1], truncate)
            if depth == 1 and crop is not None:
                out = out[crop[0]:crop[1]]
            cache[key] = out
    return {od: cache[od] for od in orders}


def eigvals_sym2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of ``[[a, b], [b, c]]`` per voxel, largest first (float32)."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    mean = 0.5 * (a + c)
    root = np.sqrt(0.25 * (a - c) ** 2 + b * b)
    return (mean + root).astype(np.float32), (mean - root).astype(np.float32)


def eigvals_sym3(a00, a01, a02, a11, a12, a22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues of a symmetric 3x3 tensor per voxel, largest first (closed form, float32).

    Uses the trigonometric solution of the characteristic cubic (Smith 1961), computed in float64.
    """
    a00, a01, a02, a11, a12, a22 = (np.asarray(v, dtype=np.float64) for v in (a00, a01, a02, a11, a12, a22))
    q = (a00 + a11 + a22) / 3.0
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p2 = (b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * (a01 * a01 + a02 * a02 + a12 * a12)) / 6.0
    p = np.sqrt(p2)
    det = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(p > 0, det / (2.0 * np.maximum(p, 1e-300) ** 3), 0.0)
    phi = np.arccos(np.clip(r, -1.0, 1.0)) / 3.0
    e1 = q + 2.0 * p * np.cos(phi)
    e3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    e2 = 3.0 * q - e1 - e3
    return e1.astype(np.float32), e2.astype(np.float32), e3.astype(np.float32)
