"""Dispatch of the entry points to the model kinds: ``train.py`` by ``cfg.model.kind``,
``predict.py`` by the ``kind`` stored in the checkpoint.

A new model kind is a module with ``train(cfg) -> dict`` and ``predict(cfg, ckpt) -> dict`` plus
a config in ``configs/model/``; it is registered here by its import path (imported lazily so the
entry points start fast).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from seglearn import options
from seglearn.ckpt import load_checkpoint
from seglearn.config import check_targets
from seglearn.errors import InputError
from seglearn.options import check_options

TRAINERS: dict[str, str] = {
    "unet": "seglearn.segment.train:train",
    "stardist": "seglearn.instances.train:train",
    "unet_pretrain": "seglearn.pretrain.train:train",
}
#: ``train.py ... init=BASE.ckpt`` fine-tunes a pretrained checkpoint instead of training from scratch
FINETUNE = "seglearn.pretrain.finetune:train"
PREDICTORS: dict[str, str] = {
    "unet": "seglearn.segment.predict:predict",
    "stardist": "seglearn.instances.predict:predict",
}


def _resolve(table: dict[str, str], kind: str, what: str) -> Callable[..., Any]:
    if kind not in table:
        raise InputError(f"unknown model kind {kind!r} for {what}; known: {sorted(table)}")
    module, func = table[kind].split(":")
    return getattr(importlib.import_module(module), func)


def _check_train_options(cfg, kind: str) -> None:
    """The documented options of ``train.py`` (:mod:`seglearn.options`), before anything is read."""
    check_options(cfg, options.TRAIN, "train")
    rules = {"unet": options.UNET, "stardist": options.STARDIST, "unet_pretrain": options.PRETRAIN}.get(kind, {})
    check_options(cfg, rules, "train")
    if cfg.get("init") and kind == "unet" and cfg.get("finetune") is not None:
        check_options(cfg.finetune, options.FINETUNE, "train", prefix="finetune.")


def train(cfg) -> dict:
    """Train the model kind named by ``cfg.model.kind``; returns its metrics."""
    check_targets(cfg)
    kind = str(cfg.model.kind)
    _check_train_options(cfg, kind)
    if kind != "unet":
        from seglearn.preprocess.stage import stage_config

        if stage_config(cfg)[0]:
            raise InputError(f"preprocess: the preprocessing stage is wired into U-Net training and fine-tuning "
                             f"(model.kind=unet), not model.kind={kind}; preprocess the dataset first with "
                             f"python preprocess.py input=DATASET output=NEW_DATASET")
    if cfg.get("init") and kind == "unet":
        return _resolve({"finetune": FINETUNE}, "finetune", "fine-tuning")(cfg)
    return _resolve(TRAINERS, kind, "training")(cfg)


def predict(cfg) -> dict:
    """Predict with the checkpoint ``cfg.ckpt`` using the predictor of its kind."""
    check_targets(cfg)
    check_options(cfg, options.PREDICT, "predict")
    ckpt = load_checkpoint(cfg.ckpt)
    kind_rules = {"unet": options.PREDICT_UNET, "stardist": options.PREDICT_STARDIST}.get(ckpt["kind"], {})
    check_options(cfg, kind_rules, "predict")
    if ckpt["kind"] == "unet":  # adapt= smooths noisy inputs by the pretraining noise rule (phantom references)
        from seglearn.pretrain.adapt import zero_shot_noise_rule

        return _resolve(PREDICTORS, "unet", "prediction")(cfg, ckpt, noise_rule=zero_shot_noise_rule)
    return _resolve(PREDICTORS, ckpt["kind"], "prediction")(cfg, ckpt)
