"""``python predict.py ckpt=C input=DATASET_OR_TIFFS output=OUT`` for U-Net checkpoints.

The input is read, predicted and written a block of slices at a time (``block_slices``), so a
tomogram larger than memory works: OUT/labels.tif (ids 1..K, BigTIFF when large), optionally
OUT/probabilities.tif (float16, Z x K x Y x X), OUT/summary.json and OUT/preview.png.
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
                "name": root.name, "classes": meta["classes"]}
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


def _match_names(seg, files: dict, where: str) -> list:
    """Detector paths in the checkpoint's order; file stems match the detector names case-insensitively."""
    lower = {k.lower(): k for k in files}
    out = []
    for det in seg.detectors:
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


def predict(cfg, ckpt: dict) -> dict:
    """Predict ``cfg.input`` with the U-Net checkpoint ``ckpt`` (loaded by :mod:`seglearn.runner`).

    Returns
    -------
    dict
        The summary written to OUT/summary.json.
    """
    from seglearn.cli import setup_logging
    from seglearn.io import open_stack, write_preview, write_volume_stream
    from seglearn.io.atomic import atomic_path
    from seglearn.metrics import awe, confusion_matrix, iou_from_confusion
    from seglearn.segment.api import segmenter_from_checkpoint

    setup_logging()
    t0 = time.perf_counter()
    seg = segmenter_from_checkpoint(ckpt, device=str(cfg.get("device", "auto")), bf16=cfg.get("bf16"))
    src = resolve_input(cfg.input, cfg.get("detectors"))
    where = str(_plain(cfg.input))
    paths = _match_names(seg, src["files"], where)
    readers = [open_stack(p) for p in paths]
    try:
        shapes = {str(p): r.shape for p, r in zip(paths, readers)}
        if len(set(shapes.values())) != 1:
            raise InputError(f"{where}: detector stacks differ in shape: {shapes}")
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
        counts = np.zeros(k + 1, dtype=np.int64)
        cm = np.zeros((k, k + 1), dtype=np.int64)
        preview = {"z": None}
        want_probs = bool(cfg.get("probabilities", False))
        probs_tmp = out / f".probabilities.f16.tmp-{os.getpid()}"
        probs_mm = (np.lib.format.open_memmap(probs_tmp, mode="w+", dtype=np.float16, shape=(shape[0], k, *shape[1:]))
                    if want_probs else None)
        preview_z = shape[0] // 2

        def read_raw(a: int, b: int) -> np.ndarray:
            block = np.stack([r.read(a, b) for r in readers])
            if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
                bad = [str(p) for p, blk in zip(paths, block) if not np.all(np.isfinite(blk))]
                raise InputError(f"{bad[0]}: holds NaN or Inf voxels (slices {a}-{b}); replace them before predicting")
            return block

        def label_slices():
            nonlocal preview_z
            for z0, probs in seg.iter_proba(read_raw, shape, block_slices=cfg.get("block_slices"),
                                            tile=_plain(cfg.get("tile")), overlap=_plain(cfg.get("overlap")),
                                            batch_size=cfg.get("batch_size"), progress=True):
                labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
                z1 = z0 + labels.shape[0]
                counts[:] += np.bincount(labels.ravel(), minlength=k + 1)[: k + 1]
                if probs_mm is not None:
                    probs_mm[z0:z1] = probs.transpose(1, 0, 2, 3)
                if test is not None:
                    t = test.read(z0, z1)
                    if np.any(t):
                        cm[:] += confusion_matrix(labels, t, k)
                        if preview["z"] is None or not preview.get("test_z"):
                            zz = int(np.flatnonzero(np.any(t, axis=(1, 2)))[0])
                            preview.update(z=z0 + zz, test_z=True, labels=labels[zz], test=t[zz])
                if preview["z"] is None and z0 <= preview_z < z1:
                    preview.update(z=preview_z, labels=labels[preview_z - z0], test=None)
                log.debug("predicted slices %d-%d", z0, z1)
                yield from labels

        write_volume_stream(out / "labels.tif", label_slices(), shape=shape, dtype=np.uint8, voxel_size_nm=voxel,
                            overwrite=True)
        if probs_mm is not None:
            import tifffile

            probs_mm.flush()
            with atomic_path(out / "probabilities.tif", overwrite=True) as tmp:
                tifffile.imwrite(tmp, data=(probs_mm[z, c] for z in range(shape[0]) for c in range(k)),
                                 shape=(shape[0], k, *shape[1:]), dtype=np.float16, bigtiff=True,
                                 photometric="minisblack", metadata={"axes": "ZCYX"})
            del probs_mm
            probs_tmp.unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        n_vox = int(np.prod(shape))
        fr = counts[1:] / max(n_vox, 1)
        summary = {
            MARKER: True, "input": where, "ckpt": str(cfg.ckpt), "kind": "unet", "mode": seg.mode,
            "detectors": seg.detectors, "derived": seg.derived, "classes": seg.classes, "shape": list(shape),
            "voxel_size_nm": voxel, "fractions": {c: float(f) for c, f in zip(seg.classes, fr)},
            "seconds": round(seconds, 2), "voxels_per_second": round(n_vox / max(seconds, 1e-9), 1),
            "device": str(seg.device), "labels": "labels.tif",
            "probabilities": "probabilities.tif" if want_probs else None,
        }
        if test is not None and cm.sum() > 0:
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
    finally:
        for r in readers:
            r.close()
        if "test" in locals() and test is not None:
            test.close()
        if "probs_tmp" in locals() and probs_tmp.exists():
            probs_tmp.unlink()
