"""``python predict.py ckpt=C input=DATASET_OR_FILES output=OUT`` for U-Net checkpoints.

The input (TIFF stacks, OME-Zarr images or folders of slices) is read, predicted and written a block of
slices at a time, as many as ``memory_budget_gib`` allows (``block_slices=auto``; bands of rows when one
slice alone does not fit), so a tomogram larger than memory works: OUT/labels.tif (ids 1..K, BigTIFF when
large), optionally OUT/probabilities.tif (float16, Z x K x Y x X), or with ``output_format=ome-zarr``
OUT/labels.ome.zarr and OUT/probabilities.ome.zarr (multiscale, with the voxel size); OUT/summary.json
and OUT/preview.png. Inputs and outputs: :mod:`seglearn.segment.predict_io`.

:func:`predict` reads the config once (:class:`~seglearn.segment.predict_options.Options`); the steps
below take plain arguments. Started by ``torchrun`` (``WORLD_SIZE`` > 1), the work is split over the
processes by :func:`seglearn.segment.predict_dist.predict_distributed`.
"""


from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from seglearn.errors import InputError
from seglearn.io import open_stack, write_volume_stream
from seglearn.log import setup_logging
from seglearn.preprocess.registration import write_shifts_csv
from seglearn.preprocess.run import labels_frame_for
from seglearn.preprocess.stage import preprocess_to_disk
from seglearn.segment.adapt import adapt_for_prediction, resolve_predict_alpha
from seglearn.segment.api import labels_from, segmenter_from_checkpoint
from seglearn.segment.calibrate import uncertainty_map
from seglearn.segment.predict_dist import predict_distributed, world
from seglearn.segment.predict_io import (
    Run,
    Stats,
    finish,
    finish_writers,
    match_names,
    memory_plan,
    open_inputs,
    open_test,
    prepare_output,
    publish,
    raw_reader,
    voxel_size,
    write_probabilities_tif,
    writers,
)
from seglearn.segment.predict_guard import warn_axis_order
from seglearn.segment.predict_options import Options
from seglearn.segment.tta import check_mode

log = logging.getLogger("seglearn")


class _ArrayReader:
    """A ``(Z, Y, X)`` array (a memmap of the preprocessed stack) with the reader calls predict uses."""

    def __init__(self, array, voxel_size_nm=None):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.voxel_size_nm = voxel_size_nm

    def read(self, z0: int, z1: int) -> np.ndarray:
        return np.asarray(self.array[z0:z1])

    def close(self) -> None:
        self.array = None


def _run_preprocess(entry: dict, seg, src: dict, where: str, tmp: Path, test, *, labels_frame: str,
                    block_slices) -> dict:
    """The checkpoint's steps ``entry`` re-fitted on this stack into memmaps under ``tmp`` (removed on failure)."""
    dets = list(entry.get("detectors") or seg.detectors)
    paths = match_names(seg, src["files"], where, dets)  # registration may use a detector the network does not
    raw = [open_stack(p) for p in paths]
    try:
        frame = labels_frame_for({"synthetic": src.get("synthetic")}, labels_frame)
        done = preprocess_to_disk(raw, entry, tmp, labels=test, labels_frame=frame,
                                  chunk=block_slices if isinstance(block_slices, int) else 32)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for r in raw:
            r.close()
    return {**done, "frame": frame, "detectors": dets}


def preprocess_inputs(entry: dict, seg, src: dict, where: str, out: Path, readers: list, test, *,
                      labels_frame: str = "auto", block_slices=None):
    """Re-apply the checkpoint's preprocessing (``entry = meta["preprocess"]``) to the input.

    The steps are re-fitted on this stack (registration shifts, crop) and the result goes to
    temporary memmaps in OUT (removed at the end). Returns None without preprocessing, else
    ``(readers, test, shape, summary_extra, tmp_dir)`` where the readers and test labels now serve the
    preprocessed stack; the raw readers and ``test`` are closed.
    """
    if not (entry or {}).get("steps"):
        return None
    tmp = out / f".preprocess.tmp-{os.getpid()}"
    done = _run_preprocess(entry, seg, src, where, tmp, test, labels_frame=labels_frame, block_slices=block_slices)
    raw_shape = list(readers[0].shape)
    voxel = readers[0].voxel_size_nm
    for r in readers:
        r.close()
    if test is not None:
        test.close()
    pipe, dets = done["pipeline"], done["detectors"]
    new = [_ArrayReader(done["images"][dets.index(d)], voxel) for d in seg.detectors]
    new_test = _ArrayReader(done["labels"]) if done["labels"] is not None else None
    shape = tuple(int(v) for v in done["images"].shape[1:])
    extra = {"preprocess": {"steps": pipe.to_config(), "state": pipe.state(), "raw_shape": raw_shape,
                            "shape": list(shape), "test_labels_frame": done["frame"] if new_test is not None else None}}
    reg = pipe.step("register")
    if reg is not None:
        write_shifts_csv(out / "registration_shifts.csv", reg.shifts)
        extra["preprocess"]["shifts"] = "registration_shifts.csv"
    log.info("preprocessed %s with the checkpoint's steps %s: %s -> %s", where, [s.name for s in pipe.steps],
             "x".join(map(str, raw_shape)), "x".join(map(str, shape)))
    return new, new_test, shape, extra, tmp


class _Sinks:
    """Where the blocks of one prediction go: the label writer is the caller's; probabilities and
    uncertainty go to float16 memmaps in OUT (TIFF output) or to the OME-Zarr writers."""

    def __init__(self, out: Path, shape, k: int, zarr_out, want_probs: bool, want_unc: bool):
        self.zarr_out = zarr_out
        self.want_unc = want_unc
        tiff = zarr_out is None
        self.unc_tmp = out / f".uncertainty.f16.tmp-{os.getpid()}"
        self.probs_tmp = out / f".probabilities.f16.tmp-{os.getpid()}"
        self.unc_mm = (np.lib.format.open_memmap(self.unc_tmp, mode="w+", dtype=np.float16, shape=tuple(shape))
                       if want_unc and tiff else None)
        self.probs_mm = (np.lib.format.open_memmap(self.probs_tmp, mode="w+", dtype=np.float16,
                                                   shape=(shape[0], k, *shape[1:])) if want_probs and tiff else None)

    def add(self, z0: int, probs: np.ndarray):
        """Store the block ``probs`` ``(K, zb, Y, X)``; returns its uncertainty (or None)."""
        z1 = z0 + probs.shape[1]
        if self.probs_mm is not None:
            self.probs_mm[z0:z1] = probs.transpose(1, 0, 2, 3)
        if self.zarr_out is not None and self.zarr_out[1] is not None:
            self.zarr_out[1].write(z0, probs.astype(np.float16))
        unc = uncertainty_map(probs) if self.want_unc else None
        if self.unc_mm is not None:
            self.unc_mm[z0:z1] = unc
        if self.zarr_out is not None and self.zarr_out[2] is not None:
            self.zarr_out[2].write(z0, unc)
        return unc

    def write_tiffs(self, out: Path, shape, k: int, voxel) -> None:
        """OUT/probabilities.tif and OUT/uncertainty.tif from the memmaps, which are then removed."""
        if self.probs_mm is not None:
            self.probs_mm.flush()
            mm = self.probs_mm
            write_probabilities_tif(out, shape, k, (mm[z, c] for z in range(shape[0]) for c in range(k)), voxel)
            self.probs_mm = None
            self.probs_tmp.unlink(missing_ok=True)
        if self.unc_mm is not None:
            self.unc_mm.flush()
            mm = self.unc_mm
            write_volume_stream(out / "uncertainty.tif", (mm[z] for z in range(shape[0])), shape=shape,
                                dtype=np.float16, voxel_size_nm=voxel, overwrite=True)
            self.unc_mm = None
            self.unc_tmp.unlink(missing_ok=True)

    def remove(self) -> None:
        self.probs_mm = self.unc_mm = None
        for tmp in (self.probs_tmp, self.unc_tmp):
            if tmp.exists():
                tmp.unlink()


def _label_blocks(seg, read_raw, shape, stats: Stats, sinks: _Sinks, iter_kwargs: dict):
    """``(z0, labels)`` block by block; probabilities and uncertainty go to ``sinks``, counts to ``stats``."""
    preview_z = shape[0] // 2
    for z0, probs in seg.iter_proba(read_raw, shape, progress=True, **iter_kwargs):
        z1 = z0 + probs.shape[1]
        labels, blank = labels_from(probs, read_raw(z0, z1))
        stats.blank += [z0 + z for z in blank]
        unc = sinks.add(z0, probs)
        stats.add(z0, labels)
        stats.add_unsure(labels, probs, unc)
        if stats.preview["z"] is None and z0 <= preview_z < z1:
            stats.preview.update(z=preview_z, labels=labels[preview_z - z0], test=None)
        if unc is not None and stats.preview["z"] is not None and z0 <= stats.preview["z"] < z1:
            stats.preview["uncertainty"] = unc[stats.preview["z"] - z0]
        log.debug("predicted slices %d-%d", z0, z1)
        yield z0, labels


def write_outputs(opts: Options, run: Run, stats: Stats, read_raw) -> dict:
    """Predict block by block into OUT (labels, probabilities, uncertainty); returns the summary's output entries."""
    seg, shape, out, k = run.seg, run.shape, run.out, run.seg.n_classes
    plan = memory_plan(opts.block_slices, opts.memory_budget_gib, seg, run.readers, shape)
    zarr_out = writers(opts.output_format, out, shape, k, run.voxel, seg.classes, plan, opts.probabilities,
                       opts.uncertainty)
    sinks = _Sinks(out, shape, k, zarr_out, opts.probabilities, opts.uncertainty)
    try:
        blocks = _label_blocks(seg, read_raw, shape, stats, sinks, opts.iter_kwargs(plan))
        if zarr_out is None:
            write_volume_stream(out / "labels.tif", (s for _, labels in blocks for s in labels), shape=shape,
                                dtype=np.uint8, voxel_size_nm=run.voxel, overwrite=True)
        else:
            for z0, labels in blocks:
                zarr_out[0].write(z0, labels)
            finish_writers(zarr_out, plan["block_slices"])
        sinks.write_tiffs(out, shape, k, run.voxel)
    finally:
        sinks.remove()
    ext = "tif" if zarr_out is None else "ome.zarr"
    return {"memory": plan, "output_format": opts.output_format, "labels": f"labels.{ext}",
            "probabilities": f"probabilities.{ext}" if opts.probabilities else None,
            "uncertainty": f"uncertainty.{ext}" if opts.uncertainty else None}


def _check_distributed(opts: Options, ckpt: dict) -> None:
    if (ckpt.get("meta", {}).get("preprocess") or {}).get("steps"):
        raise InputError(f"{opts.ckpt}: the checkpoint has preprocessing steps, which distributed prediction "
                         f"does not re-apply; preprocess the input with preprocess.py first, or predict "
                         f"in one process")
    if opts.uncertainty:
        raise InputError("uncertainty=true: distributed prediction (torchrun) does not write it yet; predict "
                         "in one process, or compute it from probabilities=true")


def predict(cfg, ckpt: dict, *, noise_rule: Callable | None = None) -> dict:
    """Predict ``cfg.input`` with the U-Net checkpoint ``ckpt`` (loaded by :mod:`seglearn.runner`).

    ``noise_rule``: the in-plane smoothing rule of ``adapt=`` (:func:`seglearn.segment.adapt.adapt_to_volume`;
    the runner passes the pretraining one, :func:`seglearn.pretrain.adapt.zero_shot_noise_rule`).
    Under ``torchrun`` with more than one process: :func:`~seglearn.segment.predict_dist.predict_distributed`.

    Returns
    -------
    dict
        The summary written to OUT/summary.json.
    """
    opts = Options.from_config(cfg)
    check_mode(opts.tta)  # a bad setting fails before any output is made
    resolve_predict_alpha(opts.adapt, ckpt["meta"], opts.ckpt)
    if world()[1] > 1:
        _check_distributed(opts, ckpt)
        return predict_distributed(opts, ckpt, noise_rule=noise_rule)
    setup_logging()
    return predict_local(opts, ckpt, noise_rule=noise_rule)


def _open(opts: Options, ckpt: dict, seg, t0: float, noise_rule):
    """Open the input, claim OUT, re-apply preprocessing and adapt the model: ``(run, oset, test, extra, tmp)``.

    On an error every reader opened here is closed and OUT abandoned."""
    src, where, paths, readers = open_inputs(opts.input, opts.detectors, seg)
    oset = test = pre = None
    try:
        shape = readers[0].shape
        warn_axis_order(shape, where)
        voxel, voxel_extra = voxel_size(opts.voxel_size_nm, src, readers, seg, where)
        if src.get("classes") and list(src["classes"]) != seg.classes:
            log.warning("dataset classes %s differ from the checkpoint's %s", src["classes"], seg.classes)
        oset = prepare_output(opts, src["name"], where)
        test = open_test(src, shape, seg.n_classes, classes=seg.classes)
        pre = preprocess_inputs(ckpt.get("meta", {}).get("preprocess"), seg, src, where, oset.tmp, readers, test,
                                labels_frame=opts.labels_frame, block_slices=opts.block_slices)
        extra, pre_tmp = {}, None
        if pre is not None:  # predict the registered, cropped frame of this stack
            readers, test, shape, extra, pre_tmp = pre
            paths = [f"{where} (preprocessed: {d})" for d in seg.detectors]
        adapted, adapt_info, intensity = adapt_for_prediction(ckpt, raw_reader(paths, readers), shape, seg.detectors,
                                                              opts.adapt, where=where, ckpt_name=opts.ckpt,
                                                              noise_rule=noise_rule)
        if adapted is not ckpt:
            seg = segmenter_from_checkpoint(adapted, device=opts.device, bf16=opts.bf16)
    except BaseException:
        for r in readers:
            r.close()
        if test is not None:
            test.close()
        if pre is not None:
            shutil.rmtree(pre[4], ignore_errors=True)
        if oset is not None:
            oset.abandon()
        raise
    extra = {**extra, **voxel_extra, "intensity": intensity, **({"adapt": adapt_info} if adapt_info is not None else {})}
    run = Run(seg=seg, src=src, where=where, readers=readers, shape=shape, voxel=voxel, out=oset.tmp, t0=t0)
    return run, raw_reader(paths, readers), oset, test, extra, pre_tmp


def predict_local(opts: Options, ckpt: dict, *, noise_rule: Callable | None = None) -> dict:
    """:func:`predict` in this process."""
    t0 = time.perf_counter()
    seg = segmenter_from_checkpoint(ckpt, device=opts.device, bf16=opts.bf16)
    run, read_raw, oset, test, extra, pre_tmp = _open(opts, ckpt, seg, t0, noise_rule)
    try:
        stats = Stats(run.seg.n_classes, run.shape[0], test)
        extra.update(write_outputs(opts, run, stats, read_raw))
        summary = finish(opts, run, stats, extra)
    except BaseException:
        oset.abandon()  # the output folder stays as it was; the temporary set is deleted
        raise
    finally:
        for r in run.readers:
            r.close()
        if test is not None:
            test.close()
        if pre_tmp is not None:
            shutil.rmtree(pre_tmp, ignore_errors=True)
    return publish(oset, summary)
