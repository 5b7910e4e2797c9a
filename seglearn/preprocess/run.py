"""``python preprocess.py input=DATASET output=NEW_DATASET [steps=...]``: preprocess a dataset
folder block by block and write a new dataset in the same layout.

Images are read and written a block of slices at a time (one writer thread per detector), so a
1000 x 1k x 1k stack needs a few blocks of memory. Label volumes are moved like the images
(nearest neighbour shifts, same crops). Registration also writes ``registration_shifts.csv`` and
``registration_shifts.png``; ``dataset.yaml`` records the pipeline under ``preprocess:``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from seglearn.config import to_plain
from seglearn.data.layout import _find_image, read_meta
from seglearn.errors import InputError, OutputExistsError
from seglearn.io import open_stack, write_volume_stream
from seglearn.io.outset import OutputSet
from seglearn.log import setup_logging
from seglearn.options import PREPROCESS, check_options
from seglearn.paths import load_config
from seglearn.preprocess.drift import residual_rms
from seglearn.preprocess.pipeline import Pipeline, ReaderSource
from seglearn.preprocess.registration import plot_shifts, read_shifts_csv, write_shifts_csv

log = logging.getLogger("seglearn")

_LABELS = {"train": np.uint8, "test": np.uint8, "truth": np.uint8, "instances": np.uint32}
_STOP = object()


class _StreamWriter:
    """Write a ``(Z, Y, X)`` volume from slices handed over one at a time, in a thread."""

    def __init__(self, path: Path, shape, dtype, voxel_size_nm, *, overwrite: bool, compression=None):
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.error: BaseException | None = None

        def slices():
            while True:
                item = self.q.get()
                if item is _STOP:
                    return
                yield item

        def work():
            try:
                write_volume_stream(path, slices(), shape=shape, dtype=dtype, voxel_size_nm=voxel_size_nm,
                                    overwrite=overwrite, compression=compression)
            except BaseException as exc:  # handed to the main thread
                self.error = exc
                while self.q.get() is not _STOP:  # drain so the producer never blocks
                    pass

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def put(self, slice2d: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(slice2d)

    def close(self, *, raise_error: bool = True) -> None:
        self.q.put(_STOP)
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error


def labels_frame_for(meta: dict, frame: str) -> str:
    """Resolve ``labels_frame: auto``: phantoms keep their labels in the undrifted frame."""
    if frame == "auto":
        return "registered" if meta.get("synthetic") else "raw"
    if frame not in ("raw", "registered"):
        raise InputError(f"preprocess: labels_frame must be auto, raw or registered, got {frame!r}")
    return frame


def preprocess_dataset(input_dir: str | os.PathLike, output_dir: str | os.PathLike, steps: Any, *,
                       chunk: int = 16, overwrite: bool = False, labels_frame: str = "auto",
                       progress: bool = True) -> dict:
    """Preprocess a dataset folder into a new one.

    Parameters
    ----------
    input_dir, output_dir : path-like
        Dataset folders (layout of :mod:`seglearn.data`); ``output_dir`` must not hold a dataset
        unless ``overwrite``, and must differ from ``input_dir``.
    steps : list of dict or Pipeline
        The pipeline (see :meth:`Pipeline.from_config`).
    chunk : int
        Slices per block.
    labels_frame : {"auto", "raw", "registered"}
        Frame of the label volumes: ``raw`` (drawn on the raw slices: shifted with them),
        ``registered`` (already aligned: only cropped); ``auto`` = registered for synthetic
        phantoms (their drift moves only the images), raw otherwise.

    Returns
    -------
    dict
        ``shape`` of the output (C, Z, Y, X), ``state`` of the fitted steps, ``files`` written.
    """
    src, dst = Path(input_dir), Path(output_dir)
    meta = read_meta(src)
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: output must be a new folder, not the input dataset")
    if (dst / "dataset.yaml").exists() and not overwrite:
        raise OutputExistsError(f"{dst}: already holds a dataset; pass overwrite=true to replace it")
    pipe = steps if isinstance(steps, Pipeline) else Pipeline.from_config(steps)
    frame = labels_frame_for(meta, labels_frame)
    # claimed (a second run is refused), written into a temporary sibling, published by rename
    with OutputSet(dst, replace=overwrite, inputs=[src]) as tmp:
        files = _write_dataset(src, tmp, meta, pipe, frame, chunk=chunk, progress=progress)
    log.info("wrote %s: %s", dst, "x".join(map(str, pipe.out_shape[1:])))
    return {"shape": pipe.out_shape, "state": pipe.state(),
            "files": [str(dst / Path(f).relative_to(tmp)) for f in files]}


def _write_dataset(src: Path, dst: Path, meta: dict, pipe: Pipeline, frame: str, *, chunk: int,
                   progress: bool) -> list:
    """Fit ``pipe`` on dataset ``src`` and write the preprocessed dataset into the new, empty folder ``dst``.

    Returns the list of files written.
    """
    readers = []
    for det in meta["detectors"]:
        p = _find_image(src / "images", det)
        if p is None:
            raise InputError(f"{src / 'images' / (det + '.tif')}: detector {det!r} listed in dataset.yaml has no image")
        readers.append(open_stack(p))
    try:
        source = ReaderSource(readers)
        log.info("preprocess %s: %s %s, steps %s", src, "x".join(map(str, source.shape[1:])), source.dtype,
                 [s.name for s in pipe.steps])
        pipe.fit(source, detectors=meta["detectors"], chunk=chunk, progress=progress)
        c, nz, ny, nx = pipe.out_shape
        vs = [float(v) for v in meta["voxel_size_nm"]]
        files = []
        writers = [_StreamWriter(dst / "images" / f"{det}.tif", (nz, ny, nx), source.dtype, vs, overwrite=True)
                   for det in meta["detectors"]]
        try:
            for _, block in pipe.iter_blocks(source, chunk=chunk, progress=progress):
                for ci, w in enumerate(writers):
                    for s in block[ci]:
                        w.put(np.ascontiguousarray(s))
        except BaseException:
            for w in writers:  # stop the writers (their partial files are deleted), keep this error
                w.close(raise_error=False)
            raise
        for w in writers:
            w.close()
        files += [dst / "images" / f"{det}.tif" for det in meta["detectors"]]
    finally:
        for r in readers:
            r.close()
    for name, dtype in _LABELS.items():
        p = src / "labels" / f"{name}.tif"
        if not p.exists():
            continue
        with open_stack(p) as lab:
            if tuple(lab.shape) != tuple(source.shape[1:]):
                raise InputError(f"{p}: labels of shape {lab.shape}, expected the images' shape {source.shape[1:]}")
            blocks = (b.astype(dtype, copy=False) for _, b in pipe.iter_labels(lab, frame=frame, chunk=chunk))
            write_volume_stream(dst / "labels" / f"{name}.tif", (s for b in blocks for s in b), shape=(nz, ny, nx),
                                dtype=dtype, voxel_size_nm=vs, overwrite=True, compression="zlib")
        files.append(dst / "labels" / f"{name}.tif")
    reg = pipe.step("register")
    if reg is not None:
        files.append(write_shifts_csv(dst / "registration_shifts.csv", reg.shifts))
        true = read_shifts_csv(src / "drift.csv") if (src / "drift.csv").exists() else None
        if true is not None and true.shape == reg.shifts.shape:
            res = residual_rms(reg.shifts, true)
            log.info("registration vs %s: residual %.3f px RMS (pairwise %.3f px)", src / "drift.csv",
                     res["absolute_rms"], res["pairwise_rms"])
        else:
            true = None
        files.append(plot_shifts(dst / "registration_shifts.png", reg.shifts, true_drift=true))
    extra = {k: v for k, v in meta.items() if k not in ("name", "detectors", "classes", "voxel_size_nm")}
    extra.pop("preprocess", None)
    out_meta = {"name": meta["name"], "detectors": meta["detectors"], "classes": meta["classes"],
                "voxel_size_nm": vs, **extra,
                "preprocess": {"source": str(src), "steps": pipe.to_config(), "state": pipe.state(),
                               "labels_frame": frame}}
    tmp = dst / ".dataset.yaml.tmp"
    tmp.write_text(yaml.safe_dump(out_meta, sort_keys=False))
    os.replace(tmp, dst / "dataset.yaml")
    files.append(dst / "dataset.yaml")
    return files


def run(cfg) -> dict:
    """Entry point of ``preprocess.py`` (see ``configs/preprocess.yaml``)."""
    setup_logging()
    conf = load_config("preprocess.yaml")
    params = {**{k: conf[k] for k in ("overwrite", "chunk", "labels_frame", "progress")}, **to_plain(cfg)}
    for key in ("input", "output"):
        if params.get(key) in (None, "???"):
            raise InputError(f"preprocess: give {key}=PATH")
    check_options(params, PREPROCESS, "preprocess")
    return preprocess_dataset(params["input"], params["output"], params.get("steps"),
                              chunk=int(params["chunk"]), overwrite=bool(params["overwrite"]),
                              labels_frame=str(params["labels_frame"]), progress=bool(params["progress"]))
