"""Non-local-means denoising of every slice (seed 001 denoises before segmenting)."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.preprocess.steps import Step, per_slice, register_step, restore_dtype


def noise_sigma(image: np.ndarray) -> float:
    """Standard deviation of Gaussian noise in a slice (Immerkaer 1996, Laplacian-difference
    mask; :func:`skimage.restoration.estimate_sigma` would need PyWavelets)."""
    x = np.asarray(image, dtype=np.float64)
    if min(x.shape) < 3:
        return 0.0
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    r = ndi.convolve(x, mask)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(r).mean() / 6.0)


def nl_means(image: np.ndarray, *, h: float = 0.8, patch_size: int = 5, patch_distance: int = 6) -> np.ndarray:
    """Non-local means (:func:`skimage.restoration.denoise_nl_means`, fast mode) of one slice.

    Parameters
    ----------
    image : (Y, X) ndarray
    h : float
        Filter strength in units of the noise standard deviation estimated on the slice
        (:func:`noise_sigma`).
    patch_size, patch_distance : int
        Patch side and search radius (px).

    Returns
    -------
    (Y, X) ndarray, same dtype.
    """
    from skimage.restoration import denoise_nl_means

    image = np.asarray(image)
    x = image.astype(np.float32)
    sigma = noise_sigma(x)
    if sigma <= 0:
        return image.copy()
    out = denoise_nl_means(x, h=float(h) * sigma, sigma=sigma, patch_size=int(patch_size),
                           patch_distance=int(patch_distance), fast_mode=True)
    return restore_dtype(out, image.dtype)


@register_step
@dataclasses.dataclass
class NLMeans(Step):
    """Non-local-means denoising per slice; see :func:`nl_means`."""

    name = "nl_means"

    h: float = 0.8
    patch_size: int = 5
    patch_distance: int = 6

    def validate(self) -> None:
        if float(self.h) <= 0 or int(self.patch_size) < 1 or int(self.patch_distance) < 1:
            raise InputError("nl_means: h must be > 0, patch_size and patch_distance >= 1")

    def apply_block(self, block, z0):
        return per_slice(block, nl_means, h=float(self.h), patch_size=int(self.patch_size),
                         patch_distance=int(self.patch_distance)), z0
