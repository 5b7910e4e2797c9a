"""Slice registration: drift between consecutive slices by sub-pixel phase correlation or
TV-L1 optical flow, estimated on one detector, applied to every detector and to label volumes,
then a crop to the area common to all slices.

The shifts depend on the whole stack (not a per-slice function): a pipeline re-applied at
prediction time re-estimates them on the new stack; only the parameters are stored.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.preprocess.steps import Step, register_step, resolve_channel, restore_dtype

log = logging.getLogger("seglearn")

METHODS = ("phase", "tvl1")


def _inner(image: np.ndarray, margin: float) -> np.ndarray:
    """The central part of a slice (a ``margin`` share of each side left out)."""
    my, mx = int(image.shape[0] * margin), int(image.shape[1] * margin)
    return image[my: image.shape[0] - my or None, mx: image.shape[1] - mx or None]


def pair_shift(reference: np.ndarray, moving: np.ndarray, *, method: str = "phase", upsample: int = 20,
               margin: float = 0.1, tvl1_downsample: int = 1) -> np.ndarray:
    """Translation that registers ``moving`` onto ``reference``.

    Parameters
    ----------
    reference, moving : (Y, X) ndarray
        Two slices of the same shape.
    method : {"phase", "tvl1"}
        ``phase``: :func:`skimage.registration.phase_cross_correlation` with sub-pixel
        refinement (``upsample``: 1/upsample px precision, no spectral whitening, which suits
        noisy FIB-SEM slices better). ``tvl1``: :func:`skimage.registration.optical_flow_tvl1`
        dense flow reduced to its median (a rigid translation robust to local structure change).
    margin : float
        Share of each border left out of the estimate (edge effects, drifted-in borders).
    tvl1_downsample : int
        Block-average both slices by this factor before TV-L1 (it is slow on large slices).

    Returns
    -------
    (2,) ndarray
        ``(dy, dx)``: ``scipy.ndimage.shift(moving, shift)`` matches ``reference``.
    """
    a = _inner(np.asarray(reference, dtype=np.float32), margin)
    b = _inner(np.asarray(moving, dtype=np.float32), margin)
    if method == "phase":
        from skimage.registration import phase_cross_correlation

        if a.std() == 0 or b.std() == 0:
            return np.zeros(2)
        shift, _, _ = phase_cross_correlation(a, b, upsample_factor=upsample, normalization=None)
        return np.asarray(shift, dtype=np.float64)
    if method == "tvl1":
        from skimage.registration import optical_flow_tvl1
        from skimage.transform import downscale_local_mean

        f = max(int(tvl1_downsample), 1)
        if f > 1:
            a, b = downscale_local_mean(a, (f, f)), downscale_local_mean(b, (f, f))
        v, u = optical_flow_tvl1(a, b)
        return -np.array([np.median(v), np.median(u)], dtype=np.float64) * f
    raise InputError(f"registration method must be one of {METHODS}, got {method!r}")


def common_crop(shifts: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box ``(y0, y1, x0, x1)`` valid in every slice after shifting slice z by ``shifts[z]``.

    A shifted slice holds original data in ``[s, N + s)`` along each axis; the box keeps only
    whole pixels inside that range for all slices.
    """
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    ny, nx = shape
    y0 = max(0, math.ceil(shifts[:, 0].max() - 1e-6))
    x0 = max(0, math.ceil(shifts[:, 1].max() - 1e-6))
    y1 = min(ny, math.floor(ny + shifts[:, 0].min() + 1e-6))
    x1 = min(nx, math.floor(nx + shifts[:, 1].min() + 1e-6))
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise InputError(f"registration: drift of up to {np.abs(shifts).max():.1f} px leaves no area common "
                         f"to all slices of {ny} x {nx}; check the stack or set crop: false")
    return y0, y1, x0, x1


def shift_slice(image: np.ndarray, shift, *, order: int = 1) -> np.ndarray:
    """Shift one ``(Y, X)`` slice by ``(dy, dx)`` px (``order`` 0 = nearest, for labels)."""
    if not np.any(shift):
        return np.asarray(image)
    if order == 0:
        # exact nearest-neighbour move (labels keep their ids)
        return ndi.shift(image, np.round(np.asarray(shift, float)), order=0, mode="nearest")
    out = ndi.shift(np.asarray(image, dtype=np.float32), shift, order=order, mode="nearest")
    return restore_dtype(out, image.dtype)


def write_shifts_csv(path: str | Path, shifts: np.ndarray) -> Path:
    """``slice,dy,dx`` rows: the shift applied to each slice (px)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice", "dy", "dx"])
        for z, (dy, dx) in enumerate(np.asarray(shifts)):
            w.writerow([z, f"{dy:.4f}", f"{dx:.4f}"])
    tmp.replace(path)
    return path


def read_shifts_csv(path: str | Path) -> np.ndarray:
    """``(Z, 2)`` shifts from a ``slice,dy,dx`` CSV (e.g. a phantom's ``drift.csv``)."""
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: expected a CSV with header slice,dy,dx ({exc})") from exc
    return data[:, 1:3]


def plot_shifts(path: str | Path, shifts: np.ndarray, *, true_drift: np.ndarray | None = None) -> Path:
    """PNG of the applied shifts per slice (and the negated true drift when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    z = np.arange(len(shifts))
    ax.plot(z, shifts[:, 0], label="dy applied")
    ax.plot(z, shifts[:, 1], label="dx applied")
    if true_drift is not None:
        ax.plot(z, -true_drift[:, 0], "k:", lw=1, label="-(true dy)")
        ax.plot(z, -true_drift[:, 1], "k--", lw=1, label="-(true dx)")
    ax.set_xlabel("slice")
    ax.set_ylabel("shift (px)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


@register_step
@dataclasses.dataclass
class Register(Step):
    """Rigid slice registration (drift correction) with a crop to the common area.

    Parameters
    ----------
    method : {"phase", "tvl1"}
        Shift estimator between consecutive slices (see :func:`pair_shift`).
    channel : int, str or "auto"
        Detector the drift is estimated on (index or name); the shifts move every detector.
        ``auto``: InLens when the stack has it (surface-sensitive, its estimates drift least on
        phantoms; SE2's topographic edge contrast biases them), else channel 0.
    upsample : int
        Sub-pixel precision of phase correlation (1/upsample px).
    margin : float
        Share of each border left out of the estimate.
    anchor : "middle", "first" or int
        Slice that keeps its position (shift 0); the others are moved onto its frame.
    crop : bool
        Crop to the area valid in every registered slice.
    order : int
        Interpolation order of the image shifts (labels always use nearest neighbour).
    tvl1_downsample : int
        Block-average factor before TV-L1 (speed).
    max_shift : float
        Largest plausible shift between consecutive slices (px); larger estimates are logged
        and replaced by 0 (a failed match on a blank slice must not shift the whole stack).
    """

    name = "register"
    needs_fit = True
    geometric = True

    method: str = "phase"
    channel: Any = "auto"
    upsample: int = 20
    margin: float = 0.1
    anchor: Any = "middle"
    crop: bool = True
    order: int = 1
    tvl1_downsample: int = 1
    max_shift: float = 50.0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"register: method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= float(self.margin) < 0.5:
            raise InputError(f"register: margin must be in [0, 0.5), got {self.margin}")
        if int(self.upsample) < 1 or int(self.tvl1_downsample) < 1:
            raise InputError("register: upsample and tvl1_downsample must be >= 1")
        if int(self.order) not in range(6):
            raise InputError(f"register: order must be 0..5, got {self.order}")
        if not (self.anchor in ("middle", "first") or isinstance(self.anchor, int)):
            raise InputError(f"register: anchor must be 'middle', 'first' or a slice index, got {self.anchor!r}")

    # fitting: one pass, keeping only the previous slice of the chosen channel
    def fit_start(self, shape, dtype, detectors) -> None:
        channel = self.channel
        if channel == "auto":
            channel = "InLens" if detectors and "InLens" in detectors else 0
        self._c = resolve_channel(channel, detectors, shape[0])
        self._shape = tuple(shape)
        self._pairs = np.zeros((shape[1], 2))
        self._prev: np.ndarray | None = None

    def fit_block(self, block: np.ndarray, z0: int) -> None:
        for i in range(block.shape[1]):
            cur = np.asarray(block[self._c, i], dtype=np.float32)
            if self._prev is not None:
                s = pair_shift(self._prev, cur, method=self.method, upsample=int(self.upsample),
                               margin=float(self.margin), tvl1_downsample=int(self.tvl1_downsample))
                if np.abs(s).max() > float(self.max_shift):
                    log.warning("register: slice %d shift %s px exceeds max_shift; set to 0", z0 + i, s.round(2))
                    s = np.zeros(2)
                self._pairs[z0 + i] = s
            self._prev = cur

    def fit_end(self) -> None:
        self.set_shifts(np.cumsum(self._pairs, axis=0), anchor=True)
        self._prev = None

    def set_shifts(self, shifts: np.ndarray, *, anchor: bool = False) -> None:
        """Use given per-slice shifts ``(Z, 2)`` (re-anchored when ``anchor``) and derive the crop."""
        shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2).copy()
        n = len(shifts)
        if anchor and n:
            a = n // 2 if self.anchor == "middle" else 0 if self.anchor == "first" else int(self.anchor)
            if not -n <= a < n:
                raise InputError(f"register: anchor slice {a} outside the stack of {n} slices")
            shifts -= shifts[a]
        self.shifts = shifts
        ny, nx = self._shape[2:] if hasattr(self, "_shape") else (None, None)
        if ny is None:
            raise InputError("register: call fit_start before set_shifts")
        self.box = common_crop(shifts, (ny, nx)) if self.crop else (0, ny, 0, nx)

    def state(self) -> dict:
        if not hasattr(self, "shifts"):
            return {}
        return {"crop_yx": [int(v) for v in self.box], "max_abs_shift_px": float(np.abs(self.shifts).max(initial=0))}

    def out_shape(self, shape):
        c, z, _, _ = shape
        y0, y1, x0, x1 = self.box
        return (c, z, y1 - y0, x1 - x0)

    def apply_block(self, block, z0):
        y0, y1, x0, x1 = self.box
        out = np.empty((*block.shape[:2], y1 - y0, x1 - x0), dtype=block.dtype)
        for i in range(block.shape[1]):
            for c in range(block.shape[0]):
                out[c, i] = shift_slice(block[c, i], self.shifts[z0 + i], order=int(self.order))[y0:y1, x0:x1]
        return out, z0

    def apply_labels(self, block, z0, *, frame="raw"):
        y0, y1, x0, x1 = self.box
        if frame == "registered":
            return block[:, y0:y1, x0:x1], z0
        out = np.stack([shift_slice(block[i], self.shifts[z0 + i], order=0)[y0:y1, x0:x1]
                        for i in range(block.shape[0])]) if block.shape[0] else block[:, y0:y1, x0:x1]
        return out, z0


def residual_rms(shifts: np.ndarray, true_drift: np.ndarray, *, anchor: int | None = None) -> dict:
    """Residual misalignment after registration against a known drift (phantom ``drift.csv``).

    The phantom moves slice z's content by ``true_drift[z]``; registration moves it back by
    ``shifts[z]``, so the residual position error is ``shifts + true_drift``.

    Returns
    -------
    dict
        ``absolute_rms``: RMS length of the residual with the mean (a common offset of the
        frame) removed; ``anchored_rms``: without removing it (the frame of the labels, when the
        anchor is the phantom's zero-drift slice); ``pairwise_rms``: RMS length of the residual
        between consecutive slices (what a viewer sees as jitter).
    """
    r = np.asarray(shifts, float) + np.asarray(true_drift, float)
    centred = r - r.mean(axis=0)
    d = np.diff(r, axis=0)
    return {"absolute_rms": float(np.sqrt((centred ** 2).sum(1).mean())),
            "anchored_rms": float(np.sqrt((r ** 2).sum(1).mean())),
            "pairwise_rms": float(np.sqrt((d ** 2).sum(1).mean())) if len(d) else 0.0}
