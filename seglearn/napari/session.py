"""The widget's work, without Qt: train (the package's own fine-tuning / training), predict, score, export.

Every function is what the napari widget runs in its worker thread; the tests call them directly.
Fine-tuning is :func:`seglearn.pretrain.finetune.finetune` (what ``train.py init=BASE`` runs) and
training from scratch is :func:`seglearn.segment.train.fit` (what ``train.py`` runs), with the
settings of ``configs/finetune/default.yaml`` / ``configs/train.yaml`` and the widget's overrides.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from seglearn.ckpt import load_checkpoint
from seglearn.data import load_dataset
from seglearn.data.layout import labels_from_probabilities
from seglearn.errors import InputError
from seglearn.io import atomic_path
from seglearn.metrics import score
from seglearn.napari.layers import check_labels
from seglearn.segment.api import labels_from, load_segmenter

StepHook = Callable[[dict], "bool | None"]


def finetune_settings(overrides: Mapping | None = None) -> dict:
    """``configs/finetune/default.yaml`` updated by ``overrides`` (what ``finetune.KEY=VALUE`` does)."""
    from omegaconf import OmegaConf

    from seglearn.pretrain.finetune import CONFIG

    s = dict(OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=True)) if CONFIG.exists() else {}
    s.update(dict(overrides or {}))
    return s


def progress_fraction(info: Mapping) -> float:
    """Share of training done from an ``on_step`` record (several averaged runs count as one bar)."""
    runs, run = int(info.get("runs", 1)), int(info.get("run", 0))
    return min(1.0, (run + int(info["step"]) / max(int(info["max_steps"]), 1)) / max(runs, 1))


def _lightning_hook(on_step: StepHook):
    """A Lightning callback calling ``on_step`` after every batch; True stops the trainer."""
    import lightning as L

    class _Hook(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
            info = {"step": int(trainer.global_step), "max_steps": int(trainer.max_steps),
                    "loss": float(loss) if loss is not None else float("nan")}
            if on_step(info):
                trainer.should_stop = True

    return _Hook()


def train_model(root: str | os.PathLike, labels: np.ndarray, out_dir: str | os.PathLike, *, base: str | None,
                settings: Mapping | None = None, on_step: StepHook | None = None) -> dict:
    """Train on a dataset's images with the labels drawn in the viewer.

    Parameters
    ----------
    root : path-like
        The dataset folder (images, classes, voxel size, ``labels/test.tif`` for validation).
    labels : (Z, Y, X) int ndarray
        The Labels layer's data (0 = unlabelled, ``1..K``).
    out_dir : path-like
        Gets ``best.ckpt`` (replaced when it exists: the widget's own working folder).
    base : str or None
        A base checkpoint to fine-tune (``train.py init=BASE``); None trains from scratch.
    settings : mapping, optional
        Fine-tuning: keys of ``configs/finetune/default.yaml``; from scratch: dotted keys of
        ``configs/train.yaml`` (``{"trainer.max_steps": 200}``).
    on_step : callable, optional
        ``on_step({"step", "max_steps", ...}) -> stop?`` after every step.

    Returns
    -------
    dict
        The training function's result; ``best_ckpt`` is the model.
    """
    ds = load_dataset(root, labels=("test",))
    train = check_labels(labels, ds.shape, ds.n_classes, "train labels layer")
    if not np.any(train):
        raise InputError("train labels layer: holds no labelled voxel; paint a few strokes of every class first")
    out_dir = Path(out_dir)
    if base:
        from seglearn.pretrain.finetune import finetune

        return finetune(base, ds.images, ds.detectors, train, out_dir, classes=ds.classes,
                        voxel_size_nm=ds.voxel_size_nm, test=ds.test, settings=finetune_settings(settings),
                        overwrite=True, name=str(root), on_step=on_step)
    from seglearn.segment.train import default_config, fit

    ds.train = train
    cfg = default_config({"out_dir": str(out_dir), "overwrite": True, "trainer.enable_progress_bar": False,
                          **dict(settings or {})})
    return fit(cfg, ds, callbacks_extra=[_lightning_hook(on_step)] if on_step is not None else [])


def predict_slices(ckpt: str | os.PathLike, images: np.ndarray, detectors: Sequence[str],
                   zs: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Class probabilities of some slices (default all), with the context slices a 2.5D model needs;
    uniform on blank slices (:func:`seglearn.segment.api.labels_from`).

    Returns
    -------
    probs : (K, len(zs), Y, X) float32
    zs : list of int
    """
    seg = load_segmenter(ckpt)
    sel = images[seg.channel_order(detectors, "dataset")]
    shape = sel.shape[1:]
    if zs is None:
        probs, zs = seg.predict_proba(sel, seg.detectors, block_slices=32), list(range(shape[0]))
    else:
        zs = sorted(set(int(z) for z in zs))
        parts = [p for _, p in seg.iter_proba(lambda a, b: sel[:, a:b], shape, block_slices=1, blocks=zs)]
        probs = np.concatenate(parts, axis=1)
    labels_from(probs, sel[:, zs])  # blank slices: uniform probabilities, label 0 (labels_from_probabilities)
    return probs, zs


def score_test(ckpt: str | os.PathLike, root: str | os.PathLike) -> dict:
    """Per-class IoU and awe of a model on the dataset's ``labels/test.tif`` slices (:func:`seglearn.metrics.score`)."""
    ds = load_dataset(root, labels=("test",))
    if ds.test is None or not np.any(ds.test):
        raise InputError(f"{Path(root) / 'labels' / 'test.tif'}: missing or empty; Score needs test labels")
    zs = [int(z) for z in np.nonzero(ds.test.reshape(ds.shape[0], -1).max(axis=1))[0]]
    probs, zs = predict_slices(ckpt, ds.images, ds.detectors, zs)
    pred = labels_from_probabilities(probs)
    out = score(pred, ds.test[zs], ds.n_classes, class_names=ds.classes)
    out["slices"] = zs
    return out


def format_scores(s: Mapping) -> str:
    """One line per class (IoU) and the awe, for the widget."""
    rows = [f"{name}: IoU {'-' if v is None else f'{v:.3f}'}" for name, v in s["iou_by_class"].items()]
    return "\n".join(rows + [f"awe {s['awe']:.2f} % on test slices {s.get('slices')}"])


def export_checkpoint(ckpt: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy a trained checkpoint to ``dest`` (atomic; refused when it exists unless ``overwrite``).

    The copy is a ``kind: unet`` checkpoint: ``python predict.py ckpt=DEST input=...`` runs it.
    """
    load_checkpoint(ckpt, kind="unet")  # a readable U-Net checkpoint, or a one-line error
    with atomic_path(dest, overwrite=overwrite) as tmp:
        shutil.copyfile(ckpt, tmp)
    return Path(dest)
