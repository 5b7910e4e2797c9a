"""The U-Net and its wrapper for the three modes.

``SegNet`` maps ``(B, C, Z + 2h, Y, X)`` to logits ``(B, K, Z, Y, X)`` in every mode:

- ``2d``: each slice alone (``h = 0``), a 2D U-Net;
- ``2.5d``: each slice with its ``+-k`` neighbours stacked as channels (``h = k``), a 2D U-Net;
- ``3d``: a 3D U-Net (``h = 0``) whose z pooling and z kernel size follow the voxel anisotropy
  (nnU-Net's rule: pool along z only while the z spacing is below twice the in-plane spacing).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

MODES = ("2d", "2.5d", "3d")


def plan_anisotropy(voxel_size_nm: Sequence[float] | None, depth: int) -> tuple[list[bool], list[int]]:
    """Per-level z pooling and z kernel size for a 3D U-Net.

    Parameters
    ----------
    voxel_size_nm : (z, y, x) floats or None (isotropic)
    depth : int
        Number of poolings.

    Returns
    -------
    pool_z : list of bool, length ``depth``
    kernel_z : list of int (1 or 3), length ``depth + 1``
    """
    if voxel_size_nm is None:
        sz = sxy = 1.0
    else:
        sz, sxy = float(voxel_size_nm[0]), float(min(voxel_size_nm[1], voxel_size_nm[2]))
    pool_z, kernel_z = [], []
    for _ in range(depth + 1):
        kernel_z.append(1 if sz > 3.0 * sxy else 3)
        if len(pool_z) < depth:
            p = sz < 2.0 * sxy
            pool_z.append(p)
            sz *= 2.0 if p else 1.0
        sxy *= 2.0
    return pool_z, kernel_z


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, dims: int, kz: int, dropout: float):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
        k = (kz, 3, 3) if dims == 3 else 3
        pad = (kz // 2, 1, 1) if dims == 3 else 1
        layers = [conv(cin, cout, k, padding=pad, bias=False), norm(cout), nn.ReLU(inplace=True),
                  conv(cout, cout, k, padding=pad, bias=False), norm(cout), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout) if dims == 3 else nn.Dropout2d(dropout))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class UNet(nn.Module):
    """A plain U-Net (2D or 3D) returning logits.

    Parameters
    ----------
    in_channels, n_classes : int
    dims : 2 or 3
    base : int
        Features of the first level (doubled per level, capped at ``8 * base``).
    depth : int
        Number of poolings.
    pool_z, kernel_z : lists, 3D only
        From :func:`plan_anisotropy`; default isotropic.
    dropout : float
        Dropout at the bottleneck.
    """

    def __init__(self, in_channels: int, n_classes: int, *, dims: int = 2, base: int = 16, depth: int = 3,
                 pool_z: Sequence[bool] | None = None, kernel_z: Sequence[int] | None = None, dropout: float = 0.0):
        super().__init__()
        self.dims, self.depth = dims, depth
        pool_z = list(pool_z) if pool_z is not None else [True] * depth
        kernel_z = list(kernel_z) if kernel_z is not None else [3] * (depth + 1)
        feats = [min(base * 2**i, base * 8) for i in range(depth + 1)]
        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        cin = in_channels
        for i in range(depth):
            self.down.append(_Block(cin, feats[i], dims, kernel_z[i], 0.0))
            cin = feats[i]
            if dims == 3:
                f = (2 if pool_z[i] else 1, 2, 2)
                self.pools.append(nn.MaxPool3d(f, f))
            else:
                self.pools.append(nn.MaxPool2d(2, 2))
        self.bottom = _Block(feats[depth - 1] if depth else in_channels, feats[depth], dims, kernel_z[depth], dropout)
        for i in reversed(range(depth)):
            if dims == 3:
                f = (2 if pool_z[i] else 1, 2, 2)
                self.ups.append(nn.ConvTranspose3d(feats[i + 1], feats[i], f, f))
            else:
                self.ups.append(nn.ConvTranspose2d(feats[i + 1], feats[i], 2, 2))
            self.up_blocks.append(_Block(2 * feats[i], feats[i], dims, kernel_z[i], 0.0))
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.head = conv(feats[0], n_classes, 1)

    def forward(self, x):
        skips = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class SegNet(nn.Module):
    """A U-Net applied in one of the modes ``2d``, ``2.5d``, ``3d`` (see module docstring).

    Parameters
    ----------
    in_channels, n_classes : int
    mode : {"2d", "2.5d", "3d"}
    context : int
        ``k`` of 2.5D (neighbouring slices on each side).
    base, depth, dropout : U-Net size
    voxel_size_nm : (z, y, x), optional
        Plans the anisotropic pooling of 3D.
    channels_last : bool
        Run the convolutions in channels-last memory layout.
    """

    def __init__(self, in_channels: int, n_classes: int, *, mode: str = "2.5d", context: int = 2, base: int = 16,
                 depth: int = 3, dropout: float = 0.0, voxel_size_nm: Sequence[float] | None = None,
                 pool_z: Sequence[bool] | None = None, kernel_z: Sequence[int] | None = None,
                 channels_last: bool = False):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.n_classes = mode, n_classes
        self.k = int(context) if mode == "2.5d" else 0
        self.channels_last = bool(channels_last)
        if mode == "3d":
            if pool_z is None or kernel_z is None:
                pool_z, kernel_z = plan_anisotropy(voxel_size_nm, depth)
            self.pool_z, self.kernel_z = list(pool_z), list(kernel_z)
            self.unet = UNet(in_channels, n_classes, dims=3, base=base, depth=depth, pool_z=pool_z,
                             kernel_z=kernel_z, dropout=dropout)
        else:
            self.pool_z, self.kernel_z = [False] * depth, [1] * (depth + 1)
            self.unet = UNet(in_channels * (2 * self.k + 1), n_classes, dims=2, base=base, depth=depth,
                             dropout=dropout)
        if self.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last_3d if mode == "3d" else torch.channels_last)

    @property
    def halo(self) -> int:
        """Extra input slices needed on each side in z."""
        return self.k

    @property
    def align(self) -> tuple[int, int, int]:
        """Tile sizes and tile starts must be multiples of these ``(z, y, x)`` steps."""
        a = 2 ** self.unet.depth
        az = 2 ** sum(self.pool_z) if self.mode == "3d" else 1
        return (az, a, a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z + 2 halo, Y, X)`` -> logits ``(B, K, Z, Y, X)``."""
        if self.mode == "3d":
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            return self.unet(x)
        b, c, zh, y, xx = x.shape
        w = 2 * self.k + 1
        z = zh - 2 * self.k
        # (B, C, Z, Y, X, w) -> (B, Z, C, w, Y, X) -> (B*Z, C*w, Y, X)
        win = x.unfold(2, w, 1).permute(0, 2, 1, 5, 3, 4).reshape(b * z, c * w, y, xx)
        if self.channels_last:
            win = win.contiguous(memory_format=torch.channels_last)
        out = self.unet(win)
        return out.reshape(b, z, self.n_classes, y, xx).permute(0, 2, 1, 3, 4)


def build_net(cfg: dict) -> SegNet:
    """A :class:`SegNet` from its plain-dict config (as stored in the checkpoint)."""
    keys = ("mode", "context", "base", "depth", "dropout", "pool_z", "kernel_z", "channels_last")
    return SegNet(int(cfg["in_channels"]), int(cfg["n_classes"]), **{k: cfg[k] for k in keys if k in cfg})
