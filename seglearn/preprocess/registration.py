"""Slice registration: drift between slices by sub-pixel phase correlation (refined by
re-estimation) or TV-L1 optical flow, estimated on one detector, applied to every detector and to
label volumes, then a crop to the area common to all slices. Consecutive-slice estimates are
chained; with ``lags`` the estimates between slices further apart are added and all of them are
solved for the slice positions by weighted least squares.

The estimation is :mod:`seglearn.preprocess.drift`; this module is the pipeline step, the shifts CSV
and its plot. The shifts depend on the whole stack (not a per-slice function): a pipeline re-applied at
prediction time re-estimates them on the new stack; only the parameters are stored.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.preprocess.drift import METHODS, common_crop, pair_shift, solve_positions
from seglearn.preprocess.steps import Step, register_step, resolve_channel, restore_dtype

log = logging.getLogger("seglearn")

ROI_MIN = 16  # smallest side (px) of a registration roi


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
        Shift estimator between two slices (see :func:`pair_shift`).
    channel : int, str or "auto"
        Detector the drift is estimated on (index or name); the shifts move every detector.
        ``auto``: InLens when the stack has it (surface-sensitive, its estimates drift least on
        phantoms; SE2's topographic edge contrast biases them), else channel 0.
    upsample : int
        Sub-pixel precision of phase correlation (1/upsample px).
    margin : float
        Share of each border left out of the estimate.
    roi : None or [y0, y1, x0, x1]
        Estimate the shifts on this rectangle of each slice only (``y0:y1, x0:x1``, at least
        ``ROI_MIN`` px each way, in pixels of the slices this step receives: the raw slices when
        it comes first in the pipeline) instead of the central part left by
        ``margin``: a region around a fiducial mark milled into the protective cap above the
        face, which does not change with depth (the microstructure does, and registration on it
        accumulates the apparent motion of inclined interfaces; ``docs/bench_preprocess.md``).
        The shifts still move the whole slice of every detector and the labels.
    anchor : "middle", "first" or int
        Slice that keeps its position (shift 0); the others are moved onto its frame.
    crop : bool
        Crop to the area valid in every registered slice.
    order : int
        Interpolation order of the image shifts (labels always use nearest neighbour).
    tvl1_downsample : int
        Block-average factor before TV-L1 (speed).
    refine : int
        Re-estimation passes per pair (see :func:`pair_shift`); 0 = a single estimate.
    lags : list of int
        Slice distances whose shifts are estimated: ``[1]`` chains consecutive slices; e.g.
        ``[1, 2, 4]`` adds pairs 2 and 4 slices apart and solves all of them by weighted least
        squares (:func:`solve_positions`; weight ``(1 - phase-correlation error) / lag**2``),
        keeping the last ``max(lags)`` slices of one detector in memory. It only helps when the
        structure changes little over the longest lag (thin slices, or a fiducial ``roi``; see
        ``docs/bench_preprocess.md``: on the microstructure of the default 30 nm phantoms it
        does not).
    tolerance : float
        Long-lag estimates further than ``tolerance * sqrt(lag)`` px from the consecutive chain
        are dropped.
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
    roi: Any = None
    anchor: Any = "middle"
    crop: bool = True
    order: int = 1
    tvl1_downsample: int = 1
    refine: int = 1
    lags: Any = (1,)
    tolerance: float = 1.0
    max_shift: float = 50.0

    def __post_init__(self) -> None:
        if isinstance(self.lags, int):
            self.lags = (self.lags,)
        try:
            self.lags = tuple(sorted({int(v) for v in self.lags} | {1})) if self.lags is not None else (1,)
        except (TypeError, ValueError) as exc:
            raise InputError(f"register: lags must be a list of slice distances, got {self.lags!r}") from exc

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"register: method must be one of {METHODS}, got {self.method!r}")
        if not 0 <= float(self.margin) < 0.5:
            raise InputError(f"register: margin must be in [0, 0.5), got {self.margin}")
        if int(self.upsample) < 1 or int(self.tvl1_downsample) < 1:
            raise InputError("register: upsample and tvl1_downsample must be >= 1")
        if int(self.order) not in range(6):
            raise InputError(f"register: order must be 0..5, got {self.order}")
        if int(self.refine) < 0 or min(self.lags) < 1 or float(self.tolerance) <= 0:
            raise InputError(f"register: refine must be >= 0, lags >= 1 and tolerance > 0, got refine={self.refine}, "
                             f"lags={list(self.lags)}, tolerance={self.tolerance}")
        if not (self.anchor in ("middle", "first") or isinstance(self.anchor, int)):
            raise InputError(f"register: anchor must be 'middle', 'first' or a slice index, got {self.anchor!r}")
        if self.roi is not None:
            self._check_roi(None)

    def _check_roi(self, shape_yx: tuple[int, int] | None) -> None:
        """Raise :class:`InputError` unless ``roi`` is ``[y0, y1, x0, x1]`` inside a ``shape_yx`` slice."""
        roi = self.roi
        ok = isinstance(roi, (list, tuple)) and len(roi) == 4 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in roi)
        if not ok:
            raise InputError(f"register: roi must be null or [y0, y1, x0, x1] (4 ints, px of the raw slice), "
                             f"got {roi!r}")
        y0, y1, x0, x1 = (int(v) for v in roi)
        if min(y0, x0) < 0 or y1 - y0 < ROI_MIN or x1 - x0 < ROI_MIN:
            raise InputError(f"register: roi [y0, y1, x0, x1] needs 0 <= y0, 0 <= x0, y1 - y0 >= {ROI_MIN} and "
                             f"x1 - x0 >= {ROI_MIN} px, got {list(roi)}")
        if shape_yx is not None and (y1 > shape_yx[0] or x1 > shape_yx[1]):
            raise InputError(f"register: roi {list(roi)} does not fit in slices of {shape_yx[0]} x {shape_yx[1]} px "
                             f"(y1 <= {shape_yx[0]}, x1 <= {shape_yx[1]})")

    # fitting: one pass, keeping only the last max(lags) slices of the chosen channel
    def fit_start(self, shape, dtype, detectors) -> None:
        channel = self.channel
        if channel == "auto":
            channel = "InLens" if detectors and "InLens" in detectors else 0
        self._c = resolve_channel(channel, detectors, shape[0])
        self._shape = tuple(shape)
        if self.roi is not None:
            self._check_roi(tuple(shape[2:]))
        self._roi = None if self.roi is None else tuple(int(v) for v in self.roi)
        self._pairs: list[tuple[int, int, np.ndarray, float]] = []
        self._recent: dict[int, np.ndarray] = {}

    def fit_block(self, block: np.ndarray, z0: int) -> None:
        keep = max(self.lags)
        for i in range(block.shape[1]):
            z = z0 + i
            cur = np.asarray(block[self._c, i], dtype=np.float32)
            for lag in self.lags:
                ref = self._recent.get(z - lag)
                if ref is None:
                    continue
                s, err = pair_shift(ref, cur, method=self.method, upsample=int(self.upsample),
                                    margin=float(self.margin), roi=self._roi,
                                    tvl1_downsample=int(self.tvl1_downsample), refine=int(self.refine),
                                    return_error=True)
                w = max(1.0 - err, 1e-3) / lag ** 2
                if np.abs(s).max() > float(self.max_shift) * lag:
                    if lag == 1:
                        log.warning("register: slice %d shift %s px exceeds max_shift; set to 0", z, s.round(2))
                        s, w = np.zeros(2), 1e-3
                    else:
                        continue
                self._pairs.append((z - lag, z, s, w))
            self._recent[z] = cur
            self._recent.pop(z - keep, None)

    def fit_end(self) -> None:
        self.set_shifts(solve_positions(self._pairs, self._shape[1], tolerance=float(self.tolerance)), anchor=True)
        self._recent = {}

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
