"""``python predict.py ckpt=C input=DATASET_OR_TIFFS output=OUT`` for U-Net checkpoints.

The input is read, predicted and written a block of slices at a time (``block_slices``), so a
tomogram larger than memory works: OUT/labels.tif (ids 1..K, BigTIFF when large), optionally
OUT/probabilities.tif (float16, Z x K x Y x X), OUT/summary.json and OUT/preview.png.

Started by ``torchrun`` (``WORLD_SIZE`` > 1), each process predicts every ``WORLD_SIZE``-th block
into shared zarr stores (OUT/labels.zarr, OUT/probabilities.zarr, chunked by block so no two
processes write one chunk), on GPU ``LOCAL_RANK`` when there are GPUs; rank 0 then writes the
same TIFF files. OUT must be on a file system every process sees.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from seglearn.errors import InputError, OutputExistsError

log = logging.getLogger("seglearn")

MARKER = "seglearn_predict"


from seglearn.config import to_plain as _plain  # noqa: E402


def resolve_input(inp, names=None) -> dict:
    """Paths of the detector stacks (and test labels) named by ``input=``.

    Returns
    -------
    dict
        ``files`` {detector: path}, ``test`` path or None, ``voxel_size_nm`` or None, ``name``.
    """
    from seglearn.data.layout import _find_image, read_meta

    inp = _plain(inp)
    if inp is None or inp == "" or inp == []:
        raise InputError("input is not set: give a dataset folder or detector files, e.g. input=[SE2.tif,InLens.tif]")
    if isinstance(inp, str) and Path(inp).is_dir() and (Path(inp) / "dataset.yaml").exists():
        root = Path(inp)
        meta = read_meta(root)
        files = {}
        for det in meta["detectors"]:
            p = _find_image(root / "images", det)
            if p is None:
                raise InputError(f"{root / 'images' / (det + '.tif')}: detector {det!r} listed in dataset.yaml has no image")
            files[det] = p
        test = root / "labels" / "test.tif"
        return {"files": files, "test": test if test.exists() else None, "voxel_size_nm": meta["voxel_size_nm"],
                "name": root.name, "classes": meta["classes"], "synthetic": bool(meta.get("synthetic"))}
    paths = [Path(p) for p in ([inp] if isinstance(inp, str) else list(inp))]
    for p in paths:
        if not p.exists():
            raise InputError(f"{p}: input file does not exist")
    names = _plain(names)
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        if len(names) != len(paths):
            raise InputError(f"detectors={names} names {len(names)} channels, input has {len(paths)} files")
    else:
        names = [p.stem for p in paths]
    return {"files": dict(zip(names, paths)), "test": None, "voxel_size_nm": None,
            "name": paths[0].stem if len(paths) == 1 else paths[0].parent.name or "input", "classes": None}


def _match_names(seg, files: dict, where: str, detectors=None) -> list:
    """Detector paths in the checkpoint's order (or that of ``detectors``); file stems match the
    detector names case-insensitively."""
    lower = {k.lower(): k for k in files}
    out = []
    for det in (detectors or seg.detectors):
        key = det if det in files else lower.get(det.lower())
        if key is None:
            raise InputError(f"{where}: the checkpoint needs detectors {seg.detectors}, the input has "
                             f"{list(files)} (name files after the detectors or pass detectors=[...])")
        out.append(files[key])
    return out


def _prepare_output(cfg, name: str) -> Path:
    out = cfg.get("output")
    default = out is None or out == ""
    out = Path("outputs") / name if default else Path(str(out))
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: output exists and is a file; give a folder")
    from seglearn.io.atomic import clean_stale_temps, is_temp

    for stale in clean_stale_temps(out):
        log.info("removed %s left by an interrupted run", stale)
    if out.exists() and any(not is_temp(p) for p in out.iterdir()):
        ours = False
        summary = out / "summary.json"
        if summary.exists():
            try:
                ours = bool(json.loads(summary.read_text()).get(MARKER))
            except (ValueError, OSError):
                ours = False
        if not cfg.get("overwrite", False) and not (default and ours):
            raise OutputExistsError(f"{out}: output folder already exists and is not empty; pass overwrite=true "
                                    f"to replace it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _characterise(cfg, out: Path, classes: list, voxel) -> str:
    """Run the microstructure report on the written labels (``characterise=true`` or a list of steps)."""
    from seglearn.characterise import characterise
    from seglearn.io import read_stack

    if voxel is None:
        raise InputError(f"{cfg.input}: characterise needs a voxel size; the input and checkpoint have none")
    opts = {"values": list(range(1, len(classes) + 1))}
    steps = _plain(cfg.characterise)
    if isinstance(steps, (list, tuple)):
        opts["steps"] = list(steps)
    labels, _ = read_stack(out / "labels.tif")
    characterise(labels, voxel, list(classes), out_dir=out / "characterise", overwrite=True, **opts)
    return "characterise/report.html"


class _Stats:
    """Label counts, test confusion and the preview slice, gathered block by block."""

    def __init__(self, k: int, n: int, test):
        self.k, self.n, self.test = k, n, test
        self.counts = np.zeros(k + 1, dtype=np.int64)
        self.cm = np.zeros((k, k + 1), dtype=np.int64)
        self.test_z = n  # first slice holding test labels (n: none yet)
        self.preview = {"z": None}

    def add(self, z0: int, labels: np.ndarray, keep_preview: bool = True) -> None:
        from seglearn.metrics import confusion_matrix

        z1 = z0 + labels.shape[0]
        self.counts[:] += np.bincount(labels.ravel(), minlength=self.k + 1)[: self.k + 1]
        if self.test is None:
            return
        t = self.test.read(z0, z1)
        if np.any(t):
            self.cm[:] += confusion_matrix(labels, t, self.k)
            zz = int(np.flatnonzero(np.any(t, axis=(1, 2)))[0])
            if z0 + zz < self.test_z:
                self.test_z = z0 + zz
                if keep_preview:
                    self.preview.update(z=z0 + zz, test_z=True, labels=labels[zz], test=t[zz])


def _open_inputs(cfg, seg):
    from seglearn.io import open_stack

    src = resolve_input(cfg.input, cfg.get("detectors"))
    where = str(_plain(cfg.input))
    paths = _match_names(seg, src["files"], where)
    readers = [open_stack(p) for p in paths]
    shapes = {str(p): r.shape for p, r in zip(paths, readers)}
    if len(set(shapes.values())) != 1:
        for r in readers:
            r.close()
        raise InputError(f"{where}: detector stacks differ in shape: {shapes}")
    return src, where, paths, readers


def _raw_reader(paths, readers):
    def read_raw(a: int, b: int) -> np.ndarray:
        block = np.stack([r.read(a, b) for r in readers])
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            bad = [str(p) for p, blk in zip(paths, block) if not np.all(np.isfinite(blk))]
            raise InputError(f"{bad[0]}: holds NaN or Inf voxels (slices {a}-{b}); replace them before predicting")
        return block

    return read_raw


def _iter_kwargs(cfg) -> dict:
    return {"tta": cfg.get("tta"), "block_slices": cfg.get("block_slices"), "tile": _plain(cfg.get("tile")),
            "overlap": _plain(cfg.get("overlap")), "batch_size": cfg.get("batch_size")}


def _finish(cfg, seg, src, where, out: Path, shape, voxel, stats: _Stats, readers, t0: float, want_probs: bool,
            extra: dict | None = None) -> dict:
    """Write OUT/summary.json, OUT/preview.png and the characterisation; returns the summary."""
    from seglearn.io import write_preview
    from seglearn.io.atomic import atomic_path
    from seglearn.metrics import awe, iou_from_confusion
    from seglearn.precision import precision_record

    counts, cm, preview = stats.counts, stats.cm, stats.preview
    seconds = time.perf_counter() - t0
    n_vox = int(np.prod(shape))
    fr = counts[1:] / max(n_vox, 1)
    summary = {
        MARKER: True, "input": where, "ckpt": str(cfg.ckpt), "kind": "unet", "mode": seg.mode,
        "detectors": seg.detectors, "derived": seg.derived, "classes": seg.classes, "shape": list(shape),
        "voxel_size_nm": voxel, "fractions": {c: float(f) for c, f in zip(seg.classes, fr)},
        "seconds": round(seconds, 2), "voxels_per_second": round(n_vox / max(seconds, 1e-9), 1),
        "device": str(seg.device), "precision": precision_record(seg.device, seg.bf16), "labels": "labels.tif",
        "tta": seg.tta_mode(cfg.get("tta")),
        "probabilities": "probabilities.tif" if want_probs else None,
        **(extra or {}),
    }
    if stats.test is not None and cm.sum() > 0:
        iou = iou_from_confusion(cm)
        p = cm.sum(axis=1) / cm.sum()
        summary["test"] = {"iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(seg.classes, iou)},
                           "awe": awe(iou, p), "miou": float(np.nanmean(iou)), "n_scored": int(cm.sum())}
    if cfg.get("preview", True) and preview["z"] is not None:
        z = preview["z"]
        img = readers[0].read(z, z + 1)[0]
        panels = [(f"{seg.detectors[0]} z={z}", img, None), ("prediction", img, preview["labels"])]
        if preview.get("test") is not None:
            panels.append(("test labels", img, preview["test"]))
        write_preview(out / "preview.png", panels, seg.classes, overwrite=True,
                      title=f"{Path(str(cfg.ckpt)).name} on {src['name']}")
    if cfg.get("characterise"):
        summary["characterise"] = _characterise(cfg, out, seg.classes, voxel)
    with atomic_path(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    msg = f"wrote {out}/labels.tif ({shape[0]}x{shape[1]}x{shape[2]}) in {seconds:.1f} s"
    if "test" in summary:
        msg += f"; test awe {summary['test']['awe']:.2f} %"
    log.info(msg)
    return summary


def _write_probabilities_tif(out: Path, shape, k: int, pages) -> None:
    """OUT/probabilities.tif (float16, ZCYX) from ``(Y, X)`` pages in z, then class order."""
    import tifffile

    from seglearn.io.atomic import atomic_path

    with atomic_path(out / "probabilities.tif", overwrite=True) as tmp:
        tifffile.imwrite(tmp, data=pages,
                         shape=(shape[0], k, *shape[1:]), dtype=np.float16, bigtiff=True,
                         photometric="minisblack", metadata={"axes": "ZCYX"})


class _ArrayReader:
    """A ``(Z, Y, X)`` array (a memmap of the preprocessed stack) with the reader calls predict uses."""

    def __init__(self, array, voxel_size_nm=None):
        self.array = array
        self.shape = tuple(array.shape)
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
    paths = _match_names(seg, src["files"], where, dets)  # registration may use a detector the network does not
    raw = [open_stack(p) for p in paths]
    tmp = out / f".preprocess.tmp-{os.getpid()}"
    try:
        frame = labels_frame_for({"synthetic": src.get("synthetic")}, str(cfg.get("labels_frame", "auto")))
        done = preprocess_to_disk(raw, entry, tmp, labels=test, labels_frame=frame,
                                  chunk=int(cfg.get("block_slices") or 32))
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


def _adapt(cfg, ckpt: dict, seg, read_raw, shape) -> tuple[dict, dict | None]:
    """The checkpoint adapted to this volume without labels (``adapt=``, :func:`seglearn.pretrain.adapt.adapt_to_volume`)."""
    from seglearn.pretrain.adapt import adapt_to_volume

    return adapt_to_volume(ckpt, read_raw, shape, seg.detectors, cfg.get("adapt", "auto"), where=str(cfg.ckpt))


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
        return predict_distributed(cfg, ckpt)
    from seglearn.cli import setup_logging
    from seglearn.io import open_stack, write_volume_stream
    from seglearn.segment.api import segmenter_from_checkpoint

    setup_logging()
    t0 = time.perf_counter()
    seg = segmenter_from_checkpoint(ckpt, device=str(cfg.get("device", "auto")), bf16=cfg.get("bf16"))
    src, where, paths, readers = _open_inputs(cfg, seg)
    try:
        shape = readers[0].shape
        voxel = src["voxel_size_nm"] or readers[0].voxel_size_nm or seg.voxel_size_nm
        voxel = None if voxel is None else [float(v) for v in voxel]
        if src.get("classes") and list(src["classes"]) != seg.classes:
            log.warning("dataset classes %s differ from the checkpoint's %s", src["classes"], seg.classes)
        out = _prepare_output(cfg, src["name"])
        k = seg.n_classes
        test = open_stack(src["test"]) if src["test"] is not None else None
        if test is not None and test.shape != shape:
            raise InputError(f"{src['test']}: test labels of shape {test.shape}, expected {shape}")
        pre = _preprocess_inputs(cfg, ckpt, seg, src, where, out, readers, test)
        pre_extra = None
        if pre is not None:  # predict the registered, cropped frame of this stack
            readers, test, shape, pre_extra, pre_tmp = pre
            paths = [f"{where} (preprocessed: {d})" for d in seg.detectors]
        adapted, adapt_info = _adapt(cfg, ckpt, seg, _raw_reader(paths, readers), shape)
        if adapt_info is not None:
            seg = segmenter_from_checkpoint(adapted, device=str(cfg.get("device", "auto")), bf16=cfg.get("bf16"))
            pre_extra = {**(pre_extra or {}), "adapt": adapt_info}
        stats = _Stats(k, shape[0], test)
        want_probs = bool(cfg.get("probabilities", False))
        probs_tmp = out / f".probabilities.f16.tmp-{os.getpid()}"
        probs_mm = (np.lib.format.open_memmap(probs_tmp, mode="w+", dtype=np.float16, shape=(shape[0], k, *shape[1:]))
                    if want_probs else None)
        preview_z = shape[0] // 2
        read_raw = _raw_reader(paths, readers)

        def label_slices():
            for z0, probs in seg.iter_proba(read_raw, shape, progress=True, **_iter_kwargs(cfg)):
                labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
                z1 = z0 + labels.shape[0]
                if probs_mm is not None:
                    probs_mm[z0:z1] = probs.transpose(1, 0, 2, 3)
                stats.add(z0, labels)
                if stats.preview["z"] is None and z0 <= preview_z < z1:
                    stats.preview.update(z=preview_z, labels=labels[preview_z - z0], test=None)
                log.debug("predicted slices %d-%d", z0, z1)
                yield from labels

        write_volume_stream(out / "labels.tif", label_slices(), shape=shape, dtype=np.uint8, voxel_size_nm=voxel,
                            overwrite=True)
        if probs_mm is not None:
            probs_mm.flush()
            _write_probabilities_tif(out, shape, k, (probs_mm[z, c] for z in range(shape[0]) for c in range(k)))
            del probs_mm
            probs_tmp.unlink(missing_ok=True)
        return _finish(cfg, seg, src, where, out, shape, voxel, stats, readers, t0, want_probs, pre_extra)
    finally:
        for r in readers:
            r.close()
        if "test" in locals() and test is not None:
            test.close()
        if "probs_tmp" in locals() and probs_tmp.exists():
            probs_tmp.unlink()
        if "pre_tmp" in locals():
            import shutil

            shutil.rmtree(pre_tmp, ignore_errors=True)


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
    from seglearn.io import open_stack, write_volume_stream
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
    readers, test = [], None
    try:
        seg = segmenter_from_checkpoint(ckpt, device=device, bf16=cfg.get("bf16"))
        src, where, paths, readers = _open_inputs(cfg, seg)
        shape = readers[0].shape
        # rank 0 adapts (when there is anything to adapt) and sends the result: every rank predicts alike
        sent = [None, None]
        if rank == 0:
            adapted, adapt_info = _adapt(cfg, ckpt, seg, _raw_reader(paths, readers), shape)
            sent = [adapted, adapt_info] if adapt_info is not None else sent
        dist.broadcast_object_list(sent, src=0)
        adapted, adapt_info = sent
        if adapt_info is not None:
            seg = segmenter_from_checkpoint(adapted, device=device, bf16=cfg.get("bf16"))
        voxel = src["voxel_size_nm"] or readers[0].voxel_size_nm or seg.voxel_size_nm
        voxel = None if voxel is None else [float(v) for v in voxel]
        k = seg.n_classes
        block = int(cfg.get("block_slices") or shape[0])
        n_blocks = -(-shape[0] // block)
        want_probs = bool(cfg.get("probabilities", False))
        test = open_stack(src["test"]) if src["test"] is not None else None
        if test is not None and test.shape != shape:
            raise InputError(f"{src['test']}: test labels of shape {test.shape}, expected {shape}")
        chunk_yx = [min(s, 1024) for s in shape[1:]]
        if rank == 0:
            if src.get("classes") and list(src["classes"]) != seg.classes:
                log.warning("dataset classes %s differ from the checkpoint's %s", src["classes"], seg.classes)
            out = _prepare_output(cfg, src["name"])
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
            names = [str(out)]
        else:
            names = [None]
        dist.broadcast_object_list(names, src=0)  # also the barrier: the stores exist from here on
        out = Path(names[0])
        labels_z = zarr.open_array(str(out / "labels.zarr"), mode="r+")
        probs_z = zarr.open_array(str(out / "probabilities.zarr"), mode="r+") if want_probs else None
        stats = _Stats(k, shape[0], test)
        mine = list(range(rank, n_blocks, world))
        for z0, probs in seg.iter_proba(_raw_reader(paths, readers), shape, blocks=mine, progress=rank == 0,
                                        **_iter_kwargs(cfg)):
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
        write_volume_stream(out / "labels.tif", (s for z0 in range(0, shape[0], block)
                                                 for s in np.asarray(labels_z[z0:z0 + block])),
                            shape=shape, dtype=np.uint8, voxel_size_nm=voxel, overwrite=True)
        if probs_z is not None:  # one block of the store in memory at a time
            _write_probabilities_tif(out, shape, k, (page for z0 in range(0, shape[0], block)
                                                     for blk in [np.asarray(probs_z[z0:z0 + block])]
                                                     for planes in blk for page in planes))
        extra = {"ranks": world, "block_slices": block, **({"adapt": adapt_info} if adapt_info else {})}
        if cfg.get("keep_zarr", False):
            extra["zarr"] = ["labels.zarr"] + (["probabilities.zarr"] if want_probs else [])
        else:
            shutil.rmtree(out / "labels.zarr", ignore_errors=True)
            shutil.rmtree(out / "probabilities.zarr", ignore_errors=True)
        summary = _finish(cfg, seg, src, where, out, shape, voxel, stats, readers, t0, want_probs, extra)
        dist.barrier()
        return summary
    finally:
        for r in readers:
            r.close()
        if test is not None:
            test.close()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
