"""The StarDist-style network: a 2D U-Net predicting object probability and radial distances.

As in StarDist2D (Schmidt et al. 2018; seed 004): the first convolution runs at full
resolution and is max-pooled by ``grid`` (``stem="stardist"``: StarDist2D's exact stem, two
convolutions per 2x pooling step, for imported Keras models); a U-Net of ``depth`` levels (``base_filters`` doubling
per level, no batch norm) follows, then a ``head_filters`` convolution and two 1x1 heads:
object probability (logits, one channel) and ``n_rays`` distances (linear), both on the grid.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from seglearn.paths import load_config


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else tuple(int(x) for x in v)


def _block(c_in: int, c_out: int, n_conv: int = 2, *, kernel_size=3, batch_norm: bool = False) -> nn.Sequential:
    """``n_conv`` x (conv 'same' [+ batch norm] + ReLU); Keras' ``BatchNormalization`` defaults (eps 1e-3)."""
    k = _pair(kernel_size)
    layers: list[nn.Module] = []
    for i in range(n_conv):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, k, padding=(k[0] // 2, k[1] // 2)))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def grid_steps(grid: Sequence[int]) -> list[tuple[int, int]]:
    """The 2x pooling steps by which StarDist2D reaches ``grid`` (its ``_build`` loop): ``(4, 2)`` ->
    ``[(2, 2), (2, 1)]``; ``(1, 1)`` -> ``[]``."""
    pooled, steps = [1, 1], []
    while tuple(pooled) != tuple(grid):
        step = tuple(1 + int(g > p) for g, p in zip(grid, pooled))
        if step == (1, 1):
            raise ValueError(f"grid {tuple(grid)}: expected powers of 2")
        pooled = [p * s for p, s in zip(pooled, step)]
        steps.append(step)
    return steps


class StarDistNet(nn.Module):
    """U-Net with a probability head and a star-distance head on a coarser grid.

    Parameters
    ----------
    in_channels : int
        Detector channels.
    n_rays : int
        Radial directions (equally spaced angles, stardist's ``ray_angles``).
    grid : (int, int)
        Output subsampling (powers of 2).
    depth : int
        U-Net levels below the grid resolution.
    base_filters : int
        Filters of the first level; doubled per level.
    head_filters : int
        Filters of the convolution after the U-Net (0: none, the heads read the U-Net directly).
    n_conv_per_depth : int
        Convolutions per U-Net level (StarDist's ``unet_n_conv_per_depth``).
    kernel_size : int or (int, int)
        Odd kernel size of all 3x3-type convolutions (``unet_kernel_size``).
    batch_norm : bool
        Batch norm after each U-Net convolution (``unet_batch_norm``).
    stem : {"single", "stardist"}
        How the input is brought to the grid: ``single`` (seglearn's default) is one convolution at
        full resolution max-pooled by ``grid`` at once; ``stardist`` is StarDist2D's exactly:
        ``n_conv_per_depth`` convolutions before each 2x pooling step, none when ``grid`` is 1.
    pool : int or (int, int)
        U-Net pooling / up-sampling factor (``unet_pool``).

    Notes
    -----
    Input height and width must be divisible by :attr:`divisor` (``grid * pool**depth``); the
    output is ``(N, 1, H/gy, W/gx)`` probability logits and ``(N, n_rays, H/gy, W/gx)`` distances
    in input pixels. With ``stem="stardist"`` the layers are those of csbdeep's ``unet_block`` in
    StarDist2D, so a Keras model's weights load one to one (:mod:`seglearn.instances.keras_import`).
    """

    def __init__(self, in_channels: int, *, n_rays: int = 32, grid: Sequence[int] = (2, 2), depth: int = 3,
                 base_filters: int = 32, head_filters: int = 128, n_conv_per_depth: int = 2, kernel_size=3,
                 batch_norm: bool = False, stem: str = "single", pool=2):
        super().__init__()
        self.in_channels, self.n_rays, self.depth = int(in_channels), int(n_rays), int(depth)
        self.grid = tuple(int(g) for g in grid)
        self.pool_size = _pair(pool)
        k = _pair(kernel_size)
        n = int(n_conv_per_depth)
        if n < 1 or any(v % 2 == 0 or v < 1 for v in k):
            raise ValueError(f"n_conv_per_depth {n} / kernel_size {k}: expected >= 1 and odd sizes")
        if stem not in ("single", "stardist"):
            raise ValueError(f"stem {stem!r}: expected 'single' or 'stardist'")
        self.stem_kind, self.n_conv_per_depth = stem, n
        f = int(base_filters)
        blk = dict(kernel_size=k, batch_norm=bool(batch_norm))
        if stem == "single":
            self.stem = _block(in_channels, f, 1, kernel_size=k)
            self.pool_grid = nn.MaxPool2d(self.grid) if self.grid != (1, 1) else nn.Identity()
            c = f
        else:  # StarDist2D: plain convolutions (no batch norm) before every 2x pooling step
            layers: list[nn.Module] = []
            c = int(in_channels)
            for step in grid_steps(self.grid):
                layers += list(_block(c, f, n, kernel_size=k)) + [nn.MaxPool2d(step)]
                c = f
            self.stem = nn.Sequential(*layers)
            self.pool_grid = nn.Identity()
        self.down = nn.ModuleList()
        chans = []
        for level in range(depth):
            out = f * 2**level
            self.down.append(_block(c, out, n, **blk))
            chans.append(out)
            c = out
        self.pool = nn.MaxPool2d(self.pool_size)
        mid = f * 2 ** max(depth - 1, 0)
        bottom = [_block(c if i == 0 else f * 2**depth, f * 2**depth, 1, **blk) for i in range(n - 1)]
        self.bottom = nn.Sequential(*bottom, _block(f * 2**depth if n > 1 else c, mid, 1, **blk))
        c = mid
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = chans[level]
            out = f * 2 ** max(level - 1, 0)
            ups = [_block(c + skip if i == 0 else skip, skip, 1, **blk) for i in range(n - 1)]
            self.up.append(nn.Sequential(*ups, _block(skip if n > 1 else c + skip, out, 1, **blk)))
            c = out
        self.head = _block(c, int(head_filters), 1, kernel_size=k) if head_filters else nn.Identity()
        c = int(head_filters) or c
        self.prob = nn.Conv2d(c, 1, 1)
        self.dist = nn.Conv2d(c, n_rays, 1)

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sizes must be multiples of this ``(y, x)``."""
        return (self.grid[0] * self.pool_size[0]**self.depth, self.grid[1] * self.pool_size[1]**self.depth)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool_grid(self.stem(x))
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        x = self.head(x)
        return self.prob(x), self.dist(x)


#: the network's keys of the ``model`` config and of a checkpoint's ``meta['net']``
NET_KEYS = ("n_rays", "grid", "depth", "base_filters", "head_filters", "n_conv_per_depth", "kernel_size",
            "batch_norm", "stem", "pool")


def build_model(params: dict, in_channels: int) -> StarDistNet:
    """A :class:`StarDistNet` from the ``model`` config / checkpoint ``meta['net']`` keys (:data:`NET_KEYS`);
    a missing (or null) key takes its value in ``configs/model/stardist.yaml``."""
    defaults = load_config("model/stardist.yaml")
    p = {k: defaults[k] if params.get(k) is None else params[k] for k in NET_KEYS}
    return StarDistNet(in_channels, n_rays=int(p["n_rays"]), grid=tuple(p["grid"]), depth=int(p["depth"]),
                       base_filters=int(p["base_filters"]), head_filters=int(p["head_filters"]),
                       **{k: p[k] for k in NET_KEYS[5:]})
