"""Run the 2D network over every slice of a volume in one view (xy, xz or yz)."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from seglearn.instances.postprocess import instances_2d
from seglearn.instances.targets import unview_stack, view_stack
from seglearn.instances.tiling import predict_tiles

log = logging.getLogger("seglearn")


def upsample_grid(a: np.ndarray, grid: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Linear interpolation of grid samples to full resolution.

    Parameters
    ----------
    a : (S, h, w) ndarray
        Values at full-resolution pixels ``(i * gy, j * gx)``.
    grid : (gy, gx)
    shape : (H, W)

    Returns
    -------
    (S, H, W) float32 ndarray
    """
    out = np.asarray(a, np.float32)
    for axis, (g, n) in enumerate(zip(grid, shape), start=1):
        pos = np.arange(n, dtype=np.float32) / g
        i0 = np.clip(np.floor(pos).astype(int), 0, out.shape[axis] - 1)
        i1 = np.clip(i0 + 1, 0, out.shape[axis] - 1)
        f = (pos - i0).clip(0, 1)
        bshape = [1] * out.ndim
        bshape[axis] = n
        f = f.reshape(bshape)
        out = np.take(out, i0, axis=axis) * (1 - f) + np.take(out, i1, axis=axis) * f
    return out.astype(np.float32, copy=False)


def predict_view(net, images: np.ndarray, view: str, *, prob_thresh: float, nms_thresh: float,
                 tile: Sequence[int] = (256, 256), context: int = 64, batch_size: int = 8,
                 want_labels: bool = True, progress: bool = True, bf16: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Probability map and per-slice 2D instances of a volume seen in one view.

    Parameters
    ----------
    net : StarDistNet
    images : (C, Z, Y, X) float32 ndarray
        Normalised images.
    view : {"xy", "xz", "yz"}
    prob_thresh, nms_thresh : float
        Post-processing thresholds (from the checkpoint).
    want_labels : bool
        Also run NMS and draw the polygons of every slice.
    bf16 : bool
        Network under bfloat16 autocast (:func:`~seglearn.instances.tiling.predict_tiles`).

    Returns
    -------
    prob : (Z, Y, X) float32
        Object probability interpolated to full resolution.
    labels : (Z, Y, X) int32 or None
        2D instance ids per slice of this view (ids restart in every slice).
    """
    from tqdm.auto import tqdm

    stack = view_stack(images, view)  # (C, S, H, W)
    c, s, h, w = stack.shape
    grid = net.grid
    prob = np.zeros((s, h, w), np.float32)
    labels = np.zeros((s, h, w), np.int32) if want_labels else None
    hp, wp = -(-h // grid[0]) * grid[0], -(-w // grid[1]) * grid[1]
    for i0 in tqdm(range(0, s, batch_size), desc=f"particles {view}", disable=not progress, leave=False):
        batch = np.ascontiguousarray(np.moveaxis(stack[:, i0:i0 + batch_size], 0, 1))
        p, d = predict_tiles(net, batch, tile=tile, context=context, batch_size=batch_size, bf16=bf16)
        prob[i0:i0 + len(p)] = upsample_grid(p, grid, (h, w))
        if want_labels:
            for j in range(len(p)):
                lbl = instances_2d(p[j], d[j], (hp, wp), grid=grid, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
                labels[i0 + j] = lbl[:h, :w]
    return unview_stack(prob, view), (unview_stack(labels, view) if want_labels else None)
