"""Particle model: train and predict functions and the train.py / predict.py command lines (tiny, fast
settings: the point is the plumbing, checkpoints and outputs, not the accuracy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]

TINY = {"kind": "stardist", "n_rays": 16, "grid": [2, 2], "depth": 1, "base_filters": 4, "head_filters": 8,
        "epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch_size": [32, 32], "prob_grid": [0.5, 0.7],
        "nms_grid": [0.4], "max_minutes": 2.0, "predict": {"method": "auto", "tile": [64, 64], "context": 16}}


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    import yaml

    from seglearn.instances.train import train

    out = tmp_path_factory.mktemp("stardist_run")
    model = {**yaml.safe_load((ROOT / "configs" / "model" / "stardist.yaml").read_text()), **TINY}
    cfg = OmegaConf.create({"data": {"root": str(tiny_dataset)}, "out_dir": str(out), "seed": 0, "model": model,
                            "progress": False})
    return cfg, train(cfg), out


def test_train_writes_checkpoint(trained):
    from seglearn.ckpt import load_checkpoint
    from seglearn.errors import OutputExistsError
    from seglearn.instances.train import train

    cfg, metrics, out = trained
    ck = load_checkpoint(out / "best.ckpt", kind="stardist")
    meta = ck["meta"]
    assert {k: meta["net"][k] for k in ("n_rays", "grid", "depth", "base_filters", "head_filters", "in_channels")} == {
        "n_rays": 16, "grid": [2, 2], "depth": 1, "base_filters": 4, "head_filters": 8, "in_channels": 2}
    assert meta["channels"] == ["SE2", "InLens"]
    assert len(meta["normalisation"]["lo"]) == 2 and all(h > l for l, h in zip(meta["normalisation"]["lo"], meta["normalisation"]["hi"]))
    assert meta["thresholds"]["prob"] in (0.5, 0.7) and meta["thresholds"]["nms"] == 0.4
    assert meta["views"] == ["xy", "xz", "yz"] and meta["predict"]["context"] == 16
    from seglearn.precision import bf16_supported

    assert meta["train"]["steps"] == 2 and meta["train"]["bf16"] == bf16_supported("cpu")  # bf16: auto
    assert set(metrics["val_scores"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert len(metrics["history"]) == 1 and np.isfinite(metrics["history"][0]["val_loss"])
    assert json.loads((out / "metrics.json").read_text())["thresholds"] == metrics["thresholds"]
    with pytest.raises(OutputExistsError):
        train(cfg)


def test_train_tunes_fusion_on_held_out_volume(tiny_dataset, tmp_path):
    """model.tune_data: the fusion settings that score best there go into the checkpoint (plumbing only: the
    tiny dataset stands in for a held-out volume)."""
    import yaml

    from seglearn.ckpt import load_checkpoint
    from seglearn.errors import InputError
    from seglearn.instances.train import train

    model = {**yaml.safe_load((ROOT / "configs" / "model" / "stardist.yaml").read_text()), **TINY,
             "tune_data": str(tiny_dataset), "fusion_grid": {"h": [0.05, 0.3], "foreground": ["probability"],
                                                             "fg_prob": [0.1, 0.3]}}
    cfg = OmegaConf.create({"data": {"root": str(tiny_dataset)}, "out_dir": str(tmp_path / "o"), "seed": 0,
                            "model": model, "progress": False})
    metrics = train(cfg)
    tuned = metrics["tuned"]
    assert len(tuned["table"]) == 4 and tuned["f1_0.75"] == max(r["f1_0.75"] for r in tuned["table"])
    meta = load_checkpoint(tmp_path / "o" / "best.ckpt", kind="stardist")["meta"]
    assert meta["predict"]["fusion"] == tuned["fusion"] and meta["predict"]["fusion"]["foreground"] == "probability"
    assert meta["tuned"]["dataset"] == str(tiny_dataset) and meta["tuned"]["f1_0.75"] == tuned["f1_0.75"]
    model["tune_data"] = str(tmp_path / "missing")
    cfg = OmegaConf.create({"data": {"root": str(tiny_dataset)}, "out_dir": str(tmp_path / "o2"), "model": model,
                            "progress": False})
    with pytest.raises(InputError, match="missing"):
        train(cfg)


def test_train_needs_instances(tmp_path):
    from seglearn.data import write_dataset
    from seglearn.errors import InputError
    from seglearn.instances.train import train

    img = np.zeros((4, 32, 32), np.uint8)
    write_dataset(tmp_path / "ds", {"SE2": img}, instances=np.zeros((4, 32, 32), np.uint32))
    cfg = OmegaConf.create({"data": {"root": str(tmp_path / "ds")}, "out_dir": str(tmp_path / "o"), "model": TINY})
    with pytest.raises(InputError, match="no particle"):
        train(cfg)
    write_dataset(tmp_path / "ds2", {"SE2": img})
    cfg.data.root = str(tmp_path / "ds2")
    with pytest.raises(InputError, match="instances"):
        train(cfg)


def test_train_that_ran_no_step_fails_and_writes_nothing(tiny_dataset, tmp_path, monkeypatch):
    """A trainer that ends without a step (e.g. devices it cannot use) must not save the random weights."""
    import lightning.pytorch as lp
    import yaml

    from seglearn.errors import SeglearnError
    from seglearn.instances.train import train

    monkeypatch.setattr(lp.Trainer, "fit", lambda self, *a, **k: None)  # returns at once: 0 steps
    model = {**yaml.safe_load((ROOT / "configs" / "model" / "stardist.yaml").read_text()), **TINY}
    cfg = OmegaConf.create({"data": {"root": str(tiny_dataset)}, "out_dir": str(tmp_path / "o"), "model": model,
                            "progress": False})
    with pytest.raises(SeglearnError, match="ran 0 steps; nothing was saved") as e:
        train(cfg)
    assert "\n" not in str(e.value) and not (tmp_path / "o").exists()


def test_predict_writes_instances_features_preview(trained, tiny_dataset, tmp_path):
    import pandas as pd
    import tifffile

    from seglearn.ckpt import load_checkpoint
    from seglearn.errors import InputError, OutputExistsError
    from seglearn.instances.predict import predict

    _, _, out = trained
    ck = load_checkpoint(out / "best.ckpt")
    cfg = OmegaConf.create({"input": str(tiny_dataset), "output": str(tmp_path / "p"), "progress": False,
                            "instances": {"prob_thresh": 0.9}})
    res = predict(cfg, ck)
    assert res["method"] == "fusion"           # the default for a stack
    inst = tifffile.imread(tmp_path / "p" / "instances.tif")
    assert inst.shape == (24, 64, 64) and inst.dtype == np.uint32
    with tifffile.TiffFile(tmp_path / "p" / "instances.tif") as tif:  # ImageJ calibration on uint32 ids (issue 25)
        assert tif.pages[0].tags["ImageDescription"].value.startswith("ImageJ=")
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.04) and tif.imagej_metadata["unit"] == "um"
    assert res["voxel_size_source"] == "dataset.yaml" and res["intensity"]["map"] == "identity"
    table = pd.read_csv(tmp_path / "p" / "particles.csv")
    assert sorted(table["id"]) == sorted(set(np.unique(inst)) - {0})
    for col in ("volume_um3", "equivalent_diameter_um", "surface_area_um2", "sphericity", "aspect_ratio",
                "centroid_z_um", "mean_SE2", "std_InLens", "n_neighbours", "bbox_x1"):
        assert col in table.columns
    assert (tmp_path / "p" / "preview.png").stat().st_size > 1000
    assert "3d" in json.loads((tmp_path / "p" / "scores.json").read_text())
    with pytest.raises(OutputExistsError):
        predict(cfg, ck)
    # a single 2D image gets plain 2D instances
    import tifffile as tf

    from seglearn.data import load_dataset

    ds = load_dataset(tiny_dataset)
    tf.imwrite(tmp_path / "one.tif", ds.images[:, 5], imagej=True, metadata={"axes": "CYX"})
    res2 = predict(OmegaConf.create({"input": str(tmp_path / "one.tif"), "output": str(tmp_path / "p2"), "bf16": False,
                                     "progress": False, "instances": {"prob_thresh": 0.9}}), ck)
    assert res2["method"] == "2d"
    assert tifffile.imread(tmp_path / "p2" / "instances.tif").shape[-2:] == (64, 64)
    # wrong number of channels
    tf.imwrite(tmp_path / "mono.tif", ds.images[0, :4], photometric="minisblack")
    with pytest.raises(InputError, match="channel"):
        predict(OmegaConf.create({"input": str(tmp_path / "mono.tif"), "output": str(tmp_path / "p3")}), ck)


@pytest.mark.slow
def test_cli_train_and_predict(tiny_dataset, tmp_path):
    """``train.py model=stardist`` then ``predict.py`` with the particle checkpoint, as a user runs them."""
    import tifffile

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    over = [f"model.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items() if k not in ("kind", "predict")]
    r = subprocess.run([sys.executable, "train.py", "model=stardist", f"data.root={tiny_dataset}",
                        f"out_dir={tmp_path / 'run'}", *over], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "best.ckpt").exists()
    r = subprocess.run([sys.executable, "predict.py", f"ckpt={tmp_path / 'run' / 'best.ckpt'}", f"input={tiny_dataset}",
                        f"output={tmp_path / 'pred'}", "instances.method=linking", "instances.prob_thresh=0.9"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tifffile.imread(tmp_path / "pred" / "instances.tif").shape == (24, 64, 64)
    assert json.loads((tmp_path / "pred" / "scores.json").read_text())["3d"]["0.5"]["n_true"] > 0
    assert (tmp_path / "pred" / "particles.csv").exists() and (tmp_path / "pred" / "preview.png").exists()
    # a missing dataset is one line on stderr, exit code 2
    r = subprocess.run([sys.executable, "train.py", "model=stardist", f"data.root={tmp_path / 'nope'}",
                        f"out_dir={tmp_path / 'run2'}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
