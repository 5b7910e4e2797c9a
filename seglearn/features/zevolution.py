"""Tailored features for pore evolution along the milling direction (z).

In an open pore the detector sees material behind the cut face; its grey value keeps changing
from slice to slice until the cut reaches that material, then settles. Solid voxels have
settled already. Per voxel of one (in-plane pre-smoothed) grey volume ``I``:

``dz{k}``        ``I(z + k) - I(z)`` for each offset ``k`` (negative: slices milled before)
``ahead_max{n}`` ``max(I(z+1..z+n)) - I(z)``; ``ahead_min{n}``, ``ahead_mean{n}``, ``ahead_std{n}`` likewise
``behind_mean{n}`` ``I(z) - mean(I(z-n..z-1))``
``settle``       slices ahead until the value settles (changes less than ``tol`` over the next
                 ``settle_window`` slices), capped at ``max_settle``
``settle_gain``  ``I(z + settle) - I(z)``: how much brighter the voxel still gets
``stable_back``  how far back the value has stayed within ``tol`` of ``I(z)`` (capped)
``level``        ``I(z)`` itself

With ``context`` sigmas, every feature is repeated smoothed in-plane at each sigma (the
neighbourhood's evolution: is the pore around this voxel still being cut?).

Slices beyond the stack repeat the first/last slice, so chunks give the same values as the whole
volume. Only loops over slices, never over pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError

OFFSETS = (-4, -2, -1, 1, 2, 4, 8)
WINDOWS = (4, 8, 16)


def feature_names(prefix: str, offsets: Sequence[int] = OFFSETS, windows: Sequence[int] = WINDOWS,
                  context: Sequence[float] = ()) -> list[str]:
    """Names of the features :func:`zevolution_features` returns, in order."""
    names = [f"{prefix}dz{k:+d}" for k in offsets]
    for n in windows:
        names += [f"{prefix}ahead_max{n}", f"{prefix}ahead_min{n}", f"{prefix}ahead_mean{n}", f"{prefix}ahead_std{n}",
                  f"{prefix}behind_mean{n}"]
    names += [f"{prefix}settle", f"{prefix}settle_gain", f"{prefix}stable_back", f"{prefix}level"]
    return names + [f"{n}_c{c:g}" for c in context for n in names]


def halo(offsets: Sequence[int] = OFFSETS, windows: Sequence[int] = WINDOWS, max_settle: int = 16,
         settle_window: int = 2) -> int:
    """Slices of context along z needed on each side."""
    return int(max([abs(k) for k in offsets] + list(windows) + [max_settle + settle_window]))


def zevolution_features(volume: np.ndarray, z0: int = 0, z1: int | None = None, *, presmooth: float = 1.0,
                        offsets: Sequence[int] = OFFSETS, windows: Sequence[int] = WINDOWS, tol: float = 6.0,
                        settle_window: int = 2, max_settle: int = 16, context: Sequence[float] = ()) -> np.ndarray:
    """z-evolution features of slices ``[z0, z1)``.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        One grey volume (cast to float32).
    presmooth : float
        In-plane Gaussian sigma (pixels) applied first against noise (0 = none).
    tol : float
        Grey-value change below which the value counts as settled (input units).
    context : sequence of float
        In-plane Gaussian sigmas at which every feature is repeated, smoothed.

    Returns
    -------
    (F, z1 - z0, Y, X) float32 ndarray
        In the order of :func:`feature_names`.
    """
    z_n = volume.shape[0]
    z1 = z_n if z1 is None else z1
    if not 0 <= z0 < z1 <= z_n:
        raise InputError(f"slice range [{z0}, {z1}) outside a volume of {z_n} slices")
    if max_settle < 1 or settle_window < 1:
        raise InputError("zevolution: max_settle and settle_window must be >= 1")
    h = halo(offsets, windows, max_settle, settle_window)
    idx = np.clip(np.arange(z0 - h, z1 + h), 0, z_n - 1)
    block = np.asarray(volume[idx], dtype=np.float32)
    if presmooth > 0:
        block = ndi.gaussian_filter(block, (0, presmooth, presmooth), mode="reflect")
    n = z1 - z0
    c = slice(h, h + n)
    cur = block[c]

    def shifted(k: int) -> np.ndarray:
        return block[h + k: h + k + n]

    out = [shifted(k) - cur for k in offsets]
    for w in windows:
        ahead = np.stack([shifted(k) for k in range(1, w + 1)])
        behind = np.stack([shifted(-k) for k in range(1, w + 1)])
        out += [ahead.max(0) - cur, ahead.min(0) - cur, ahead.mean(0) - cur, ahead.std(0), cur - behind.mean(0)]
        del ahead, behind
    # settle: first k >= 0 (capped) with |I(z+k+j) - I(z+k)| < tol for j = 1..settle_window
    m = block.shape[0]
    stable = np.ones(block.shape, dtype=bool)
    for j in range(1, settle_window + 1):
        stable[: m - j] &= np.abs(block[j:] - block[: m - j]) < tol
    settle = np.zeros(block.shape, dtype=np.float32)
    settle[-1] = np.where(stable[-1], 0, max_settle)
    for z in range(m - 2, -1, -1):
        settle[z] = np.where(stable[z], 0, np.minimum(settle[z + 1] + 1, max_settle))
    s = settle[c]
    zz = (np.arange(n)[:, None, None] + h + s.astype(np.int64)).clip(0, m - 1)
    yy, xx = np.indices(cur.shape[1:], sparse=True)
    gain = block[zz, yy[None], xx[None]] - cur
    back = np.zeros(cur.shape, dtype=np.float32)
    alive = np.ones(cur.shape, dtype=bool)
    for k in range(1, max_settle + 1):
        alive &= np.abs(shifted(-k) - cur) < tol
        back += alive
    out += [s, gain.astype(np.float32), back, cur]
    base = np.stack(out).astype(np.float32, copy=False)
    if not context:
        return base
    smooth = [ndi.gaussian_filter(base, (0, 0, float(c), float(c)), mode="reflect") for c in context]
    return np.concatenate([base] + smooth, axis=0)
