"""Curtaining removal: vertical stripes (constant along y, varying along x, from uneven milling).

pywt is not a dependency, so the wavelet-FFT filter of Münch et al. (2009) is replaced by its
core idea applied to the whole slice: a Gaussian notch on the horizontal frequency axis of the
2D Fourier transform (where vertical stripes put their energy), sparing the lowest horizontal
frequencies (broad brightness gradients). The seed-001 filter (opening with a horizontal kernel,
then a 5 x 5 median) is kept as a second method.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.preprocess.steps import Step, per_slice, register_step, restore_dtype


def fft_destripe(image: np.ndarray, *, band: float = 1.0, keep: float = 1.0, pad: float = 0.125) -> np.ndarray:
    """Remove vertical stripes with a notch on the ``k_y = 0`` axis of the 2D spectrum.

    Parameters
    ----------
    image : (Y, X) ndarray
    band : float
        Gaussian half-width of the notch across ``k_y``, in cycles per image height: stripes
        whose strength changes slowly along y (fewer than ``band`` cycles) are removed.
    keep : float
        Horizontal frequencies below about ``keep`` cycles per image width are spared
        (brightness gradients across the face).
    pad : float
        Reflective padding, as a share of each side, against wrap-around artefacts.

    Returns
    -------
    (Y, X) ndarray, same dtype.
    """
    image = np.asarray(image)
    x = image.astype(np.float32)
    ny, nx = x.shape
    py, px = int(ny * pad), int(nx * pad)
    xp = np.pad(x, ((py, py), (px, px)), mode="reflect")
    f = np.fft.rfft2(xp)
    ky = np.fft.fftfreq(xp.shape[0]) * ny  # cycles per original image height
    kx = np.fft.rfftfreq(xp.shape[1]) * nx  # cycles per original image width
    notch = np.exp(-(ky[:, None] ** 2) / (2 * float(band) ** 2)) * (1 - np.exp(-(kx[None, :] ** 2) / (2 * float(keep) ** 2)))
    out = np.fft.irfft2(f * (1 - notch), s=xp.shape)[py: py + ny, px: px + nx]
    return restore_dtype(out, image.dtype)


def open_median(image: np.ndarray, *, kernel: int = 3, median: int = 5) -> np.ndarray:
    """Seed 001's line filter: grey opening with a ``1 x kernel`` horizontal element, then a
    ``median x median`` median filter (removes bright lines narrower than ``kernel`` px)."""
    image = np.asarray(image)
    out = ndi.grey_opening(image, size=(1, int(kernel))) if int(kernel) > 1 else image
    if int(median) > 1:
        out = ndi.median_filter(out, size=int(median))
    return out.astype(image.dtype, copy=False)


@register_step
@dataclasses.dataclass
class Destripe(Step):
    """Curtaining removal on every slice.

    Parameters
    ----------
    method : {"fft", "open_median"}
        ``fft``: :func:`fft_destripe` (``band``, ``keep``); ``open_median``: :func:`open_median`
        (``kernel``, ``median``).
    """

    name = "destripe"

    method: str = "fft"
    band: float = 1.0
    keep: float = 1.0
    kernel: int = 3
    median: int = 5

    def validate(self) -> None:
        if self.method not in ("fft", "open_median"):
            raise InputError(f"destripe: method must be 'fft' or 'open_median', got {self.method!r}")
        if float(self.band) <= 0 or float(self.keep) < 0 or int(self.kernel) < 1 or int(self.median) < 1:
            raise InputError("destripe: band must be > 0, keep >= 0, kernel and median >= 1")

    def apply_block(self, block, z0):
        if self.method == "fft":
            return per_slice(block, fft_destripe, band=float(self.band), keep=float(self.keep)), z0
        return per_slice(block, open_median, kernel=int(self.kernel), median=int(self.median)), z0
