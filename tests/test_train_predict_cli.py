"""train.py and predict.py through the real command line on the tiny phantom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = ["model.net.base=4", "model.net.depth=2", "model.batch_size=2", "model.patch=[1,32,32]",
            "model.inference.tile=[4,64,64]", "model.steps_per_epoch=2", "trainer.log_every_n_steps=1"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEGLEARN_DEBUG", None)
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    res = run("train.py", f"data.root={tiny_dataset}", f"out_dir={out}", "trainer.max_steps=4", *TINY_NET)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_train_writes_checkpoints_logs_and_resumes(trained, tiny_dataset):
    import torch

    from seglearn.ckpt import load_checkpoint

    best, last = trained / "best.ckpt", trained / "last.ckpt"
    assert best.exists() and last.exists()
    raw = torch.load(best, map_location="cpu", weights_only=True)
    ck = load_checkpoint(last, kind="unet")
    meta = ck["meta"]
    assert raw["format"] == "seglearn" and meta["detectors"] == ["SE2", "InLens"] and meta["derived"] == ["SE2-InLens"]
    assert meta["classes"] == ["pore", "carbon_binder", "active_material"] and meta["voxel_size_nm"] == [40.0, 20.0, 20.0]
    assert len(meta["normalisation"]["ranges"]) == 3 and meta["mode"] == "2.5d" and meta["seglearn_version"]
    assert ck["global_step"] == 4
    header = (trained / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/awe" in header and "train/loss_step" in header and "val/iou_carbon_binder" in header
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["val_source"] == "test" and 0.0 <= summary["best_awe"] <= 100.0
    assert summary["precision"]["dtype"] in ("bf16", "fp32") and summary["precision"]["why"]
    # an existing run is not replaced without overwrite=true
    again = run("train.py", f"data.root={tiny_dataset}", f"out_dir={trained}", "trainer.max_steps=2", *TINY_NET)
    assert again.returncode == 2 and "overwrite=true" in again.stderr and "Traceback" not in again.stderr
    # resume from last.ckpt continues the step count
    res = run("train.py", f"data.root={tiny_dataset}", f"out_dir={trained}", f"ckpt_path={last}",
              "trainer.max_steps=6", *TINY_NET)
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(last)["global_step"] == 6


def test_predict_cli_writes_outputs_and_refuses_overwrite(trained, tiny_dataset, tmp_path):
    from seglearn.io import read_image, read_stack

    out = tmp_path / "pred"
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input={tiny_dataset}", f"output={out}",
              "probabilities=true", "block_slices=5")
    assert res.returncode == 0, res.stderr[-3000:]
    labels, meta = read_stack(out / "labels.tif")
    assert labels.shape == (24, 64, 64) and labels.dtype == np.uint8
    assert labels.min() >= 1 and labels.max() <= 3
    assert meta["voxel_size_nm"] == pytest.approx((40.0, 20.0, 20.0))
    probs, _ = read_image(out / "probabilities.tif")
    assert probs.shape == (3, 24, 64, 64) and probs.dtype == np.float16
    np.testing.assert_array_equal(np.argmax(probs, axis=0) + 1, labels)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shape"] == [24, 64, 64] and summary["voxels_per_second"] > 0
    from seglearn.precision import bf16_supported

    assert summary["precision"]["dtype"] == ("bf16" if bf16_supported("cpu") else "fp32")
    assert sum(summary["fractions"].values()) == pytest.approx(1.0)
    assert 0.0 <= summary["test"]["awe"] <= 100.0 and set(summary["test"]["iou"]) == {"pore", "carbon_binder", "active_material"}
    assert (out / "preview.png").stat().st_size > 1000
    # the same prediction from the detector files as a list
    out2 = tmp_path / "pred2"
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input=[{tiny_dataset}/images/SE2.tif,{tiny_dataset}/images/InLens.tif]",
              f"output={out2}")
    assert res.returncode == 0, res.stderr[-3000:]
    np.testing.assert_array_equal(read_stack(out2 / "labels.tif")[0], labels)
    # a user-given existing output is refused, then replaced with overwrite=true
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input={tiny_dataset}", f"output={out}")
    assert res.returncode == 2 and "overwrite=true" in res.stderr
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input={tiny_dataset}", f"output={out}", "overwrite=true")
    assert res.returncode == 0, res.stderr[-3000:]


def test_predict_cli_refuses_channel_mismatch(trained, tiny_dataset, tmp_path):
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input=[{tiny_dataset}/images/SE2.tif]",
              f"output={tmp_path / 'x'}")
    assert res.returncode == 2
    assert "needs detectors ['SE2', 'InLens']" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x" / "labels.tif").exists()


def test_shipped_demo_checkpoint_predicts(tiny_dataset, tmp_path):
    """The default checkpoint of predict.py (checkpoints/demo.ckpt) loads and predicts."""
    if not (ROOT / "checkpoints" / "demo.ckpt").exists():
        pytest.fail("checkpoints/demo.ckpt is missing (train it with: python train.py experiment=demo)")
    assert (ROOT / "checkpoints" / "demo.ckpt").stat().st_size < 10 * 2**20
    res = run("predict.py", f"input={tiny_dataset}", f"output={tmp_path / 'demo'}", "preview=false",
              "characterise=[fractions]")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    # characterise=... runs the microstructure report on the prediction
    report = json.loads((tmp_path / "demo" / "characterise" / "report.json").read_text())
    assert (tmp_path / "demo" / "characterise" / "report.html").exists()
    assert sum(report["fractions"].values()) == pytest.approx(1.0, abs=1e-6)
    for name, f in summary["fractions"].items():
        assert report["fractions"][name] == pytest.approx(f, abs=1e-6)
    # trained on another phantom of the same kind, it must beat every constant prediction (awe 1 - p_c^2)
    from seglearn.io import read_stack

    test, _ = read_stack(tiny_dataset / "labels" / "test.tif")
    p = np.bincount(test[test > 0], minlength=4)[1:] / np.count_nonzero(test)
    no_skill = float(np.min(1.0 - p**2) * 100.0)
    assert summary["test"]["awe"] < no_skill - 10.0
    assert all(f > 0.01 for f in summary["fractions"].values())


def test_predict_cli_test_time_augmentation(trained, tiny_dataset, tmp_path):
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input={tiny_dataset}", f"output={tmp_path / 'bad'}",
              "tta=rot45")
    assert res.returncode == 2 and "tta must be one of" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "bad").exists()
    res = run("predict.py", f"ckpt={trained / 'best.ckpt'}", f"input={tiny_dataset}", f"output={tmp_path / 'tta'}",
              "tta=flips", "preview=false")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "tta" / "summary.json").read_text())
    assert summary["tta"] == "flips" and "awe" in summary["test"]
