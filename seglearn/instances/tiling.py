"""Tiled 2D prediction: images of any size through the network in blocks with context.

Each block of ``tile`` pixels is predicted with ``context`` pixels of image around it (mirrored at
the image border) and only its core is kept, so the result does not depend on the tiling as long as
the context covers the network's receptive field. The tiling is the package's one tiler,
:func:`seglearn.tiling.sliding_window`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from seglearn.precision import autocast, to_channels_last
from seglearn.tiling import sliding_window


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def _net_fn(net, device, batch_size: int, bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The network as :func:`seglearn.tiling.sliding_window` calls it: one tile ``(1, C, N, h, w)`` of ``N``
    images -> ``(1, 1 + R, N, h / gy, w / gx)`` (sigmoid probability, then the ``R`` distances), run
    ``batch_size`` images at a time."""
    import torch

    def fn(tiles: np.ndarray) -> np.ndarray:
        images = tiles[0].transpose(1, 0, 2, 3)  # (N, C, h, w)
        outs = []
        with torch.inference_mode(), autocast(device, bf16):
            for i0 in range(0, images.shape[0], batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[i0:i0 + batch_size])).to(device)
                p, d = net(to_channels_last(x) if bf16 else x)
                outs.append(np.concatenate([torch.sigmoid(p.float()).cpu().numpy(), d.float().cpu().numpy()], axis=1))
        return np.concatenate(outs).transpose(1, 0, 2, 3)[None]

    return fn


def predict_tiles(net, images: np.ndarray, *, tile: Sequence[int] = (256, 256), context: int = 64,
                  batch_size: int = 8, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probability and distances of a batch of 2D images.

    Each block of ``tile`` pixels is predicted with ``context`` pixels of image around it (mirrored at
    the image border) and only its core is kept: :func:`seglearn.tiling.sliding_window` with flat
    weights and a border of ``context`` on tiles of ``tile + 2 context`` overlapping by ``2 context``.

    Parameters
    ----------
    net : StarDistNet
        In eval mode on the CPU or a GPU (inputs follow its parameters' device).
    images : (N, C, H, W) float32 ndarray
        Normalised images.
    tile : (ty, tx)
        Core block size (rounded up to the network's divisor); images no larger than a tile plus
        its context are predicted whole.
    context : int
        Pixels of context on each side of a block (rounded up to the divisor).
    bf16 : bool
        Run the network under bfloat16 autocast, channels-last (:mod:`seglearn.precision`);
        the results are float32 either way.

    Returns
    -------
    prob : (N, ceil(H/gy), ceil(W/gx)) float32
        Object probability (sigmoid applied).
    dist : (N, R, ceil(H/gy), ceil(W/gx)) float32
    """
    images = np.asarray(images, dtype=np.float32)
    n, c, h, w = images.shape
    gy, gx = net.grid
    dy, dx = net.divisor
    device = next(net.parameters()).device
    ty, tx = _ceil_to(max(int(tile[0]), dy), dy), _ceil_to(max(int(tile[1]), dx), dx)
    cy, cx = _ceil_to(int(context), dy), _ceil_to(int(context), dx)
    if h <= ty + 2 * cy and w <= tx + 2 * cx:
        ty, tx, cy, cx = _ceil_to(h, dy), _ceil_to(w, dx), 0, 0
    ph, pw = -(-h // ty) * ty, -(-w // tx) * tx
    # mirror-pad: context in front, context + rounding behind
    pad = ((0, 0), (0, 0), (cy, cy + ph - h), (cx, cx + pw - w))
    mode = "reflect" if min(h, w) > max(cy, cx, ph - h + cy, pw - w + cx) else "symmetric"
    padded = np.pad(images, pad, mode=mode).transpose(1, 0, 2, 3)  # (C, N, H', W'): the images along z
    if bf16:
        net = to_channels_last(net)  # in place; the weights' values do not change
    out = sliding_window(padded, _net_fn(net, device, int(batch_size), bf16), n_classes=1 + int(net.n_rays),
                         tile=(n, ty + 2 * cy, tx + 2 * cx), overlap=(0, 2 * cy, 2 * cx), border=(0, cy, cx),
                         align=(1, dy, dx), grid=(1, gy, gx), batch_size=1, gaussian_z=False, gaussian=False)
    hg, wg = -(-h // gy), -(-w // gx)
    core = out[:, :, cy // gy: cy // gy + hg, cx // gx: cx // gx + wg]
    return np.ascontiguousarray(core[0]), np.ascontiguousarray(core[1:].transpose(1, 0, 2, 3))
