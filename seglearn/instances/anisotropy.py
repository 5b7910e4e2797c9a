"""Anisotropic voxels (issue 29): resample a volume to isotropic voxels for the 2D network and back.

With z voxels ``k`` times longer than x/y, a particle is ``k`` times flatter in the xz and yz
slices than in the xy ones, and its z extent may be only a few cells of the network's grid. The
particle model can instead see the volume resampled along z and y to the x voxel size (linear
interpolation of the grey values, nearest neighbour of the labels), so that all three views show
round particles of the same size; its 3D result is brought back to the original grid by taking,
for every original voxel, the resampled voxel at its centre.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi


def iso_factors(voxel_size_nm: Sequence[float] | None, *, tolerance: float = 0.1) -> tuple[float, float, float]:
    """Zoom factors ``(z, y, x)`` that make the voxels as long as the x voxel; ``(1, 1, 1)`` when the
    voxel size is unknown or already isotropic within ``tolerance`` (relative)."""
    if voxel_size_nm is None:
        return (1.0, 1.0, 1.0)
    vz, vy, vx = (float(v) for v in voxel_size_nm)
    f = [v / vx for v in (vz, vy, vx)]
    return tuple(1.0 if abs(x - 1.0) <= tolerance else x for x in f)


def to_isotropic(vol: np.ndarray, factors: Sequence[float], *, labels: bool = False) -> np.ndarray:
    """Resample the last three axes by ``factors`` (new size ``round(n * f)``).

    Parameters
    ----------
    vol : (..., Z, Y, X) ndarray
    factors : (fz, fy, fx)
    labels : bool
        Nearest neighbour (ids kept) instead of linear interpolation.

    Returns
    -------
    (..., Z', Y', X') ndarray, same dtype
    """
    if all(f == 1.0 for f in factors):
        return vol
    lead = vol.ndim - 3
    shape = [int(round(n * f)) for n, f in zip(vol.shape[lead:], factors)]
    if labels:
        idx = [np.minimum(((np.arange(m) + 0.5) / f).astype(int), n - 1)
               for m, n, f in zip(shape, vol.shape[lead:], factors)]
        return vol[(Ellipsis, *np.ix_(*idx))]
    zoom = [1.0] * lead + [m / n for m, n in zip(shape, vol.shape[lead:])]
    return ndi.zoom(vol, zoom, order=1, mode="nearest", grid_mode=True).astype(vol.dtype, copy=False)


def from_isotropic(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Labels on the resampled grid back on the original ``(Z, Y, X)`` grid: the resampled voxel at
    every original voxel's centre."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    idx = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1) for n, m in zip(shape, labels.shape)]
    return labels[np.ix_(*idx)]
