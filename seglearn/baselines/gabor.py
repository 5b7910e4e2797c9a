"""The seed-001 pipeline: NLM denoise, Otsu (active material vs rest), Gabor filter on the inverted
rest with the active material set to 0, pore threshold, the remaining phase by exclusion.

Works slice by slice (as the seed does) on one detector rescaled to 8 bits. Optional vertical-line
removal first: grey opening with a horizontal line, then a 5 x 5 median.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from seglearn.baselines.common import channel

log = logging.getLogger("seglearn")


def gabor_kernel_cv(ksize: int, sigma: float, theta: float, lambd: float, gamma: float, psi: float) -> np.ndarray:
    """Real Gabor kernel ``(ksize, ksize)`` with OpenCV's ``getGaborKernel`` convention.

    ``g(x, y) = exp(-(x'^2 + gamma^2 y'^2) / (2 sigma^2)) cos(2 pi x' / lambda + psi)``,
    ``x' = x cos(theta) + y sin(theta)``, ``y' = -x sin(theta) + y cos(theta)``.
    """
    half = ksize // 2
    xmin, xmax = -half, half
    c, s = np.cos(theta), np.sin(theta)
    # OpenCV fills rows y = ymax..ymin, columns x = xmax..xmin (kernel flipped), mirror that
    y, x = np.mgrid[xmax:xmin - 1:-1, xmax:xmin - 1:-1].astype(np.float64)
    xr = x * c + y * s
    yr = -x * s + y * c
    return np.exp(-(xr ** 2 + gamma ** 2 * yr ** 2) / (2 * sigma ** 2)) * np.cos(2 * np.pi * xr / lambd + psi)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Rescale to 0..255 (uint8 input is kept as is)."""
    if img.dtype == np.uint8:
        return img
    lo, hi = np.percentile(img, [0.1, 99.9])
    return (np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).round().astype(np.uint8)


def fit(channels, detectors, train_labels=None, *, detector: str = "SE2", denoise: bool = True,
        nlm_h: float | None = None, nlm_patch_size: int = 5, nlm_patch_distance: int = 6,
        kernel_size: int = 90, sigma: float = 1.0, theta: float = float(np.pi / 3), lambd: float = 10.0,
        gamma: float = 1.9, psi: float = 0.0, pore_threshold: float = 140.0, per_slice_otsu: bool = True,
        remove_lines: bool = False, line_kernel: int = 9, median: int = 5,
        classes=(1, 2, 3)) -> dict:
    """No fitting: the seed's parameters are given. ``classes`` = ids of (pore, remaining phase, active material)."""
    params = dict(locals())
    for key in ("channels", "detectors", "train_labels"):
        params.pop(key)
    params["classes"] = [int(c) for c in classes]
    return params


def noise_sigma(img: np.ndarray) -> float:
    """Gaussian noise level of a 2D image (Immerkaer 1996: mean absolute Laplacian-difference response)."""
    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    r = ndi.convolve(img.astype(np.float64), m, mode="reflect")[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * np.abs(r).mean() / 6.0)


def _denoise(img: np.ndarray, m: dict) -> np.ndarray:
    """Optional vertical-line removal, then non-local-means denoising of one slice."""
    from skimage.restoration import denoise_nl_means

    f = img.astype(np.float32)
    if m["remove_lines"]:
        f = ndi.grey_opening(f, size=(1, int(m["line_kernel"])))
        f = ndi.median_filter(f, size=int(m["median"]))
    if m["denoise"]:
        h = m["nlm_h"]
        s = noise_sigma(f) if h is None else float(h)
        f = denoise_nl_means(f, h=0.8 * s if h is None else s, sigma=s, patch_size=int(m["nlm_patch_size"]),
                             patch_distance=int(m["nlm_patch_distance"]), fast_mode=True, preserve_range=True)
    return f


def predict(model, channels, detectors) -> np.ndarray:
    from skimage.filters import threshold_otsu
    from tqdm.auto import tqdm

    m = model
    img = to_uint8(np.asarray(channel(channels, detectors, m["detector"])))
    kernel = gabor_kernel_cv(int(m["kernel_size"]), m["sigma"], m["theta"], m["lambd"], m["gamma"], m["psi"])
    pore_id, rest_id, am_id = (int(c) for c in m["classes"])
    out = np.empty(img.shape, dtype=np.uint8)
    den = np.stack([_denoise(s, m) for s in tqdm(img, desc="gabor: denoise", leave=False, disable=None)])
    t_vol = float(threshold_otsu(den))
    for z in range(img.shape[0]):
        f = den[z]
        t = float(threshold_otsu(f)) if m["per_slice_otsu"] and np.ptp(f) > 0 else t_vol
        am = f > t
        inv = np.where(am, 0.0, 255.0 - f)
        # OpenCV filter2D on 8-bit input saturates the response to 0..255
        resp = np.clip(fftconvolve(inv, kernel[::-1, ::-1], mode="same"), 0, 255)
        pore = (resp > float(m["pore_threshold"])) & ~am
        out[z] = np.where(am, am_id, np.where(pore, pore_id, rest_id))
    return out
