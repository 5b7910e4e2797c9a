"""Random fields of the family-b forward model: material texture, re-deposition, curtains, drift.

Every function takes its own random generator, so switching one effect off leaves the draws of
all others as they were. Lengths are in nm and converted with ``voxel_size_nm = (z, y, x)``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import signal as sps
from scipy.special import ndtr, ndtri

from seglearn.synth.fields import smooth_noise
from seglearn.synth.microstructure import AM, CBD, PORE


def transparency(labels: np.ndarray, porosity: tuple[float, float], texture_nm: float, vs,
                 rng: np.random.Generator) -> np.ndarray:
    """Share of each voxel that is open (see-through): 1 pore, 0 active material, ``phi`` binder.

    The binder's sub-voxel porosity ``phi`` is a fine random texture (correlation ``texture_nm``)
    spread uniformly over ``porosity = (lo, hi)``.

    Returns
    -------
    (Z, Y, X) float32
    """
    p = (labels == PORE).astype(np.float32)
    cbd = labels == CBD
    lo, hi = porosity
    if cbd.any() and hi > 0:
        sigma = np.maximum(texture_nm / np.asarray(vs, dtype=float), 0.5)
        u = ndtr(smooth_noise(labels.shape, sigma, rng)).astype(np.float32)
        p[cbd] = lo + (hi - lo) * u[cbd]
    return p


def grain_field(labels: np.ndarray, grain_nm: float, vs, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance value per primary grain (Voronoi cells of random seeds) inside the active material.

    Returns
    -------
    (Z, Y, X) float32
        0 outside the active material.
    """
    vs = np.asarray(vs, dtype=float)
    out = np.zeros(labels.shape, dtype=np.float32)
    am = labels == AM
    if not am.any() or grain_nm <= 0:
        return out
    cell = np.prod(np.maximum(grain_nm / vs, 1.0))
    n = max(int(labels.size / cell), 1)
    seeds = np.ones(labels.shape, dtype=bool)
    idx = rng.integers(0, labels.size, n)
    seeds.flat[idx] = False
    value = rng.standard_normal(labels.size).astype(np.float32)  # read only at the seeds
    ind = ndi.distance_transform_edt(seeds, sampling=vs, return_distances=False, return_indices=True)
    flat = np.ravel_multi_index(tuple(ind), labels.shape)
    out[am] = value[flat[am]]
    return out


def redeposit(labels: np.ndarray, density: float, size_nm: float, vs, rng: np.random.Generator) -> np.ndarray:
    """Grains of re-deposited material on pore walls, denser the more volume was milled before.

    A pore voxel within two voxels of solid gets a grain with probability
    ``density * milled(z)``, ``milled`` the share of the volume's solid milled before slice z;
    grains are the tops of a smooth random field (size ``size_nm``).

    Returns
    -------
    (Z, Y, X) bool
    """
    pore = labels == PORE
    if density <= 0 or not pore.any() or pore.all():
        return np.zeros(labels.shape, dtype=bool)
    solid_per_slice = (~pore).sum(axis=(1, 2)).astype(float)
    milled = np.cumsum(solid_per_slice) / max(solid_per_slice.sum(), 1.0)
    prob = np.clip(density * milled, 1e-6, 0.95)[:, None, None]
    near = pore & ndi.binary_dilation(~pore, iterations=2)
    sigma = np.maximum(size_nm / np.asarray(vs, dtype=float), 0.5)
    field = smooth_noise(labels.shape, sigma, rng)
    return near & (field > ndtri(1.0 - prob)).astype(bool)


def curtain_heights(shape, beta: float, z_nm: float, vs, rng: np.random.Generator) -> np.ndarray:
    """Heights of the milled face from a random milling-rate spectrum (unit rms).

    Along x the height has a ``1 / f**beta`` power spectrum with random phases; key spectra are
    drawn every ``z_nm`` along z and blended linearly in between (the pattern wanders slowly);
    along y (the milling direction) each streak starts at a random row and fades in.

    Returns
    -------
    (Z, Y, X) float32
    """
    z_n, y_n, x_n = shape
    f = np.fft.rfftfreq(x_n)
    amp = np.zeros_like(f)
    amp[1:] = f[1:] ** (-beta / 2.0)
    step = max(z_nm / float(vs[0]), 1.0)
    n_key = int(np.ceil((z_n - 1) / step)) + 2
    keys = np.stack([np.fft.irfft(amp * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size)), n=x_n)
                     for _ in range(n_key)])
    pos = np.arange(z_n) / step
    i0 = np.floor(pos).astype(int)
    w = (pos - i0)[:, None]
    rows = (1 - w) * keys[i0] + w * keys[i0 + 1]  # (Z, X)
    rows /= max(float(rows.std()), 1e-12)
    start = ndi.gaussian_filter1d(rng.uniform(0.0, 0.6, x_n), 2.0, mode="wrap") * y_n  # streak origin rows
    yy = np.arange(y_n, dtype=float)[:, None]
    fade = np.clip((yy - start[None, :]) / (0.15 * y_n) + 1.0, 0.0, 1.0)  # (Y, X)
    return (rows[:, None, :] * fade[None]).astype(np.float32)


def drift_over_z(z_n: int, brightness: float, contrast: float, jumps: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Slow brightness offset and contrast gain per slice: two slow sinusoids plus operator steps.

    Returns
    -------
    offset, gain : (Z,) float32
    """
    z = np.arange(z_n, dtype=float)

    def slow():
        s = sum(np.sin(2 * np.pi * z / rng.uniform(0.5, 2.5) / max(z_n, 1) + rng.uniform(0, 2 * np.pi))
                for _ in range(2))
        return s / np.sqrt(2)

    offset = brightness * slow()
    log_gain = contrast * slow()
    for _ in range(int(jumps)):
        at = int(rng.integers(1, max(z_n, 2)))
        offset[at:] += rng.normal(0.0, brightness)
        log_gain[at:] += rng.normal(0.0, contrast)
    return offset.astype(np.float32), np.exp(log_gain).astype(np.float32)


def vignette(y_n: int, x_n: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Shadowing by the trench walls: signal lost towards the bottom and one side of the face.

    Returns
    -------
    (Y, X) float32 in ``[1 - strength, 1]``
    """
    cy, cx = rng.uniform(-0.3, 0.2), rng.uniform(0.2, 0.8)
    yy = np.arange(y_n, dtype=float)[:, None] / y_n
    xx = np.arange(x_n, dtype=float)[None, :] / x_n
    r2 = (yy - cy) ** 2 + 0.6 * (xx - cx) ** 2
    return (1.0 - strength * np.clip(r2 / 1.2, 0.0, 1.0)).astype(np.float32)


def scan_smear(img: np.ndarray, length_px: float) -> np.ndarray:
    """Causal exponential smear along x (the fast-scan direction), unit gain; ``length_px <= 0`` = none."""
    if length_px <= 0:
        return img
    a = float(np.exp(-1.0 / length_px))
    return sps.lfilter([1.0 - a], [1.0, -a], img, axis=-1).astype(np.float32)


def line_noise(shape, std: float, rng: np.random.Generator) -> np.ndarray:
    """Per-scan-line offsets: white from line to line plus a slow hum over the lines.

    Returns
    -------
    (Z, Y, 1) float32
    """
    z_n, y_n, _ = shape
    white = rng.standard_normal((z_n, y_n))
    period = rng.uniform(8.0, 40.0)
    hum = np.sin(2 * np.pi * np.arange(y_n)[None, :] / period + rng.uniform(0, 2 * np.pi, (z_n, 1)))
    return (std * (0.7 * white + 0.7 * hum))[..., None].astype(np.float32)
