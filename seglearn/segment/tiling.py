"""The U-Net's tiled prediction of slabs and bands of a volume read on demand (2.5D slice context, 3D
block context), through the package's one tiler :func:`seglearn.tiling.sliding_window`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from seglearn.tiling import sliding_window


def predict_slab(net_fn: Callable[[np.ndarray], np.ndarray], read: Callable[[int, int], np.ndarray], n_slices: int,
                 z0: int, z1: int, *, halo_z: int = 0, context_z: int = 0, **kwargs) -> np.ndarray:
    """Probabilities of slices ``z0:z1`` of a volume read on demand.

    Parameters
    ----------
    net_fn : callable
        See :func:`sliding_window`.
    read : callable
        ``read(a, b)`` -> normalised ``(C, b - a, Y, X)`` float32 for ``0 <= a < b <= n_slices``.
    n_slices : int
        Z of the whole volume.
    halo_z : int
        Context slices the network needs on each side (2.5D); replicated at the volume ends.
    context_z : int
        Extra slices predicted on each side and dropped (3D), so that block seams see context.
    **kwargs
        Passed to :func:`sliding_window`.

    Returns
    -------
    (K, z1 - z0, Y, X) float32 ndarray
    """
    a, b = max(0, z0 - context_z), min(n_slices, z1 + context_z)
    lo, hi = max(0, a - halo_z), min(n_slices, b + halo_z)
    x = read(lo, hi)
    zi = np.clip(np.arange(a - halo_z, b + halo_z), 0, n_slices - 1) - lo
    if zi[0] != 0 or zi[-1] != x.shape[1] - 1 or len(zi) != x.shape[1]:
        x = x[:, zi]
    probs = sliding_window(x, net_fn, halo_z=halo_z, **kwargs)
    return probs[:, z0 - a: z1 - a]


#: rows of context above and below a band of rows (:func:`predict_banded`), dropped afterwards
BAND_MARGIN = 128


def predict_banded(net_fn: Callable[[np.ndarray], np.ndarray], read: Callable[[int, int], np.ndarray], n_slices: int,
                   z0: int, z1: int, *, height: int, band_rows: int | None = None, margin: int = BAND_MARGIN,
                   prepare_band: Callable[[int, int, int, int], np.ndarray] | None = None, **kwargs) -> np.ndarray:
    """:func:`predict_slab`, in bands of ``band_rows`` rows when given (bounded memory for huge slices).

    Each band is predicted with ``margin`` rows of context above and below (dropped afterwards), so
    the seams see what a whole slice would; only the tile layout differs, so probabilities agree with
    whole-slice prediction to the blending's precision, not bit for bit.

    Parameters
    ----------
    height : int
        Y of the slices.
    band_rows : int, optional
        None (or at least ``height``): whole slices, exactly :func:`predict_slab`.
    margin : int
        Rows of context each side of a band.
    prepare_band : callable
        ``prepare_band(a, b, y0, y1)`` -> normalised ``(C, b - a, y1 - y0, X)`` float32: rows
        ``y0:y1`` of slices ``a:b`` (only those rows go into the network's input).
    **kwargs
        Passed to :func:`predict_slab`.

    Returns
    -------
    (K, z1 - z0, Y, X) float32 ndarray
    """
    if not band_rows or int(band_rows) >= height:
        return predict_slab(net_fn, read, n_slices, z0, z1, **kwargs)
    out = None
    for y0 in range(0, height, int(band_rows)):
        y1 = min(height, y0 + int(band_rows))
        ya, yb = max(0, y0 - margin), min(height, y1 + margin)
        part = predict_slab(net_fn, lambda a, b, ya=ya, yb=yb: prepare_band(a, b, ya, yb), n_slices, z0, z1,
                            **kwargs)
        if out is None:
            out = np.empty((part.shape[0], part.shape[1], height, part.shape[3]), dtype=np.float32)
        out[:, :, y0:y1] = part[:, :, y0 - ya: y1 - ya]
    return out


def contiguous_runs(zs: Sequence[int]) -> list[tuple[int, int]]:
    """``[(z0, z1), ...]`` half-open runs of consecutive slice indices."""
    runs: list[tuple[int, int]] = []
    for z in sorted(int(v) for v in zs):
        if runs and runs[-1][1] == z:
            runs[-1] = (runs[-1][0], z + 1)
        else:
            runs.append((z, z + 1))
    return runs
