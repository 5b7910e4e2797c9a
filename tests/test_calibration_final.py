"""The softmax temperature is fitted on the model that is written (issue 27).

Training from scratch (seglearn/segment/train.py) fits ``T`` on its held-out labels and stores it
in ``best.ckpt``; fine-tuning refits it after the soup, ``adapt_bn`` and the blend
(seglearn/pretrain/ft_final.py). A known answer: multiplying the last layer's weights by ``a``
multiplies every logit by ``a``, so the refitted ``T`` must be ``a`` times the first.
"""

import json

import numpy as np
import pytest

TINY = {"model.mode": "2d", "model.net.base": 4, "model.net.depth": 2, "model.batch_size": 2,
        "model.patch": [1, 32, 32], "model.inference.tile": [4, 64, 64], "model.inference.overlap": [0, 16, 16],
        "model.steps_per_epoch": 10, "trainer.max_steps": 40, "trainer.enable_progress_bar": False, "seed": 0}


@pytest.fixture(scope="module")
def scratch(tiny_phantom, tmp_path_factory):
    """A tiny 2D U-Net trained from scratch (no init) on the phantom's scribbles, validated on its test slice."""
    from seglearn.segment.train import fit_segmenter

    ph = tiny_phantom
    out = tmp_path_factory.mktemp("scratch") / "run"
    best = fit_segmenter(ph.channels(), ph.train, list(ph.config.detectors), out,
                         overrides={**TINY, "voxel_size_nm": ph.config.voxel_size_nm}, val_labels=ph.test)
    return best


def _scaled(src, dst, factor):
    """A copy of checkpoint ``src`` whose last layer (weights and bias) is multiplied by ``factor``."""
    from seglearn.ckpt import load_checkpoint, save_checkpoint

    ck = load_checkpoint(src, kind="unet")
    sd = {k: (v * factor if ".head." in k or k.startswith("head.") else v) for k, v in ck["state_dict"].items()}
    assert any(".head." in k for k in sd)
    save_checkpoint(dst, kind="unet", state_dict=sd, meta=ck["meta"], overwrite=True)
    return dst


def _nll(seg, ph, t):
    """NLL of the test slice under the Segmenter's probabilities with temperature ``t`` (the prediction path)."""
    seg.temperature = t
    zs = np.unique(np.nonzero(ph.test)[0])
    p = seg.predict_proba(ph.channels(), list(ph.config.detectors))  # (K, Z, Y, X)
    lab = ph.test[zs]
    m = lab > 0
    pk = np.take_along_axis(p[:, zs], (lab.astype(np.int64) - 1)[None], 0)[0]
    return float(-np.mean(np.log(np.clip(pk[m], 1e-12, None))))


def test_training_from_scratch_fits_the_temperature_on_held_out_labels(scratch, tiny_phantom):
    from seglearn.ckpt import load_checkpoint
    from seglearn.segment.api import load_segmenter

    ph = tiny_phantom
    cal = load_checkpoint(scratch, kind="unet")["meta"]["calibration"]
    assert cal["source"] == "test" and cal["n_voxels"] == int((ph.test > 0).sum())
    assert 0.06 < cal["temperature"] < 19 and cal["temperature"] != 1.0
    summary = json.loads((scratch.parent / "train_summary.json").read_text())
    assert summary["calibration"] == cal
    seg = load_segmenter(scratch, device="cpu", bf16=False)
    t = seg.temperature
    assert t == cal["temperature"]
    # T minimises the NLL of what predict returns on those labels: both neighbours do worse
    best = _nll(seg, ph, t)
    assert best < _nll(seg, ph, t * 1.3) and best < _nll(seg, ph, t / 1.3)


def test_the_temperature_follows_the_model_written(scratch, tiny_phantom, tmp_path):
    from seglearn.ckpt import load_checkpoint
    from seglearn.segment.datamodule import SegDataModule
    from seglearn.segment.train import calibrate_best
    from seglearn.data import Dataset

    ph = tiny_phantom
    t0 = load_checkpoint(scratch, kind="unet")["meta"]["calibration"]["temperature"]
    ds = Dataset(root=tmp_path, name="arrays", detectors=list(ph.config.detectors), classes=["a", "b", "c"],
                 voxel_size_nm=ph.config.voxel_size_nm, images=ph.channels(), train=ph.train, test=ph.test)
    dm = SegDataModule(ds)
    dm.prepare_arrays()
    # the datamodule's channels are the checkpoint's: same detectors, same percentile ranges of the same data
    assert np.allclose(dm.ranges, load_checkpoint(scratch)["meta"]["normalisation"]["ranges"])
    # the logits of every labelled validation voxel; a dense volume's are subsampled to max_voxels
    from seglearn.segment.api import load_segmenter
    from seglearn.segment.module import validation_logits

    seg = load_segmenter(scratch, device="cpu", bf16=False)
    z_all, y_all = validation_logits(seg.fast_net, seg.meta, dm, seg.device)
    z, y = validation_logits(seg.fast_net, seg.meta, dm, seg.device, max_voxels=500)
    assert z_all.shape == (3, int((ph.test > 0).sum()))
    assert np.array_equal(np.sort(y_all), np.sort(ph.test[ph.test > 0]))
    assert z.shape == (3, len(y)) and abs(len(y) - 500) <= 2 and set(np.unique(y)) <= set(np.unique(y_all))
    hot = _scaled(scratch, tmp_path / "hot.ckpt", 3.0)
    rec = calibrate_best(hot, dm, "cpu")
    assert rec["temperature"] == pytest.approx(3 * t0, rel=0.05)
    assert load_checkpoint(hot)["meta"]["calibration"] == rec
    # no held-out labels (validation on the training labels): no temperature rather than an over-confident one
    dm.val_source = "train"
    assert calibrate_best(hot, dm, "cpu") is None


@pytest.fixture(scope="module")
def finetuned(scratch, tiny_phantom, tmp_path_factory):
    """The scratch model with fine-tuning's meta, and its temperature fitted by ft_final on the test slice."""
    import shutil

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.ft_final import calibrate

    ph = tiny_phantom
    ck = tmp_path_factory.mktemp("ft") / "best.ckpt"
    shutil.copyfile(scratch, ck)
    rec = calibrate(ck, ph.channels(), ph.test, "test", scribbles=False)
    assert load_checkpoint(ck)["meta"]["calibration"] == rec
    # the same network and labels as training's own fit (whole slices here, tiles there)
    t_train = load_checkpoint(scratch)["meta"]["calibration"]["temperature"]
    assert rec["temperature"] == pytest.approx(t_train, rel=0.1)
    return ck, rec["temperature"]


def test_finish_refits_the_temperature_after_adapt_bn_and_the_blend(finetuned, tiny_phantom, tmp_path, monkeypatch):
    """adapt_bn and the blend change the model before the temperature is fitted: T follows their result."""
    import shutil

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain import ft_final

    src, t0 = finetuned
    ph = tiny_phantom
    ck = tmp_path / "best.ckpt"
    shutil.copyfile(src, ck)
    order = []

    def adapt(path, *a, **k):  # stands for adapt_bn: the model written changes (logits x 2)
        order.append("adapt")
        _scaled(path, path, 2.0)
        return {"alpha": 1.0}

    def blend(path, *a, **k):
        order.append("blend")
        return None

    monkeypatch.setattr(ft_final, "adapt", adapt)
    monkeypatch.setattr(ft_final, "attach_blend", blend)
    done = ft_final.finish(ck, ph.channels(), list(ph.config.detectors), {"seed": 0}, train=ph.train,
                           fit_labels=ph.train, val_labels=ph.test, val_source="test", scribbles=False, judge_ckpt=src, frozen=False,
                           stopped=False)
    assert order == ["adapt", "blend"]
    assert done["calibration"]["temperature"] == pytest.approx(2 * t0, rel=0.05)
    assert load_checkpoint(ck)["meta"]["calibration"] == done["calibration"]


def test_a_soup_gets_its_own_temperature(finetuned, tiny_phantom, tmp_path):
    """The soup of a model and its x3 copy has logits x2: the temperature refitted on it doubles (not the first
    run's)."""
    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.ft_final import calibrate
    from seglearn.pretrain.soup import average_checkpoints

    src, t0 = finetuned
    ph = tiny_phantom
    soup = average_checkpoints([src, _scaled(src, tmp_path / "x3.ckpt", 3.0)], tmp_path / "soup.ckpt",
                               section="finetune")
    assert load_checkpoint(soup)["meta"]["calibration"]["temperature"] == t0  # inherited from the first run ...
    rec = calibrate(soup, ph.channels(), ph.test, "test", scribbles=False)  # ... until ft_final refits it, as finetune() does
    assert rec["temperature"] == pytest.approx(2 * t0, rel=0.05)
