"""Registration by least squares, the wavelet-FFT destriping and the preprocessing stage wired
into train / predict / benchmark (the checkpoint remembers the steps, predict re-applies them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import ROOT
from seglearn.errors import InputError

STEPS = [{"step": "register", "channel": "InLens", "upsample": 10},
         {"step": "crop", "z": [1, 23], "y": [4, 58], "x": [2, 60]}]


# ---- registration -------------------------------------------------------------------------------
def test_solve_positions_is_the_chain_for_consecutive_pairs_and_uses_longer_lags(rng):
    from seglearn.preprocess.registration import solve_positions

    pos = np.cumsum(rng.normal(0, 1, (12, 2)), axis=0)
    pos -= pos[0]
    noisy = [(i, i + 1, pos[i + 1] - pos[i] + rng.normal(0, 0.2, 2), 1.0) for i in range(11)]
    chain = solve_positions(noisy, 12)
    assert np.allclose(chain[1:], np.cumsum([p[2] for p in noisy], axis=0))
    # exact long-lag pairs pull the noisy chain back; a wild long-lag estimate is dropped
    exact = [(i, i + d, pos[i + d] - pos[i], 10.0) for d in (2, 4) for i in range(12 - d)]
    wild = [(0, 8, pos[8] - pos[0] + 30.0, 100.0)]
    both = solve_positions(noisy + exact + wild, 12, tolerance=3.0)
    err = lambda x: np.sqrt(((x - x.mean(0) - (pos - pos.mean(0))) ** 2).sum(1).mean())  # noqa: E731
    assert err(both) < 0.5 * err(chain)
    with pytest.raises(InputError, match="missing"):
        solve_positions(noisy[:5] + noisy[6:], 12)


def test_refined_pair_shift_recovers_the_whole_subpixel_step(rng):
    from seglearn.preprocess import pair_shift

    base = ndi.gaussian_filter(rng.random((96, 96)), 2.0).astype(np.float32)
    true = np.array([0.6, -0.8])
    moved = ndi.shift(base, true, order=3, mode="nearest")
    one = pair_shift(base, moved, refine=0)
    ref = pair_shift(base, moved, refine=2)
    assert np.abs(ref + true).max() < 0.1
    assert np.abs(ref + true).max() <= np.abs(one + true).max() + 1e-9


def test_register_with_lags_fits_a_drifted_stack(rng):
    from seglearn.preprocess import Pipeline, residual_rms

    pad = 12
    big = ndi.gaussian_filter(rng.random((64 + 2 * pad, 64 + 2 * pad)), 1.5).astype(np.float32)
    drift = np.cumsum(rng.normal(0, 0.5, (10, 2)), axis=0)
    drift -= drift[5]
    stack = np.stack([ndi.shift(big, d, order=3, mode="nearest")[pad:-pad, pad:-pad] for d in drift])[None]
    for lags in ([1], [1, 2, 4]):
        pipe = Pipeline.from_config([{"step": "register", "lags": lags, "margin": 0.05}])
        pipe.fit(stack, progress=False)
        assert residual_rms(pipe.steps[0].shifts, drift)["absolute_rms"] < 0.15
    assert pipe.to_config()[0]["lags"] == [1, 2, 4]
    with pytest.raises(InputError, match="lags"):
        Pipeline.from_config([{"step": "register", "lags": ["a"]}])


# ---- wavelet-FFT destriping ---------------------------------------------------------------------
def test_wavelet_destripe_removes_vertical_stripes_and_keeps_dtype(rng):
    from seglearn.preprocess import Pipeline
    from seglearn.preprocess.destripe import wavelet_fft_destripe

    yy, xx = np.mgrid[:128, :128]
    clean = 100 + 40 * np.exp(-((yy - 64) ** 2 + (xx - 50) ** 2) / 300.0)
    stripes = 15 * np.sin(xx * 1.7) * (1 - 0.3 * yy / 128)
    out = wavelet_fft_destripe((clean + stripes).astype(np.float32))
    assert np.abs(out - clean).std() < 0.3 * stripes.std()
    img = np.clip(clean + stripes, 0, 255).astype(np.uint8)[None, None]
    res = Pipeline.from_config([{"step": "destripe", "method": "wavelet", "wavelet": "sym8", "level": 3}]).apply(img)
    assert res.dtype == np.uint8 and res.shape == img.shape
    with pytest.raises(InputError, match="wavelet"):
        Pipeline.from_config([{"step": "destripe", "method": "wavelet", "wavelet": "nope"}])


# ---- the stage in train / predict / benchmark ---------------------------------------------------
def test_stage_config_forms():
    from seglearn.preprocess.stage import stage_config

    assert stage_config({}) == ([], "auto")
    assert stage_config({"preprocess": None}) == ([], "auto")
    steps, frame = stage_config({"preprocess": {"steps": [{"step": "clahe"}], "labels_frame": "raw"}})
    assert [s["step"] for s in steps] == ["clahe"] and frame == "raw"
    assert stage_config({"preprocess": ["clahe"]})[0][0]["clip"] == 2.0
    with pytest.raises(InputError, match="unknown key"):
        stage_config({"preprocess": {"stpes": []}})


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.slow
def test_train_stores_preprocess_and_predict_reapplies_it(tiny_dataset, tmp_path):
    from seglearn.ckpt import load_checkpoint
    from seglearn.io import read_stack
    from seglearn.runner import predict, train

    steps = json.dumps(STEPS).replace('"', "")
    cfg = _compose("train", [f"data.root={tiny_dataset}", f"out_dir={tmp_path / 'run'}", "trainer.max_steps=2",
                             "model.net.base=4", "model.net.depth=2", "model.batch_size=2", "model.patch=[1,32,32]",
                             "model.inference.tile=[4,64,64]", "model.steps_per_epoch=2", "trainer.log_every_n_steps=1",
                             "trainer.accelerator=cpu", f"preprocess.steps={steps}"])
    train(cfg)
    meta = load_checkpoint(tmp_path / "run" / "last.ckpt")["meta"]
    pre = meta["preprocess"]
    assert [s["step"] for s in pre["steps"]] == ["register", "crop"] and pre["detectors"] == ["SE2", "InLens"]
    assert pre["steps"][0]["channel"] == "InLens" and pre["labels_frame"] == "raw"
    out = tmp_path / "pred"
    pcfg = _compose("predict", [f"ckpt={tmp_path / 'run' / 'last.ckpt'}", f"input={tiny_dataset}", f"output={out}",
                                "device=cpu", "preview=false", "block_slices=8"])
    summary = predict(pcfg)
    labels, _ = read_stack(out / "labels.tif")
    assert labels.shape == (22, 54, 58) == tuple(summary["shape"]) == tuple(summary["preprocess"]["shape"])
    assert summary["preprocess"]["raw_shape"] == [24, 64, 64] and "test" in summary
    assert json.loads((out / "summary.json").read_text())["preprocess"]["steps"][1]["step"] == "crop"
    assert (out / "registration_shifts.csv").exists() and not list(out.glob(".preprocess.tmp-*"))


@pytest.mark.slow
def test_finetune_stores_preprocess_and_predict_reapplies_it(tiny_dataset, tmp_path):
    from seglearn.ckpt import load_checkpoint
    from seglearn.runner import predict, train

    steps = json.dumps(STEPS).replace('"', "")
    cfg = _compose("train", [f"data.root={tiny_dataset}", f"out_dir={tmp_path / 'ft'}", f"init={ROOT / 'checkpoints' / 'fibsem_base.ckpt'}",
                             "finetune.max_steps=2", "finetune.val_every=1", "finetune.synth_fraction=0",
                             "finetune.patch=32", "finetune.batch_size=2", "finetune.threads=1", f"preprocess.steps={steps}"])
    train(cfg)
    meta = load_checkpoint(tmp_path / "ft" / "best.ckpt")["meta"]
    assert [s["step"] for s in meta["preprocess"]["steps"]] == ["register", "crop"]
    assert meta["finetune"]["init"].endswith("fibsem_base.ckpt")
    out = tmp_path / "pred"
    summary = predict(_compose("predict", [f"ckpt={tmp_path / 'ft' / 'best.ckpt'}", f"input={tiny_dataset}",
                                           f"output={out}", "device=cpu", "preview=false"]))
    assert summary["shape"] == summary["preprocess"]["shape"] == [22, 54, 58]
    assert (out / "registration_shifts.csv").exists()


def test_train_refuses_preprocess_for_other_model_kinds(tiny_dataset, tmp_path):
    from seglearn.runner import train

    cfg = _compose("train", [f"data.root={tiny_dataset}", f"out_dir={tmp_path}", "model=stardist",
                             "preprocess=register"])
    with pytest.raises(InputError, match="preprocess.py"):
        train(cfg)


def test_benchmark_applies_the_stage_before_the_methods(tiny_dataset, tmp_path):
    from omegaconf import OmegaConf

    from seglearn.benchmark.run import run_benchmark

    cfg = OmegaConf.to_container(_compose("benchmark", [f"data.root={tiny_dataset}", f"out={tmp_path}",
                                                        "methods=[double_threshold_fit]", "preprocess=none"]),
                                 resolve=True)
    cfg["preprocess"] = {"steps": [STEPS[1]]}
    res = run_benchmark(cfg)
    assert res["shape"] == [22, 54, 58] and res["preprocess"]["steps"][0]["step"] == "crop"
    assert "error" not in res["methods"][0] and "preprocessing: ['crop']" in (tmp_path / "results.md").read_text()


def _two_detector_slice(rng):
    """Two detectors of one slice: own contrasts of one structure, shared stripes (amplitudes 1 and 0.6)."""
    yy, xx = np.mgrid[:128, :128]
    blobs = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 150.0) for cy, cx in rng.uniform(10, 118, (12, 2)))
    clean = np.stack([90 + 60 * blobs, 140 - 50 * blobs])
    noise = np.convolve(rng.normal(0, 1, 160), np.ones(2) / 2, "same")
    stripes = (noise - np.convolve(noise, np.ones(9) / 9, "same"))[16:144]  # narrow curtains (< 8 px)
    stripes = (18 * stripes / stripes.std())[None, :] * (1 - 0.4 * yy / 128)
    return clean, clean + np.stack([1.0, 0.6])[:, None, None] * stripes[None]


def test_joint_destripe_keeps_the_detector_difference(rng):
    from seglearn.preprocess import Pipeline

    clean, img = _two_detector_slice(rng)
    joint = Pipeline.from_config([{"step": "destripe", "method": "wavelet", "joint": True}]).apply(img[:, None])[:, 0]
    sep = Pipeline.from_config([{"step": "destripe", "method": "wavelet", "joint": False}]).apply(img[:, None])[:, 0]
    for c in range(2):  # both remove most of each detector's stripes
        before = np.sqrt(np.mean((img[c] - clean[c]) ** 2))
        assert np.sqrt(np.mean((joint[c] - clean[c]) ** 2)) < 0.5 * before
    # the difference image, whose stripes are (1 - 0.6) of one field, is damaged less by one shared estimate
    diff = clean[0] - clean[1]
    err_joint = np.sqrt(np.mean(((joint[0] - joint[1]) - diff) ** 2))
    err_sep = np.sqrt(np.mean(((sep[0] - sep[1]) - diff) ** 2))
    assert err_joint < err_sep
    one = Pipeline.from_config([{"step": "destripe", "method": "wavelet", "joint": True}]).apply(img[:1, None])
    np.testing.assert_array_equal(one, Pipeline.from_config([{"step": "destripe", "method": "wavelet", "joint": False}])
                                  .apply(img[:1, None]))
    # the line filter has no stripe estimate to share: per detector whatever joint says
    u8 = np.clip(img, 0, 255).astype(np.uint8)[:, None]
    np.testing.assert_array_equal(Pipeline.from_config([{"step": "destripe", "method": "open_median"}]).apply(u8),
                                  Pipeline.from_config([{"step": "destripe", "method": "open_median", "joint": False}]).apply(u8))
