"""Smooth random fields used by the microstructure and the forward model."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def smooth_noise(shape, sigma, rng: np.random.Generator, *, dtype=np.float32) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation.

    Parameters
    ----------
    shape : tuple of int
    sigma : float or sequence of float
        Correlation length in voxels, per axis.
    """
    field = rng.standard_normal(shape).astype(dtype)
    field = ndi.gaussian_filter(field, sigma, mode="wrap")
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field
