"""``python train.py data.root=DATASET out_dir=DIR`` for ``model.kind=unet``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from seglearn.errors import InputError, OutputExistsError, SeglearnError

log = logging.getLogger("seglearn")

DEFAULT_PATCH = {"2d": [1, 96, 96], "2.5d": [1, 96, 96], "3d": [16, 96, 96]}
DEFAULT_TILE = {"2d": [4, 256, 256], "2.5d": [4, 256, 256], "3d": [32, 128, 128]}
DEFAULT_OVERLAP = {"2d": [0, 64, 64], "2.5d": [0, 64, 64], "3d": [8, 32, 32]}


from seglearn.config import to_plain as _plain  # noqa: E402
from seglearn.precision import bf16_supported, precision_record  # noqa: E402


def _resolve_auto(cfg_trainer: dict, channels_last) -> tuple[dict, bool]:
    import torch

    tr = dict(cfg_trainer)
    gpu = torch.cuda.is_available() and tr.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    if tr.get("precision", "auto") in ("auto", None):
        # bf16 autocast: 2.1x (2.5D) to 3.6x (3D) faster training steps on this AMX CPU (docs/bench_unet.md)

        tr["precision"] = "bf16-mixed" if bf16_supported("cuda" if gpu else "cpu") else "32-true"
    if tr.get("sync_batchnorm") and not gpu:
        # torch's SyncBatchNorm runs on GPUs only; CPU DDP (gloo) keeps per-process batch statistics
        log.info("trainer.sync_batchnorm=true needs GPUs; turned off for CPU training")
        tr["sync_batchnorm"] = False
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
    from seglearn.ckpt import load_checkpoint

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


def fit(cfg, ds, callbacks_extra: Sequence = ()) -> dict:
    """Train a U-Net on a loaded :class:`~seglearn.data.Dataset` as configured by ``cfg``.

    ``callbacks_extra``: more Lightning callbacks (the napari widget's progress bar and Cancel).

    Returns
    -------
    dict
        ``best_ckpt``, ``last_ckpt``, ``best_awe``, ``val`` (scores of the best checkpoint),
        ``steps``, ``seconds``.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    import seglearn
    from seglearn.segment.datamodule import SegDataModule
    from seglearn.segment.module import SegModule, class_weights
    from seglearn.segment.net import MODES, plan_anisotropy

    m = cfg.model
    mode = str(m.mode).lower()
    if mode not in MODES:
        raise InputError(f"model.mode={m.mode!r}: expected one of {list(MODES)}")
    out_dir = Path(str(cfg.out_dir))
    resume = cfg.get("ckpt_path")
    if resume and not Path(str(resume)).is_file():
        raise InputError(f"{resume}: ckpt_path to resume from does not exist")
    _check_out_dir(out_dir, bool(cfg.get("overwrite", False)), resume, clean=False)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    trainer_cfg, channels_last = _resolve_auto(_plain(cfg.trainer), m.get("channels_last", "auto"))

    context = int(m.context) if mode == "2.5d" else 0
    patch = [int(v) for v in (m.patch if m.get("patch") is not None else DEFAULT_PATCH[mode])]
    z = ds.shape[0]
    if mode == "3d":
        patch[0] = min(patch[0], max(z, 1))
    else:
        patch[0] = 1
    depth = int(m.net.depth)
    pool_z, kernel_z = plan_anisotropy(ds.voxel_size_nm, depth) if mode == "3d" else ([False] * depth, [1] * (depth + 1))
    if mode == "3d":
        az = 2 ** sum(pool_z)
        patch[0] = max(az, (patch[0] // az) * az)
    dm = SegDataModule(ds, detectors=_plain(cfg.data.get("detectors")), derived=_plain(cfg.data.get("derived", "auto")),
                       percentiles=_plain(m.percentiles), patch=patch, halo=context, batch_size=int(m.batch_size),
                       steps_per_epoch=int(m.steps_per_epoch), p_labelled=float(m.p_labelled),
                       augment=_plain(m.get("augment")), val_fraction=float(cfg.data.get("val_fraction", 0.2)),
                       seed=int(cfg.seed), num_workers=int(cfg.data.get("num_workers", 0)))
    dm.prepare_arrays()
    inf = _plain(m.get("inference")) or {}
    meta = {
        "net": {"in_channels": len(dm.channel_names), "n_classes": ds.n_classes, "mode": mode, "context": context,
                "base": int(m.net.base), "depth": depth, "dropout": float(m.net.get("dropout", 0.0)),
                "pool_z": [bool(v) for v in pool_z], "kernel_z": [int(v) for v in kernel_z],
                "channels_last": channels_last},
        "detectors": list(dm.detectors), "derived": list(dm.derived), "channels": dm.channel_names,
        "normalisation": {"method": "percentile", "percentiles": dm.percentiles, "ranges": dm.ranges},
        "classes": list(ds.classes), "voxel_size_nm": [float(v) for v in ds.voxel_size_nm], "mode": mode,
        "inference": {"tile": inf.get("tile") or DEFAULT_TILE[mode], "overlap": inf.get("overlap") or DEFAULT_OVERLAP[mode],
                      "border": inf.get("border"), "batch_size": int(inf.get("batch_size") or 2)},
        "train": {"dataset": str(ds.root), "dataset_name": ds.name, "patch": patch, "seed": int(cfg.seed),
                  "val_source": dm.val_source, "class_counts": dm.class_counts.astype(int).tolist()},
        "seglearn_version": seglearn.__version__,
        # steps re-applied (re-fitted) by predict; None when the data was used as it is
        "preprocess": ds.extra.get("preprocess"),
    }
    loss = _plain(m.get("loss")) or {}
    max_steps = int(trainer_cfg.get("max_steps", -1))
    if max_steps <= 0:
        raise InputError(f"trainer.max_steps={max_steps}: the U-Net trains for a step budget; give a positive number")
    if resume:
        _check_resume(str(resume), meta)  # before anything is written
    created = not out_dir.exists()
    _check_out_dir(out_dir, bool(cfg.get("overwrite", False)), resume)
    module = SegModule(meta, lr=float(m.optim.lr), weight_decay=float(m.optim.weight_decay), max_steps=max_steps,
                       dice=float(loss.get("dice", 0.0) or 0.0), weights=class_weights(loss.get("class_weights"), dm.class_counts))
    es = _plain(m.get("early_stopping")) or {}
    callbacks = [
        ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val/awe", mode="min", save_top_k=1,
                        save_weights_only=True, enable_version_counter=False, auto_insert_metric_name=False),
        ModelCheckpoint(dirpath=out_dir, filename="last", save_top_k=1, enable_version_counter=False,
                        auto_insert_metric_name=False),
    ]
    if es.get("patience"):
        callbacks.append(EarlyStopping(monitor="val/awe", mode="min", patience=int(es["patience"]),
                                       min_delta=float(es.get("min_delta", 0.0)), check_on_train_epoch_end=False))
    logger = CSVLogger(save_dir=str(out_dir), name="logs", version="")
    trainer = L.Trainer(callbacks=callbacks + list(callbacks_extra), logger=logger, default_root_dir=str(out_dir),
                        num_sanity_val_steps=0, **trainer_cfg)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("training a %s U-Net (%d parameters, %s) on %s for at most %d steps, out_dir %s", mode, n_params,
             trainer_cfg.get("precision"), ds.name, max_steps, out_dir)
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
    if trainer.received_sigterm:
        # keep the exact step (written atomically), then exit non-zero
        trainer.save_checkpoint(out_dir / "last.ckpt", weights_only=False)
        raise SeglearnError(f"{out_dir}: training stopped by SIGTERM at step {trainer.global_step}; resume with "
                            f"ckpt_path={out_dir / 'last.ckpt'}")
    best = out_dir / "best.ckpt"
    best_score = callbacks[0].best_model_score
    result = {"best_ckpt": str(best), "last_ckpt": str(out_dir / "last.ckpt"),
              "best_awe": None if best_score is None else float(best_score), "steps": int(trainer.global_step),
              "epochs": int(trainer.current_epoch), "seconds": round(seconds, 1), "val_source": dm.val_source,
              "mode": mode, "parameters": int(n_params),
              "precision": {**precision_record(trainer.strategy.root_device, "bf16" in str(trainer_cfg.get("precision"))),
                            "lightning": str(trainer_cfg.get("precision"))}}
    if best.exists():
        from seglearn.ckpt import load_checkpoint

        result["val"] = load_checkpoint(best)["meta"]["train"]["val"]
    if trainer.is_global_zero:
        (out_dir / "train_summary.json").write_text(json.dumps(result, indent=2))
        log.info("best validation awe %s %% (%s), %d steps in %.0f s; wrote %s",
                 None if result["best_awe"] is None else round(result["best_awe"], 2), dm.val_source,
                 result["steps"], seconds, best)
    return result


def train(cfg) -> dict:
    """Entry point of ``train.py`` for ``model.kind=unet``: load ``cfg.data.root`` and :func:`fit`."""
    from seglearn.cli import setup_logging
    from seglearn.data import load_dataset
    from seglearn.preprocess.stage import preprocess_loaded, stage_config

    setup_logging()
    root = cfg.data.get("root")
    if not root:
        raise InputError("data.root is not set: give the dataset folder, e.g. python train.py data.root=data/demo")
    resume = cfg.get("ckpt_path")
    _check_out_dir(Path(str(cfg.out_dir)), bool(cfg.get("overwrite", False)), resume, clean=False)
    ds = load_dataset(root, labels=("train", "test"), require=("train",))
    steps, frame = stage_config(cfg)
    if steps:
        ds, _ = preprocess_loaded(ds, steps, labels_frame=frame)
    return fit(cfg, ds)
