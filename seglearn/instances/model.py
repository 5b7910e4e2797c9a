"""The StarDist-style network: a 2D U-Net predicting object probability and radial distances.

As in StarDist2D (Schmidt et al. 2018; seed 004): the first convolution runs at full
resolution and is max-pooled by ``grid``; a U-Net of ``depth`` levels (``base_filters`` doubling
per level, no batch norm) follows, then a ``head_filters`` convolution and two 1x1 heads:
object probability (logits, one channel) and ``n_rays`` distances (linear), both on the grid.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _block(c_in: int, c_out: int, n_conv: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_conv):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


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
        Filters of the convolution after the U-Net.

    Notes
    -----
    Input height and width must be divisible by :attr:`divisor` (``grid * 2**depth``); the
    output is ``(N, 1, H/gy, W/gx)`` probability logits and ``(N, n_rays, H/gy, W/gx)`` distances
    in input pixels.
    """

    def __init__(self, in_channels: int, *, n_rays: int = 32, grid: Sequence[int] = (2, 2), depth: int = 3,
                 base_filters: int = 32, head_filters: int = 128):
        super().__init__()
        self.in_channels, self.n_rays, self.depth = int(in_channels), int(n_rays), int(depth)
        self.grid = tuple(int(g) for g in grid)
        f = int(base_filters)
        self.stem = _block(in_channels, f, 1)
        self.pool_grid = nn.MaxPool2d(self.grid) if self.grid != (1, 1) else nn.Identity()
        self.down = nn.ModuleList()
        c = f
        chans = []
        for level in range(depth):
            out = f * 2**level
            self.down.append(_block(c, out))
            chans.append(out)
            c = out
        self.pool = nn.MaxPool2d(2)
        self.bottom = nn.Sequential(_block(c, f * 2**depth, 1), _block(f * 2**depth, f * 2 ** max(depth - 1, 0), 1))
        c = f * 2 ** max(depth - 1, 0)
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = chans[level]
            out = f * 2 ** max(level - 1, 0)
            self.up.append(nn.Sequential(_block(c + skip, skip, 1), _block(skip, out, 1)))
            c = out
        self.head = _block(c, head_filters, 1)
        self.prob = nn.Conv2d(head_filters, 1, 1)
        self.dist = nn.Conv2d(head_filters, n_rays, 1)

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sizes must be multiples of this ``(y, x)``."""
        return (self.grid[0] * 2**self.depth, self.grid[1] * 2**self.depth)

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


def build_model(params: dict, in_channels: int) -> StarDistNet:
    """A :class:`StarDistNet` from the ``model`` config / checkpoint ``meta['net']`` keys."""
    return StarDistNet(in_channels, n_rays=int(params.get("n_rays", 32)), grid=tuple(params.get("grid", (2, 2))),
                       depth=int(params.get("depth", 3)), base_filters=int(params.get("base_filters", 32)),
                       head_filters=int(params.get("head_filters", 128)))
