"""Curtaining removal: vertical stripes (constant along y, varying along x, from uneven milling).

Three filters: the wavelet-FFT filter of Münch et al. (2009, Opt. Express 17, 8567; PyWavelets),
a Gaussian notch on the horizontal frequency axis of the whole slice's 2D Fourier transform
(where vertical stripes put their energy), and seed 001's opening with a horizontal kernel
followed by a 5 x 5 median.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.preprocess.steps import Step, per_slice, register_step, restore_dtype



def _reflect_pad(x: np.ndarray, pad: float) -> tuple[np.ndarray, int, int]:
    """``x (Y, X)`` reflect-padded by ``pad`` of each side; returns ``(padded, py, px)``."""
    py, px = int(x.shape[0] * pad), int(x.shape[1] * pad)
    return np.pad(x, ((py, py), (px, px)), mode="reflect"), py, px

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
    ny, nx = image.shape
    xp, py, px = _reflect_pad(image.astype(np.float32), pad)
    f = np.fft.rfft2(xp)
    ky = np.fft.fftfreq(xp.shape[0]) * ny  # cycles per original image height
    kx = np.fft.rfftfreq(xp.shape[1]) * nx  # cycles per original image width
    notch = np.exp(-(ky[:, None] ** 2) / (2 * float(band) ** 2)) * (1 - np.exp(-(kx[None, :] ** 2) / (2 * float(keep) ** 2)))
    out = np.fft.irfft2(f * (1 - notch), s=xp.shape)[py: py + ny, px: px + nx]
    return restore_dtype(out, image.dtype)


def wavelet_fft_destripe(image: np.ndarray, *, wavelet: str = "sym8", level: int = 5, sigma: float = 2.0,
                         pad: float = 0.125) -> np.ndarray:
    """Remove vertical stripes with the wavelet-FFT filter of Münch et al. (2009).

    The slice is decomposed into ``level`` wavelet levels; vertical stripes sit in the vertical
    detail bands (high-pass along x, low-pass along y), where they are nearly constant along
    y. Each such band is Fourier transformed along y and its ``k_y`` = 0 neighbourhood damped by
    ``1 - exp(-k_y^2 / (2 sigma^2))``, then the slice is reconstructed. The approximation band
    (broad brightness gradients) and the other detail bands are left as they are.

    Parameters
    ----------
    image : (Y, X) ndarray
    wavelet : str
        PyWavelets wavelet name (Münch et al. use Daubechies wavelets).
    level : int
        Decomposition levels (capped at the largest level the slice allows); stripes wider than
        about ``2**level`` px survive.
    sigma : float
        Gaussian half-width of the damping in ``k_y``, in FFT bins of each band (larger removes
        stripes whose strength changes faster along y, and more real structure).
    pad : float
        Reflective padding, as a share of each side, against border artefacts.

    Returns
    -------
    (Y, X) ndarray, same dtype.
    """
    import pywt

    image = np.asarray(image)
    ny, nx = image.shape
    xp, py, px = _reflect_pad(image.astype(np.float64), pad)
    w = pywt.Wavelet(wavelet)
    level = max(1, min(int(level), pywt.dwt_max_level(min(xp.shape), w.dec_len)))
    coeffs = pywt.wavedec2(xp, w, level=level)
    out = [coeffs[0]]
    for ch, cv, cd in coeffs[1:]:
        f = np.fft.rfft(cv, axis=0)
        ky = np.arange(f.shape[0], dtype=np.float64)
        f *= (1.0 - np.exp(-(ky ** 2) / (2.0 * float(sigma) ** 2)))[:, None]
        out.append((ch, np.fft.irfft(f, n=cv.shape[0], axis=0), cd))
    rec = pywt.waverec2(out, w)[py: py + ny, px: px + nx]
    return restore_dtype(rec, image.dtype)


def open_median(image: np.ndarray, *, kernel: int = 3, median: int = 5) -> np.ndarray:
    """Seed 001's line filter: grey opening with a ``1 x kernel`` horizontal element, then a
    ``median x median`` median filter (removes bright lines narrower than ``kernel`` px)."""
    image = np.asarray(image)
    out = ndi.grey_opening(image, size=(1, int(kernel))) if int(kernel) > 1 else image
    if int(median) > 1:
        out = ndi.median_filter(out, size=int(median))
    return out.astype(image.dtype, copy=False)


METHODS = ("wavelet", "fft", "open_median")


def joint_destripe(slices: np.ndarray, func) -> np.ndarray:
    """Remove the curtaining shared by several detectors' images of one slice.

    Curtains are topography, so every detector sees the same stripes (with its own contrast).
    The stripe field is estimated once, on the mean of the detectors (``s = m - func(m)``), and
    subtracted from each detector with the amplitude that best explains that detector's own
    stripe estimate (least squares, clipped to [0, 2]). Differences between detectors, which a
    shared stripe field largely cancels already, are left as they were where the amplitudes agree.

    Parameters
    ----------
    slices : (C, Y, X) ndarray
        One slice of every detector.
    func : callable
        A single-image destriping filter ``(Y, X) -> (Y, X)`` (e.g. :func:`wavelet_fft_destripe`).

    Returns
    -------
    (C, Y, X) ndarray, same dtype.
    """
    x = np.asarray(slices, dtype=np.float32)
    m = x.mean(axis=0)
    stripes = m - func(m)
    norm = float(np.sum(stripes * stripes))
    out = np.empty(x.shape, dtype=slices.dtype)
    for c in range(x.shape[0]):
        own = x[c] - func(x[c])
        amp = float(np.clip(np.sum(own * stripes) / norm, 0.0, 2.0)) if norm > 0 else 0.0
        out[c] = restore_dtype(x[c] - amp * stripes, slices.dtype)
    return out


@register_step
@dataclasses.dataclass
class Destripe(Step):
    """Curtaining removal on every slice.

    Parameters
    ----------
    method : {"wavelet", "fft", "open_median"}
        ``wavelet``: :func:`wavelet_fft_destripe` (``wavelet``, ``level``, ``sigma``);
        ``fft``: :func:`fft_destripe` (``band``, ``keep``); ``open_median``: :func:`open_median`
        (``kernel``, ``median``).
    joint : bool
        With several detectors (default), estimate the stripes once on their mean and subtract
        them from each (:func:`joint_destripe`; ``wavelet`` and ``fft``; ``open_median`` always
        filters each detector on its own); false filters each detector on its own.
    """

    name = "destripe"

    method: str = "fft"
    band: float = 1.0
    keep: float = 1.0
    wavelet: str = "sym8"  # sym8 / level 5: the lowest threshold awe on a validation phantom (bench_preprocess.md)
    level: int = 5
    sigma: float = 2.0
    kernel: int = 3
    median: int = 5
    joint: bool = True  # a no-op with one detector; lowers threshold and forest awe (docs/bench_preprocess.md)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"destripe: method must be one of {METHODS}, got {self.method!r}")
        if float(self.band) <= 0 or float(self.keep) < 0 or int(self.kernel) < 1 or int(self.median) < 1:
            raise InputError("destripe: band must be > 0, keep >= 0, kernel and median >= 1")
        if self.method == "wavelet":
            import pywt

            if self.wavelet not in pywt.wavelist(kind="discrete"):
                raise InputError(f"destripe: wavelet {self.wavelet!r} is not a discrete PyWavelets wavelet "
                                 f"(e.g. db4, db8, sym8, coif3)")
            if int(self.level) < 1 or float(self.sigma) <= 0:
                raise InputError(f"destripe: level must be >= 1 and sigma > 0, got {self.level}, {self.sigma}")

    def _filter(self):
        if self.method == "wavelet":
            return lambda im: wavelet_fft_destripe(im, wavelet=str(self.wavelet), level=int(self.level),
                                                   sigma=float(self.sigma))
        if self.method == "fft":
            return lambda im: fft_destripe(im, band=float(self.band), keep=float(self.keep))
        return lambda im: open_median(im, kernel=int(self.kernel), median=int(self.median))

    def apply_block(self, block, z0):
        func = self._filter()
        if self.joint and self.method != "open_median" and block.shape[0] > 1:  # a line filter has no stripe estimate
            return np.stack([joint_destripe(block[:, z], func) for z in range(block.shape[1])], axis=1), z0
        return per_slice(block, func), z0
