"""Training augmentation: albumentations plus FIB-SEM artefacts (curtaining, brightness gradients).

Patches ``(C, Z, Y, X)`` in ``[0, 1]`` are viewed as one ``(Y, X, C * Z)`` image so that every
channel and slice gets the same geometric transform and the labels ``(Z, Y, X)`` follow as a mask.
"""

from __future__ import annotations

from typing import Any, Mapping

import albumentations as A
import numpy as np


class CurtainStripes(A.ImageOnlyTransform):
    """Add FIB curtaining: vertical stripes (constant along y, varying along x) to every channel.

    Parameters
    ----------
    strength : (low, high) floats
        Stripe amplitude range in normalised grey values.
    width : (low, high) ints
        Smoothing of the stripe profile in pixels.
    """

    def __init__(self, strength: tuple[float, float] = (0.02, 0.08), width: tuple[int, int] = (1, 4), p: float = 0.5):
        super().__init__(p=p)
        self.strength = tuple(strength)
        self.width = tuple(width)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        from scipy.ndimage import gaussian_filter1d

        w = params["shape"][1]
        rng = self.random_generator
        prof = gaussian_filter1d(rng.standard_normal(w), rng.uniform(*self.width))
        prof = prof / max(float(np.abs(prof).max()), 1e-6) * rng.uniform(*self.strength)
        return {"profile": prof.astype(np.float32)}

    def apply(self, img: np.ndarray, profile: np.ndarray | None = None, **params: Any) -> np.ndarray:
        return np.clip(img + profile[None, :, None], 0.0, 1.0).astype(img.dtype)


class BrightnessGradient(A.ImageOnlyTransform):
    """Multiply every channel by a linear brightness ramp across the face (shadowing, charging).

    Parameters
    ----------
    strength : float
        Largest relative change from one side of the patch to the other.
    """

    def __init__(self, strength: float = 0.25, p: float = 0.5):
        super().__init__(p=p)
        self.strength = float(strength)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = self.random_generator
        gy, gx = rng.uniform(-self.strength, self.strength, 2)
        ramp = 1.0 + gy * (np.linspace(-0.5, 0.5, h)[:, None]) + gx * (np.linspace(-0.5, 0.5, w)[None, :])
        return {"ramp": ramp.astype(np.float32)}

    def apply(self, img: np.ndarray, ramp: np.ndarray | None = None, **params: Any) -> np.ndarray:
        return np.clip(img * ramp[..., None], 0.0, 1.0).astype(img.dtype)


def build_augment(cfg: Mapping[str, float] | None) -> A.Compose | None:
    """The augmentation pipeline; each key of ``cfg`` is a probability (0 disables it).

    Keys: ``curtain``, ``gradient``, ``flip``, ``rot90``, ``brightness_contrast``, ``gamma``,
    ``noise``, ``blur``. None or all zero: no augmentation.
    """
    if not cfg:
        return None
    p = {k: float(v) for k, v in dict(cfg).items()}
    steps = [
        CurtainStripes(p=p.get("curtain", 0.0)),
        BrightnessGradient(p=p.get("gradient", 0.0)),
        A.HorizontalFlip(p=p.get("flip", 0.0)),
        A.VerticalFlip(p=p.get("flip", 0.0)),
        A.RandomRotate90(p=p.get("rot90", 0.0)),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=p.get("brightness_contrast", 0.0)),
        A.RandomGamma(gamma_limit=(80, 125), p=p.get("gamma", 0.0)),
        A.GaussNoise(std_range=(0.01, 0.05), p=p.get("noise", 0.0)),
        A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.0), p=p.get("blur", 0.0)),
    ]
    steps = [s for s in steps if s.p > 0]
    return A.Compose(steps) if steps else None


def augment_patch(aug: A.Compose | None, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``aug`` to a patch.

    Parameters
    ----------
    x : (C, Z, Y, X) float32 ndarray in [0, 1]
    y : (Zy, Y, X) int ndarray
        Labels (``-1`` = ignore).
    seed : int
        Makes the draw reproducible.

    Returns
    -------
    x, y : same shapes (Y and X swap under rot90, patches are square)
    """
    if aug is None:
        return x, y
    c, z, h, w = x.shape
    img = np.ascontiguousarray(x.reshape(c * z, h, w).transpose(1, 2, 0))
    mask = np.ascontiguousarray(y.transpose(1, 2, 0).astype(np.int16))
    aug.set_random_seed(seed)
    out = aug(image=img, mask=mask)
    img, mask = out["image"], out["mask"]
    h2, w2 = img.shape[:2]
    x = np.ascontiguousarray(img.transpose(2, 0, 1).reshape(c, z, h2, w2), dtype=np.float32)
    y = np.ascontiguousarray(mask.reshape(h2, w2, -1).transpose(2, 0, 1)).astype(np.int64)
    return x, y
