"""Rotation of the slices and a manual crop; both move label volumes the same way."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.preprocess.steps import Step, register_step, restore_dtype


def rotate_slice(image: np.ndarray, angle: float, *, order: int = 1) -> np.ndarray:
    """Rotate a ``(Y, X)`` slice counter-clockwise by ``angle`` degrees about its centre.

    Multiples of 90 degrees are exact (:func:`numpy.rot90`, Y and X swap for 90 / 270); other
    angles keep the shape, fill the corners by reflection and interpolate with ``order``
    (0 for labels, whose corners become 0 = unlabelled).
    """
    image = np.asarray(image)
    a = float(angle) % 360.0
    if a % 90 == 0:
        return np.rot90(image, int(a // 90))
    if order == 0:
        return ndi.rotate(image, a, reshape=False, order=0, mode="constant", cval=0)
    out = ndi.rotate(image.astype(np.float32), a, reshape=False, order=order, mode="reflect")
    return restore_dtype(out, image.dtype)


@register_step
@dataclasses.dataclass
class Rotate(Step):
    """Rotate every slice by ``angle`` degrees (counter-clockwise); see :func:`rotate_slice`."""

    name = "rotate"
    geometric = True

    angle: float = 0.0
    order: int = 1

    def out_shape(self, shape):
        c, z, y, x = shape
        return (c, z, x, y) if float(self.angle) % 180 == 90 else tuple(shape)

    def apply_block(self, block, z0):
        return np.stack([np.stack([rotate_slice(block[c, i], self.angle, order=int(self.order))
                                   for i in range(block.shape[1])]) for c in range(block.shape[0])]), z0

    def apply_labels(self, block, z0, *, frame="raw"):
        return np.stack([rotate_slice(s, self.angle, order=0) for s in block]), z0


def _range(r: Any, n: int, axis: str) -> tuple[int, int]:
    if r is None:
        return 0, n
    if not isinstance(r, (list, tuple)) or len(r) != 2:
        raise InputError(f"crop: {axis} must be [start, stop] or null, got {r!r}")
    a, b, _ = slice(r[0], r[1]).indices(n)
    if b <= a:
        raise InputError(f"crop: {axis} range {list(r)} is empty for an axis of {n}")
    return a, b


@register_step
@dataclasses.dataclass
class Crop(Step):
    """Manual crop; ``z``, ``y``, ``x`` are ``[start, stop]`` (Python slice rules, null = all)."""

    name = "crop"
    geometric = True

    z: Any = None
    y: Any = None
    x: Any = None

    def validate(self) -> None:
        for axis in ("z", "y", "x"):
            r = getattr(self, axis)
            if r is not None and (not isinstance(r, (list, tuple)) or len(r) != 2):
                raise InputError(f"crop: {axis} must be [start, stop] or null, got {r!r}")

    def fit_start(self, shape, dtype, detectors) -> None:
        self._bind(shape)

    def _bind(self, shape) -> None:
        _, nz, ny, nx = shape
        self._box = (_range(self.z, nz, "z"), _range(self.y, ny, "y"), _range(self.x, nx, "x"))

    def out_shape(self, shape):
        self._bind(shape)
        (z0, z1), (y0, y1), (x0, x1) = self._box
        return (shape[0], z1 - z0, y1 - y0, x1 - x0)

    def _zsel(self, n: int, z0: int) -> tuple[slice, int]:
        (a, b), _, _ = self._box
        lo, hi = max(a, z0), min(b, z0 + n)
        if hi <= lo:
            return slice(0, 0), 0
        return slice(lo - z0, hi - z0), lo - a

    def apply_block(self, block, z0):
        sel, nz0 = self._zsel(block.shape[1], z0)
        _, (y0, y1), (x0, x1) = self._box
        return block[:, sel, y0:y1, x0:x1], nz0

    def apply_labels(self, block, z0, *, frame="raw"):
        sel, nz0 = self._zsel(block.shape[0], z0)
        _, (y0, y1), (x0, x1) = self._box
        return block[sel, y0:y1, x0:x1], nz0
