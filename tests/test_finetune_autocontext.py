"""seglearn.pretrain.autocontext: the forest's probabilities as extra input channels of the fine-tuned network."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.pretrain.autocontext import check_settings, fold_slices, uninformative

DETS = ["SE2", "InLens"]
NET = {"in_channels": 3, "n_classes": 3, "mode": "2.5d", "context": 1, "base": 4, "depth": 1}
TINY = {"max_steps": 3, "val_every": 1, "batch_size": 2, "patch": 32, "synth_fraction": 0.0, "threads": 1,
        "runs": 1, "denoise": "off", "adapt_bn": "off", "blend_trees": 5, "patience": 0}


def _base(tmp_path):
    import torch

    from seglearn.ckpt import save_checkpoint
    from seglearn.segment.net import build_net

    torch.manual_seed(0)
    meta = {"net": NET, "detectors": DETS, "derived": ["SE2-InLens"], "channels": DETS + ["SE2-InLens"],
            "classes": ["pore", "carbon_binder", "active_material"],
            "normalisation": {"method": "fixed", "percentiles": None,
                              "ranges": [[0.0, 255.0], [0.0, 255.0], [-128.0, 128.0]]},
            "inference": {"tile": [4, 64, 64], "overlap": [0, 16, 16], "batch_size": 2}}
    path = tmp_path / "base.ckpt"
    save_checkpoint(path, kind="unet", state_dict=build_net(NET).state_dict(), meta=meta)
    return path


@pytest.fixture(scope="module")
def phantom():
    from seglearn.synth import make_phantom

    return make_phantom({"shape": [24, 64, 64], "seed": 3, "voxel_size_nm": [40.0, 20.0, 20.0],
                         "particle_radius_nm": 260.0, "n_train_slices": 6, "scribble_coverage": 0.03})


@pytest.mark.parametrize("mode", ["2.5d", "2d"])
def test_widened_network_equals_the_base_model_whatever_the_new_channels_hold(mode):
    import torch

    from seglearn.pretrain.autocontext import widen
    from seglearn.segment.net import build_net

    torch.manual_seed(1)
    base = build_net({**NET, "mode": mode}).eval()
    wide = build_net({**NET, "mode": mode}).eval()
    wide.load_state_dict(base.state_dict())
    widen(wide, 3)
    h = base.halo
    x = torch.rand(2, 3, 2 + 2 * h, 16, 16)
    extra = torch.rand(2, 3, 2 + 2 * h, 16, 16)
    with torch.no_grad():
        assert torch.allclose(base(x), wide(torch.cat([x, extra], 1)), atol=1e-6)
    cfg = {**NET, "mode": mode, "in_channels": 6}
    again = build_net(cfg)
    again.load_state_dict(wide.state_dict())  # the widened weights fit a 6-channel network config


def test_folds_settings_and_uninformative_channels():
    train = np.zeros((10, 4, 4), np.uint8)
    train[[1, 3, 5, 7, 9], 0, 0] = 1
    assert fold_slices(train, 2) == [[1, 5, 9], [3, 7]] and fold_slices(train, 9) == [[1], [3], [5], [7], [9]]
    s = {"autocontext": "on", "autocontext_folds": 4, "autocontext_dropout": 0.0, "autocontext_lr": 1.0, "selftrain": "off",
         "freeze_encoder": False}
    assert check_settings(s) == "on" and check_settings({**s, "autocontext": False}) == "off"
    for bad, match in [({"autocontext": "yes"}, "finetune.autocontext="), ({"autocontext_folds": 1}, "folds"),
                       ({"autocontext_dropout": 1.0}, "dropout"), ({"autocontext_lr": 0}, "autocontext_lr"),
                       ({"selftrain": "auto"}, "selftrain"), ({"freeze_encoder": True}, "freeze_encoder")]:
        with pytest.raises(InputError, match=match):
            check_settings({**s, **bad})
    p = uninformative(np.zeros((3, 3, 8, 8), np.float32), 3)
    assert p.shape == (6, 3, 8, 8) and p.dtype == np.float32 and np.allclose(p[3:], 1 / 3)


def test_autocontext_trains_saves_and_predicts_through_the_checkpoint(tmp_path, phantom):
    """In-process fine-tunes (tiny base, tiny phantom): step 0 = the base model, the checkpoint carries the
    forest, and a Segmenter loaded from it recomputes the channels (the same as predict.py)."""
    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.api import load_segmenter

    ph = phantom
    base = _base(tmp_path)
    kw = dict(settings=TINY, voxel_size_nm=ph.config.voxel_size_nm)
    off = finetune(base, ph.channels(), DETS, ph.train, tmp_path / "off", **kw)
    on = finetune(base, ph.channels(), DETS, ph.train, tmp_path / "on",
                  **{**kw, "settings": {**TINY, "autocontext": "on", "autocontext_folds": 3,
                                        "autocontext_dropout": 0.5, "autocontext_lr": 30.0,
                                        "keep_best": False}})
    # step 0 is the base model exactly: the same zero-shot validation as without the channels
    assert on["val_awe_zero_shot"] == off["val_awe_zero_shot"] and on["steps"] == 3
    scribbled = [int(z) for z in np.unique(np.nonzero(ph.train)[0])]
    assert sorted(z for f in on["autocontext"]["folds"] for z in f) == scribbled
    ck = load_checkpoint(tmp_path / "on" / "best.ckpt", kind="unet")
    meta = ck["meta"]
    assert meta["net"]["in_channels"] == 6 and meta["channels"][3:] == ["forest_p1", "forest_p2", "forest_p3"]
    assert meta["autocontext"]["trees"] == 5 and ck["blend"] is not None and "temperature" in meta["calibration"]
    assert "autocontext" not in load_checkpoint(tmp_path / "off" / "best.ckpt")["meta"]
    w = ck["state_dict"]["unet.down.0.body.0.weight"]  # (F, 6 channels x 3 slices, 3, 3): the forest's last
    assert w.shape[1] == 18 and float(w[:, 9:].abs().max()) > 0  # trained away from their zero start
    seg = load_segmenter(tmp_path / "on" / "best.ckpt", device="cpu", bf16=False)
    assert seg.context is not None
    labels = seg.predict(ph.channels(), DETS, block_slices=8)
    assert labels.shape == ph.train.shape and labels.dtype == np.uint8 and set(np.unique(labels)) <= {1, 2, 3}
    whole = seg.predict_proba(ph.channels(), DETS)
    blocks = seg.predict_proba(ph.channels(), DETS, block_slices=8)
    assert np.allclose(whole, blocks, atol=1e-4)  # the forest channels see their z-halo in every block
    # predict.py: the checkpoint alone recomputes the channels
    from omegaconf import OmegaConf

    from seglearn.data import write_dataset
    from seglearn.io import read_stack
    from seglearn.segment.predict import predict

    root = tmp_path / "ds"
    write_dataset(root, ph.images, voxel_size_nm=ph.config.voxel_size_nm, train=ph.train, name="tiny")
    cfg = OmegaConf.create({"ckpt": str(tmp_path / "on" / "best.ckpt"), "input": str(root),
                            "output": str(tmp_path / "out"), "block_slices": 7, "preview": False, "adapt": "off"})
    predict(cfg, ck)
    out, _ = read_stack(tmp_path / "out" / "labels.tif")
    assert np.array_equal(out, seg.predict(ph.channels(), DETS))
