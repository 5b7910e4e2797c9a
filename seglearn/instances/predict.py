"""``python predict.py ckpt=PARTICLES.ckpt input=IMAGE_OR_DATASET output=OUT``: particle instances.

Writes ``OUT/instances.tif`` (uint32 particle ids, voxel size kept), ``OUT/particles.csv`` (one row
of features per particle, :mod:`seglearn.instances.features`), ``OUT/contacts.csv`` (touching
pairs), ``OUT/preview.png`` and, when the input is a dataset with ``labels/instances.tif``,
``OUT/scores.json`` (instance matching at IoU 0.5 ... 0.9). A stack uses view fusion by default,
a single slice plain 2D; ``instances.method=linking`` chooses another (``configs/instances/``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from seglearn.characterise.labels import as_voxel_size
from seglearn.config import to_plain as _plain
from seglearn.data import load_dataset
from seglearn.data.layout import declared_voxel_size
from seglearn.errors import InputError
from seglearn.instances.features import contact_pairs, particle_features, write_features
from seglearn.instances.metrics import instance_scores, instance_scores_2d
from seglearn.instances.pipeline import load_model, predict_settings, prepare_images, segment_particles
from seglearn.io import check_writable, read_image, read_stack, write_volume
from seglearn.io.atomic import atomic_path
from seglearn.io.intensity import apply_map, fit_array
from seglearn.io.outset import OutputSet
from seglearn.io.preview import _grey
from seglearn.io.tiff_write import choose_voxel_size

log = logging.getLogger("seglearn")


def _get(cfg, key, default=None):
    v = cfg.get(key) if hasattr(cfg, "get") else None
    return default if v is None else v


def _read_input(inp, meta: dict):
    """images (C, Z, Y, X), voxel sizes found [(source, (z, y, x) or None)], detector names, true instances or None."""
    if isinstance(inp, (list, tuple)) or (hasattr(inp, "__len__") and not isinstance(inp, str)):
        files = [Path(str(f)) for f in inp]
        stacks = [read_stack(f) for f in files]
        shapes = {s.shape for s, _ in stacks}
        if len(shapes) != 1:
            raise InputError(f"{files[0]}: detector files differ in shape {sorted(shapes)}")
        vs = [("input file", stacks[0][1].get("voxel_size_nm"))]
        return np.stack([s for s, _ in stacks]), vs, [f.stem for f in files], None
    path = Path(str(inp))
    if path.is_dir() and (path / "dataset.yaml").exists():
        ds = load_dataset(path, labels=("instances",))
        want = meta.get("channels")
        if want and list(ds.detectors) != list(want):
            if set(want) <= set(ds.detectors):
                images = np.stack([ds.channel(d) for d in want])
            else:
                raise InputError(f"{path}: the model was trained on detectors {want}, the dataset has {ds.detectors}")
        else:
            images = ds.images
        return images, [("dataset.yaml", declared_voxel_size(path))], list(want or ds.detectors), ds.instances
    images, m = read_image(path)
    vs = [("input file", m.get("voxel_size_nm"))]
    return images, vs, list(meta.get("channels") or [f"ch{i}" for i in range(images.shape[0])]), None


def _on_model_scale(images: np.ndarray, meta: dict, where: str) -> tuple[np.ndarray, dict | None]:
    """``images`` on the grey scale of the training volume whose ``lo`` / ``hi`` the checkpoint stores
    (:mod:`seglearn.io.intensity`: a model trained on uint8 given 0..1 floats, say); per-image models
    (imported StarDist) normalise each input by its own percentiles and need nothing."""
    norm = meta["normalisation"]
    if norm.get("kind") == "per_image":
        return images, None

    names = [f"ch{i}" for i in range(images.shape[0])]
    ref = {"detectors": names, "normalisation": {"method": "percentile", "percentiles": norm.get("percentiles"),
                                                 "ranges": [[lo, hi] for lo, hi in zip(norm["lo"], norm["hi"])]}}
    ck, record = fit_array({"meta": ref}, images, names, where=where)
    return apply_map(images, ck["meta"]["normalisation"].get("input_map")), record


def write_instance_preview(path: Path, images: np.ndarray, labels: np.ndarray, *, overwrite: bool = True,
                           title: str = "") -> None:
    """PNG with the middle xy slice (grey, particles in colour) and, for a stack, the middle xz slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.color import label2rgb

    grey = images[0].astype(np.float32)
    z, y = labels.shape[0] // 2, labels.shape[1] // 2
    lab = labels.astype(np.int64)
    panels = [("xy image", _grey(grey[z]), None), ("xy particles", _grey(grey[z]), lab[z])]
    if labels.shape[0] > 1:
        panels.append(("xz particles", _grey(grey[:, y]), lab[:, y]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    for ax, (name, img, lbl) in zip(axes[0], panels):
        if lbl is None:
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(label2rgb(lbl % 255 + (lbl > 0), image=img, bg_label=0, alpha=0.45, image_alpha=1.0))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


NAMES = ("instances.tif", "particles.csv", "contacts.csv", "preview.png")


def _output_folder(cfg, inp) -> tuple[Path, bool]:
    """The output folder and whether it may be replaced (default ``outputs/<input name>_particles``,
    replaced by a later run); every output file checked writable."""
    output = _get(cfg, "output")
    overwrite = bool(_get(cfg, "overwrite", False))
    if output is None:
        name = Path(str(inp if isinstance(inp, str) else list(inp)[0])).stem
        output, overwrite = f"outputs/{name}_particles", True
    out = Path(str(output))
    for name in NAMES:
        check_writable(out / name, overwrite=overwrite)
    return out, overwrite


def _settings(cfg, meta: dict) -> tuple[dict, float, float]:
    """Prediction settings: ``configs/model/stardist.yaml`` ``predict`` <- the checkpoint's <- the command's
    ``instances.*``, ``tile``, ``batch_size``, ``bf16``; and the probability / NMS thresholds."""
    over = _get(cfg, "instances", {})
    opts = {k: _plain(_get(over, k)) for k in ("method", "fusion", "linking")}
    params = predict_settings(meta.get("predict"), opts)
    tile = _get(cfg, "tile")
    if tile is not None:
        params["tile"] = [int(t) for t in list(tile)[-2:]]
    if _get(cfg, "batch_size") is not None:
        params["batch_size"] = int(_get(cfg, "batch_size"))
    if _get(cfg, "bf16") is not None:  # bf16=false: the network in float32 (null: the checkpoint's, auto)
        params["bf16"] = _get(cfg, "bf16")
    thr = meta["thresholds"]
    return params, float(_get(over, "prob_thresh", thr["prob"])), float(_get(over, "nms_thresh", thr["nms"]))


def _stack_ids(labels: np.ndarray) -> np.ndarray:
    """Per-slice 2D ids made unique over the stack, so the file means the same as a 3D result."""
    offs = np.cumsum([0] + [int(s.max()) for s in labels[:-1]])
    labels = np.where(labels > 0, labels.astype(np.int64) + offs[:, None, None], 0)
    n = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint32 if n < 2**32 else np.uint64)


def _write_outputs(dst: Path, labels: np.ndarray, images: np.ndarray, *, voxel, detectors, overwrite: bool,
                   cfg, method: str) -> int:
    """``instances.tif``, ``particles.csv``, ``contacts.csv`` and ``preview.png`` into ``dst``; the particle count."""
    write_volume(dst / "instances.tif", labels, voxel_size_nm=voxel, overwrite=overwrite, compression="zlib")
    table = particle_features(labels, images, voxel_size_nm=voxel or (1.0, 1.0, 1.0), detectors=detectors,
                              progress=bool(_get(cfg, "progress", True)))
    write_features(dst / "particles.csv", table, overwrite=overwrite)
    pairs = contact_pairs(labels)
    with atomic_path(dst / "contacts.csv", overwrite=overwrite) as tmp:
        tmp.write_text("id_a,id_b\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    if bool(_get(cfg, "preview", True)):
        write_instance_preview(dst / "preview.png", images, labels, overwrite=overwrite,
                               title=f"{len(table)} particles ({method})")
    return int(len(table))


def _write_scores(dst: Path, truth: np.ndarray, labels: np.ndarray, method: str) -> dict:
    """Instance matching against the dataset's true instances (2D per slice for ``2d``), into ``scores.json``."""
    if method == "2d":
        from skimage.measure import label as cc

        scores = {"2d": instance_scores_2d(np.stack([cc(s) for s in truth]), np.stack([cc(s) for s in labels]))}
    else:
        scores = {"3d": instance_scores(truth, labels)}
    with atomic_path(dst / "scores.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(scores, indent=2))
    key = next(iter(scores))
    log.info("particles: F1 at IoU 0.5 against the dataset's instances (%s): %.3f", key, scores[key]["0.5"]["f1"])
    return scores


def predict(cfg, ckpt: dict) -> dict:
    """Predict particle instances with a ``stardist`` checkpoint and write them with their features.

    Parameters
    ----------
    cfg : DictConfig
        ``input`` (image file, list of detector files, folder of slices or dataset folder),
        ``output`` (folder), ``overwrite``, ``device``, ``tile``, ``batch_size``, ``preview``,
        ``threads``, ``bf16`` (true | false | null: the checkpoint's ``predict.bf16``, auto); optional
        ``instances.method`` (auto | fusion | linking | 2d),
        ``instances.prob_thresh`` and ``instances.nms_thresh`` overriding the checkpoint's.
    ckpt : dict
        From :func:`seglearn.ckpt.load_checkpoint`.

    Returns
    -------
    dict
        ``n_particles``, ``method``, ``seconds``, ``outputs`` and ``scores`` (when the input has
        true instances).
    """
    t0 = time.perf_counter()
    meta = ckpt["meta"]
    inp = _get(cfg, "input")
    if inp is None:
        raise InputError("input: missing; pass input=IMAGE.tif or a dataset folder")
    out, overwrite = _output_folder(cfg, inp)
    # the folder is claimed (a second run is refused) and published whole at the end (issue 25)
    with OutputSet(out, replace=overwrite, inputs=[*([inp] if isinstance(inp, str) else list(inp))]) as dst:
        images, found, detectors, truth = _read_input(inp, meta)
        opt = _get(cfg, "voxel_size_nm")
        opt = None if opt is None else as_voxel_size(opt, source="voxel_size_nm")
        voxel, voxel_source = choose_voxel_size([("voxel_size_nm option", opt), *found,
                                                 ("checkpoint", meta.get("voxel_size_nm"))], where=str(inp))
        scaled, intensity = _on_model_scale(images, meta, str(inp))
        x = prepare_images(scaled, meta, where=str(inp))
        del scaled
        threads = _get(cfg, "threads", (meta.get("predict") or {}).get("threads"))
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        device = str(_get(cfg, "device", "auto"))
        net = load_model(ckpt, device=None if device == "auto" else device)
        params, prob_t, nms_t = _settings(cfg, meta)
        labels, info = segment_particles(net, x, method=str(params["method"]), prob_thresh=prob_t, nms_thresh=nms_t,
                                         params=params, progress=bool(_get(cfg, "progress", True)), voxel_size_nm=voxel)
        if info["method"] == "2d":
            labels = _stack_ids(labels)
        n = _write_outputs(dst, labels, images, voxel=voxel, detectors=detectors, overwrite=overwrite, cfg=cfg,
                           method=info["method"])
        result = {"n_particles": n, "method": info["method"], "prob_thresh": prob_t, "nms_thresh": nms_t,
                  "seconds": {"segment": info["seconds"], "total": time.perf_counter() - t0},
                  "voxel_size_nm": voxel, "voxel_size_source": voxel_source, "intensity": intensity,
                  "outputs": [str(out / name) for name in NAMES]}
        if truth is not None and np.any(truth):
            result["scores"] = _write_scores(dst, truth, labels, info["method"])
    log.info("particles: %d (%s) written to %s in %.1f s", n, info["method"], out, result["seconds"]["total"])
    return result
