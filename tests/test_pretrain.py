"""seglearn.pretrain: domain randomisation, the patch stream, pretraining and fine-tuning."""

from __future__ import annotations

import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

from seglearn.errors import InputError, OutputExistsError
from seglearn.pretrain.randomise import DEFAULT_RANGES, Randomiser, resolve_ranges

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = ["model.max_steps=2", "model.val_every=2", "model.n_val=1", "model.phantom_shape=[8,32,32]", "model.patch=32",
        "model.batch_size=2", "model.net.base=4", "model.context=1", "model.cache=1", "model.reuse=4",
        "model.threads=1", "model.p_real=0", "model.noise_reference=false"]
TINY_FT = {"max_steps": 2, "val_every": 1, "batch_size": 2, "patch": 32, "phantom_shape": [8, 32, 32], "cache": 1,
           "threads": 1, "runs": 1, "blend": "off"}  # the forest blend has its own tests (test_blend.py)


def _cli(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def test_sampled_configs_stay_in_ranges():
    rnd = Randomiser(ranges={"noise": [0.05, 0.06], "anisotropy": [2.0, 2.0]}, shape=(8, 32, 32))
    rng = np.random.default_rng(0)
    for _ in range(30):
        cfg, acq = rnd.sample_config(rng)
        for det in (cfg.se2, cfg.inlens):
            assert 0.05 <= det.noise <= 0.06
            lo, hi = DEFAULT_RANGES["shine_length"]
            assert lo <= det.shine_length <= hi
            assert det.level_background < det.level_cbd < det.level_am
        assert cfg.voxel_size_nm[0] == pytest.approx(2.0 * cfg.voxel_size_nm[1])
        assert cfg.se2.shine_length >= cfg.inlens.shine_length  # SE2 sees deeper than InLens
        lo, hi = DEFAULT_RANGES["particle_radius_nm"]
        assert lo <= cfg.particle_radius_nm <= hi
        assert DEFAULT_RANGES["gain"][0] <= acq["gain"] <= DEFAULT_RANGES["gain"][1]
        cfg.validate()


def test_ranges_are_checked():
    with pytest.raises(InputError, match="unknown parameter"):
        resolve_ranges({"nosie": [0, 1]})
    with pytest.raises(InputError, match="lo <= hi"):
        resolve_ranges({"noise": [0.2, 0.1]})


def test_draw_and_stream_give_dense_labelled_patches():
    from seglearn.pretrain.stream import PhantomPatchStream

    rnd = Randomiser(ranges={}, shape=(8, 32, 32), p_flat=0.0)
    images, truth, info = rnd.draw(np.random.default_rng(1))
    assert images.shape == (2, 8, 32, 32) and images.dtype == np.uint8 and truth.shape == (8, 32, 32)
    assert set(np.unique(truth)) <= {1, 2, 3} and len(np.unique(truth)) >= 2
    assert images[0].std() > 1  # a rendered image, not a constant
    s1 = iter(PhantomPatchStream(rnd, derived=["SE2-InLens"], patch=32, halo=1, cache=1, reuse=8, seed=5))
    s2 = iter(PhantomPatchStream(rnd, derived=["SE2-InLens"], patch=32, halo=1, cache=1, reuse=8, seed=5))
    a = [next(s1) for _ in range(4)]
    b = [next(s2) for _ in range(4)]
    x, y = a[0]
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32 and y.shape == (1, 32, 32)
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) <= {1, 2, 3}
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))  # deterministic


def test_flat_samples_repeat_one_slice():
    rnd = Randomiser(ranges={}, shape=(6, 32, 32), p_flat=1.0, detectors=["SE2"])
    _, truth, info = rnd.draw(np.random.default_rng(2))
    assert info["flat"] and all(np.array_equal(truth[0], t) for t in truth)


def test_detector_rule():
    from seglearn.pretrain.rules import select_detectors

    two = {"detectors": ["SE2", "InLens"], "derived": ["SE2-InLens"]}
    assert select_detectors(two, ["InLens", "SE2"]) == ([1, 0], ["SE2", "InLens"])
    with pytest.raises(InputError, match="fibsem_base_1det"):
        select_detectors(two, ["SE2"])
    one = {"detectors": ["SE2"], "derived": []}
    assert select_detectors(one, ["BSE"]) == ([0], ["BSE"])
    assert select_detectors(one, ["InLens", "SE2"]) == ([1], ["SE2"])
    assert select_detectors(one, ["InLens", "SE2"], detector="InLens") == ([0], ["InLens"])


def test_split_scribbles_keeps_every_class_on_both_sides():
    from seglearn.pretrain.rules import split_scribbles

    rng = np.random.default_rng(0)
    lab = np.zeros((2, 128, 128), np.uint8)
    lab[:, 10:120:3, 10:120] = rng.integers(1, 4, size=(2, 37, 110))
    fit, val = split_scribbles(lab, fraction=0.25, tile=32, seed=0)
    assert not ((fit > 0) & (val > 0)).any()
    assert np.array_equal(np.maximum(fit, val), lab)
    for c in (1, 2, 3):
        assert (fit == c).any() and (val == c).any()


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory):
    """A tiny base model pretrained through the real CLI (``train.py experiment=pretrain_fibsem``)."""
    out = tmp_path_factory.mktemp("pre") / "base"
    r = _cli(["train.py", "experiment=pretrain_fibsem", f"out_dir={out}", *TINY])
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "best.ckpt"


@pytest.mark.slow
def test_pretrain_cli_writes_a_unet_checkpoint_with_its_ranges(base_ckpt):
    from seglearn.ckpt import load_checkpoint
    from seglearn.segment.api import load_segmenter

    ck = load_checkpoint(base_ckpt, kind="unet")
    meta = ck["meta"]
    assert meta["pretrain"]["ranges"] == {k: list(v) for k, v in DEFAULT_RANGES.items()}
    assert meta["channels"] == ["SE2", "InLens", "SE2-InLens"] and meta["pretrain"]["steps"] == 2
    seg = load_segmenter(base_ckpt, device="cpu")
    img = np.random.default_rng(0).integers(0, 255, (2, 3, 32, 32)).astype(np.uint8)
    assert seg.predict(img, ["SE2", "InLens"]).shape == (3, 32, 32)


@pytest.mark.slow
def test_finetune_same_classes_never_worse_than_zero_shot(base_ckpt, tiny_phantom, tmp_path):
    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import finetune

    ph = tiny_phantom
    r = finetune(base_ckpt, ph.channels(), ["SE2", "InLens"], ph.train, tmp_path / "ft", test=ph.test,
                 settings=TINY_FT)
    assert r["history"][0]["step"] == 0 and r["best_val_awe"] <= r["val_awe_zero_shot"]
    assert r["class_map"] is None and r["steps"] == 2
    meta = load_checkpoint(tmp_path / "ft" / "best.ckpt", kind="unet")["meta"]
    assert meta["finetune"]["init"] == str(base_ckpt) and "ranges" in meta["pretrain"]
    cal = meta["calibration"]  # the temperature fitted on the validation labels (issue 27)
    assert cal["source"] == "test" and cal["n_voxels"] == int((ph.test > 0).sum()) and 0.05 <= cal["temperature"] <= 20
    with pytest.raises(OutputExistsError, match="already holds"):
        finetune(base_ckpt, ph.channels(), ["SE2", "InLens"], ph.train, tmp_path / "ft", settings=TINY_FT)


@pytest.mark.slow
def test_finetune_two_classes_gets_a_new_head(base_ckpt, tmp_path):
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.api import load_segmenter

    rng = np.random.default_rng(0)
    img = np.full((1, 64, 64), 60, np.uint8)
    img[:, 16:48, 16:48] = 180
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    lab = np.zeros((1, 64, 64), np.uint8)
    lab[0, 2:10, 2:60] = 1
    lab[0, 24:40, 24:40] = 2
    images = np.stack([img, img])
    r = finetune(base_ckpt, images, ["SE2", "InLens"], lab, tmp_path / "ft2", classes=["dark", "bright"],
                 settings={**TINY_FT, "val_fraction": 0.3, "val_tile": 8, "runs": "auto"})
    assert len(r["class_map"]) == 2 and r["val_source"] == "held-out scribbles"
    assert "runs" not in r  # a new head: runs=auto fine-tunes once
    seg = load_segmenter(tmp_path / "ft2" / "best.ckpt", device="cpu")
    assert seg.classes == ["dark", "bright"] and seg.n_classes == 2
    assert set(np.unique(seg.predict(images, ["SE2", "InLens"]))) <= {1, 2}
    # freeze_bn=auto: a new head keeps the base model's BatchNorm statistics
    from seglearn.ckpt import load_checkpoint

    base, got = (load_checkpoint(p, kind="unet")["state_dict"] for p in (base_ckpt, tmp_path / "ft2" / "best.ckpt"))
    assert r["freeze_bn"] is True and r["adapt_bn"] is None  # and they are not moved afterwards
    assert all(np.array_equal(got[k].numpy(), base[k].numpy()) for k in base if k.endswith("running_mean"))


@pytest.mark.slow
def test_train_py_init_finetunes_and_predict_py_runs_zero_shot(base_ckpt, tiny_dataset, tmp_path):
    out = tmp_path / "ftcli"
    r = _cli(["train.py", f"data.root={tiny_dataset}", f"init={base_ckpt}", f"out_dir={out}",
              "finetune.max_steps=1", "finetune.val_every=1", "finetune.batch_size=2", "finetune.patch=32",
              "finetune.phantom_shape=[8,32,32]", "finetune.cache=1", "finetune.threads=1", "finetune.blend=off"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "best.ckpt").exists() and (out / "finetune_summary.json").exists()
    r = _cli(["predict.py", f"ckpt={base_ckpt}", f"input={tiny_dataset}", f"output={tmp_path / 'zs'}", "preview=false"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "zs" / "labels.tif").exists()
    r = _cli(["train.py", f"data.root={tiny_dataset}", f"init={base_ckpt}", f"out_dir={tmp_path / 'one'}",
              "data.detectors=[SE2]"])
    assert r.returncode == 2 and "fibsem_base_1det" in r.stderr


def test_match_contrast_moves_class_medians_onto_the_target():
    from seglearn.pretrain.stream import match_contrast

    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, size=(4, 32, 32)).astype(np.uint8)
    img = np.stack([np.array([0, 30, 90, 160])[truth] + rng.integers(0, 20, truth.shape),
                    np.array([0, 200, 100, 50])[truth] + rng.integers(0, 20, truth.shape)]).astype(np.uint8)
    target = np.array([[60.0, 120.0, 200.0], [np.nan, np.nan, np.nan]])
    out = match_contrast(img, truth, target, rng, jitter=0.0)
    med = [np.median(out[0][truth == k]) for k in (1, 2, 3)]
    np.testing.assert_allclose(med, [60, 120, 200], atol=1.5)
    # monotone: the grey-value order inside the image is kept
    a, b = img[0].ravel(), out[0].ravel()
    order = np.argsort(a, kind="stable")
    assert np.all(np.diff(b[order].astype(int)) >= 0)
    np.testing.assert_array_equal(out[1], img[1])  # NaN target: unchanged
    # a target whose class order contradicts the phantom's is not forced on it
    flipped = match_contrast(img, truth, np.array([[200.0, 120.0, 60.0], [np.nan] * 3]), rng, jitter=0.0)
    np.testing.assert_array_equal(flipped, img)


def test_class_medians_from_scribbles():
    from seglearn.pretrain.rules import class_medians

    x = np.zeros((1, 2, 10, 10), np.float32)
    lab = np.zeros((2, 10, 10), np.uint8)
    x[0, :, :5], lab[:, :5] = 0.2, 1
    x[0, :, 5:], lab[:, 5:] = 0.6, 3
    m = class_medians(x, lab, 3)
    np.testing.assert_allclose(m[0, [0, 2]], [0.2 * 255, 0.6 * 255], rtol=1e-5)
    assert np.isnan(m[0, 1])


@pytest.mark.slow
def test_pretraining_continues_from_a_base_model(base_ckpt, tmp_path):
    """model.init warm-starts from an earlier base model (same net) and records it; another net is refused."""
    import torch
    from omegaconf import OmegaConf

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.train import pretrain, settings_from

    s = settings_from(OmegaConf.from_dotlist([k.removeprefix("model.") for k in TINY]))
    s.update(detectors=["SE2", "InLens"], context=1, init=str(base_ckpt), max_steps=1, val_every=1, lr=0.0)
    res = pretrain(s, tmp_path / "more")
    old = load_checkpoint(base_ckpt)
    new = load_checkpoint(res["best_ckpt"])
    assert new["meta"]["pretrain"]["continued_from"]["steps"] == old["meta"]["pretrain"]["steps"] == 2
    # lr 0: the weights are the base model's (batch-norm running statistics aside)
    for k, v in old["state_dict"].items():
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(new["state_dict"][k], v)
    with pytest.raises(InputError, match="same network"):
        pretrain({**s, "net": {**s["net"], "base": 8}}, tmp_path / "other")


def test_pretraining_stores_the_noise_reference_in_both_checkpoints(tmp_path, monkeypatch):
    """noise_reference (default true): best.ckpt and last.ckpt carry the reference that fine-tuning and adapt= read."""
    from omegaconf import OmegaConf

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain import noise
    from seglearn.pretrain.train import pretrain, settings_from

    calls = []

    def fake(key):  # stands in for measuring 64 phantoms (tested in test_noise.py), cached like it
        calls.append(key)
        return np.full((noise.REFERENCE_DRAWS, 2), 0.2 + 0.1 * len(calls))

    monkeypatch.setattr(noise, "_reference", __import__("functools").lru_cache(fake))
    s = settings_from(OmegaConf.from_dotlist([k.removeprefix("model.") for k in TINY]))
    s.update(max_steps=1, val_every=1, noise_reference=True)
    out = Path(pretrain(s, tmp_path / "ref")["best_ckpt"]).parent
    assert len(calls) == 2  # with labels and without, once for both checkpoints
    for name in ("best.ckpt", "last.ckpt"):
        meta = load_checkpoint(out / name)["meta"]
        got = noise.reference_noise(meta["detectors"], meta["pretrain"], labelled=False)
        assert got.shape == (noise.REFERENCE_DRAWS, 2) and np.all(got == 0.4)
    assert len(calls) == 2
    assert "noise_reference" not in load_checkpoint(
        Path(pretrain({**s, "noise_reference": False}, tmp_path / "none")["best_ckpt"]))["meta"]["pretrain"]


def test_pretraining_ema_saves_the_moving_average_of_the_weights(tmp_path):
    """model.ema=d validates and saves d * ema + (1 - d) * weights (first step: the weights)."""
    import torch
    from omegaconf import OmegaConf

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.train import pretrain, settings_from

    s = settings_from(OmegaConf.from_dotlist([k.removeprefix("model.") for k in TINY]))
    s.update(val_every=1, lr=0.01, warmup=1)
    w1 = load_checkpoint(Path(pretrain({**s, "max_steps": 1}, tmp_path / "one")["best_ckpt"]).parent / "last.ckpt")
    w2 = load_checkpoint(Path(pretrain({**s, "max_steps": 2}, tmp_path / "two")["best_ckpt"]).parent / "last.ckpt")
    avg = load_checkpoint(Path(pretrain({**s, "max_steps": 2, "ema": 0.25}, tmp_path / "ema")["best_ckpt"]).parent
                          / "last.ckpt")
    assert avg["meta"]["pretrain"]["ema"] == 0.25
    moved = 0
    for k, v1 in w1["state_dict"].items():
        if not v1.is_floating_point():
            continue
        v2 = w2["state_dict"][k]
        torch.testing.assert_close(avg["state_dict"][k], 0.25 * v1 + 0.75 * v2, rtol=1e-4, atol=1e-5)
        moved += int(not torch.allclose(v1, v2))
    assert moved > 0  # the two steps did change the weights


@pytest.mark.slow
def test_soup_averages_weights_and_refuses_other_networks(base_ckpt, tmp_path, monkeypatch):
    """python -m seglearn.pretrain.soup: the mean of the float tensors, what each input saw in meta; -- validate scores all."""
    import torch

    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.pretrain import noise
    from seglearn.pretrain.soup import average_checkpoints

    # the noise reference is tested in test_noise.py; here a stand-in saves measuring 128 phantoms
    monkeypatch.setattr(noise, "_reference", lambda key: np.full((noise.REFERENCE_DRAWS, 3), 0.1))

    ck = load_checkpoint(base_ckpt)
    moved = {k: v + 1.0 if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    other = save_checkpoint(tmp_path / "other.ckpt", kind="unet", state_dict=moved, meta=ck["meta"])
    soup = average_checkpoints([base_ckpt, other], tmp_path / "soup.ckpt")
    got = load_checkpoint(soup)
    for k, v in ck["state_dict"].items():
        want = v + 0.5 if v.is_floating_point() else v
        torch.testing.assert_close(got["state_dict"][k], want)
    assert [e["steps"] for e in got["meta"]["pretrain"]["soup"]] == [2, 2]
    assert len(got["meta"]["pretrain"]["noise_reference"]) == 2  # with labels and without
    with pytest.raises(OutputExistsError):
        average_checkpoints([base_ckpt, other], soup)
    wide = save_checkpoint(tmp_path / "wide.ckpt", kind="unet", state_dict=moved,
                           meta={**ck["meta"], "net": {**ck["meta"]["net"], "base": 8}})
    with pytest.raises(InputError, match="declared network"):  # its weights do not fit its meta: refused on loading
        average_checkpoints([base_ckpt, wide], tmp_path / "bad.ckpt")
    # the soup's stored noise reference is kept (the same settings), not measured again
    r = _cli(["-m", "seglearn.pretrain.soup", str(soup), str(other), "--out", str(tmp_path / "cli.ckpt"),
              "--validate", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"validation_phantoms": 1' in r.stdout and str(tmp_path / "cli.ckpt") in r.stdout
    r = _cli(["-m", "seglearn.pretrain.soup", str(base_ckpt), str(other), "--out", str(tmp_path / "cli.ckpt")])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cli.ckpt" in r.stderr and "--overwrite" in r.stderr


@pytest.mark.slow
def test_finetune_runs_average_the_runs_into_one_model(base_ckpt, tiny_phantom, tmp_path):
    """runs=auto with the base head kept: 3 fine-tunings (seeds 0, 1, 2) in out/runs, their mean in out/best.ckpt."""
    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import finetune

    ph = tiny_phantom
    r = finetune(base_ckpt, ph.channels(), ["SE2", "InLens"], ph.train, tmp_path / "ft",
                 settings={**TINY_FT, "runs": "auto", "lr": 0.01})
    assert len(r["runs"]) == 3 and r["steps"] == 6 and len(r["best_step"]) == 3
    runs = [load_checkpoint(tmp_path / "ft" / "runs" / f"run{i}" / "best.ckpt") for i in range(3)]
    assert [c["meta"]["finetune"]["settings"]["seed"] for c in runs] == [0, 1, 2]
    avg = load_checkpoint(tmp_path / "ft" / "best.ckpt", kind="unet")
    assert len(avg["meta"]["finetune"]["soup"]) == 3
    # the runs are not adapted; the average is, once (adapt_bn: auto, the base head kept)
    assert all("adapt_bn" not in c["meta"]["finetune"] for c in runs)
    assert r["adapt_bn"]["alpha"] == 0.5 and avg["meta"]["finetune"]["adapt_bn"]["alpha"] == 0.5
    for k, v in avg["state_dict"].items():
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(v, sum(c["state_dict"][k] for c in runs) / 3)
        elif k.endswith("running_mean"):
            assert not torch.allclose(v, sum(c["state_dict"][k] for c in runs) / 3)
    with pytest.raises(OutputExistsError, match="already holds"):
        finetune(base_ckpt, ph.channels(), ["SE2", "InLens"], ph.train, tmp_path / "ft", settings={**TINY_FT, "runs": 2})


@pytest.mark.slow
def test_finetune_smooths_noisy_data_and_prediction_repeats_it(base_ckpt, tmp_path):
    """denoise=auto: a detector far noisier than the base model's phantoms is smoothed, the sigma is stored in
    the checkpoint and the segmenter applies it; clean data and denoise=off are left alone."""
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.api import load_segmenter
    from seglearn.segment.channels import apply_normalisation, compute_channels

    def data(noise):
        rng = np.random.default_rng(0)
        img = np.full((3, 64, 64), 90.0)
        img[:, 16:48, 16:48] = 130.0
        img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
        lab = np.zeros((3, 64, 64), np.uint8)
        lab[:, 2:10, 2:60] = 1
        lab[:, 24:40, 24:40] = 2
        return np.stack([img, img]), lab

    noisy, lab = data(30.0)  # noise / contrast 0.75, far above the phantoms' 90th percentile (~0.24)
    r = finetune(base_ckpt, noisy, ["SE2", "InLens"], lab, tmp_path / "noisy", classes=["dark", "bright"],
                 settings={**TINY_FT, "val_fraction": 0.3, "val_tile": 8})
    sig = r["denoise"]["sigma"]
    assert r["denoise"]["mode"] == "auto" and all(s > 0.8 for s in sig)
    seg = load_segmenter(tmp_path / "noisy" / "best.ckpt", device="cpu")
    assert seg.smooth == sig
    want = apply_normalisation(compute_channels(noisy, seg.detectors, seg.derived, sig), seg.ranges)
    np.testing.assert_allclose(seg.prepare(noisy), want)
    assert not np.allclose(seg.prepare(noisy), apply_normalisation(compute_channels(noisy, seg.detectors, seg.derived),
                                                                   seg.ranges))
    for noise, setting, name in ((2.0, "auto", "clean"), (30.0, "off", "off")):
        images, lab = data(noise)
        r = finetune(base_ckpt, images, ["SE2", "InLens"], lab, tmp_path / name, classes=["dark", "bright"],
                     settings={**TINY_FT, "val_fraction": 0.3, "val_tile": 8, "denoise": setting})
        assert r["denoise"].get("sigma", [0.0, 0.0]) == [0.0, 0.0]
        assert load_segmenter(tmp_path / name / "best.ckpt", device="cpu").smooth is None


@pytest.mark.slow
def test_freeze_bn_keeps_the_base_models_batchnorm_statistics(base_ckpt, tiny_phantom, tmp_path):
    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import finetune

    ph = tiny_phantom
    base = load_checkpoint(base_ckpt, kind="unet")["state_dict"]
    stats = [k for k in base if k.endswith(("running_mean", "running_var"))]
    assert stats
    for freeze, name in ((True, "frozen"), (False, "free")):
        r = finetune(base_ckpt, ph.channels(), ["SE2", "InLens"], ph.train, tmp_path / name, test=ph.test,
                     settings={**TINY_FT, "freeze_bn": freeze, "keep_best": False, "lr": 0.01})
        assert r["steps"] == 2
        got = load_checkpoint(tmp_path / name / "best.ckpt", kind="unet")["state_dict"]
        same = [torch.equal(got[k], base[k]) for k in stats]
        assert all(same) if freeze else not all(same)
        assert any(not torch.equal(got[k], base[k]) for k in got if k.endswith("weight"))  # the weights still learn


def test_adapt_bn_settings():
    from seglearn.pretrain.adapt import AUTO_ALPHA, resolve_alpha

    assert resolve_alpha("auto", frozen=False) == AUTO_ALPHA == 0.5
    assert resolve_alpha("auto", frozen=True) == 0.0  # weights fitted under the base model's statistics
    assert resolve_alpha("off", frozen=False) == resolve_alpha(False, frozen=False) == 0.0
    assert resolve_alpha(0.25, frozen=True) == 0.25
    for bad in ("half", 1.5, -0.1):
        with pytest.raises(InputError, match="adapt_bn"):
            resolve_alpha(bad, frozen=False)


@pytest.mark.slow
def test_adapt_bn_moves_only_the_statistics_part_of_the_way(base_ckpt, tiny_phantom, tmp_path):
    import shutil

    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.adapt import adapt_bn

    ph = tiny_phantom
    img = ph.channels()
    paths = {}
    for name in ("half", "full", "bright"):
        paths[name] = tmp_path / f"{name}.ckpt"
        shutil.copy(base_ckpt, paths[name])
    info = adapt_bn(paths["half"], img, ["SE2", "InLens"], alpha=0.5, n_batches=4, batch_size=4, patch=32)
    adapt_bn(paths["full"], img, ["SE2", "InLens"], alpha=1.0, n_batches=4, batch_size=4, patch=32)
    bright = np.clip(img.astype(np.int16) + 60, 0, 255).astype(img.dtype)
    adapt_bn(paths["bright"], bright, ["SE2", "InLens"], alpha=1.0, n_batches=4, batch_size=4, patch=32)
    base = load_checkpoint(base_ckpt, kind="unet")["state_dict"]
    half, full, brt = (load_checkpoint(paths[n], kind="unet") for n in ("half", "full", "bright"))
    assert half["meta"]["finetune"]["adapt_bn"] == info and info["patches"] == 16 and info["shift"] > 0
    stats = [k for k in base if k.endswith(("running_mean", "running_var"))]
    for k in stats:  # halfway between the stored statistics and the dataset's
        torch.testing.assert_close(half["state_dict"][k], 0.5 * (base[k] + full["state_dict"][k]))
    assert any(not torch.allclose(full["state_dict"][k], brt["state_dict"][k]) for k in stats)  # they are the data's
    for k, v in base.items():  # nothing else moves
        if k not in stats and v.is_floating_point():
            assert torch.equal(half["state_dict"][k], v)


def test_predict_adapt_settings():
    from seglearn.pretrain.adapt import AUTO_ALPHA, resolve_predict_alpha

    net = {"mode": "2.5d"}
    base = {"net": net, "pretrain": {"ranges": {}}}
    tuned = {**base, "finetune": {"freeze_bn": False}}
    assert resolve_predict_alpha("auto", base) == resolve_predict_alpha(None, base) == AUTO_ALPHA
    assert resolve_predict_alpha("auto", tuned) == 0.0  # adapted to its dataset when it was fine-tuned
    assert resolve_predict_alpha("auto", {"net": net}) == 0.0  # trained from scratch on its dataset
    assert resolve_predict_alpha("auto", {**base, "net": {"mode": "3d"}}) == 0.0
    assert resolve_predict_alpha("off", base) == resolve_predict_alpha(False, base) == 0.0
    assert resolve_predict_alpha(True, tuned) == resolve_predict_alpha("on", tuned) == AUTO_ALPHA
    assert resolve_predict_alpha(0.25, {"net": net}) == 0.25
    with pytest.raises(InputError, match="frozen"):
        resolve_predict_alpha("on", {**base, "finetune": {"freeze_bn": True}}, "m.ckpt")
    with pytest.raises(InputError, match="3d"):
        resolve_predict_alpha(0.5, {"net": {"mode": "3d"}}, "m.ckpt")
    for bad in ("half", 1.5, -0.1):
        with pytest.raises(InputError, match="adapt="):
            resolve_predict_alpha(bad, base)


def test_read_slabs_reads_around_evenly_spread_slices():
    from seglearn.pretrain.adapt import read_slabs

    vol = np.arange(40)[None, :, None, None] * np.ones((2, 40, 4, 5))
    calls = []

    def read(a, b):
        calls.append((a, b))
        return vol[:, a:b]

    slabs, centres = read_slabs(read, vol.shape[1:], 2, n=4)
    assert slabs.shape == (2, 4 * 5, 4, 5) and centres == [2, 7, 12, 17]
    mid = slabs[0, centres, 0, 0]
    assert list(mid) == [8, 16, 23, 31]  # evenly spread, away from the ends
    for c, z in zip(centres, mid):  # each slab is its centre's +-2 slices
        assert list(slabs[0, c - 2:c + 3, 0, 0]) == list(range(int(z) - 2, int(z) + 3))
    assert sum(b - a for a, b in calls) == 20
    slabs, centres = read_slabs(lambda a, b: vol[:, a:b], (3, 4, 5), 2, n=16)  # a short volume: edges repeated
    assert centres == [2, 7, 12] and list(slabs[0, 0:5, 0, 0]) == [0, 0, 0, 1, 2]
    _, centres = read_slabs(lambda a, b: vol[:, a:b], vol.shape[1:], 2, n=16, max_bytes=3 * 5 * 4 * 5 * 4 * 2,
                            channels=2)
    assert len(centres) == 3  # as many slabs as max_bytes allows


@pytest.mark.slow
def test_zero_shot_prediction_adapts_to_the_volume_without_labels(base_ckpt, tmp_path):
    """predict.py adapt=auto on a base model: noisy data are smoothed and the BatchNorm statistics move;
    clean data are not smoothed; adapt=off and a fine-tuned model change nothing."""
    import json

    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.data import write_dataset
    from seglearn.pretrain.adapt import adapt_to_volume

    rng = np.random.default_rng(0)
    truth = np.zeros((6, 64, 64), np.uint8)
    truth[:, 16:48, 16:48] = 1
    truth[:, 28:36, :] = 2
    clean = 70.0 + 50.0 * truth

    def vol(noise):
        img = np.clip(clean + rng.normal(0, noise, clean.shape), 0, 255).astype(np.uint8)
        return np.stack([img, img])

    ck = load_checkpoint(base_ckpt, kind="unet")
    before = {k: v.clone() for k, v in ck["state_dict"].items()}
    noisy = vol(40.0)  # noise / contrast 0.4, above the phantoms' 90th percentile (~0.2)
    new, info = adapt_to_volume(ck, lambda a, b: noisy[:, a:b], noisy.shape[1:], ["SE2", "InLens"], "auto")
    assert info["alpha"] == 0.5 and all(s > 0.5 for s in info["smooth"]) and info["shift"] > 0
    assert new["meta"]["normalisation"]["smooth"] == info["smooth"] and new["meta"]["adapt"] == info
    assert "smooth" not in ck["meta"]["normalisation"]  # the loaded checkpoint is left as it was
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in before.items())
    moved = [k for k in before if k.endswith("running_mean") and not torch.equal(new["state_dict"][k], before[k])]
    assert moved
    quiet = vol(2.0)
    _, info = adapt_to_volume(ck, lambda a, b: quiet[:, a:b], quiet.shape[1:], ["SE2", "InLens"], "auto")
    assert info["smooth"] == [0.0, 0.0]
    assert adapt_to_volume(ck, lambda a, b: quiet[:, a:b], quiet.shape[1:], ["SE2", "InLens"], "off") == (ck, None)

    root = tmp_path / "noisy"
    write_dataset(root, {"SE2": noisy[0], "InLens": noisy[1]}, name="noisy")
    for setting, name in (("auto", "on"), ("off", "off")):
        r = _cli(["predict.py", f"ckpt={base_ckpt}", f"input={root}", f"output={tmp_path / name}", "preview=false",
                  f"adapt={setting}"])
        assert r.returncode == 0, r.stderr[-2000:]
    on, off = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("on", "off"))
    assert on["adapt"]["smooth"][0] > 0.5 and "adapt" not in off
    r = _cli(["predict.py", f"ckpt={base_ckpt}", f"input={root}", f"output={tmp_path / 'bad'}", "adapt=half"])
    assert r.returncode == 2 and "adapt='half'" in r.stderr and not (tmp_path / "bad").exists()


def test_eight_bit_scale_rules():
    from seglearn.io.intensity import input_scale
    from seglearn.io.intensity import on_eight_bit_scale

    base = {"detectors": ["SE2", "InLens"], "normalisation": {"method": "fixed", "ranges": [[0, 255], [0, 255], [-128, 128]]}}
    assert on_eight_bit_scale(base)
    assert not on_eight_bit_scale({**base, "normalisation": {"method": "fixed", "ranges": [[0, 4000], [0, 4000]]}})
    assert not on_eight_bit_scale({**base, "normalisation": {"method": "percentiles", "ranges": [[0, 255], [0, 255]]}})
    def scale(dtype, lo, hi):
        return input_scale({"dtype": dtype, "channels": {"A": {"min": lo, "max": hi, "p_lo": lo, "p_hi": hi}}})

    assert scale("uint8", 0, 255) == "8bit" and scale("float64", 0.5, 254.0) == "8bit"
    assert scale("uint16", 3000, 9000) == "other" and scale("float32", -1.0, 20.0) == "other"
    assert scale("float32", 0.0, 1.0) == "unit" and scale("uint16", 0, 1) == "8bit"
    # a 0..1 float export with a few voxels beyond 1: its robust percentiles decide (once read as 8-bit)
    hot = {"dtype": "float32", "channels": {"A": {"min": 0.0, "max": 1.0001, "p_lo": 0.01, "p_hi": 0.98}}}
    assert input_scale(hot) == "unit"
    ct = {"dtype": "float32", "channels": {"A": {"min": -0.008, "max": 0.026, "p_lo": -0.002, "p_hi": 0.02}}}
    assert input_scale(ct) == "other"


@pytest.mark.slow
def test_sixteen_bit_input_is_mapped_onto_the_eight_bit_scale(tiny_dataset, tmp_path):
    """A 16-bit tomogram given to a model that reads 8-bit grey values is mapped by robust percentiles,
    whatever adapt says: its labels then agree with those of the 8-bit original; raw, they do not."""
    import json

    from seglearn.ckpt import load_checkpoint
    from seglearn.data import load_dataset, write_dataset
    from seglearn.pretrain.adapt import adapt_to_volume
    from seglearn.segment.api import segmenter_from_checkpoint

    base = ROOT / "checkpoints" / "fibsem_base.ckpt"
    ds = load_dataset(tiny_dataset, labels=("train",))
    v8 = np.asarray(ds.images)
    v16 = v8.astype(np.uint16) * 200 + 3000
    dets = list(ds.detectors)
    ck = load_checkpoint(base, kind="unet")
    new, info = adapt_to_volume(ck, lambda a, b: v16[:, a:b], v16.shape[1:], dets, "off")
    assert set(info) == {"intensity"}  # adapt=off: only the grey scale (seglearn.io.intensity)
    for c, d in enumerate(dets):  # percentiles of 16 slices spread over the tiny volume's 24
        want = np.percentile(v16[c].astype(float), [0.1, 99.9])
        got = [info["intensity"]["statistics"][d][k] for k in ("p_lo", "p_hi")]
        np.testing.assert_allclose(got, want, atol=400)  # within 2 grey levels of the 8-bit original
    assert adapt_to_volume(ck, lambda a, b: v8[:, a:b], v8.shape[1:], dets, "off") == (ck, None)  # 8-bit: nothing
    ref = segmenter_from_checkpoint(ck, device="cpu").predict(v8, dets)
    mapped = segmenter_from_checkpoint(new, device="cpu").predict(v16, dets)
    raw = segmenter_from_checkpoint(ck, device="cpu").predict(v16, dets)
    assert np.mean(mapped == ref) > 0.9 > np.mean(raw == ref)
    root = tmp_path / "ds16"
    write_dataset(root, {d: v16[i] for i, d in enumerate(dets)}, name="ds16")
    r = _cli(["predict.py", f"ckpt={base}", f"input={root}", f"output={tmp_path / 'out'}", "preview=false", "adapt=off"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["intensity"]["input_scale"] == "other"
