"""Sliding-window inference with overlapping tiles and Gaussian blending.

Tiles start on multiples of the network's pooling alignment, and each tile's outputs within
``border`` voxels of an edge shared with a neighbouring tile get zero weight. So when ``border``
covers the network's receptive field, tiled and untiled predictions agree to float precision;
with a smaller border the Gaussian weights still hide the seams.
"""

from __future__ import annotations

import itertools
from typing import Callable, Sequence

import numpy as np

try:  # tqdm is a dependency, but keep the module importable without it
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None


def _starts(size: int, tile: int, overlap: int, align: int) -> list[int]:
    """Tile starts on multiples of ``align`` covering ``[0, size)``; ``size`` and ``tile`` are multiples."""
    if tile >= size:
        return [0]
    step = max(align, ((tile - overlap) // align) * align)
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return sorted(set(starts))


def _axis_weight(n: int, sigma_scale: float, border: int, lo_inner: bool, hi_inner: bool, gaussian: bool) -> np.ndarray:
    if gaussian and n > 1:
        c = (n - 1) / 2.0
        sigma = max(n * sigma_scale, 1e-3)
        w = np.exp(-0.5 * ((np.arange(n) - c) / sigma) ** 2)
        w = np.maximum(w / w.max(), 1e-4)
    else:
        w = np.ones(n)
    if border > 0:
        if lo_inner:
            w[:border] = 0.0
        if hi_inner:
            w[n - border:] = 0.0
    return w.astype(np.float32)


def _round_up(v: int, a: int) -> int:
    return int(-(-v // a) * a)


def sliding_window(x: np.ndarray, net_fn: Callable[[np.ndarray], np.ndarray], *, n_classes: int,
                   tile: Sequence[int], overlap: Sequence[int], halo_z: int = 0, align: Sequence[int] = (1, 1, 1),
                   border: Sequence[int] | None = None, batch_size: int = 4, sigma_scale: float = 0.125,
                   gaussian_z: bool = True, progress: bool = False) -> np.ndarray:
    """Class probabilities of a volume, computed tile by tile.

    Parameters
    ----------
    x : (C, Z + 2 halo_z, Y, X) float32 ndarray
        Normalised input; the ``halo_z`` slices on each side are context only (2.5D).
    net_fn : callable
        ``(B, C, tz + 2 halo_z, ty, tx)`` float32 array -> ``(B, K, tz, ty, tx)`` probabilities.
    n_classes : int
        K.
    tile : (tz, ty, tx) ints
        Output tile size; rounded up to ``align`` and capped at the (aligned) volume.
    overlap : (oz, oy, ox) ints
        Overlap between neighbouring tiles.
    align : (az, ay, ax) ints
        Pooling alignment of the network (:attr:`SegNet.align`).
    border : (bz, by, bx) ints, optional
        Zero-weight margin at inner tile edges; default ``overlap // 4``; at most ``overlap // 2``.
    gaussian_z : bool
        Blend along z too (3D); 2D/2.5D tiles are independent per slice.

    Returns
    -------
    (K, Z, Y, X) float32 ndarray
        Blended probabilities.
    """
    c, zh, yy, xx = x.shape
    z = zh - 2 * halo_z
    shape = (z, yy, xx)
    padded = tuple(_round_up(s, a) for s, a in zip(shape, align))
    tile = tuple(min(_round_up(int(t), a), p) for t, a, p in zip(tile, align, padded))
    overlap = tuple(max(0, min(int(o), t - a)) for o, t, a in zip(overlap, tile, align))
    border = tuple(o // 4 for o in overlap) if border is None else tuple(min(int(b), o // 2) for b, o in zip(border, overlap))
    pad = [(0, 0), (0, padded[0] - z), (0, padded[1] - yy), (0, padded[2] - xx)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, mode="edge")
    starts = [_starts(p, t, o, a) for p, t, o, a in zip(padded, tile, overlap, align)]
    out = np.zeros((n_classes, *padded), dtype=np.float32)
    wsum = np.zeros(padded, dtype=np.float32)
    tiles = list(itertools.product(*starts))
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress) if tqdm else None
    weights: dict = {}  # a tile's weight depends only on which of its edges are inner: at most 27 kinds

    def weight(start) -> np.ndarray:
        key = tuple((s0 > 0, s0 + t < n) for s0, t, n in zip(start, tile, padded))
        if key not in weights:
            ws = [_axis_weight(t, sigma_scale, b, lo, hi, g)
                  for t, b, (lo, hi), g in zip(tile, border, key, (gaussian_z, True, True))]
            weights[key] = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
        return weights[key]

    batch = None
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i:i + batch_size]
        if batch is None or len(chunk) != batch.shape[0]:
            batch = np.empty((len(chunk), c, tile[0] + 2 * halo_z, tile[1], tile[2]), dtype=x.dtype)
        for j, s in enumerate(chunk):
            batch[j] = x[:, s[0]:s[0] + tile[0] + 2 * halo_z, s[1]:s[1] + tile[1], s[2]:s[2] + tile[2]]
        probs = net_fn(batch)
        for (sz, sy, sx), p in zip(chunk, probs):
            w = weight((sz, sy, sx))
            sl = (slice(sz, sz + tile[0]), slice(sy, sy + tile[1]), slice(sx, sx + tile[2]))
            if p.flags.writeable and p.dtype == np.float32:
                p *= w  # in place: the network's fresh output
            else:
                p = p * w
            out[(slice(None), *sl)] += p
            wsum[sl] += w
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    np.maximum(wsum, 1e-12, out=wsum)
    out /= wsum
    return out[:, :z, :yy, :xx]


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
