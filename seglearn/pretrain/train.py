"""Pretraining of a FIB-SEM base model on the domain-randomised phantom stream.

``python train.py experiment=pretrain_fibsem`` (``model.kind=unet_pretrain``) lands in
:func:`train`. The result is an ordinary ``kind="unet"`` checkpoint (so ``predict.py`` and
:func:`seglearn.segment.api.load_segmenter` use it as is) whose ``meta["pretrain"]`` records the
randomisation ranges, the microstructure sources and the training budget it saw.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from seglearn.segment.net import build_net
import seglearn
from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.config import merge_settings, resolve_seed, to_plain
from seglearn.errors import InputError, OutputExistsError, SeglearnError
from seglearn.log import setup_logging
from seglearn.metrics import score
from seglearn.paths import load_config
from seglearn.precision import precision_record
from seglearn.pretrain.noise import store_reference
from seglearn.pretrain.randomise import make_randomiser
from seglearn.pretrain.stream import PhantomPatchStream, base_ranges, to_channels
from seglearn.segment.channels import resolve_derived
from seglearn.segment.infer import mode_defaults

log = logging.getLogger("seglearn")

CLASSES = ["pore", "carbon_binder", "active_material"]
#: the settings' one home: ``model=unet_pretrain`` (``experiment=pretrain_fibsem`` selects it)
CONFIG = "model/unet_pretrain.yaml"

__all__ = ["CLASSES", "base_meta", "evaluate", "make_randomiser", "pretrain", "settings_from", "train",
           "validation_set", "warm_start"]


def settings_from(cfg_model: Mapping | None) -> dict:
    """``configs/model/unet_pretrain.yaml`` updated by a (plain or OmegaConf) model config; unknown keys refused."""
    defaults = {k: v for k, v in load_config(CONFIG).items() if k != "kind"}
    out = merge_settings(defaults, cfg_model, "model (unet_pretrain)", ignore=("kind",))
    out["net"] = {**defaults["net"], **dict(out.get("net") or {})}
    out["seed"] = int(out["seed"] or 0)  # null = train.py's top-level seed (resolve_seed); 0 through the Python API
    return out


def base_meta(s: Mapping, randomiser) -> dict:
    """Checkpoint metadata in the U-Net's format, plus ``pretrain`` (ranges, sources, budget)."""
    dets = list(s["detectors"])
    derived = resolve_derived(dets, s["derived"])
    mode = str(s["mode"])
    depth = int(s["net"]["depth"])
    r = randomiser.ranges
    xy = float(np.mean(r["voxel_xy_nm"]))
    return {
        "net": {"in_channels": len(dets) + len(derived), "n_classes": 3, "mode": mode,
                "context": int(s["context"]) if mode == "2.5d" else 0, "base": int(s["net"]["base"]), "depth": depth,
                "dropout": float(s["net"]["dropout"]), "pool_z": [False] * depth, "kernel_z": [1] * (depth + 1),
                "channels_last": False},
        "detectors": dets, "derived": derived, "channels": dets + derived,
        "normalisation": {"method": "fixed", "percentiles": None, "ranges": base_ranges(dets, derived)},
        "classes": list(CLASSES), "voxel_size_nm": [xy * float(np.mean(r["anisotropy"])), xy, xy], "mode": mode,
        "inference": {"tile": mode_defaults(mode)["tile"], "overlap": mode_defaults(mode)["overlap"], "border": None,
                      "batch_size": 2},
        "pretrain": {"ranges": {k: list(v) for k, v in r.items()}, "p_real": randomiser.p_real,
                     "p_flat": randomiser.p_flat, "p_family_b": randomiser.p_family_b, "sources": [Path(p).name for p in randomiser.sources],
                     "phantom_shape": list(randomiser.shape), "patch": int(s["patch"]),
                     "single_detector_physics": "SE2 or InLens at random" if len(dets) == 1 else None},
        "train": {"dataset": "synthetic (seglearn.pretrain)", "seed": int(s["seed"])},
        "seglearn_version": seglearn.__version__,
    }


def validation_set(s: Mapping, n: int, seed: int = 12345) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` fixed randomised phantoms ``(channels, truth)`` for validation (independent of training draws)."""
    rnd = make_randomiser(s)
    rng = np.random.default_rng(seed)
    derived = resolve_derived(list(s["detectors"]), s["derived"])
    out = []
    for _ in range(n):
        images, truth, _ = rnd.draw(rng)
        out.append((to_channels(images, rnd.detectors, derived), truth))
    return out


def evaluate(net, val: list, halo: int, *, bf16: bool = False) -> float:
    """Mean awe (%) of ``net`` over validation phantoms (slices with full 2.5D context)."""
    import torch

    was_training = net.training
    net.eval()
    dev = next(net.parameters()).device
    awes = []
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for x, t in val:
            logits = net(torch.from_numpy(x[None]).to(dev))[0].float()
            pred = (logits.argmax(0).cpu().numpy() + 1).astype(np.uint8)
            z = t.shape[0]
            awes.append(score(pred, t[halo:z - halo], 3)["awe"])
    net.train(was_training)
    return float(np.mean(awes))


def warm_start(net, meta: Mapping, path: str) -> dict:
    """Load the weights of an earlier base model into ``net`` (continued pretraining).

    The checkpoint must have been pretrained with the same network and inputs; its budget is
    returned (and recorded in the new checkpoint's ``meta.pretrain.continued_from``).
    """
    ck = load_checkpoint(path, kind="unet")
    old = ck["meta"]
    for key in ("net", "channels"):
        if old.get(key) != meta[key]:
            raise InputError(f"{path}: its {key} {old.get(key)} differ from this pretraining's {meta[key]}; "
                             "continued pretraining needs the same network and inputs")
    net.load_state_dict(ck["state_dict"])
    prev = dict(old.get("pretrain") or {})
    return {"checkpoint": Path(path).name, "steps": prev.get("steps"), "seconds": prev.get("seconds"),
            "val_awe": prev.get("val_awe"), "continued_from": prev.get("continued_from")}


def _base_network(s: Mapping) -> tuple[Any, dict, Any]:
    """``(randomiser, meta, net)`` of a new base model: the phantom randomiser of the settings, the
    checkpoint's ``meta`` (with the noise reference when ``noise_reference``) and the network, warm-started
    from ``init`` when given."""
    rnd = make_randomiser(s)
    meta = base_meta(s, rnd)
    net = build_net(meta["net"])
    if s.get("init"):
        meta["pretrain"]["continued_from"] = warm_start(net, meta, str(s["init"]))
    if s["noise_reference"]:  # measured once, before the clock starts, not by every fine-tuning and prediction
        meta = store_reference(meta)
    return rnd, meta, net


def _summary(trainer, ckpts, net, out_dir: Path, tr: Mapping, *, seconds: float) -> dict:
    """``pretrain_summary.json`` of a finished run (rank 0); raises if it wrote no ``best.ckpt``."""
    best = out_dir / "best.ckpt"
    if trainer.global_step == 0 or not best.is_file():
        raise SeglearnError(f"{out_dir}: pretraining ran {trainer.global_step} steps and wrote no best.ckpt "
                            f"(trainer: {tr.get('accelerator')}, devices={tr.get('devices')})")
    bf16 = "bf16" in str(tr["precision"])
    return {"best_ckpt": str(best), "best_awe": round(ckpts.best, 3), "best_step": ckpts.best_step,
            "steps": int(trainer.global_step), "seconds": round(seconds, 1),
            "size_bytes": best.stat().st_size, "parameters": int(sum(p.numel() for p in net.parameters())),
            "processes": int(trainer.world_size),
            "precision": {**precision_record(trainer.strategy.root_device, bf16), "lightning": str(tr["precision"])}}


def pretrain(settings: Mapping, out_dir: str | Path, *, overwrite: bool = False,
             trainer_cfg: Mapping | None = None) -> dict:
    """Train a base model on the phantom stream; writes ``out_dir/best.ckpt``, ``last.ckpt``, ``log.csv``.

    Runs on the Lightning ``Trainer`` of U-Net training (:mod:`seglearn.pretrain.lit`): ``trainer_cfg``
    is the ``trainer`` config group (accelerator, devices, strategy, precision; ``trainer=ddp`` for
    several GPUs or CPU processes); the step and time budgets are the settings' own.

    Parameters
    ----------
    settings : mapping
        Keys of ``configs/model/unet_pretrain.yaml`` (:func:`settings_from`).
    out_dir : path-like
    overwrite : bool
    trainer_cfg : mapping, optional
        ``lightning.Trainer`` arguments; default: one process on the best device.

    Returns
    -------
    dict
        ``best_ckpt``, ``best_awe`` (validation phantoms), ``steps``, ``seconds``, ``size_bytes``,
        ``precision``, ``processes``.
    """
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from seglearn.pretrain.lit import PhantomStreamData, PretrainCheckpoints, PretrainModule, trainer_kwargs

    s = dict(settings)
    out_dir = Path(out_dir)
    if (out_dir / "best.ckpt").exists() and not overwrite:
        raise OutputExistsError(f"{out_dir}: already holds best.ckpt; pass overwrite=true to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    if int(s.get("threads") or 0) > 0:
        torch.set_num_threads(int(s["threads"]))
    L.seed_everything(int(s["seed"]), verbose=False)
    rnd, meta, net = _base_network(s)
    halo = int(meta["net"]["context"])
    val = validation_set(s, int(s["n_val"]))
    budget = float(s["max_minutes"]) * 60.0
    tr = trainer_kwargs(trainer_cfg, s)
    bf16 = "bf16" in str(tr["precision"])

    def make_stream(seed: int) -> PhantomPatchStream:
        return PhantomPatchStream(make_randomiser(s), derived=meta["derived"], patch=int(s["patch"]), halo=halo,
                                  cache=int(s["cache"]), reuse=int(s["reuse"]), seed=seed)

    def save(name: str, kept, extra: dict) -> Path:
        m = dict(meta)
        m["pretrain"] = {**meta["pretrain"], **extra, "n_val": len(val)}
        return save_checkpoint(out_dir / name, kind="unet", state_dict=kept.state_dict(), meta=m, overwrite=True)

    module = PretrainModule(net, lr=float(s["lr"]), weight_decay=float(s["weight_decay"]),
                            max_steps=int(s["max_steps"]), budget_s=budget, warmup=int(s["warmup"]),
                            ema=float(s.get("ema") or 0.0))
    ckpts = PretrainCheckpoints(out_dir, val_every=int(s["val_every"]), save=save,
                                evaluate=lambda kept: evaluate(kept, val, halo, bf16=bf16))
    data = PhantomStreamData(make_stream, batch_size=int(s["batch_size"]), seed=int(s["seed"]))
    trainer = L.Trainer(callbacks=[ckpts], logger=CSVLogger(save_dir=str(out_dir), name="logs", version=""),
                        default_root_dir=str(out_dir), enable_checkpointing=False, **tr)
    log.info("pretraining a %s base model (%s) for at most %d steps / %.0f min on %s phantoms, %s, %d process(es), "
             "out_dir %s", meta["mode"], "+".join(meta["channels"]), int(s["max_steps"]), budget / 60,
             "x".join(map(str, rnd.shape)), tr["precision"], trainer.world_size, out_dir)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    if not trainer.is_global_zero:
        return {"best_ckpt": str(out_dir / "best.ckpt"), "rank": trainer.global_rank}
    result = _summary(trainer, ckpts, net, out_dir, tr, seconds=time.perf_counter() - t0)
    (out_dir / "pretrain_summary.json").write_text(json.dumps(result, indent=2))
    log.info("pretraining done: best validation awe %.2f %% at step %d; %s (%d bytes)", ckpts.best, ckpts.best_step,
             result["best_ckpt"], result["size_bytes"])
    return result


def train(cfg) -> dict:
    """Entry point of ``train.py`` for ``model.kind=unet_pretrain``."""

    setup_logging()
    s = settings_from(cfg.model)
    s["seed"] = resolve_seed(cfg, "model", 0)
    return pretrain(s, str(cfg.out_dir), overwrite=bool(cfg.overwrite),
                    trainer_cfg=to_plain(cfg.get("trainer")))
