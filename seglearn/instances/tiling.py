"""Tiled 2D prediction: images of any size through the network in blocks with context.

Each block of ``tile`` pixels is predicted with ``context`` pixels of image around it (mirrored at
the image border) and only its core is kept, so the result does not depend on the tiling as long as
the context covers the network's receptive field.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def predict_tiles(net, images: np.ndarray, *, tile: Sequence[int] = (256, 256), context: int = 64,
                  batch_size: int = 8, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Probability and distances of a batch of 2D images.

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
    import torch

    from seglearn.precision import autocast, to_channels_last

    images = np.asarray(images, dtype=np.float32)
    n, c, h, w = images.shape
    gy, gx = net.grid
    dy, dx = net.divisor
    device = next(net.parameters()).device
    ty, tx = _ceil_to(max(int(tile[0]), dy), dy), _ceil_to(max(int(tile[1]), dx), dx)
    cy, cx = _ceil_to(int(context), dy), _ceil_to(int(context), dx)
    if h <= ty + 2 * cy and w <= tx + 2 * cx:
        ty, tx, cy, cx = _ceil_to(h, dy), _ceil_to(w, dx), 0, 0
    ny, nx = -(-h // ty), -(-w // tx)
    ph, pw = ny * ty, nx * tx
    # mirror-pad: context in front, context + rounding behind
    pad = ((0, 0), (0, 0), (cy, cy + ph - h), (cx, cx + pw - w))
    mode = "reflect" if min(h, w) > max(cy, cx, ph - h + cy, pw - w + cx) else "symmetric"
    padded = np.pad(images, pad, mode=mode)
    prob = np.zeros((n, ph // gy, pw // gx), np.float32)
    dist = np.zeros((n, net.n_rays, ph // gy, pw // gx), np.float32)
    if bf16:
        net = to_channels_last(net)  # in place; the weights' values do not change
    with torch.inference_mode(), autocast(device, bf16):
        for i0 in range(0, n, batch_size):
            for by in range(ny):
                for bx in range(nx):
                    y0, x0 = by * ty, bx * tx
                    block = padded[i0:i0 + batch_size, :, y0:y0 + ty + 2 * cy, x0:x0 + tx + 2 * cx]
                    x = torch.from_numpy(np.ascontiguousarray(block)).to(device)
                    p, d = net(to_channels_last(x) if bf16 else x)
                    p = torch.sigmoid(p.float())[:, 0].cpu().numpy()
                    d = d.float().cpu().numpy()
                    sy, sx = slice(cy // gy, (cy + ty) // gy), slice(cx // gx, (cx + tx) // gx)
                    oy, ox = slice(y0 // gy, (y0 + ty) // gy), slice(x0 // gx, (x0 + tx) // gx)
                    prob[i0:i0 + batch_size, oy, ox] = p[:, sy, sx]
                    dist[i0:i0 + batch_size, :, oy, ox] = d[:, :, sy, sx]
    hg, wg = -(-h // gy), -(-w // gx)
    return prob[:, :hg, :wg], dist[:, :, :hg, :wg]
