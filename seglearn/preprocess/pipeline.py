"""A preprocessing pipeline: a list of configured steps applied block by block.

``Pipeline.from_config([{"step": "register"}, {"step": "clahe", "clip": 2, "grid": 4}])``
builds it; :meth:`Pipeline.to_config` gives the same plain list back (for a checkpoint's
metadata). :meth:`Pipeline.apply` fits and transforms an in-memory ``(C, Z, Y, X)`` array;
:meth:`Pipeline.fit` + :meth:`Pipeline.iter_blocks` do the same for a stack read from disk a
block at a time, so memory stays bounded by a few blocks whatever the stack length.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator, Sequence

import numpy as np

from seglearn.config import to_plain
from seglearn.errors import InputError
from seglearn.preprocess.steps import STEPS, Step

log = logging.getLogger("seglearn")


class ArraySource:
    """A ``(C, Z, Y, X)`` array seen as a block source."""

    def __init__(self, images: np.ndarray):
        images = np.asarray(images)
        if images.ndim != 4:
            raise InputError(f"preprocess: expected images of shape (C, Z, Y, X), got {images.shape}")
        self.images = images
        self.shape = tuple(images.shape)
        self.dtype = images.dtype

    def read(self, z0: int, z1: int) -> np.ndarray:
        return self.images[:, z0:z1]


class ReaderSource:
    """One :class:`seglearn.io.StackReader` per channel, read a block of slices at a time."""

    def __init__(self, readers: Sequence):
        shapes = {tuple(r.shape) for r in readers}
        if len(shapes) != 1:
            raise InputError(f"{readers[0].path.parent}: detector stacks differ in shape: "
                             f"{ {r.path.name: r.shape for r in readers} }")
        self.readers = list(readers)
        self.shape = (len(readers), *next(iter(shapes)))
        dtypes = {np.dtype(r.dtype) for r in readers}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)

    def read(self, z0: int, z1: int) -> np.ndarray:
        return np.stack([r.read(z0, z1).astype(self.dtype, copy=False) for r in self.readers])


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="slice", disable=not enabled, leave=False, dynamic_ncols=True)


class Pipeline:
    """Ordered preprocessing steps (see :data:`seglearn.preprocess.STEPS` for the names).

    Parameters
    ----------
    steps : sequence of Step
    """

    def __init__(self, steps: Sequence[Step] = ()):
        self.steps = list(steps)
        self._shapes: list[tuple] | None = None
        self.detectors: list[str] | None = None

    # ---- configuration -------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Iterable[dict] | None) -> "Pipeline":
        """Build from a list of ``{"step": name, option: value, ...}`` (None or [] = identity)."""
        config = to_plain(config)
        if config is None:
            return cls([])
        if isinstance(config, dict) and "steps" in config:
            config = config["steps"]
        if isinstance(config, (str, bytes)) or not isinstance(config, (list, tuple)):
            raise InputError(f"preprocess: steps must be a list of {{step: name, ...}} mappings, got {config!r}")
        steps = []
        for i, item in enumerate(config):
            if isinstance(item, str):
                item = {"step": item}
            if not isinstance(item, dict) or "step" not in item:
                raise InputError(f"preprocess: step {i} must be a mapping with a 'step' key, got {item!r}")
            item = dict(item)
            name = item.pop("step")
            if name not in STEPS:
                raise InputError(f"preprocess: unknown step {name!r}; known: {sorted(STEPS)}")
            steps.append(STEPS[name].from_config(item))
        return cls(steps)

    def to_config(self) -> list[dict]:
        """Plain-data list of steps, the inverse of :meth:`from_config`."""
        return [s.to_config() for s in self.steps]

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({[s.name for s in self.steps]})"

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, source, *, detectors: Sequence[str] | None = None, chunk: int = 16,
            progress: bool = True) -> "Pipeline":
        """Fit the steps that need the whole stack, in order (one streaming pass each).

        Parameters
        ----------
        source : ArraySource, ReaderSource or (C, Z, Y, X) ndarray
        detectors : list of str, optional
            Channel names (a step may name its channel).
        chunk : int
            Slices per block.
        """
        if isinstance(source, np.ndarray):
            source = ArraySource(source)
        self.detectors = list(detectors) if detectors is not None else None
        shape = tuple(source.shape)
        self._shapes = [shape]
        for i, step in enumerate(self.steps):
            step.fit_start(shape, source.dtype, self.detectors)
            if step.needs_fit:
                for z0, block in self._iter(source, upto=i, chunk=chunk, desc=f"fit {step.name}", progress=progress):
                    step.fit_block(block, z0)
                step.fit_end()
                log.debug("preprocess: fitted %s %s", step.name, step.state())
            shape = tuple(int(v) for v in step.out_shape(shape))
            self._shapes.append(shape)
        return self

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """``(C, Z, Y, X)`` of the output (after :meth:`fit`)."""
        if self._shapes is None:
            raise InputError("preprocess: pipeline not fitted; call fit() first")
        return self._shapes[-1]  # type: ignore[return-value]

    def state(self) -> list[dict]:
        """Per-step fitted values (crop box, largest shift, ...), plain data."""
        return [{"step": s.name, **s.state()} for s in self.steps]

    def step(self, name: str) -> Step | None:
        """The first step called ``name``, or None."""
        return next((s for s in self.steps if s.name == name), None)

    # ---- transforming --------------------------------------------------------------------
    def _iter(self, source, *, upto: int, chunk: int, desc: str, progress: bool) -> Iterator[tuple[int, np.ndarray]]:
        nz = source.shape[1]
        chunk = max(int(chunk), 1)
        with _progress(nz, desc, progress) as bar:
            for z in range(0, nz, chunk):
                block = source.read(z, min(z + chunk, nz))
                z0 = z
                for step in self.steps[:upto]:
                    block, z0 = step.apply_block(block, z0)
                    if block.shape[1] == 0:
                        break
                bar.update(min(chunk, nz - z))
                if block.shape[1]:
                    yield z0, block

    def iter_blocks(self, source, *, chunk: int = 16, progress: bool = True,
                    desc: str = "preprocess") -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z0, block (C, n, Y', X'))`` of the transformed stack, in z order (after :meth:`fit`)."""
        if isinstance(source, np.ndarray):
            source = ArraySource(source)
        if self._shapes is None or tuple(source.shape) != self._shapes[0]:
            raise InputError(f"preprocess: pipeline fitted on {self._shapes and self._shapes[0]}, "
                             f"applied to {tuple(source.shape)}; call fit() on this stack first")
        yield from self._iter(source, upto=len(self.steps), chunk=chunk, desc=desc, progress=progress)

    def iter_labels(self, source, *, frame: str = "raw", chunk: int = 16) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z0, labels (n, Y', X'))`` moved like the images (nearest neighbour).

        ``source`` is a ``(Z, Y, X)`` array or a :class:`seglearn.io.StackReader`; ``frame`` is
        ``"raw"`` (labels drawn on the raw slices: registration shifts them) or
        ``"registered"`` (labels already aligned, e.g. a phantom's: only cropped).
        """
        if frame not in ("raw", "registered"):
            raise InputError(f"preprocess: labels frame must be 'raw' or 'registered', got {frame!r}")
        if self._shapes is None:
            raise InputError("preprocess: pipeline not fitted; call fit() first")
        nz = source.shape[0]
        if tuple(source.shape) != tuple(self._shapes[0][1:]):
            raise InputError(f"preprocess: labels of shape {tuple(source.shape)} do not match the images "
                             f"{self._shapes[0][1:]}")
        read = source.read if hasattr(source, "read") else (lambda a, b: np.asarray(source[a:b]))
        for z in range(0, nz, max(int(chunk), 1)):
            block, z0 = read(z, min(z + chunk, nz)), z
            for step in self.steps:
                if step.geometric:
                    block, z0 = step.apply_labels(block, z0, frame=frame)
                if block.shape[0] == 0:
                    break
            if block.shape[0]:
                yield z0, block

    def apply(self, images: np.ndarray, *, detectors: Sequence[str] | None = None, chunk: int = 16,
              progress: bool = False) -> np.ndarray:
        """Fit on ``images`` and return them transformed.

        Parameters
        ----------
        images : (C, Z, Y, X) ndarray

        Returns
        -------
        (C, Z', Y', X') ndarray
            Same dtype; Z', Y', X' change with registration crop, rotation and crop steps.
        """
        src = ArraySource(images)
        self.fit(src, detectors=detectors, chunk=chunk, progress=progress)
        out = np.empty(self.out_shape, dtype=src.dtype)
        for z0, block in self.iter_blocks(src, chunk=chunk, progress=progress):
            out[:, z0: z0 + block.shape[1]] = block
        return out

    def apply_labels(self, labels: np.ndarray, *, frame: str = "raw") -> np.ndarray:
        """Transform a ``(Z, Y, X)`` label volume like the images of the last :meth:`fit`."""
        labels = np.asarray(labels)
        out = np.zeros(self.out_shape[1:], dtype=labels.dtype)
        for z0, block in self.iter_labels(labels, frame=frame, chunk=64):
            out[z0: z0 + block.shape[0]] = block
        return out
