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


def test_validation_slices_get_the_forest_channels(tmp_path, phantom):
    """With labels/test.tif the dense test slice is validated on the inputs prediction will see: the forest's
    channels (the forest on all scribbles), not the uninformative 1 / K."""
    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import settings_from
    from seglearn.pretrain.ft_setup import prepare

    ph = phantom
    s = settings_from({**TINY, "autocontext": "on", "autocontext_folds": 3})
    context: dict = {}
    st = prepare(load_checkpoint(_base(tmp_path), kind="unet"), ph.channels(), DETS, ph.train, s, classes=None,
                 test=ph.test, voxel_size_nm=ph.config.voxel_size_nm, name="tiny", init="base.ckpt", context=context)
    assert st.val_source == "test"
    ctx, h = context["ctx"], st.halo
    for z in st.val_z:
        zs = [min(max(z + d, 0), ph.train.shape[0] - 1) for d in range(-h, h + 1)]
        assert ctx.done[zs].all() and not np.allclose(st.x[-3:, zs], 1 / 3)
        if z not in ctx.oof:  # far from the scribbles: the forest on all of them
            from seglearn.segment import forest_pack

            p = forest_pack.proba(ctx.arrays, ctx.stack.compute_samples(z, z + 1), threads=1)
            assert np.allclose(st.x[-3:, z], p.T.reshape(3, *ph.train.shape[1:]), atol=1e-6)


def test_statistics_patches_read_the_forest_channels_of_the_whole_volume(tmp_path, phantom, monkeypatch):
    """``predict adapt=on`` with an auto-context model: the patches' forest channels are those of the whole
    volume (the forest's features on a patch-sized crop differ near its edges), for in-memory volumes and slabs."""
    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.adapt import sample_patches, spread, volume_context
    from seglearn.segment.api import load_segmenter

    ph = phantom
    ckpt = tmp_path / "on" / "best.ckpt"
    finetune(_base(tmp_path), ph.channels(), DETS, ph.train, tmp_path / "on", voxel_size_nm=ph.config.voxel_size_nm,
             settings={**TINY, "max_steps": 1, "autocontext": "on", "autocontext_folds": 3, "blend": "off"})
    seg = load_segmenter(ckpt, device="cpu", bf16=False)
    img = ph.channels()
    whole = seg.prepare(np.stack([img[i] for i in seg.channel_order(DETS)]))  # (6, Z, Y, X), the forest's last
    h, z = seg.net.halo, 11
    patches = sample_patches(seg, img, DETS, n=6, patch=24, seed=0, centres=[z])
    for x in patches:
        assert x.shape == (6, 2 * h + 1, 24, 24)
        hits = [(y0, x0) for y0 in range(64 - 23) for x0 in range(64 - 23)
                if np.allclose(x[:3], whole[:3, z - h:z + h + 1, y0:y0 + 24, x0:x0 + 24], atol=1e-5)]
        assert len(hits) == 1
        y0, x0 = hits[0]
        assert np.allclose(x[3:], whole[3:, z - h:z + h + 1, y0:y0 + 24, x0:x0 + 24], atol=1e-5)
    # predict.py's path reads slabs around spread slices; their forest channels come from the whole volume too,
    # whatever the order of the detectors given
    import seglearn.segment.adapt as adapt_mod

    seen = {}

    def spy(ck, images, detectors, **kw):
        seen.update(images=images, detectors=list(detectors), **kw)
        return ck, {"patches": 0, "patch": 0, "shift": 0.0}

    monkeypatch.setattr(adapt_mod, "adapt_statistics", spy)
    ck = load_checkpoint(ckpt, kind="unet")
    rev = img[::-1].copy()
    adapt_mod.adapt_to_volume(ck, lambda a, b: rev[:, a:b], img.shape[1:], DETS[::-1], "on", where="tiny",
                              fit_scale=False)
    zs = spread(img.shape[1], 16)
    assert sorted(seen["context"]) == seen["centres"] and len(zs) == len(seen["centres"]) == 16
    expect = volume_context(seg, lambda a, b: img[:, a:b], img.shape[1], zs)
    for c, z in zip(seen["centres"], zs):
        assert np.allclose(seen["context"][c], expect[z], atol=1e-5)
        assert np.array_equal(seen["images"][:, c - h:c + h + 1], rev[:, np.clip(np.arange(z - h, z + h + 1), 0, 23)])
