"""Brightness equalisation between slices: histogram matching to a reference slice or to a
running mean of the slices' histograms, and CLAHE (seed 001: clip limit 2, 4 x 4 tiles)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from seglearn.errors import InputError
from seglearn.preprocess.steps import Step, dtype_range, per_slice, register_step, restore_dtype


def slice_quantiles(image: np.ndarray, n: int = 256) -> np.ndarray:
    """Quantile function of a slice sampled at ``n`` evenly spaced levels in [0, 1]
    (``numpy.quantile``'s linear rule; from the histogram for uint8/uint16 slices)."""
    image = np.asarray(image)
    levels = np.linspace(0.0, 1.0, n)
    if image.dtype in (np.uint8, np.uint16) and image.size:
        cum = np.cumsum(np.bincount(image.ravel()))
        pos = levels * (image.size - 1)  # 0-based ranks
        lo = np.searchsorted(cum, np.floor(pos), side="right")
        hi = np.searchsorted(cum, np.ceil(pos), side="right")
        return lo + (pos - np.floor(pos)) * (hi - lo)
    return np.quantile(np.asarray(image, dtype=np.float64).ravel(), levels)


def match_quantiles(image: np.ndarray, ref_quantiles: np.ndarray) -> np.ndarray:
    """Map grey values so the slice's histogram matches a reference quantile function.

    Parameters
    ----------
    image : (Y, X) ndarray
    ref_quantiles : (n,) ndarray
        Reference grey values at levels ``linspace(0, 1, n)`` (see :func:`slice_quantiles`).

    Returns
    -------
    (Y, X) ndarray
        Same dtype as ``image`` (integers rounded and clipped).
    """
    image = np.asarray(image)
    levels = np.linspace(0.0, 1.0, len(ref_quantiles))
    n = image.size
    if image.dtype in (np.uint8, np.uint16):
        counts = np.bincount(image.ravel(), minlength=int(np.iinfo(image.dtype).max) + 1)
        cdf = (np.cumsum(counts) - counts / 2.0) / n  # mid-rank of every grey value
        lut = np.interp(cdf, levels, ref_quantiles)
        return restore_dtype(lut, image.dtype)[image]
    values, inverse, counts = np.unique(image.ravel(), return_inverse=True, return_counts=True)
    cdf = (np.cumsum(counts) - counts / 2.0) / n
    mapped = np.interp(cdf, levels, ref_quantiles)[inverse].reshape(image.shape)
    return restore_dtype(mapped, image.dtype)


@register_step
@dataclasses.dataclass
class MatchHistograms(Step):
    """Histogram matching of every slice, per channel.

    Parameters
    ----------
    reference : "middle", "running" or int
        ``middle``/int: match every slice to that slice's histogram; ``running``: to the mean
        quantile function of the ``window`` slices centred on it (removes slice-to-slice
        flicker, keeps slow trends).
    window : int
        Width of the running mean (slices).
    n_quantiles : int
        Samples of the quantile functions.
    """

    name = "match_histograms"
    needs_fit = True

    reference: Any = "running"
    window: int = 15
    n_quantiles: int = 256

    def validate(self) -> None:
        if not (self.reference in ("middle", "running") or isinstance(self.reference, int)):
            raise InputError(f"match_histograms: reference must be 'middle', 'running' or a slice index, "
                             f"got {self.reference!r}")
        if int(self.window) < 1 or int(self.n_quantiles) < 2:
            raise InputError("match_histograms: window must be >= 1 and n_quantiles >= 2")

    def fit_start(self, shape, dtype, detectors) -> None:
        self._q = np.zeros((shape[0], shape[1], int(self.n_quantiles)))

    def fit_block(self, block, z0) -> None:
        for c in range(block.shape[0]):
            for i in range(block.shape[1]):
                self._q[c, z0 + i] = slice_quantiles(block[c, i], int(self.n_quantiles))

    def fit_end(self) -> None:
        q = self._q
        n = q.shape[1]
        if self.reference == "running":
            h = int(self.window) // 2
            csum = np.concatenate([np.zeros_like(q[:, :1]), np.cumsum(q, axis=1)], axis=1)
            lo = np.clip(np.arange(n) - h, 0, n)
            hi = np.clip(np.arange(n) + h + 1, 0, n)
            self.ref = (csum[:, hi] - csum[:, lo]) / (hi - lo)[None, :, None]
        else:
            r = n // 2 if self.reference == "middle" else int(self.reference)
            if not -n <= r < n:
                raise InputError(f"match_histograms: reference slice {r} outside the stack of {n} slices")
            self.ref = np.repeat(q[:, r: r + 1 if r != -1 else None], n, axis=1)
        del self._q

    def apply_block(self, block, z0):
        out = np.empty_like(block)
        for c in range(block.shape[0]):
            for i in range(block.shape[1]):
                out[c, i] = match_quantiles(block[c, i], self.ref[c, z0 + i])
        return out, z0


def clahe(image: np.ndarray, *, clip: float = 2.0, grid: int = 4, nbins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of one slice, OpenCV conventions.

    Parameters
    ----------
    image : (Y, X) ndarray
    clip : float
        Clip limit as in OpenCV's ``createCLAHE(clipLimit=...)``: a histogram bin is clipped at
        ``clip`` times the mean bin count of a tile (skimage's normalised limit is ``clip / nbins``).
    grid : int
        Tiles per axis (OpenCV ``tileGridSize=(grid, grid)``).

    Returns
    -------
    (Y, X) ndarray, same dtype, spread over the dtype's range (floats: the slice's range).
    """
    from skimage.exposure import equalize_adapthist

    image = np.asarray(image)
    lo, hi = dtype_range(image.dtype, image)
    ny, nx = image.shape
    kernel = (max(1, -(-ny // int(grid))), max(1, -(-nx // int(grid))))
    x = np.asarray(image, dtype=np.float64)
    x = (x - lo) / max(hi - lo, 1e-12)
    out = equalize_adapthist(np.clip(x, 0, 1), kernel_size=kernel, clip_limit=float(clip) / nbins, nbins=nbins)
    return restore_dtype(lo + out * (hi - lo), image.dtype)


@register_step
@dataclasses.dataclass
class Clahe(Step):
    """CLAHE on every slice (seed 001: ``clip: 2``, ``grid: 4``); see :func:`clahe`."""

    name = "clahe"

    clip: float = 2.0
    grid: int = 4

    def validate(self) -> None:
        if float(self.clip) <= 0 or int(self.grid) < 1:
            raise InputError(f"clahe: clip must be > 0 and grid >= 1, got clip={self.clip}, grid={self.grid}")

    def apply_block(self, block, z0):
        return per_slice(block, clahe, clip=float(self.clip), grid=int(self.grid)), z0
