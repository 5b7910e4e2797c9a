"""``predict.py`` split over the processes started by ``torchrun`` (``WORLD_SIZE`` > 1).

Blocks of ``block_slices`` slices go round-robin to the ranks; each rank writes its blocks into shared
zarr stores (OUT/labels.zarr, OUT/probabilities.zarr, chunked by block so no two processes write one
chunk), on GPU ``LOCAL_RANK`` when there are GPUs; rank 0 then writes the same output files as one
process would. OUT must be on a file system every process sees. Coordination uses gloo (CPU).
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from seglearn.errors import SeglearnError
from seglearn.io import write_volume_stream
from seglearn.log import setup_logging
from seglearn.segment.adapt import adapt_for_prediction
from seglearn.segment.api import labels_from, segmenter_from_checkpoint
from seglearn.segment.predict_io import (
    Run,
    Stats,
    check_test,
    finish,
    finish_writers,
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

log = logging.getLogger("seglearn")


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the torchrun environment; (0, 1, 0) when not distributed."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def from_rank0(dist, rank: int, fn, n: int) -> list:
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


def _device(device: str, local: int) -> str:
    import torch  # deferred: only under torchrun

    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
        torch.cuda.set_device(torch.device(device))
    return device


def _claim(dist, rank: int, opts: Options, name: str, shape, k: int, block: int, n_ranks: int, seg, where: str):
    """Rank 0 claims OUT and creates the shared stores; every rank learns the temporary folder (or the error)."""
    import zarr

    oset = None
    if rank == 0:
        try:  # only rank 0 claims the output folder; the others learn its temporary folder or the error
            oset = prepare_output(opts, name, where)
        except SeglearnError as exc:
            dist.broadcast_object_list([None, str(exc)], src=0)
            raise
        out = oset.tmp
        chunk_yx = [min(s, 1024) for s in shape[1:]]
        zarr.open_array(str(out / "labels.zarr"), mode="w", shape=tuple(shape), chunks=(block, *chunk_yx),
                        dtype=np.uint8, fill_value=0)
        if opts.probabilities:
            zarr.open_array(str(out / "probabilities.zarr"), mode="w", shape=(shape[0], k, *shape[1:]),
                            chunks=(block, 1, *chunk_yx), dtype=np.float16, fill_value=0)
        n_blocks = -(-shape[0] // block)
        log.info("distributed prediction: %d processes, %d blocks of %d slices, device %s", n_ranks, n_blocks,
                 block, seg.device)
        if n_blocks < n_ranks:
            log.warning("only %d blocks for %d processes: %d of them stay idle (lower block_slices)", n_blocks,
                        n_ranks, n_ranks - n_blocks)
        names = [str(out), None]
    else:
        names = [None, None]
    dist.broadcast_object_list(names, src=0)  # also the barrier: the stores exist from here on
    if names[0] is None:  # rank 0 could not claim the output folder and reports why
        raise SeglearnError(names[1])
    return oset, Path(names[0])


def _gather(dist, stats: Stats, k: int) -> int:
    """Sum the counts and confusion over the ranks (into rank 0's ``stats``, with every rank's blank slices);
    the first test slice."""
    import torch

    blank = torch.zeros(stats.n, dtype=torch.int64)
    blank[stats.blank] = 1
    dist.all_reduce(blank)
    stats.blank = [int(z) for z in torch.nonzero(blank).flatten().tolist()]
    totals = torch.from_numpy(np.concatenate([stats.counts, stats.cm.ravel(), [stats.unsure]]))
    dist.all_reduce(totals)  # sum; after it every block is written
    first_test = torch.tensor([stats.test_z], dtype=torch.int64)
    dist.all_reduce(first_test, op=dist.ReduceOp.MIN)
    stats.counts[:] = totals[: k + 1].numpy()
    stats.cm[:] = totals[k + 1:-1].numpy().reshape(k, k + 1)
    stats.unsure = int(totals[-1])
    return int(first_test.item())


def _write_from_stores(opts: Options, run: Run, plan: dict, block: int, labels_z, probs_z) -> str:
    """The output files from the shared stores, one block in memory at a time; returns the files' extension."""
    out, shape, k, voxel = run.out, run.shape, run.seg.n_classes, run.voxel
    zarr_out = writers(opts.output_format, out, shape, k, voxel, run.seg.classes, plan, opts.probabilities)
    if zarr_out is not None:  # the shared stores become the multiscale OME-Zarr, one block at a time
        for z0 in range(0, shape[0], block):
            zarr_out[0].write(z0, np.asarray(labels_z[z0:z0 + block]))
            if zarr_out[1] is not None:
                zarr_out[1].write(z0, np.asarray(probs_z[z0:z0 + block]).transpose(1, 0, 2, 3))
        finish_writers(zarr_out, block)  # (no uncertainty writer here: refused before the run)
        return "ome.zarr"
    write_volume_stream(out / "labels.tif", (s for z0 in range(0, shape[0], block)
                                             for s in np.asarray(labels_z[z0:z0 + block])),
                        shape=shape, dtype=np.uint8, voxel_size_nm=voxel, overwrite=True)
    if probs_z is not None:
        write_probabilities_tif(out, shape, k, (page for z0 in range(0, shape[0], block)
                                                 for blk in [np.asarray(probs_z[z0:z0 + block])]
                                                 for planes in blk for page in planes), voxel)
    return "tif"


def _preview(stats: Stats, zp: int, labels_z, test, n: int) -> None:
    if zp < n:
        stats.preview.update(z=zp, test_z=True, labels=np.asarray(labels_z[zp]), test=test.read(zp, zp + 1)[0])
    else:
        zp = n // 2
        stats.preview.update(z=zp, labels=np.asarray(labels_z[zp]), test=None)


def _adapt_and_plan(opts: Options, ckpt: dict, seg, read_raw, readers, shape, where: str, device: str, noise_rule):
    """On rank 0: the adapted checkpoint (None: unchanged), its record, the grey-scale record, the block plan."""
    adapted, info, intensity = adapt_for_prediction(ckpt, read_raw, shape, seg.detectors, opts.adapt, where=where,
                                                    ckpt_name=opts.ckpt, noise_rule=noise_rule)
    s = segmenter_from_checkpoint(adapted, device=device, bf16=opts.bf16) if adapted is not ckpt else seg
    plan = memory_plan(opts.block_slices, opts.memory_budget_gib, s, readers, shape)
    return [adapted if adapted is not ckpt else None, info, intensity, plan]


def _predict_share(dist, rank: int, n_ranks: int, opts: Options, run: Run, read_raw, plan: dict, stats: Stats):
    """This rank's blocks into the shared stores; returns the stores."""
    import zarr

    labels_z = zarr.open_array(str(run.out / "labels.zarr"), mode="r+")
    probs_z = zarr.open_array(str(run.out / "probabilities.zarr"), mode="r+") if opts.probabilities else None
    mine = list(range(rank, -(-run.shape[0] // int(plan["block_slices"])), n_ranks))
    for z0, probs in run.seg.iter_proba(read_raw, run.shape, blocks=mine, progress=rank == 0,
                                        **opts.iter_kwargs(plan)):
        z1 = z0 + probs.shape[1]
        labels, blank = labels_from(probs, read_raw(z0, z1))
        stats.blank += [z0 + z for z in blank]
        labels_z[z0:z1] = labels
        if probs_z is not None:
            probs_z[z0:z1] = probs.transpose(1, 0, 2, 3).astype(np.float16)
        stats.add(z0, labels, keep_preview=False)
        stats.add_unsure(labels, probs)
        log.debug("rank %d predicted slices %d-%d", rank, z0, z1)
    return labels_z, probs_z


def _summary(opts: Options, run: Run, stats: Stats, plan: dict, ext: str, n_ranks: int, extra: dict) -> dict:
    block = int(plan["block_slices"])
    extra = {"ranks": n_ranks, "block_slices": block, "memory": plan, **extra,
             "output_format": opts.output_format, "labels": f"labels.{ext}",
             "probabilities": f"probabilities.{ext}" if opts.probabilities else None}
    if opts.keep_zarr:
        extra["zarr"] = ["labels.zarr"] + (["probabilities.zarr"] if opts.probabilities else [])
    else:
        shutil.rmtree(run.out / "labels.zarr", ignore_errors=True)
        shutil.rmtree(run.out / "probabilities.zarr", ignore_errors=True)
    return finish(opts, run, stats, extra)


def predict_distributed(opts: Options, ckpt: dict, *, noise_rule: Callable | None = None) -> dict:
    """:func:`seglearn.segment.predict.predict` split over the ``torchrun`` processes (see the module).

    Returns
    -------
    dict
        The summary (rank 0); ``{}`` on the other ranks.
    """
    import torch.distributed as dist

    setup_logging()
    rank, n_ranks, local = world()
    t0 = time.perf_counter()
    device = _device(opts.device, local)
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=2))
    readers, test, oset = [], None, None
    try:
        seg = segmenter_from_checkpoint(ckpt, device=device, bf16=opts.bf16)
        src, where, paths, readers = open_inputs(opts.input, opts.detectors, seg)
        shape, read_raw = readers[0].shape, raw_reader(paths, readers)
        if rank == 0:
            warn_axis_order(shape, where)
        # rank 0 adapts (when there is anything to adapt) and sends the result: every rank predicts alike
        adapted, adapt_info, intensity, plan = from_rank0(dist, rank, lambda: _adapt_and_plan(
            opts, ckpt, seg, read_raw, readers, shape, where, device, noise_rule), 4)
        if adapted is not None:
            seg = segmenter_from_checkpoint(adapted, device=device, bf16=opts.bf16)
        voxel, voxel_extra = voxel_size(opts.voxel_size_nm, src, readers, seg, where)
        k, block = seg.n_classes, int(plan["block_slices"])  # every rank cuts the same blocks
        test = open_test(src, shape, k, check=False)  # checked once, on rank 0 (it reads the whole stack)
        if test is not None:
            from_rank0(dist, rank, lambda: [check_test(test, src["test"], k, seg.classes)], 1)
        if rank == 0 and src.get("classes") and list(src["classes"]) != seg.classes:
            log.warning("dataset classes %s differ from the checkpoint's %s", src["classes"], seg.classes)
        oset, out = _claim(dist, rank, opts, src["name"], shape, k, block, n_ranks, seg, where)
        run = Run(seg=seg, src=src, where=where, readers=readers, shape=shape, voxel=voxel, out=out, t0=t0)
        stats = Stats(k, shape[0], test)
        labels_z, probs_z = _predict_share(dist, rank, n_ranks, opts, run, read_raw, plan, stats)
        zp = _gather(dist, stats, k)
        if rank != 0:
            dist.barrier()
            return {}
        _preview(stats, zp, labels_z, test, shape[0])
        ext = _write_from_stores(opts, run, plan, block, labels_z, probs_z)
        extra = {**voxel_extra, "intensity": intensity, **({"adapt": adapt_info} if adapt_info else {})}
        summary = publish(oset, _summary(opts, run, stats, plan, ext, n_ranks, extra))
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
