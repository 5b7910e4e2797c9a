"""Sliding-window inference with overlapping tiles and Gaussian blending: the package's one tiler.

Any callable mapping a batch of input tiles to per-voxel outputs goes through :func:`sliding_window`:
the U-Net's class probabilities (:mod:`seglearn.segment.tiling`) and the particle model's probability and
star distances on its coarser grid (:mod:`seglearn.instances.tiling`). Tiles start on multiples of the
network's pooling alignment, and each tile's outputs within ``border`` voxels of an edge shared with a
neighbouring tile get zero weight. So when ``border`` covers the network's receptive field, tiled and
untiled predictions agree to float precision; with a smaller border the Gaussian weights still hide the
seams.
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


def _geometry(shape: Sequence[int], tile: Sequence[int], overlap: Sequence[int], align: Sequence[int],
              border: Sequence[int] | None) -> tuple[tuple[int, ...], ...]:
    """``(padded, tile, overlap, border)``: the volume ``shape`` padded to ``align``, the tile rounded up to
    ``align`` and capped at it, the overlap below the tile and the border (default ``overlap // 4``, at most
    ``overlap // 2``)."""
    padded = tuple(_round_up(s, a) for s, a in zip(shape, align))
    tile = tuple(min(_round_up(int(t), a), p) for t, a, p in zip(tile, align, padded))
    overlap = tuple(max(0, min(int(o), t - a)) for o, t, a in zip(overlap, tile, align))
    border = tuple(o // 4 for o in overlap) if border is None else tuple(min(int(b), o // 2) for b, o in zip(border, overlap))
    return padded, tile, overlap, border


def _tile_weights(tile, padded, out_tile, border, grid, sigma_scale: float,
                  gaussian: Sequence[bool]) -> Callable[[Sequence[int]], np.ndarray]:
    """The blending weight ``(tz / gz, ty / gy, tx / gx)`` of the tile starting at ``start``; it depends only on
    which of its edges are inner, so at most 27 kinds are computed (cached)."""
    weights: dict = {}

    def weight(start) -> np.ndarray:
        key = tuple((s0 > 0, s0 + t < n) for s0, t, n in zip(start, tile, padded))
        if key not in weights:
            ws = [_axis_weight(t, sigma_scale, b // gr, lo, hi, g)
                  for t, b, gr, (lo, hi), g in zip(out_tile, border, grid, key, gaussian)]
            weights[key] = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
        return weights[key]

    return weight


def _add_tile(out: np.ndarray, wsum: np.ndarray, p: np.ndarray, w: np.ndarray, start: Sequence[int],
              grid: Sequence[int], out_tile: Sequence[int]) -> None:
    """Add the weighted outputs ``p`` ``(K, ...)`` of the tile at ``start`` to ``out`` and its weight to ``wsum``."""
    sl = tuple(slice(s0 // g, s0 // g + t) for s0, g, t in zip(start, grid, out_tile))
    if p.flags.writeable and p.dtype == np.float32:
        p *= w  # in place: the network's fresh output
    else:
        p = p * w
    out[(slice(None), *sl)] += p
    wsum[sl] += w


def sliding_window(x: np.ndarray, net_fn: Callable[[np.ndarray], np.ndarray], *, n_classes: int,
                   tile: Sequence[int], overlap: Sequence[int], halo_z: int = 0, align: Sequence[int] = (1, 1, 1),
                   border: Sequence[int] | None = None, batch_size: int = 4, sigma_scale: float = 0.125,
                   gaussian_z: bool = True, gaussian: bool = True, grid: Sequence[int] = (1, 1, 1),
                   progress: bool = False) -> np.ndarray:
    """Any network's ``(K, ...)`` outputs over a volume, computed tile by tile and blended.

    Parameters
    ----------
    x : (C, Z + 2 halo_z, Y, X) float32 ndarray
        Normalised input; the ``halo_z`` slices on each side are context only (2.5D).
    net_fn : callable
        ``(B, C, tz + 2 halo_z, ty, tx)`` float32 array -> ``(B, K, tz / gz, ty / gy, tx / gx)`` outputs
        (class probabilities, or any per-voxel outputs: the particle model's probability and distances).
    n_classes : int
        K, the number of output channels.
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
    gaussian : bool
        Gaussian weights in-plane; False gives every voxel of a tile weight 1 (outside its ``border``), so
        with ``border = overlap / 2`` each output voxel comes from exactly one tile's core.
    grid : (gz, gy, gx) ints
        Subsampling of the outputs (a network predicting on a coarser grid); ``tile``, ``overlap``,
        ``border`` and ``align`` are in input voxels and multiples of it.

    Returns
    -------
    (K, ceil(Z / gz), ceil(Y / gy), ceil(X / gx)) float32 ndarray
        Blended outputs.
    """
    c, zh, yy, xx = x.shape
    z = zh - 2 * halo_z
    padded, tile, overlap, border = _geometry((z, yy, xx), tile, overlap, align, border)
    pad = [(0, 0), (0, padded[0] - z), (0, padded[1] - yy), (0, padded[2] - xx)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, mode="edge")
    starts = [_starts(p, t, o, a) for p, t, o, a in zip(padded, tile, overlap, align)]
    grid = tuple(int(g) for g in grid)
    out_tile = tuple(t // g for t, g in zip(tile, grid))
    out_shape = tuple(p // g for p, g in zip(padded, grid))
    out = np.zeros((n_classes, *out_shape), dtype=np.float32)
    wsum = np.zeros(out_shape, dtype=np.float32)
    tiles = list(itertools.product(*starts))
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False, disable=not progress) if tqdm else None
    weight = _tile_weights(tile, padded, out_tile, border, grid, sigma_scale, (gaussian_z, gaussian, gaussian))
    batch = None
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i:i + batch_size]
        if batch is None or len(chunk) != batch.shape[0]:
            batch = np.empty((len(chunk), c, tile[0] + 2 * halo_z, tile[1], tile[2]), dtype=x.dtype)
        for j, s in enumerate(chunk):
            batch[j] = x[:, s[0]:s[0] + tile[0] + 2 * halo_z, s[1]:s[1] + tile[1], s[2]:s[2] + tile[2]]
        for start, p in zip(chunk, net_fn(batch)):
            _add_tile(out, wsum, p, weight(start), start, grid, out_tile)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    np.maximum(wsum, 1e-12, out=wsum)
    out /= wsum
    return out[:, :-(-z // grid[0]), :-(-yy // grid[1]), :-(-xx // grid[2])]
