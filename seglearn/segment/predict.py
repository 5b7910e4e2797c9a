"""``python predict.py ckpt=C input=DATASET_OR_FILES output=OUT`` for U-Net checkpoints.

The input (TIFF stacks, OME-Zarr images or folders of slices) is read, predicted and written a block of
slices at a time, as many as ``memory_budget_gib`` allows (``block_slices=auto``; bands of rows when one
slice alone does not fit), so a tomogram larger than memory works: OUT/labels.tif (ids 1..K, BigTIFF when
large), optionally OUT/probabilities.tif (float16, Z x K x Y x X), or with ``output_format=ome-zarr``
OUT/labels.ome.zarr and OUT/probabilities.ome.zarr (multiscale, with the voxel size); OUT/summary.json
and OUT/preview.png. Inputs and outputs: :mod:`seglearn.segment.predict_io`.

Started by ``torchrun`` (``WORLD_SIZE`` > 1), each process predicts every ``WORLD_SIZE``-th block
into shared zarr stores (OUT/labels.zarr, OUT/probabilities.zarr, chunked by block so no two
processes write one chunk), on GPU ``LOCAL_RANK`` when there are GPUs; rank 0 then writes the
same output files. OUT must be on a file system every process sees.
"""


from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from seglearn.config import to_plain as _plain
from seglearn.data.layout import check_label_stack
from seglearn.errors import InputError, SeglearnError
from seglearn.segment.predict_io import (
    Stats,
    finish,
    finish_writers,
    iter_kwargs,
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


def _preprocess_inputs(cfg, ckpt: dict, seg, src: dict, where: str, out: Path, readers: list, test):
    """Re-apply the checkpoint's preprocessing (``meta["preprocess"]``) to the input.

    The steps are re-fitted on this stack (registration shifts, crop) and the result goes to
    temporary memmaps in OUT (removed at the end). Returns None without preprocessing, else
    ``(readers, test, shape, summary_extra, tmp_dir)`` where the readers and test labels now serve the
    preprocessed stack; the raw readers and ``test`` are closed.
    """
    from seglearn.io import open_stack
    from seglearn.preprocess.run import labels_frame_for
    from seglearn.preprocess.stage import preprocess_to_disk

    entry = ckpt.get("meta", {}).get("preprocess") or {}
    if not entry.get("steps"):
        return None
    dets = list(entry.get("detectors") or seg.detectors)
    paths = match_names(seg, src["files"], where, dets)  # registration may use a detector the network does not
    raw = [open_stack(p) for p in paths]
    tmp = out / f".preprocess.tmp-{os.getpid()}"
    try:
        frame = labels_frame_for({"synthetic": src.get("synthetic")}, str(cfg.get("labels_frame", "auto")))
        done = preprocess_to_disk(raw, entry, tmp, labels=test, labels_frame=frame,
                                  chunk=cfg.get("block_slices") if isinstance(cfg.get("block_slices"), int) else 32)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for r in raw:
            r.close()
    raw_shape = list(readers[0].shape)
    voxel = readers[0].voxel_size_nm
    for r in readers:
        r.close()
    if test is not None:
        test.close()
    pipe = done["pipeline"]
    new = [_ArrayReader(done["images"][dets.index(d)], voxel) for d in seg.detectors]
    new_test = _ArrayReader(done["labels"]) if done["labels"] is not None else None
    shape = tuple(int(v) for v in done["images"].shape[1:])
    extra = {"preprocess": {"steps": pipe.to_config(), "state": pipe.state(), "raw_shape": raw_shape,
                            "shape": list(shape), "test_labels_frame": frame if new_test is not None else None}}
    reg = pipe.step("register")
    if reg is not None:
        from seglearn.preprocess.registration import write_shifts_csv

        write_shifts_csv(out / "registration_shifts.csv", reg.shifts)
        extra["preprocess"]["shifts"] = "registration_shifts.csv"
    log.info("preprocessed %s with the checkpoint's steps %s: %s -> %s", where, [s.name for s in pipe.steps],
             "x".join(map(str, raw_shape)), "x".join(map(str, shape)))
    return new, new_test, shape, extra, tmp


def _adapt(cfg, ckpt: dict, seg, read_raw, shape) -> tuple[dict, dict | None, dict]:
    """The checkpoint put on this volume's grey scale (:func:`seglearn.io.intensity.fit_to_model`) and adapted
    to it without labels (``adapt=``, :func:`seglearn.pretrain.adapt.adapt_to_volume`); returns the checkpoint
    (``ckpt`` itself when neither changed anything), the adaptation's info and the grey-scale record."""
    from seglearn.io.intensity import fit_to_model
    from seglearn.pretrain.adapt import adapt_to_volume

    ckpt, intensity = fit_to_model(ckpt, read_raw, shape, seg.detectors, where=str(_plain(cfg.input)))
    adapted, info = adapt_to_volume(ckpt, read_raw, shape, seg.detectors, cfg.get("adapt", "auto"),
                                    where=str(cfg.ckpt), fit_scale=False)
    return adapted, info, intensity


def _from_rank0(dist, rank: int, fn, n: int) -> list:
    """``fn()`` (a list of ``n`` values) computed on rank 0 and broadcast; a user error there reaches every rank."""
    sent = [None] * (n + 1)
    if rank == 0:
        try:
            sent = [*fn(), None]
        except Exception as exc:  # any failure: the other ranks must not wait for a broadcast that never comes
            sent = [None] * n + [str(exc) if isinstance(exc, SeglearnError) else f"rank 0 failed: {exc!r}"]
            dist.broadcast_object_list(sent, src=0)
            raise
    dist.broadcast_object_list(sent, src=0)
    if sent[-1] is not None:
        raise SeglearnError(sent[-1])
    return sent[:n]


def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) when not distributed."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def predict(cfg, ckpt: dict) -> dict:
    """Predict ``cfg.input`` with the U-Net checkpoint ``ckpt`` (loaded by :mod:`seglearn.runner`).

    Under ``torchrun`` with more than one process: :func:`predict_distributed`.

    Returns
    -------
    dict
        The summary written to OUT/summary.json.
    """
    from seglearn.pretrain.adapt import resolve_predict_alpha
    from seglearn.segment.tta import check_mode

    check_mode(cfg.get("tta"))  # a bad setting fails before any output is made
    resolve_predict_alpha(cfg.get("adapt", "auto"), ckpt["meta"], str(cfg.ckpt))
    if _world()[1] > 1:
        if (ckpt.get("meta", {}).get("preprocess") or {}).get("steps"):
            raise InputError(f"{cfg.ckpt}: the checkpoint has preprocessing steps, which distributed prediction "
                             f"does not re-apply; preprocess the input with preprocess.py first, or predict "
                             f"in one process")
        if cfg.get("uncertainty", False):
            raise InputError("uncertainty=true: distributed prediction (torchrun) does not write it yet; predict "
                             "in one process, or compute it from probabilities=true")
        return predict_distributed(cfg, ckpt)
    from seglearn.cli import setup_logging
    from seglearn.io import write_volume_stream
    from seglearn.segment.api import segmenter_from_checkpoint
    from seglearn.segment.calibrate import uncertainty_map

    setup_logging()
    t0 = time.perf_counter()
    seg = segmenter_from_checkpoint(ckpt, device=str(cfg.get("device", "auto")), bf16=cfg.get("bf16"))
    src, where, paths, readers = open_inputs(cfg, seg)
    oset = test = probs_tmp = unc_tmp = pre_tmp = None
    try:
        shape = readers[0].shape
        voxel, voxel_extra = voxel_size(cfg, src, readers, seg)
        if src.get("classes") and list(src["classes"]) != seg.classes:
            log.warning("dataset classes %s differ from the checkpoint's %s", src["classes"], seg.classes)
        oset = prepare_output(cfg, src["name"])
        out = oset.tmp  # everything is written here, then renamed to the output folder by publish
        k = seg.n_classes
        test = open_test(src, shape, k)
        pre = _preprocess_inputs(cfg, ckpt, seg, src, where, out, readers, test)
        pre_extra = None
        if pre is not None:  # predict the registered, cropped frame of this stack
            readers, test, shape, pre_extra, pre_tmp = pre
            paths = [f"{where} (preprocessed: {d})" for d in seg.detectors]
        adapted, adapt_info, intensity = _adapt(cfg, ckpt, seg, raw_reader(paths, readers), shape)
        if adapted is not ckpt:
            seg = segmenter_from_checkpoint(adapted, device=str(cfg.get("device", "auto")), bf16=cfg.get("bf16"))
        pre_extra = {**(pre_extra or {}), **voxel_extra, "intensity": intensity,
                     **({"adapt": adapt_info} if adapt_info is not None else {})}
        stats = Stats(k, shape[0], test)
        want_probs = bool(cfg.get("probabilities", False))
        want_unc = bool(cfg.get("uncertainty", False))
        plan = memory_plan(cfg, seg, readers, shape)
        zarr_out = writers(cfg, out, shape, k, voxel, seg.classes, plan, want_probs, want_unc)
        unc_tmp = out / f".uncertainty.f16.tmp-{os.getpid()}"
        unc_mm = (np.lib.format.open_memmap(unc_tmp, mode="w+", dtype=np.float16, shape=tuple(shape))
                  if want_unc and zarr_out is None else None)
        probs_tmp = out / f".probabilities.f16.tmp-{os.getpid()}"
        probs_mm = (np.lib.format.open_memmap(probs_tmp, mode="w+", dtype=np.float16, shape=(shape[0], k, *shape[1:]))
                    if want_probs and zarr_out is None else None)
        preview_z = shape[0] // 2
        read_raw = raw_reader(paths, readers)

        def label_blocks():
            for z0, probs in seg.iter_proba(read_raw, shape, progress=True, **iter_kwargs(cfg, plan)):
                labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
                z1 = z0 + labels.shape[0]
                if probs_mm is not None:
                    probs_mm[z0:z1] = probs.transpose(1, 0, 2, 3)
                if zarr_out is not None and zarr_out[1] is not None:
                    zarr_out[1].write(z0, probs.astype(np.float16))
                unc = uncertainty_map(probs) if want_unc else None
                if unc_mm is not None:
                    unc_mm[z0:z1] = unc
                if zarr_out is not None and zarr_out[2] is not None:
                    zarr_out[2].write(z0, unc)
                stats.add(z0, labels)
                if stats.preview["z"] is None and z0 <= preview_z < z1:
                    stats.preview.update(z=preview_z, labels=labels[preview_z - z0], test=None)
                if unc is not None and stats.preview["z"] is not None and z0 <= stats.preview["z"] < z1:
                    stats.preview["uncertainty"] = unc[stats.preview["z"] - z0]
                log.debug("predicted slices %d-%d", z0, z1)
                yield z0, labels

        if zarr_out is None:
            write_volume_stream(out / "labels.tif", (s for _, labels in label_blocks() for s in labels), shape=shape,
                                dtype=np.uint8, voxel_size_nm=voxel, overwrite=True)
        else:
            for z0, labels in label_blocks():
                zarr_out[0].write(z0, labels)
            finish_writers(zarr_out, plan["block_slices"])
        if probs_mm is not None:
            probs_mm.flush()
            write_probabilities_tif(out, shape, k, (probs_mm[z, c] for z in range(shape[0]) for c in range(k)), voxel)
            del probs_mm
            probs_tmp.unlink(missing_ok=True)
        if unc_mm is not None:
            unc_mm.flush()
            write_volume_stream(out / "uncertainty.tif", (unc_mm[z] for z in range(shape[0])), shape=shape,
                                dtype=np.float16, voxel_size_nm=voxel, overwrite=True)
            del unc_mm
            unc_tmp.unlink(missing_ok=True)
        ext = "tif" if zarr_out is None else "ome.zarr"
        pre_extra.update(memory=plan, output_format=str(cfg.get("output_format", "tiff")), labels=f"labels.{ext}",
                         probabilities=f"probabilities.{ext}" if want_probs else None,
                         uncertainty=f"uncertainty.{ext}" if want_unc else None)
        summary = finish(cfg, seg, src, where, out, shape, voxel, stats, readers, t0, want_probs, pre_extra)
    except BaseException:
        if oset is not None:
            oset.abandon()  # the output folder stays as it was; the temporary set is deleted
        raise
    finally:
        for r in readers:
            r.close()
        if test is not None:
            test.close()
        for tmp in (probs_tmp, unc_tmp):
            if tmp is not None and tmp.exists():
                tmp.unlink()
        if pre_tmp is not None:
            import shutil

            shutil.rmtree(pre_tmp, ignore_errors=True)
    return publish(oset, summary)


def predict_distributed(cfg, ckpt: dict) -> dict:
    """:func:`predict` split over the processes started by ``torchrun``.

    Blocks of ``block_slices`` slices go round-robin to the ranks; each rank writes its blocks into
    OUT/labels.zarr (and OUT/probabilities.zarr), whose chunks are whole blocks. Rank 0 then
    writes OUT/labels.tif, OUT/probabilities.tif, the summary and the preview from the stores, which
    are removed afterwards unless ``keep_zarr=true``. Coordination uses gloo (CPU), whatever
    the device; on GPU machines each rank predicts on ``cuda:LOCAL_RANK``.

    Returns
    -------
    dict
        The summary (rank 0); ``{}`` on the other ranks.
    """
    import datetime
    import shutil

    import torch
    import torch.distributed as dist
    import zarr

    from seglearn.cli import setup_logging
    from seglearn.io import write_volume_stream
    from seglearn.segment.api import segmenter_from_checkpoint

    setup_logging()
    rank, world, local = _world()
    t0 = time.perf_counter()
    device = str(cfg.get("device", "auto"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=2))
    readers, test, oset = [], None, None
    try:
        seg = segmenter_from_checkpoint(ckpt, device=device, bf16=cfg.get("bf16"))
        src, where, paths, readers = open_inputs(cfg, seg)
        shape = readers[0].shape
        # rank 0 adapts (when there is anything to adapt) and sends the result: every rank predicts alike
        def adapt_and_plan():  # on rank 0 only; the others get the result, or rank 0's error, by broadcast
            adapted, info, intensity = _adapt(cfg, ckpt, seg, raw_reader(paths, readers), shape)
            s = segmenter_from_checkpoint(adapted, device=device, bf16=cfg.get("bf16")) if adapted is not ckpt else seg
            return [adapted if adapted is not ckpt else None, info, intensity, memory_plan(cfg, s, readers, shape)]

        adapted, adapt_info, intensity, plan = _from_rank0(dist, rank, adapt_and_plan, 4)
        if adapted is not None:
            seg = segmenter_from_checkpoint(adapted, device=device, bf16=cfg.get("bf16"))
        voxel, voxel_extra = voxel_size(cfg, src, readers, seg)
        k = seg.n_classes
        block = int(plan["block_slices"])  # every rank cuts the same blocks
        n_blocks = -(-shape[0] // block)
        want_probs = bool(cfg.get("probabilities", False))
        test = open_test(src, shape, k, check=False)  # checked once, on rank 0 (it reads the whole stack)
        if test is not None:
            _from_rank0(dist, rank, lambda: [check_label_stack(test, src["test"], k)], 1)
        chunk_yx = [min(s, 1024) for s in shape[1:]]
        if rank == 0:
            if src.get("classes") and list(src["classes"]) != seg.classes:
                log.warning("dataset classes %s differ from the checkpoint's %s", src["classes"], seg.classes)
            try:  # only rank 0 claims the output folder; the others learn its temporary folder or the error
                oset = prepare_output(cfg, src["name"])
            except SeglearnError as exc:
                dist.broadcast_object_list([None, str(exc)], src=0)
                raise
            out = oset.tmp
            zarr.open_array(str(out / "labels.zarr"), mode="w", shape=tuple(shape), chunks=(block, *chunk_yx),
                            dtype=np.uint8, fill_value=0)
            if want_probs:
                zarr.open_array(str(out / "probabilities.zarr"), mode="w", shape=(shape[0], k, *shape[1:]),
                                chunks=(block, 1, *chunk_yx), dtype=np.float16, fill_value=0)
            log.info("distributed prediction: %d processes, %d blocks of %d slices, device %s", world, n_blocks,
                     block, seg.device)
            if n_blocks < world:
                log.warning("only %d blocks for %d processes: %d of them stay idle (lower block_slices)", n_blocks,
                            world, world - n_blocks)
            names = [str(out), None]
        else:
            names = [None, None]
        dist.broadcast_object_list(names, src=0)  # also the barrier: the stores exist from here on
        if names[0] is None:  # rank 0 could not claim the output folder and reports why
            raise SeglearnError(names[1])
        out = Path(names[0])
        labels_z = zarr.open_array(str(out / "labels.zarr"), mode="r+")
        probs_z = zarr.open_array(str(out / "probabilities.zarr"), mode="r+") if want_probs else None
        stats = Stats(k, shape[0], test)
        mine = list(range(rank, n_blocks, world))
        for z0, probs in seg.iter_proba(raw_reader(paths, readers), shape, blocks=mine, progress=rank == 0,
                                        **iter_kwargs(cfg, plan)):
            labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
            z1 = z0 + labels.shape[0]
            labels_z[z0:z1] = labels
            if probs_z is not None:
                probs_z[z0:z1] = probs.transpose(1, 0, 2, 3).astype(np.float16)
            stats.add(z0, labels, keep_preview=False)
            log.debug("rank %d predicted slices %d-%d", rank, z0, z1)
        totals = torch.from_numpy(np.concatenate([stats.counts, stats.cm.ravel()]))
        dist.all_reduce(totals)  # sum; after it every block is written
        first_test = torch.tensor([stats.test_z], dtype=torch.int64)
        dist.all_reduce(first_test, op=dist.ReduceOp.MIN)
        if rank != 0:
            dist.barrier()
            return {}
        stats.counts[:] = totals[: k + 1].numpy()
        stats.cm[:] = totals[k + 1:].numpy().reshape(k, k + 1)
        zp = int(first_test.item())
        if zp < shape[0]:
            stats.preview.update(z=zp, test_z=True, labels=np.asarray(labels_z[zp]), test=test.read(zp, zp + 1)[0])
        else:
            zp = shape[0] // 2
            stats.preview.update(z=zp, labels=np.asarray(labels_z[zp]), test=None)
        zarr_out = writers(cfg, out, shape, k, voxel, seg.classes, plan, want_probs)
        if zarr_out is not None:  # the shared stores become the multiscale OME-Zarr, one block at a time
            for z0 in range(0, shape[0], block):
                zarr_out[0].write(z0, np.asarray(labels_z[z0:z0 + block]))
                if zarr_out[1] is not None:
                    zarr_out[1].write(z0, np.asarray(probs_z[z0:z0 + block]).transpose(1, 0, 2, 3))
            finish_writers(zarr_out, block)  # (no uncertainty writer here: refused before the run)
        else:
            write_volume_stream(out / "labels.tif", (s for z0 in range(0, shape[0], block)
                                                     for s in np.asarray(labels_z[z0:z0 + block])),
                                shape=shape, dtype=np.uint8, voxel_size_nm=voxel, overwrite=True)
        if probs_z is not None and zarr_out is None:  # one block of the store in memory at a time
            write_probabilities_tif(out, shape, k, (page for z0 in range(0, shape[0], block)
                                                     for blk in [np.asarray(probs_z[z0:z0 + block])]
                                                     for planes in blk for page in planes), voxel)
        ext = "tif" if zarr_out is None else "ome.zarr"
        extra = {"ranks": world, "block_slices": block, "memory": plan, **voxel_extra, "intensity": intensity,
                 "output_format": str(cfg.get("output_format", "tiff")), "labels": f"labels.{ext}",
                 "probabilities": f"probabilities.{ext}" if want_probs else None,
                 **({"adapt": adapt_info} if adapt_info else {})}
        if cfg.get("keep_zarr", False):
            extra["zarr"] = ["labels.zarr"] + (["probabilities.zarr"] if want_probs else [])
        else:
            shutil.rmtree(out / "labels.zarr", ignore_errors=True)
            shutil.rmtree(out / "probabilities.zarr", ignore_errors=True)
        summary = finish(cfg, seg, src, where, out, shape, voxel, stats, readers, t0, want_probs, extra)
        summary = publish(oset, summary)
        dist.barrier()
        return summary
    except BaseException:
        if oset is not None:
            oset.abandon()
        raise
    finally:
        for r in readers:
            r.close()
        if test is not None:
            test.close()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()

