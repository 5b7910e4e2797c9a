"""``python train.py data.root=DATASET out_dir=DIR`` for ``model.kind=unet``."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import seglearn
from seglearn.ckpt import load_checkpoint
from seglearn.config import to_plain as _plain
from seglearn.data import Dataset, load_dataset
from seglearn.data.layout import DEFAULT_CLASSES
from seglearn.errors import InputError, OutputExistsError, SeglearnError
from seglearn.io.atomic import atomic_path
from seglearn.log import setup_logging
from seglearn.paths import compose
from seglearn.precision import precision_record, trainer_device
from seglearn.preprocess.stage import preprocess_loaded, stage_config
from seglearn.segment.api import segmenter_from_checkpoint
from seglearn.segment.calibrate import calibration_record
from seglearn.segment.datamodule import SegDataModule
from seglearn.segment.infer import mode_defaults
from seglearn.segment.module import SegModule, class_weights, validation_logits
from seglearn.segment.net import MODES, plan_anisotropy

log = logging.getLogger("seglearn")



def _resolve_auto(cfg_trainer: dict, channels_last) -> tuple[dict, bool]:
    # bf16 autocast where native: 2.1x (2.5D) to 3.6x (3D) faster training steps on this AMX CPU (docs/bench_unet.md)
    tr = trainer_device(cfg_trainer)  # precision / sync_batchnorm: the same rule as pretraining and fine-tuning
    if channels_last in ("auto", None):
        channels_last = True  # faster with bf16 on the CPU and on GPUs (docs/bench_unet.md)
    return tr, bool(channels_last)


def _check_out_dir(out_dir: Path, overwrite: bool, resume: str | None, clean: bool = True) -> None:
    existing = [p for p in (out_dir / "best.ckpt", out_dir / "last.ckpt") if p.exists()]
    if existing and not overwrite and not resume:
        raise OutputExistsError(f"{out_dir}: already holds {existing[0].name}; pass overwrite=true to replace it "
                                f"or ckpt_path={out_dir / 'last.ckpt'} to resume")
    if not clean:
        return
    if existing and overwrite and not resume:
        for p in existing:
            p.unlink(missing_ok=True)  # every DDP process runs this; under torchrun they start together
    out_dir.mkdir(parents=True, exist_ok=True)


def _check_resume(resume: str, meta: dict) -> None:
    """Refuse to resume from a checkpoint of another network, class list, channel set or dataset (one line)."""
    ck = load_checkpoint(resume, kind="unet")  # validated: keys, sizes, shapes
    if "optimizer_states" not in ck or "loops" not in ck:
        raise InputError(f"{resume}: holds weights only, not a training state to resume; resume from the run's "
                         f"last.ckpt, or fine-tune it with init=")
    old = ck["meta"]
    net_old = {k: v for k, v in old["net"].items() if k != "channels_last"}
    net_new = {k: v for k, v in meta["net"].items() if k != "channels_last"}
    if net_old != net_new:
        diff = sorted(k for k in set(net_old) | set(net_new) if net_old.get(k) != net_new.get(k))
        raise InputError(f"{resume}: checkpoint network differs from this run's in "
                         f"{', '.join(f'{k} ({net_old.get(k)!r} vs {net_new.get(k)!r})' for k in diff[:3])}; "
                         f"resume with the run's own settings")
    for key in ("classes", "channels"):
        if list(old.get(key) or []) != list(meta[key]):
            raise InputError(f"{resume}: checkpoint {key} {old.get(key)} differ from this run's {meta[key]}")
    tr_old, tr_new = old.get("train") or {}, meta["train"]
    same_root = str(tr_old.get("dataset")) == str(tr_new["dataset"])
    ranges_old = np.asarray((old.get("normalisation") or {}).get("ranges") or [], dtype=float)
    ranges_new = np.asarray(meta["normalisation"]["ranges"], dtype=float)
    same_data = (tr_old.get("dataset_name") == tr_new["dataset_name"] and ranges_old.shape == ranges_new.shape
                 and np.allclose(ranges_old, ranges_new, rtol=1e-6))
    if not (same_root or same_data):
        raise InputError(f"{resume}: checkpoint was trained on dataset {tr_old.get('dataset_name')!r} "
                         f"({tr_old.get('dataset')}), this run uses {tr_new['dataset_name']!r} ({tr_new['dataset']}); "
                         f"resume only on the same data, or train into a new out_dir")


def _discard(out_dir: Path, trainer, created: bool) -> None:
    """Remove the out_dir a failed run created, unless it holds a checkpoint to resume from."""
    if created and trainer.is_global_zero and not any(out_dir.glob("*.ckpt")):
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)


def _check_produced(out_dir: Path, trainer, created: bool) -> None:
    """Refuse a run that trained no step or wrote no best.ckpt (and remove the folder it created for nothing)."""
    best = out_dir / "best.ckpt"
    steps = int(trainer.global_step)
    if steps > 0 and best.is_file():
        return
    _discard(out_dir, trainer, created)
    why = "ran 0 steps" if steps == 0 else f"ran {steps} steps but wrote no {best.name}"
    kept = "last.ckpt is kept" if (out_dir / "last.ckpt").is_file() else "nothing was saved"
    raise SeglearnError(f"{out_dir}: training {why}; {kept} (no training batches or no validation? check "
                        f"trainer.devices, trainer.limit_train_batches, trainer.max_time and the labels)")


def _patch(m, mode: str, ds, pool_z: Sequence[bool]) -> list[int]:
    """The training patch ``[z, y, x]``: ``model.patch`` (else the mode's default), fitted to the volume's depth
    and, in 3D, to a multiple of the z pooling."""
    patch = [int(v) for v in (m.patch if m.get("patch") is not None else mode_defaults(mode)["patch"])]
    if mode != "3d":
        return [1, *patch[1:]]
    patch[0] = min(patch[0], max(ds.shape[0], 1))
    az = 2 ** sum(pool_z)
    return [max(az, (patch[0] // az) * az), *patch[1:]]


def _meta(m, mode: str, ds, dm, *, context: int, patch: list, pool_z, kernel_z, channels_last: bool,
          seed: int) -> dict:
    """The checkpoint metadata of a run: network, channels, normalisation, inference defaults, training data."""
    inf = _plain(m.get("inference")) or {}
    by = mode_defaults(mode)
    return {
        "net": {"in_channels": len(dm.channel_names), "n_classes": ds.n_classes, "mode": mode, "context": context,
                "base": int(m.net.base), "depth": int(m.net.depth), "dropout": float(m.net.dropout),
                "pool_z": [bool(v) for v in pool_z], "kernel_z": [int(v) for v in kernel_z],
                "channels_last": channels_last},
        "detectors": list(dm.detectors), "derived": list(dm.derived), "channels": dm.channel_names,
        "normalisation": {"method": "percentile", "percentiles": dm.percentiles, "ranges": dm.ranges},
        "classes": list(ds.classes), "voxel_size_nm": [float(v) for v in ds.voxel_size_nm], "mode": mode,
        "inference": {"tile": inf.get("tile") or by["tile"], "overlap": inf.get("overlap") or by["overlap"],
                      "border": inf.get("border"), "batch_size": int(inf.get("batch_size") or 2)},
        "train": {"dataset": str(ds.root), "dataset_name": ds.name, "patch": patch, "seed": seed,
                  "val_source": dm.val_source, "class_counts": dm.class_counts.astype(int).tolist()},
        "seglearn_version": seglearn.__version__,
        # steps re-applied (re-fitted) by predict; None when the data was used as it is
        "preprocess": ds.extra.get("preprocess"),
    }


def _callbacks(out_dir: Path, early_stopping: dict) -> list:
    """best.ckpt (lowest ``val/awe``), last.ckpt and, with a patience, early stopping."""
    callbacks = [
        ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val/awe", mode="min", save_top_k=1,
                        save_weights_only=True, enable_version_counter=False, auto_insert_metric_name=False),
        ModelCheckpoint(dirpath=out_dir, filename="last", save_top_k=1, enable_version_counter=False,
                        auto_insert_metric_name=False),
    ]
    if early_stopping.get("patience"):
        callbacks.append(EarlyStopping(monitor="val/awe", mode="min", patience=int(early_stopping["patience"]),
                                       min_delta=float(early_stopping["min_delta"]),
                                       check_on_train_epoch_end=False))
    return callbacks


def _run(trainer, module, dm, out_dir: Path, resume, created: bool) -> float:
    """``trainer.fit``; a failed run removes the folder it created; SIGTERM keeps last.ckpt and stops. Seconds."""
    t0 = time.perf_counter()
    fit_kwargs = {"ckpt_path": str(resume), "weights_only": True} if resume else {}
    try:
        trainer.fit(module, datamodule=dm, **fit_kwargs)
    except SystemExit:  # Lightning's SIGTERMException: stopped by a scheduler or kill
        if not trainer.received_sigterm:
            _discard(out_dir, trainer, created)
            raise
    except BaseException:
        _discard(out_dir, trainer, created)
        raise
    seconds = time.perf_counter() - t0
    if not trainer.received_sigterm:
        _check_produced(out_dir, trainer, created)
        return seconds
    # keep the exact step (written atomically), then exit non-zero
    trainer.save_checkpoint(out_dir / "last.ckpt", weights_only=False)
    raise SeglearnError(f"{out_dir}: training stopped by SIGTERM at step {trainer.global_step}; resume with "
                        f"ckpt_path={out_dir / 'last.ckpt'}")


#: ``meta["calibration"]["source"]`` of each validation source of :class:`~.datamodule.SegDataModule`
CAL_SOURCE = {"test": "test", "holdout": "held-out scribbles"}


def calibrate_best(best: Path, dm, device) -> dict | None:
    """Fit the softmax temperature ``T`` of ``best`` (the model written) on ``dm``'s validation labels and store
    it in its ``meta["calibration"]`` (rewritten atomically); returns that record (issue 27).

    The same fit as fine-tuning's (:func:`seglearn.segment.calibrate.calibration_record`: NLL over log T in
    [0.05, 20], or [1, 20] when fitted on scribbles: :func:`~seglearn.segment.calibrate.temperature_bounds`) on the logits of the network as the :class:`~seglearn.segment.api.Segmenter` runs it, tiled as
    in prediction, over the validation voxels training held out (``labels/test.tif``, else held-out strokes).
    None (T = 1) when the run validated on its own training labels: a T fitted there would be over-confident.
    """
    if dm.val_source not in CAL_SOURCE:
        log.warning("no held-out labels: the temperature is not fitted (T = 1); give labels/test.tif or more strokes")
        return None
    ck = load_checkpoint(best, kind="unet")
    seg = segmenter_from_checkpoint(ck, device=str(device))
    logits, labels = validation_logits(seg.fast_net, seg.meta, dm, seg.device)
    rec = {**calibration_record(logits, labels, source=CAL_SOURCE[dm.val_source],
                                  scribbles=dm.val_source == "holdout"),
           "fitted_on": f"{best.name} (network alone)"}
    ck["meta"] = {**ck["meta"], "calibration": rec}
    with atomic_path(best, overwrite=True) as tmp:
        torch.save(ck, tmp)
    log.info("temperature %.3f fitted on %s (%s; ECE %.4f -> %.4f on %d voxels)", rec["temperature"], best.name,
             rec["source"], rec["ece_before"], rec["ece_after"], rec["n_voxels"])
    return rec


def _result(trainer, best_cb, out_dir: Path, *, seconds: float, mode: str, n_params: int, precision: str,
            val_source: str, calibration: dict | None = None) -> dict:
    """``train_summary.json`` of a finished run (written by rank 0)."""
    best = out_dir / "best.ckpt"
    best_score = best_cb.best_model_score
    result = {"best_ckpt": str(best), "last_ckpt": str(out_dir / "last.ckpt"),
              "best_awe": None if best_score is None else float(best_score), "steps": int(trainer.global_step),
              "epochs": int(trainer.current_epoch), "seconds": round(seconds, 1), "val_source": val_source,
              "mode": mode, "parameters": int(n_params),
              "precision": {**precision_record(trainer.strategy.root_device, "bf16" in precision),
                            "lightning": precision}, "calibration": calibration}
    if best.exists():
        result["val"] = load_checkpoint(best)["meta"]["train"]["val"]
    if trainer.is_global_zero:
        (out_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
        log.info("best validation awe %s %% (%s), %d steps in %.0f s; wrote %s",
                 None if result["best_awe"] is None else round(result["best_awe"], 2), val_source,
                 result["steps"], seconds, best)
    return result


def _datamodule(cfg, ds, patch: list, context: int) -> SegDataModule:
    m = cfg.model
    dm = SegDataModule(ds, detectors=_plain(cfg.data.get("detectors")), derived=_plain(cfg.data.derived),
                       percentiles=_plain(m.percentiles), patch=patch, halo=context, batch_size=int(m.batch_size),
                       steps_per_epoch=int(m.steps_per_epoch), p_labelled=float(m.p_labelled),
                       augment=_plain(m.get("augment")), val_fraction=float(cfg.data.val_fraction),
                       seed=int(cfg.seed), num_workers=int(cfg.data.num_workers))
    dm.prepare_arrays()
    return dm


def fit(cfg, ds, callbacks_extra: Sequence = ()) -> dict:
    """Train a U-Net on a loaded :class:`~seglearn.data.Dataset` as configured by ``cfg``.

    ``callbacks_extra``: more Lightning callbacks (the napari widget's progress bar and Cancel).

    Returns
    -------
    dict
        ``best_ckpt``, ``last_ckpt``, ``best_awe``, ``val`` (scores of the best checkpoint),
        ``steps``, ``seconds``, ``calibration`` (the temperature fitted on the validation labels and
        stored in ``best.ckpt``, :func:`calibrate_best`; None without held-out labels).
    """
    m = cfg.model
    mode = str(m.mode).lower()
    if mode not in MODES:
        raise InputError(f"model.mode={m.mode!r}: expected one of {list(MODES)}")
    out_dir = Path(str(cfg.out_dir))
    resume = cfg.get("ckpt_path")
    if resume and not Path(str(resume)).is_file():
        raise InputError(f"{resume}: ckpt_path to resume from does not exist")
    _check_out_dir(out_dir, bool(cfg.overwrite), resume, clean=False)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    trainer_cfg, channels_last = _resolve_auto(_plain(cfg.trainer), m.channels_last)
    context = int(m.context) if mode == "2.5d" else 0
    depth = int(m.net.depth)
    pool_z, kernel_z = plan_anisotropy(ds.voxel_size_nm, depth) if mode == "3d" else ([False] * depth, [1] * (depth + 1))
    patch = _patch(m, mode, ds, pool_z)
    dm = _datamodule(cfg, ds, patch, context)
    meta = _meta(m, mode, ds, dm, context=context, patch=patch, pool_z=pool_z, kernel_z=kernel_z,
                 channels_last=channels_last, seed=int(cfg.seed))
    loss = _plain(m.get("loss")) or {}
    max_steps = int(trainer_cfg.get("max_steps", -1))
    if max_steps <= 0:
        raise InputError(f"trainer.max_steps={max_steps}: the U-Net trains for a step budget; give a positive number")
    if resume:
        _check_resume(str(resume), meta)  # before anything is written
    created = not out_dir.exists()
    _check_out_dir(out_dir, bool(cfg.overwrite), resume)
    module = SegModule(meta, lr=float(m.optim.lr), weight_decay=float(m.optim.weight_decay), max_steps=max_steps,
                       dice=float(loss["dice"] or 0.0), weights=class_weights(loss.get("class_weights"), dm.class_counts))
    callbacks = _callbacks(out_dir, _plain(m.get("early_stopping")) or {})
    logger = CSVLogger(save_dir=str(out_dir), name="logs", version="")
    trainer = L.Trainer(callbacks=callbacks + list(callbacks_extra), logger=logger, default_root_dir=str(out_dir),
                        num_sanity_val_steps=0, **trainer_cfg)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("training a %s U-Net (%d parameters, %s) on %s for at most %d steps, out_dir %s", mode, n_params,
             trainer_cfg.get("precision"), ds.name, max_steps, out_dir)
    seconds = _run(trainer, module, dm, out_dir, resume, created)
    cal = calibrate_best(out_dir / "best.ckpt", dm, trainer.strategy.root_device) if trainer.is_global_zero else None
    return _result(trainer, callbacks[0], out_dir, seconds=seconds, mode=mode, n_params=n_params,
                   precision=str(trainer_cfg.get("precision")), val_source=dm.val_source, calibration=cal)


def train(cfg) -> dict:
    """Entry point of ``train.py`` for ``model.kind=unet``: load ``cfg.data.root`` and :func:`fit`."""
    setup_logging()
    root = cfg.data.get("root")
    if not root:
        raise InputError("data.root is not set: give the dataset folder, e.g. python train.py data.root=data/demo")
    resume = cfg.get("ckpt_path")
    _check_out_dir(Path(str(cfg.out_dir)), bool(cfg.overwrite), resume, clean=False)
    ds = load_dataset(root, labels=("train", "test"), require=("train",))
    steps, frame = stage_config(cfg)
    if steps:
        ds, _ = preprocess_loaded(ds, steps, labels_frame=frame)
    return fit(cfg, ds)


def default_config(overrides: Mapping | None = None):
    """The default training config (``configs/train.yaml`` with ``model=unet``) with dotted-key overrides."""
    overrides = dict(overrides or {})
    group = [f"{k}={v}" for k, v in overrides.items() if k in ("experiment", "trainer", "data", "model")]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    cfg = compose("train", ["data.root=null", *group])
    with open_dict(cfg):
        for k, v in overrides.items():
            if k not in ("experiment", "trainer", "data", "model"):
                OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


def fit_segmenter(images: np.ndarray, train_labels: np.ndarray, detectors: Sequence[str],
                  out_dir: str | os.PathLike, overrides: Mapping | None = None,
                  val_labels: np.ndarray | None = None) -> Path:
    """Train a U-Net on arrays with the default config; returns the best checkpoint's path.

    Parameters
    ----------
    images : (C, Z, Y, X) ndarray
        Raw detector images.
    train_labels : (Z, Y, X) int ndarray
        Sparse labels, 0 = unlabelled, ``1..K``.
    detectors : sequence of str
        Channel names of ``images``.
    out_dir : path-like
        Gets ``best.ckpt``, ``last.ckpt`` and the CSV logs.
    overrides : dict, optional
        Dotted config keys (``{"model.mode": "2d", "trainer.max_steps": 200}``); also
        ``classes`` (names of 1..K) and ``voxel_size_nm`` (z, y, x).
    val_labels : (Z, Y, X) int ndarray, optional
        Dense or sparse validation labels (else strokes of ``train_labels`` are held out).

    Returns
    -------
    Path
        ``out_dir/best.ckpt``.
    """
    overrides = dict(overrides or {})
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    train_labels = np.asarray(train_labels)
    if images.ndim != 4 or images.shape[0] != len(detectors) or images.shape[1:] != train_labels.shape:
        raise InputError(f"fit_segmenter: images {images.shape}, labels {train_labels.shape} and detectors "
                         f"{list(detectors)} do not agree; expected (C, Z, Y, X) and (Z, Y, X)")
    k = int(max(train_labels.max(), 0 if val_labels is None else np.asarray(val_labels).max()))
    classes = overrides.pop("classes", None)
    if classes is None:
        classes = list(DEFAULT_CLASSES) if k == 3 else [f"class{i + 1}" for i in range(max(k, 2))]
    voxel = tuple(float(v) for v in overrides.pop("voxel_size_nm", (1.0, 1.0, 1.0)))
    ds = Dataset(root=Path(out_dir), name="arrays", detectors=list(detectors), classes=list(classes),
                 voxel_size_nm=voxel, images=images, train=train_labels.astype(np.uint8),
                 test=None if val_labels is None else np.asarray(val_labels).astype(np.uint8))
    cfg = default_config({"out_dir": str(out_dir), **overrides})
    result = fit(cfg, ds)
    return Path(result["best_ckpt"])
