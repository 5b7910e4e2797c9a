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
        if self.channels_last:  # (B, Z, Y, X, C, w) -> (B*Z, Y, X, C*w), seen as channels-last NCHW: one copy
            win = x.unfold(2, w, 1).permute(0, 2, 3, 4, 1, 5).reshape(b * z, y, xx, c * w).permute(0, 3, 1, 2)
        else:
            win = x.unfold(2, w, 1).permute(0, 2, 1, 5, 3, 4).reshape(b * z, c * w, y, xx)
        out = self.unet(win)
        return out.reshape(b, z, self.n_classes, y, xx).permute(0, 2, 1, 3, 4)


def build_net(cfg: dict) -> SegNet:
    """A :class:`SegNet` from its plain-dict config (as stored in the checkpoint)."""
    keys = ("mode", "context", "base", "depth", "dropout", "pool_z", "kernel_z", "channels_last")
    return SegNet(int(cfg["in_channels"]), int(cfg["n_classes"]), **{k: cfg[k] for k in keys if k in cfg})


class _StridedMaxPool(nn.Module):
    """Max pooling with kernel = stride as element-wise maxima of strided views.

    The same values as ``nn.MaxPool2d/3d(f, f)`` (NaN included), several times faster on the CPU in
    channels-last bfloat16, where ATen's pooling also computes the unused indices.
    """

    def __init__(self, factors: Sequence[int]):
        super().__init__()
        self.factors = [int(f) for f in factors]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = len(self.factors)
        for axis, f in enumerate(self.factors):
            if f == 1:
                continue
            d = x.dim() - nd + axis
            n = (x.shape[d] // f) * f
            parts = [x.narrow(d, 0, n)[(slice(None),) * d + (slice(o, None, f),)] for o in range(f)]
            y = parts[0]
            for q in parts[1:]:
                y = torch.maximum(y, q)
            x = y
        return x


def _onednn_conv_relu():
    """oneDNN's fused convolution + ReLU (the op TorchInductor emits on the CPU), or None where absent."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        if not torch.backends.mkldnn.is_available():
            return None
    except (AttributeError, RuntimeError):
        return None
    return op


class _ConvReLU(nn.Module):
    """``relu(conv(x))``, computed by one fused oneDNN call on the CPU when that call gives the same result."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if self.fused and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            return torch.ops.mkldnn._convolution_pointwise(x, c.weight, c.bias, list(c.padding), list(c.stride),
                                                           list(c.dilation), c.groups, "relu", [], "")
        return torch.relu_(c(x))

    def probe(self, dtype: torch.dtype, memory_format) -> None:
        """Turn the fused call on if it runs and matches the unfused one on a small input."""
        if _onednn_conv_relu() is None or self.conv.weight.device.type != "cpu" or self.conv.padding_mode != "zeros":
            return
        dims = self.conv.weight.dim() - 2
        x = torch.randn(1, self.conv.in_channels, *([6] * dims)).to(dtype).contiguous(memory_format=memory_format)
        try:
            with torch.inference_mode():
                self.fused = True
                got = self(x).float()
                self.fused = False
                want = self(x).float()
        except RuntimeError:
            self.fused = False
            return
        self.fused = bool(torch.allclose(got, want, rtol=1e-2, atol=1e-2 if dtype == torch.bfloat16 else 1e-5))


def _fold_sequential(seq: nn.Sequential) -> nn.Sequential:
    """conv, BN, ReLU, ..., dropout -> conv+ReLU (BN folded into the weights), ...; eval statistics."""
    layers, out, i = list(seq), [], 0
    while i < len(layers):
        m = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and isinstance(nxt, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m = torch.nn.utils.fusion.fuse_conv_bn_eval(m, nxt)
            i += 1
            nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and isinstance(nxt, nn.ReLU):
            out.append(_ConvReLU(m))
            i += 2
            continue
        if not isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
            out.append(m)
        i += 1
    return nn.Sequential(*out)


def inference_copy(net: SegNet, *, dtype: torch.dtype = torch.float32, channels_last: bool = True,
                   device=None) -> SegNet:
    """A copy of ``net`` for prediction only: the same function, computed faster.

    Batch norms are folded into the preceding convolutions (eval statistics), dropout is removed,
    convolution + ReLU run as one oneDNN call on the CPU (:class:`_ConvReLU`, checked against the
    unfused pair when built), max pooling uses :class:`_StridedMaxPool`, the weights are cast to
    ``dtype`` (bfloat16: the convolutions run in bf16 with fp32 accumulation, as under autocast,
    without re-casting the weights on every call) and kept channels-last. In fp32 the outputs
    equal ``net``'s to ~1e-6.
    """
    import copy

    fast = copy.deepcopy(net).eval()
    for mod in fast.modules():
        if isinstance(mod, _Block):
            mod.body = _fold_sequential(mod.body)
    unet = fast.unet

    def per_axis(v) -> list[int]:
        return [v] * unet.dims if isinstance(v, int) else list(v)

    for i, pool in enumerate(unet.pools):
        k = per_axis(pool.kernel_size)
        if (k == per_axis(pool.stride) and not pool.ceil_mode and not any(per_axis(pool.padding))
                and all(d == 1 for d in per_axis(pool.dilation))):
            unet.pools[i] = _StridedMaxPool(k)
    fmt = (torch.channels_last_3d if fast.mode == "3d" else torch.channels_last) if channels_last \
        else torch.contiguous_format
    fast = fast.to(device=device, dtype=dtype)
    fast.channels_last = bool(channels_last)
    fast.unet = fast.unet.to(memory_format=fmt)
    for p in fast.parameters():
        p.requires_grad_(False)
    for mod in fast.modules():
        if isinstance(mod, _ConvReLU):
            mod.probe(dtype, fmt)
    return fast
