"""One training engine (issue 26): ``train(cfg)`` in process for every model kind, on the composed
``train.yaml`` shrunk to a few steps (the lightning-hydra-template way: no subprocess, the same
function ``train.py`` calls), and the one precision rule every Lightning Trainer of seglearn follows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seglearn import precision
from seglearn.ckpt import load_checkpoint
from seglearn.paths import compose
from seglearn.pretrain.lit import trainer_kwargs
from seglearn.runner import train
from seglearn.segment.infer import resolve_device as segment_device
from seglearn.segment.train import _resolve_auto

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "checkpoints" / "fibsem_base.ckpt"
QUIET = ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
#: per model kind: train.yaml overrides (tiny network, a few steps), checkpoint kind, summary file, steps run
KINDS = {
    "unet": (["model.net.base=4", "model.net.depth=2", "model.batch_size=2", "model.patch=[1,32,32]",
              "model.inference.tile=[4,64,64]", "model.steps_per_epoch=2", "trainer.max_steps=3",
              "trainer.log_every_n_steps=1"], "unet", "train_summary.json", 3),
    "stardist": (["model=stardist", "model.n_rays=16", "model.depth=1", "model.base_filters=4",
                  "model.head_filters=8", "model.epochs=1", "model.steps_per_epoch=2", "model.batch_size=2",
                  "model.patch_size=[32,32]", "model.prob_grid=[0.5,0.7]", "model.nms_grid=[0.4]",
                  "model.max_minutes=2.0", "model.predict.tile=[64,64]", "model.predict.context=16"],
                 "stardist", None, 2),
    "unet_pretrain": (["model=unet_pretrain", "model.max_steps=2", "model.val_every=2", "model.n_val=1",
                       "model.phantom_shape=[8,32,32]", "model.patch=32", "model.batch_size=2", "model.net.base=4",
                       "model.context=1", "model.cache=1", "model.reuse=4", "model.threads=1", "model.p_real=0",
                       "model.noise_reference=false"], "unet", "pretrain_summary.json", 2),
    "finetune": ([f"init={BASE}", "finetune.max_steps=2", "finetune.val_every=1", "finetune.batch_size=2",
                  "finetune.patch=32", "finetune.phantom_shape=[8,32,32]", "finetune.cache=1",
                  "finetune.threads=1", "finetune.runs=1", "finetune.blend=off"],
                 "unet", "finetune_summary.json", 2),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_train_cfg_runs_every_model_kind_in_process(kind, tiny_dataset, tmp_path):
    """``seglearn.runner.train(cfg)`` (what train.py runs) trains each kind a few steps and writes a
    checkpoint of the right kind; the summary counts the steps asked for."""
    overrides, ck_kind, summary_name, steps = KINDS[kind]
    out = tmp_path / kind
    cfg = compose("train", [f"data.root={tiny_dataset}", f"out_dir={out}", *QUIET, *overrides])
    result = train(cfg)
    assert isinstance(result, dict)
    ck = load_checkpoint(out / "best.ckpt", kind=ck_kind)
    if kind == "stardist":
        assert ck["meta"]["train"]["steps"] == steps
        return
    summary = json.loads((out / summary_name).read_text())
    assert summary["steps"] == steps
    if kind == "finetune":
        assert ck["meta"]["finetune"]["init"] == str(BASE)
    if kind == "unet_pretrain":
        assert ck["meta"]["pretrain"]["steps"] == steps


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has (or lacks) native bf16 (AVX512-BF16)."""

    def set_flags(native: bool):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        precision._cpu_bf16_isa.cache_clear()

    yield set_flags
    precision._cpu_bf16_isa.cache_clear()


@pytest.mark.parametrize("native", [False, True])
def test_every_trainer_takes_precision_from_the_one_rule(cpu_flags, native):
    """U-Net training, pretraining and fine-tuning build their Trainer arguments with
    :func:`seglearn.precision.trainer_device`: the same precision for the same trainer group, and
    ``trainer=ddp`` on CPU processes gets sync_batchnorm off (SyncBatchNorm needs GPUs)."""
    cpu_flags(native)
    want = "bf16-mixed" if native else "32-true"
    ddp = dict(compose("train", ["data.root=D", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]).trainer)
    unet = _resolve_auto(ddp, "auto")[0]
    pre = trainer_kwargs(ddp, {"max_steps": 5, "max_minutes": 1.0, "bf16": "auto"})
    ft = trainer_kwargs(ddp, {"max_steps": 5, "max_minutes": 1.0, "bf16": "auto"}, time_limit=False)
    for tr in (unet, pre, ft):
        assert tr["precision"] == want == precision.trainer_device(ddp)["precision"]
        assert tr["sync_batchnorm"] is False and tr["strategy"] == "ddp" and tr["devices"] == 2
    assert pre["max_steps"] == 5 and "max_time" in pre and "max_time" not in ft
    # a run's own bf16 setting wins over auto, and an explicit trainer.precision over both
    assert trainer_kwargs(ddp, {"max_steps": 5, "max_minutes": 1.0, "bf16": False})["precision"] == "32-true"
    assert trainer_kwargs({**ddp, "precision": "bf16-mixed"}, {"max_steps": 1, "max_minutes": 1.0,
                                                               "bf16": False})["precision"] == "bf16-mixed"


def test_one_device_rule_for_prediction_and_training(monkeypatch):
    """With a CUDA GPU visible, ``device=auto`` predicts on it and every Trainer of ``trainer=ddp`` runs
    bf16-mixed with SyncBatchNorm there; ``trainer.accelerator=cpu`` keeps the CPU's rule (no sync)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert segment_device is precision.resolve_device  # prediction's device is this rule, not a copy
    assert precision.resolve_device("auto").type == "cuda" and precision.resolve_device("cpu").type == "cpu"
    ddp = dict(compose("train", ["data.root=D", "trainer=ddp"]).trainer)
    gpu = precision.trainer_device(ddp, "auto")
    assert gpu["precision"] == "bf16-mixed" and gpu["sync_batchnorm"] is True
    assert precision.trainer_device(ddp, False)["precision"] == "32-true"
    cpu = precision.trainer_device({**ddp, "accelerator": "cpu"}, "auto")
    assert cpu["sync_batchnorm"] is False
    assert cpu["precision"] == ("bf16-mixed" if precision.bf16_supported("cpu") else "32-true")
