"""The step protocol of a preprocessing pipeline and the registry of step names.

A step works on blocks of consecutive slices ``(C, n, Y, X)`` so a stack of any length is
processed with bounded memory. A step that needs statistics of the whole stack (registration
shifts, reference histograms) sets ``needs_fit`` and receives every block once in a fitting pass
before any block is transformed. Parameters are dataclass fields (plain data, the serialised
config); fitted values live in attributes set by ``fit_*`` and are reported by :meth:`Step.state`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from seglearn.errors import InputError

STEPS: dict[str, type["Step"]] = {}


def register_step(cls: type["Step"]) -> type["Step"]:
    """Class decorator adding a step to :data:`STEPS` under ``cls.name``."""
    STEPS[cls.name] = cls
    return cls


def restore_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back to the stack's dtype (integers are rounded and clipped to range)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(image), info.min, info.max).astype(dtype)
    return image.astype(np.float32 if dtype.itemsize <= 4 else dtype, copy=False)


def dtype_range(dtype: np.dtype, image: np.ndarray | None = None) -> tuple[float, float]:
    """Full range of an integer dtype, or the image's own range for floats."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if image is None or image.size == 0:
        return 0.0, 1.0
    return float(image.min()), float(image.max())


@dataclasses.dataclass
class Step:
    """Base class: identity on images and labels, nothing to fit."""

    name: ClassVar[str] = "step"
    needs_fit: ClassVar[bool] = False
    geometric: ClassVar[bool] = False  # True when the step moves voxels (labels follow it)

    # ---- configuration -------------------------------------------------------------------
    def to_config(self) -> dict:
        """Plain-data parameters, ``{"step": name, ...}``."""
        out = {"step": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_config(cls, cfg: dict) -> "Step":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise InputError(f"preprocess step {cls.name!r}: unknown option(s) {unknown}; known: {sorted(names)}")
        try:
            step = cls(**cfg)
        except TypeError as exc:
            raise InputError(f"preprocess step {cls.name!r}: {exc}") from exc
        step.validate()
        return step

    def validate(self) -> None:
        """Raise :class:`InputError` for bad parameter values."""

    # ---- fitting -------------------------------------------------------------------------
    def fit_start(self, shape: tuple[int, int, int, int], dtype: np.dtype, detectors: list[str] | None) -> None:
        """Called before the fitting pass with the input ``(C, Z, Y, X)`` shape of this step."""

    def fit_block(self, block: np.ndarray, z0: int) -> None:
        """Accumulate statistics of slices ``z0 : z0 + n`` of ``block`` ``(C, n, Y, X)``."""

    def fit_end(self) -> None:
        """Finish fitting (all blocks seen)."""

    def state(self) -> dict:
        """Fitted values worth reporting (plain data)."""
        return {}

    # ---- transforming --------------------------------------------------------------------
    def out_shape(self, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """``(C, Z, Y, X)`` after this step for an input of ``shape``."""
        return tuple(shape)  # type: ignore[return-value]

    def apply_block(self, block: np.ndarray, z0: int) -> tuple[np.ndarray, int]:
        """Transform slices ``z0 : z0 + n``; returns the block and its first output slice index."""
        return block, z0

    def apply_labels(self, block: np.ndarray, z0: int, *, frame: str = "raw") -> tuple[np.ndarray, int]:
        """Move label slices ``(n, Y, X)`` like the images (nearest neighbour); identity by default.

        ``frame`` is ``"raw"`` when the labels were drawn on the raw (drifted) slices and
        ``"registered"`` when they already lie in the registered frame (phantom labels).
        """
        return block, z0


def per_slice(block: np.ndarray, func, *args, **kwargs) -> np.ndarray:
    """Apply a 2D function ``(Y, X) -> (Y', X')`` to every slice of every channel of ``block``."""
    out = [[func(block[c, z], *args, **kwargs) for z in range(block.shape[1])] for c in range(block.shape[0])]
    return np.stack([np.stack(ch) for ch in out]) if block.shape[1] else block


def resolve_channel(channel: Any, detectors: list[str] | None, n_channels: int) -> int:
    """Channel index from an int or a detector name."""
    if isinstance(channel, str):
        if detectors is None or channel not in detectors:
            if channel.lstrip("-").isdigit():
                channel = int(channel)
            else:
                raise InputError(f"preprocess: no detector {channel!r} to register on (detectors {detectors})")
        else:
            return detectors.index(channel)
    idx = int(channel)
    if not -n_channels <= idx < n_channels:
        raise InputError(f"preprocess: channel {idx} out of range for {n_channels} channel(s)")
    return idx % n_channels
