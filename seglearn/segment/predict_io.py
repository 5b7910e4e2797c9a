"""Inputs and outputs of ``predict.py``: the detector stacks to read, the block plan, the result folder.

:func:`resolve_input` finds the stacks ``input=`` names (a dataset folder, TIFF / OME-Zarr files or slice
folders); :func:`prepare_output` claims the output folder and :func:`publish` renames the finished set into
it (:class:`~seglearn.io.outset.OutputSet`); :func:`memory_plan` turns ``memory_budget_gib`` into blocks of
slices (:mod:`seglearn.segment.memory`); :func:`writers` opens the OME-Zarr outputs; :func:`finish` writes
summary.json, the preview and the characterisation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tifffile

from seglearn.characterise import characterise
from seglearn.characterise.labels import as_voxel_size
from seglearn.config import to_plain as _plain
from seglearn.data.layout import _find_image, check_label_stack, declared_voxel_size, read_meta, warn_missing_classes
from seglearn.errors import InputError, SeglearnError
from seglearn.io import open_stack, read_stack, write_preview
from seglearn.io.atomic import atomic_path
from seglearn.io.intensity import check_dtype
from seglearn.io.omezarr import OmeZarrWriter
from seglearn.io.outset import OutputSet
from seglearn.io.tiff_write import calibration_kwargs, choose_voxel_size
from seglearn.metrics import awe, confusion_matrix, iou_from_confusion
from seglearn.precision import precision_record
from seglearn.segment.memory import plan_blocks
from seglearn.segment.calibrate import uncertainty_map
from seglearn.segment.predict_guard import MARKER, default_output, one_class_warning, unsure_warning
from seglearn.segment.predict_options import Options

log = logging.getLogger("seglearn")


def resolve_input(inp, names=None) -> dict:
    """Paths of the detector stacks (and test labels) named by ``input=``.

    Returns
    -------
    dict
        ``files`` {detector: path}, ``test`` path or None, ``voxel_size_nm`` or None, ``name``.
    """
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
        return {"files": files, "test": test if test.exists() else None, "voxel_size_nm": declared_voxel_size(root),
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
        names = [_stem(p) for p in paths]
    return {"files": dict(zip(names, paths)), "test": None, "voxel_size_nm": None,
            "name": _stem(paths[0]) if len(paths) == 1 else paths[0].parent.name or "input", "classes": None}


def _stem(path: Path) -> str:
    """A file's name without its image suffixes (``SE2.ome.zarr``, ``SE2.ome.tif`` -> ``SE2``)."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def match_names(seg, files: dict, where: str, detectors=None) -> list:
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


def prepare_output(opts: Options, name: str, where: str | None = None):
    """Claim the output folder (:class:`~seglearn.io.outset.OutputSet`): its lock is taken, files go
    into a temporary sibling (``.tmp``) that :func:`publish` renames to the folder at the end. Without
    ``output=``: :func:`default_output` (``where``: the input, as the summary records it)."""
    default = opts.output is None or opts.output == ""
    out, ours = default_output(name, where) if default else (Path(str(opts.output)), False)
    inputs = [*(opts.input if isinstance(opts.input, list) else [opts.input]), opts.ckpt]
    oset = OutputSet(out, replace=opts.overwrite or (default and ours), inputs=inputs)
    oset.claim()
    return oset


def publish(oset, summary: dict) -> dict:
    """Check the finished result set, rename it to the output folder, then say so."""
    claimed = [summary["labels"], "summary.json"] + [summary[k] for k in ("probabilities", "uncertainty", "characterise")
                                                     if summary.get(k)]
    missing = [n for n in claimed if not (oset.tmp / n).exists()]
    if missing:
        oset.abandon()
        raise SeglearnError(f"{oset.out}: prediction ended without writing {', '.join(missing)}; nothing was "
                            f"written")
    out = oset.publish()
    shape = summary["shape"]
    msg = f"wrote {out}/{summary['labels']} ({shape[0]}x{shape[1]}x{shape[2]}) in {summary['seconds']:.1f} s"
    if "test" in summary:
        msg += f"; test awe {summary['test']['awe']:.2f} %"
    log.info(msg)
    return summary


def characterise_output(steps, where: str, out: Path, classes: list, voxel, labels_name: str = "labels.tif") -> str:
    """Run the microstructure report on the written labels (``steps``: ``characterise=true`` or a list of steps)."""
    if voxel is None:
        raise InputError(f"{where}: characterise needs a voxel size; the input and checkpoint have none")
    kwargs = {"values": list(range(1, len(classes) + 1))}
    if isinstance(steps, (list, tuple)):
        kwargs["steps"] = list(steps)
    labels, _ = read_stack(out / labels_name)  # labels.tif or labels.ome.zarr
    characterise(labels, voxel, list(classes), out_dir=out / "characterise", overwrite=True, **kwargs)
    return "characterise/report.html"


class Stats:
    """Label counts, test confusion and the preview slice, gathered block by block."""

    def __init__(self, k: int, n: int, test):
        self.k, self.n, self.test = k, n, test
        self.blank: list[int] = []  # slices left unsegmented (label 0): every detector constant there
        self.unsure = 0  # segmented voxels whose normalised entropy exceeds 0.5 (predict_guard.unsure_warning)
        self.counts = np.zeros(k + 1, dtype=np.int64)
        self.cm = np.zeros((k, k + 1), dtype=np.int64)
        self.test_z = n  # first slice holding test labels (n: none yet)
        self.preview = {"z": None}

    def add_unsure(self, labels: np.ndarray, probs: np.ndarray, unc: np.ndarray | None = None) -> None:
        """Count the segmented voxels of a block whose normalised entropy (``unc``, else computed) exceeds 0.5."""
        unc = uncertainty_map(probs) if unc is None else unc
        self.unsure += int(np.count_nonzero((unc > 0.5) & (labels > 0)))

    def add(self, z0: int, labels: np.ndarray, keep_preview: bool = True) -> None:
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


def open_inputs(inp, detectors, seg):
    """The input ``inp`` (``input=``, channel names ``detectors``) opened for the model ``seg``.

    Returns
    -------
    src : dict
        :func:`resolve_input`.
    where : str
        The input as messages name it.
    paths : list
        The stacks in the model's detector order.
    readers : list
        Their block readers (:func:`seglearn.io.open_stack`).
    """
    src = resolve_input(inp, detectors)
    where = str(inp)
    paths = match_names(seg, src["files"], where)
    readers = [open_stack(p) for p in paths]
    shapes = {str(p): r.shape for p, r in zip(paths, readers)}
    try:
        for p, r in zip(paths, readers):  # a bool mask or complex stack is refused before anything is written
            check_dtype(getattr(r, "stored_dtype", r.dtype), str(p))
        if len(set(shapes.values())) != 1:
            raise InputError(f"{where}: detector stacks differ in shape: {shapes}")
    except InputError:
        for r in readers:
            r.close()
        raise
    return src, where, paths, readers


def voxel_size(option, src: dict, readers, seg, where: str) -> tuple[list | None, dict]:
    """The voxel size written on the outputs and where it came from (``option``: ``voxel_size_nm=``,
    dataset.yaml, the input file's calibration, else the checkpoint's, with a warning)."""
    opt = option
    opt = None if opt is None else as_voxel_size(opt, source="voxel_size_nm")
    voxel, source = choose_voxel_size([("voxel_size_nm option", opt), ("dataset.yaml", src["voxel_size_nm"]),
                                       ("input file", readers[0].voxel_size_nm), ("checkpoint", seg.voxel_size_nm)],
                                      where=where)
    return voxel, {"voxel_size_source": source}


def raw_reader(paths, readers):
    """``read_raw(a, b)``: slices ``[a, b)`` of the detector stacks ``(C, b - a, Y, X)``, read-only, NaN / Inf
    refused. The last block read is kept: a range inside it (the block's own slices, read again after the
    network for :func:`seglearn.segment.api.labels_from`) is a view of it, not a second read."""
    last: dict = {}

    def read_raw(a: int, b: int) -> np.ndarray:
        if last and last["a"] <= a and b <= last["b"]:
            return last["block"][:, a - last["a"]:b - last["a"]]
        block = np.stack([r.read(a, b) for r in readers])
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            bad = [str(p) for p, blk in zip(paths, block) if not np.all(np.isfinite(blk))]
            raise InputError(f"{bad[0]}: holds NaN or Inf voxels (slices {a}-{b}); replace them before predicting")
        block.flags.writeable = False  # shared with later reads of the same slices
        last.update(a=a, b=b, block=block)
        return block

    return read_raw


def memory_plan(setting, budget: float, seg, readers, shape) -> dict:
    """``block_slices`` (and ``band_rows``) of this run: the ``block_slices`` option's number, or with
    ``auto`` as many as ``budget`` (``memory_budget_gib``) allows."""
    if setting not in (None, "auto"):
        return {"block_slices": int(setting), "band_rows": None, "source": "block_slices option"}
    plan = plan_blocks(shape, n_raw=len(readers), raw_itemsize=max(np.dtype(r.dtype).itemsize for r in readers),
                       n_channels=len(seg.detectors) + len(seg.derived), n_classes=seg.n_classes,
                       halo=int(seg.net.halo), budget_bytes=int(budget * 2**30))
    log.info("memory: blocks of %d slice(s)%s for a budget of %.2f GiB (%.2f GiB in use before prediction)",
             plan.block_slices, f" in bands of {plan.band_rows} rows" if plan.band_rows else "", budget,
             plan.base / 2**30)
    return {**plan.describe(), "source": "memory_budget_gib"}


def writers(output_format: str, out: Path, shape, k: int, voxel, classes, plan: dict, want_probs: bool,
            want_unc: bool = False):
    """OME-Zarr writers of labels (probabilities, uncertainty) for ``output_format=ome-zarr``; None for TIFF."""
    if output_format != "ome-zarr":
        return None
    chunks = (max(1, min(int(plan["block_slices"]), 16)), 256, 256)
    labels = OmeZarrWriter(out / "labels.ome.zarr", shape, np.uint8, voxel_size_nm=voxel, labels=True, chunks=chunks)
    probs = OmeZarrWriter(out / "probabilities.ome.zarr", (k, *shape), np.float16, voxel_size_nm=voxel,
                          chunks=chunks, channel_names=classes) if want_probs else None
    unc = OmeZarrWriter(out / "uncertainty.ome.zarr", shape, np.float16, voxel_size_nm=voxel,
                        chunks=chunks) if want_unc else None
    return labels, probs, unc


def check_test(test, path, k: int, classes: Sequence[str] | None) -> list[str]:
    """Refuse test labels outside ``0..K`` (a bogus awe) and, given ``classes``, name in a warning the classes
    they never show; returns those."""
    counts = check_label_stack(test, path, k)
    if classes is None:
        return []
    return warn_missing_classes(counts, classes, str(path), "their IoU reads 0 and the awe / mIoU score only the "
                                "classes present", counts=True)


def open_test(src: dict, shape, k: int, *, check: bool = True, classes: Sequence[str] | None = None):
    """The input's test labels as a block reader (None without), of the input's shape; ``check``: values 0..K
    (and, given ``classes``, a warning naming the classes the test labels never show)."""
    if src["test"] is None:
        return None
    test = open_stack(src["test"])
    if test.shape != tuple(shape):
        test.close()
        raise InputError(f"{src['test']}: test labels of shape {test.shape}, expected {tuple(shape)}")
    if check:
        try:
            check_test(test, src["test"], k, classes)
        except InputError:
            test.close()
            raise
    return test


def finish_writers(zarr_out, block_slices: int) -> None:
    """Build the pyramids and write the metadata of the OME-Zarr outputs that :func:`writers` opened."""
    for w in zarr_out:
        if w is not None:
            w.finish(block_slices=block_slices)


@dataclasses.dataclass
class Run:
    """What one prediction works on: the model, the opened input and the (temporary) output folder."""

    seg: Any
    src: dict
    where: str
    readers: list
    shape: tuple
    voxel: list | None
    out: Path
    t0: float


def _test_scores(cm: np.ndarray, classes: list) -> dict:
    iou = iou_from_confusion(cm)
    p = cm.sum(axis=1) / cm.sum()
    return {"iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(classes, iou)},
            "awe": awe(iou, p), "miou": float(np.nanmean(iou)), "n_scored": int(cm.sum())}


def _write_preview(run: Run, preview: dict, ckpt: str) -> None:
    seg, z = run.seg, preview["z"]
    img = run.readers[0].read(z, z + 1)[0]
    panels = [(f"{seg.detectors[0]} z={z}", img, None), ("prediction", img, preview["labels"])]
    if preview.get("uncertainty") is not None:
        panels.append(("uncertainty (0 sure .. 1 uniform)", preview["uncertainty"].astype(np.float32), None))
    if preview.get("test") is not None:
        panels.append(("test labels", img, preview["test"]))
    write_preview(run.out / "preview.png", panels, seg.classes, overwrite=True,
                  title=f"{Path(ckpt).name} on {run.src['name']}")


def _ranges(zs: list[int]) -> str:
    """``[0, 1, 2, 7]`` -> ``"0-2, 7"``."""
    parts, start = [], None
    for i, z in enumerate(zs):
        start = z if start is None else start
        if i + 1 == len(zs) or zs[i + 1] != z + 1:
            parts.append(str(z) if z == start else f"{start}-{z}")
            start = None
    return ", ".join(parts)


def finish(opts: Options, run: Run, stats: Stats, extra: dict | None = None) -> dict:
    """Write OUT/summary.json, OUT/preview.png and the characterisation; returns the summary."""
    seg, shape = run.seg, run.shape
    seconds = time.perf_counter() - run.t0
    n_vox = int(np.prod(shape))
    fr = stats.counts[1:] / max(int(stats.counts[1:].sum()), 1)  # of the segmented voxels (blank slices: 0)
    if stats.blank:
        log.warning("%s: slices %s are blank (every detector one grey value): left unsegmented (label 0) and "
                    "out of the fractions", run.where, _ranges(sorted(stats.blank)))
        extra = {**(extra or {}), "blank_slices": sorted(stats.blank)}
    n_seg = int(stats.counts[1:].sum())
    odd = [w for w in (one_class_warning(dict(zip(seg.classes, map(float, fr))), run.where) if n_seg else None,
                       unsure_warning(stats.unsure / max(n_seg, 1), run.where)) if w]
    if odd:
        extra = {**(extra or {}), "warnings": odd}
    summary = {
        MARKER: True, "input": run.where, "ckpt": opts.ckpt, "kind": "unet", "mode": seg.mode,
        "detectors": seg.detectors, "derived": seg.derived, "classes": seg.classes, "shape": list(shape),
        "voxel_size_nm": run.voxel, "fractions": {c: float(f) for c, f in zip(seg.classes, fr)},
        "seconds": round(seconds, 2), "voxels_per_second": round(n_vox / max(seconds, 1e-9), 1),
        "device": str(seg.device), "precision": precision_record(seg.device, seg.bf16), "labels": "labels.tif",
        "tta": seg.tta_mode(opts.tta),
        "probabilities": "probabilities.tif" if opts.probabilities else None,
        "blend": None if seg.blend is None else {"network_weight": seg.blend.weight, "forest_trees":
                                                 int(len(seg.blend.arrays["roots"]))},
        **(extra or {}),
    }
    if stats.test is not None and stats.cm.sum() > 0:
        summary["test"] = _test_scores(stats.cm, seg.classes)
    if opts.preview and stats.preview["z"] is not None:
        _write_preview(run, stats.preview, opts.ckpt)
    if opts.characterise:
        summary["characterise"] = characterise_output(opts.characterise, run.where, run.out, seg.classes, run.voxel,
                                                      summary["labels"])
    with atomic_path(run.out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def write_probabilities_tif(out: Path, shape, k: int, pages, voxel=None) -> None:
    """OUT/probabilities.tif (float16, ZCYX, calibrated as labels.tif) from ``(Y, X)`` pages in z, then class."""
    full = (shape[0], k, *shape[1:])
    kwargs = {**calibration_kwargs(full, np.float16, voxel, axes="ZCYX"), "bigtiff": True}
    with atomic_path(out / "probabilities.tif", overwrite=True) as tmp:
        tifffile.imwrite(tmp, data=pages, shape=full, dtype=np.float16, **kwargs)


