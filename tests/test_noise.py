"""seglearn.pretrain.noise: relative noise, the Gaussian's noise factor, and the smoothing rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.pretrain.noise import (choose_smoothing, gaussian_noise_factor, relative_noise, resolve_smoothing,
                                     sigma_for_factor)

ROOT = Path(__file__).resolve().parents[1]


def _two_class(noise: float, contrast: float = 40.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.ones((3, 96, 96), np.uint8)
    truth[:, 24:72, 24:72] = 2
    img = 100.0 + contrast * (truth == 2) + rng.normal(0, noise, truth.shape)
    scr = np.zeros_like(truth)
    scr[:, 2:12, 2:90] = 1
    scr[:, 35:60, 35:60] = 2
    return img[None], scr


@pytest.mark.parametrize("sigma", [0.6, 0.9, 1.5])
def test_gaussian_noise_factor_is_the_measured_drop_of_white_noise(sigma):
    from scipy import ndimage as ndi

    x = np.random.default_rng(1).normal(0, 1, (512, 512))
    measured = ndi.gaussian_filter(x, sigma).std()
    assert gaussian_noise_factor(sigma) == pytest.approx(measured, rel=0.03)
    assert sigma_for_factor(gaussian_noise_factor(sigma)) == pytest.approx(sigma, abs=0.01)
    assert gaussian_noise_factor(0) == 1.0 and sigma_for_factor(1.2) == 0.0


def test_relative_noise_is_noise_over_class_contrast():
    img, scr = _two_class(noise=10.0, contrast=40.0)
    assert relative_noise(img, scr)[0] == pytest.approx(0.25, rel=0.1)
    one = np.where(scr == 2, 2, 0).astype(np.uint8)  # a single class: no contrast to compare with
    assert np.isnan(relative_noise(img, one)[0])
    with pytest.raises(InputError, match="do not agree"):
        relative_noise(img, scr[0])


def test_only_detectors_noisier_than_the_reference_are_smoothed_to_its_median():
    ref = np.column_stack([np.linspace(0.05, 0.25, 101), np.linspace(0.05, 0.25, 101)])  # median 0.15, p90 0.23
    sig = choose_smoothing([0.45, 0.2], ref)
    assert sig[1] == 0.0 and sig[0] > 0
    assert 0.45 * gaussian_noise_factor(sig[0]) == pytest.approx(0.15, rel=0.01)
    assert choose_smoothing([float("nan"), 0.5], ref)[0] == 0.0


def test_resolve_smoothing_settings():
    img, scr = _two_class(noise=10.0)
    meta = {"detectors": ["SE2", "InLens"]}
    images = np.concatenate([img, img])
    assert resolve_smoothing("off", meta, images, scr)[0] == [0.0, 0.0]
    assert resolve_smoothing(0.7, meta, images, scr)[0] == [0.7, 0.7]
    assert resolve_smoothing([0.5, 0.0], meta, images, scr) == ([0.5, 0.0], {"mode": "given", "sigma": [0.5, 0.0]})
    own = {**meta, "normalisation": {"smooth": [0.8, 0.6]}}
    assert resolve_smoothing("auto", own, images, scr)[0] == [0.8, 0.6]  # a model that smooths keeps its smoothing
    for bad in ([0.5, 0.5, 0.5], [-1.0], "strong"):
        with pytest.raises(InputError, match="denoise"):
            resolve_smoothing(bad, meta, images, scr)


def test_relative_noise_unlabelled_needs_no_labels():
    from seglearn.pretrain.noise import relative_noise_unlabelled

    rng = np.random.default_rng(0)
    truth = np.zeros((3, 96, 96), np.uint8)
    truth[:, 24:72, 24:72] = 1
    truth[:, 40:56, :] = 2
    clean = 60.0 + 40.0 * truth  # three classes: spread of the class medians 80
    for noise in (4.0, 12.0):
        img = (clean + rng.normal(0, noise, clean.shape))[None]
        got = relative_noise_unlabelled(img)[0]
        assert got == pytest.approx(noise / 80.0, rel=0.15)
        assert relative_noise_unlabelled(3.0 * img + 7.0)[0] == pytest.approx(got, rel=1e-6)  # no grey-value scale
    assert np.isnan(relative_noise_unlabelled(np.full((1, 2, 32, 32), 9.0))[0])  # flat: no contrast
    with pytest.raises(InputError, match=r"\(C, Z, Y, X\)"):
        relative_noise_unlabelled(clean)


def test_a_stored_reference_is_read_instead_of_measured(monkeypatch):
    from seglearn.pretrain import noise

    calls = []

    def fake(key):
        calls.append(key)
        arr = np.linspace(0.1, 0.5, noise.REFERENCE_DRAWS * 2).reshape(-1, 2)
        arr[3, 1] = np.nan  # a phantom without contrast
        return arr + (0.0 if '"labelled": false' not in key else 1.0)

    monkeypatch.setattr(noise, "_reference", fake)
    dets = ["SE2", "InLens"]
    meta = {"detectors": dets, "classes": ["pore", "cbd", "am"],
            "pretrain": {"ranges": {"noise": [0.02, 0.1]}, "p_real": 0.3, "p_flat": 0.15}}
    stored = noise.store_reference(meta)
    assert len(calls) == 2 and "noise_reference" not in meta["pretrain"]  # the input is not changed
    assert noise.store_reference(stored) == stored and len(calls) == 2  # kept, not measured again

    def broken(key):
        raise AssertionError("measured although stored")

    monkeypatch.setattr(noise, "_reference", broken)
    got = noise.reference_noise(dets, stored["pretrain"])
    want = fake("{}")
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.allclose(got[np.isfinite(got)], want[np.isfinite(want)])
    assert np.nanmin(noise.reference_noise(dets, stored["pretrain"], labelled=False)) > 1.0
    # drawn otherwise (ranges, classes, detectors) or measured by another version: measured again
    other = {**stored["pretrain"], "ranges": {"noise": [0.02, 0.2]}}
    for args, kw in (((dets, other), {}), ((dets, stored["pretrain"]), {"labelled": False, "classes": 2}),
                     ((["SE2"], stored["pretrain"]), {})):
        with pytest.raises(AssertionError, match="measured"):
            noise.reference_noise(*args, **kw)
    monkeypatch.setattr(noise, "REFERENCE_VERSION", noise.REFERENCE_VERSION + 1)
    with pytest.raises(AssertionError, match="measured"):
        noise.reference_noise(dets, stored["pretrain"])


@pytest.mark.slow
def test_the_shipped_base_models_store_the_reference_they_would_measure():
    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain import noise

    meta = load_checkpoint(ROOT / "checkpoints" / "fibsem_base.ckpt")["meta"]
    pre = meta["pretrain"]
    assert len(pre["noise_reference"]) == 2
    bare = {k: v for k, v in pre.items() if k != "noise_reference"}
    for labelled in (True, False):
        stored = noise.reference_noise(meta["detectors"], pre, labelled=labelled)
        measured = noise.reference_noise(meta["detectors"], bare, labelled=labelled)
        assert np.allclose(stored, measured, equal_nan=True), labelled


def test_the_store_command_copies_a_base_model_with_its_reference(tmp_path, monkeypatch):
    """python -m seglearn.pretrain.noise BASE --out NEW: weights unchanged, reference added; bad input refused."""
    import torch

    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.errors import OutputExistsError
    from seglearn.pretrain import noise

    monkeypatch.setattr(noise, "_reference", lambda key: np.full((noise.REFERENCE_DRAWS, 1), 0.3))
    from seglearn.segment.net import build_net

    net_meta = {"in_channels": 1, "n_classes": 3, "mode": "2d", "base": 2, "depth": 1}
    sd = build_net(net_meta).state_dict()  # a tiny but complete network: checkpoints are validated on loading
    meta = {"net": net_meta, "detectors": ["SE2"], "classes": ["pore", "cbd", "am"],
            "normalisation": {"ranges": [[0.0, 255.0]]}, "pretrain": {"ranges": {}}}
    base = save_checkpoint(tmp_path / "base.ckpt", kind="unet", state_dict=sd, meta=meta)
    noise.main([str(base), "--out", str(tmp_path / "new.ckpt")])
    new = load_checkpoint(tmp_path / "new.ckpt")
    assert all(torch.equal(new["state_dict"][k], v) for k, v in sd.items())
    assert np.all(noise.reference_noise(["SE2"], new["meta"]["pretrain"], labelled=False) == 0.3)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        noise.main([str(base), "--out", str(tmp_path / "new.ckpt")])
    scratch = save_checkpoint(tmp_path / "scratch.ckpt", kind="unet", state_dict=sd, meta={**meta, "pretrain": None})
    with pytest.raises(InputError, match="not a base model"):
        noise.main([str(scratch), "--out", str(tmp_path / "s.ckpt")])
    assert not (tmp_path / "s.ckpt").exists()
