"""Beyond one process: Lightning DDP training and torchrun prediction, two CPU processes on gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = ["model.net.base=4", "model.net.depth=2", "model.batch_size=2", "model.patch=[1,32,32]",
            "model.inference.tile=[4,64,64]", "model.steps_per_epoch=2", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEGLEARN_DEBUG", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes(tiny_dataset, tmp_path):
    """``trainer=ddp`` with 2 CPU processes (gloo): one checkpoint pair, one log, written by rank 0."""
    out = tmp_path / "ddp"
    res = run(str(ROOT / "train.py"), f"data.root={tiny_dataset}", f"out_dir={out}", "trainer=ddp",
              "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3", *TINY_NET)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stderr + res.stdout
    assert (out / "best.ckpt").exists() and (out / "last.ckpt").exists()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["best_awe"] is not None
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    assert any(r.get("train/loss_step") for r in rows) and any(r.get("val/awe") for r in rows)
    from seglearn.segment.api import load_segmenter

    seg = load_segmenter(out / "best.ckpt", device="cpu")
    assert seg.meta["train"]["val"]["awe"] is not None


@pytest.mark.slow
def test_torchrun_prediction_equals_single_process(tiny_dataset, tmp_path):
    """Two ranks write their blocks into a shared zarr store; rank 0's TIFFs equal one-process prediction,
    a blank slice in rank 1's block (left unsegmented) included."""
    import shutil

    import tifffile
    import zarr

    from seglearn.io import read_stack
    from seglearn.segment.api import labels_from, load_segmenter

    data = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, data)
    for det, value in (("SE2", 0), ("InLens", 40)):  # slice 5: block 1 of 4 slices, predicted by rank 1
        vol = tifffile.imread(data / "images" / f"{det}.tif")
        vol[5] = value
        tifffile.imwrite(data / "images" / f"{det}.tif", vol)
    res = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "predict.py"),
              f"input={data}", f"output={tmp_path / 'two'}", "block_slices=4", "probabilities=true",
              "device=cpu", "keep_zarr=true")
    assert res.returncode == 0, res.stderr[-3000:]
    # the same prediction in this one process (predict.py without torchrun runs exactly this), on one
    # thread like each rank: another thread count sums convolutions in another order (float16 ulps)
    import torch

    seg = load_segmenter(ROOT / "checkpoints" / "demo.ckpt", device="cpu")
    images = np.stack([read_stack(data / "images" / f"{d}.tif")[0] for d in seg.detectors])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probs = seg.predict_proba(images, seg.detectors, block_slices=4)
    finally:
        torch.set_num_threads(threads)
    labels, blank = labels_from(probs, images)
    assert blank == [5] and not labels[5].any()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "two" / "labels.tif"), labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "two" / "probabilities.tif"),
                                  probs.transpose(1, 0, 2, 3).astype(np.float16))
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "two" / "labels.zarr"), mode="r")), labels)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["test"]["n_scored"] > 0 and summary["blank_slices"] == [5]
    for i, c in enumerate(seg.classes):
        assert summary["fractions"][c] == pytest.approx(np.mean(labels[labels > 0] == i + 1))
    assert (tmp_path / "two" / "preview.png").exists()


@pytest.mark.slow
def test_torchrun_prediction_adapts_a_base_model_once_for_all_ranks(tiny_dataset, tmp_path):
    """adapt=auto under torchrun: rank 0 adapts the base model and every rank predicts with its result,
    which equals the adaptation done in one process."""
    import tifffile
    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.io import read_stack
    from seglearn.pretrain.adapt import adapt_to_volume
    from seglearn.segment.api import segmenter_from_checkpoint

    base = ROOT / "checkpoints" / "fibsem_base.ckpt"
    res = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "predict.py"),
              f"ckpt={base}", f"input={tiny_dataset}", f"output={tmp_path / 'two'}", "block_slices=4", "device=cpu",
              "preview=false")
    assert res.returncode == 0, res.stderr[-3000:]
    ck = load_checkpoint(base, kind="unet")
    images = np.stack([read_stack(tiny_dataset / "images" / f"{d}.tif")[0] for d in ck["meta"]["detectors"]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        new, info = adapt_to_volume(ck, lambda a, b: images[:, a:b], images.shape[1:], ck["meta"]["detectors"])
        seg = segmenter_from_checkpoint(new, device="cpu")
        labels = seg.predict(images, seg.detectors, block_slices=4)
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2
    assert {k: v for k, v in summary["adapt"].items() if k != "seconds"} == \
        {k: v for k, v in info.items() if k != "seconds"}
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "two" / "labels.tif"), labels)


@pytest.mark.slow
def test_ddp_pretraining_on_two_cpu_processes(tmp_path):
    """Pretraining runs on the same Lightning Trainer: ``trainer=ddp`` with 2 CPU processes writes one base model."""
    out = tmp_path / "pre"
    tiny = ["model.max_steps=3", "model.val_every=2", "model.n_val=1", "model.phantom_shape=[8,32,32]",
            "model.patch=32", "model.batch_size=2", "model.net.base=4", "model.context=1", "model.cache=1",
            "model.reuse=4", "model.threads=1", "model.p_real=0", "model.noise_reference=false"]
    res = run(str(ROOT / "train.py"), "experiment=pretrain_fibsem", f"out_dir={out}", "trainer=ddp",
              "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false", *tiny)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 3]  # every val_every steps, and the last step
    from seglearn.ckpt import load_checkpoint

    for name in ("best.ckpt", "last.ckpt"):
        assert load_checkpoint(out / name, kind="unet")["meta"]["pretrain"]["steps"] in (2, 3)
    assert load_checkpoint(out / "last.ckpt")["meta"]["pretrain"]["steps"] == 3
