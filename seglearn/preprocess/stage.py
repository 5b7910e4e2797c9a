"""The preprocessing stage inside train / predict / benchmark.

``train.py ... preprocess=NAME`` (or ``preprocess.steps=[...]``) preprocesses the loaded dataset
before training and stores :func:`checkpoint_entry` (the steps, the detectors they saw, the
labels frame) in the checkpoint's metadata; ``predict.py`` re-applies it to the new stack with
:func:`preprocess_to_disk` (the fitted values, e.g. registration shifts, are re-estimated on that
stack) and predicts in its registered, cropped frame. ``benchmark.py ... preprocess=NAME``
preprocesses the dataset with :func:`preprocess_loaded` before fitting the methods.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seglearn.config import to_plain
from seglearn.errors import InputError
from seglearn.preprocess.pipeline import Pipeline, ReaderSource
from seglearn.preprocess.run import labels_frame_for

log = logging.getLogger("seglearn")

_LABELS = ("train", "test", "truth", "instances")


def stage_config(cfg) -> tuple[list[dict], str]:
    """``(steps, labels_frame)`` of the ``preprocess`` entry of a train / benchmark config.

    The entry is a config group (``preprocess=register`` gives ``{steps: [...]}``), a plain
    list of steps, or absent / null (no preprocessing). ``labels_frame`` may sit beside
    ``steps`` (default ``auto``).
    """
    cfg = to_plain(cfg)
    entry = cfg.get("preprocess") if isinstance(cfg, dict) else None
    frame = "auto"
    if isinstance(entry, dict):
        frame = str(entry.get("labels_frame", "auto"))
        unknown = sorted(set(entry) - {"steps", "labels_frame"})
        if unknown:
            raise InputError(f"preprocess: unknown key(s) {unknown}; expected steps (a list of steps) and labels_frame")
        entry = entry.get("steps")
    return Pipeline.from_config(entry).to_config(), frame


def preprocess_loaded(ds, config: Any, *, labels_frame: str = "auto", progress: bool = True):
    """Preprocess an in-memory :class:`~seglearn.data.Dataset`.

    Parameters
    ----------
    ds : Dataset
    config : list of dict, ``{steps: [...]}`` or None
        The pipeline (None or empty: ``ds`` is returned unchanged).
    labels_frame : {"auto", "raw", "registered"}
        See :func:`seglearn.preprocess.run.labels_frame_for`.

    Returns
    -------
    ds : Dataset
        A new dataset: images and every label volume transformed, ``extra["preprocess"]`` set.
    entry : dict or None
        :func:`checkpoint_entry` of the fitted pipeline (None when there are no steps).
    """
    pipe = Pipeline.from_config(config)
    if not len(pipe):
        return ds, None
    frame = labels_frame_for(ds.extra, labels_frame)
    log.info("preprocess %s: steps %s (labels frame %s)", ds.name, [s.name for s in pipe.steps], frame)
    images = pipe.apply(ds.images, detectors=ds.detectors, progress=progress)
    labels = {k: pipe.apply_labels(getattr(ds, k), frame=frame) for k in _LABELS if getattr(ds, k) is not None}
    entry = checkpoint_entry(pipe, ds.detectors, frame)
    log.info("preprocess %s: %s -> %s", ds.name, "x".join(map(str, ds.shape)), "x".join(map(str, images.shape[1:])))
    return dataclasses.replace(ds, images=images, **labels, extra={**ds.extra, "preprocess": entry}), entry


def checkpoint_entry(pipe: Pipeline, detectors: Sequence[str], frame: str) -> dict:
    """Plain data for a checkpoint's ``meta["preprocess"]``: ``steps`` (parameters only),
    ``detectors`` (the channels the pipeline saw, in order), ``labels_frame`` and the ``state``
    fitted on the training stack (for the record; predict re-fits)."""
    return {"steps": pipe.to_config(), "detectors": list(detectors), "labels_frame": frame,
            "state": _plain(pipe.state())}


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def preprocess_to_disk(readers: Sequence, entry: dict, tmp_dir: Path, *, labels=None, labels_frame: str = "raw",
                       chunk: int = 16, progress: bool = True) -> dict:
    """Re-apply a checkpoint's preprocessing to a stack read from disk, into temporary memmaps.

    Parameters
    ----------
    readers : sequence of StackReader
        One per detector of ``entry["detectors"]``, in that order.
    entry : dict
        :func:`checkpoint_entry`.
    tmp_dir : Path
        Folder for the memmaps (deleted by the caller; as large as the preprocessed stack).
    labels : StackReader, optional
        Test labels of the raw stack, moved like the images.
    labels_frame : {"raw", "registered"}
        Frame of those labels (``registered`` for phantoms: only cropped).

    Returns
    -------
    dict
        ``images`` (C, Z', Y', X') memmap, ``labels`` (Z', Y', X') memmap or None, ``pipeline``
        (fitted), ``files`` (the memmap paths).
    """
    pipe = Pipeline.from_config(entry.get("steps"))
    source = ReaderSource(readers)
    pipe.fit(source, detectors=list(entry.get("detectors") or []) or None, chunk=chunk, progress=progress)
    shape = pipe.out_shape
    if min(shape) < 1:
        raise InputError(f"preprocess: the checkpoint's steps leave nothing of the input ({shape})")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    img_path = tmp_dir / "preprocessed_images.npy"
    images = np.lib.format.open_memmap(img_path, mode="w+", dtype=source.dtype, shape=shape)
    for z0, block in pipe.iter_blocks(source, chunk=chunk, progress=progress, desc="preprocess"):
        images[:, z0: z0 + block.shape[1]] = block
    images.flush()
    files = [img_path]
    lab = None
    if labels is not None:
        lab_path = tmp_dir / "preprocessed_test.npy"
        lab = np.lib.format.open_memmap(lab_path, mode="w+", dtype=np.uint8, shape=shape[1:])
        for z0, block in pipe.iter_labels(labels, frame=labels_frame, chunk=chunk):
            lab[z0: z0 + block.shape[0]] = block
        lab.flush()
        files.append(lab_path)
    return {"images": images, "labels": lab, "pipeline": pipe, "files": files}
