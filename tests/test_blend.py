"""seglearn.pretrain.blend: the network / forest blend of fine-tuning (issue 23, "never lose to the forest")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seglearn.errors import InputError

DETS = ["SE2", "InLens"]
CLASSES = ["pore", "carbon_binder", "active_material"]
TINY_FT = {"max_steps": 2, "val_every": 1, "batch_size": 2, "patch": 32, "synth_fraction": 0.0, "threads": 1,
           "runs": 1, "denoise": "off", "adapt_bn": "off", "blend_trees": 5}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny untrained 2.5D base model with the base models' detectors, classes and grey scale."""
    import torch

    from seglearn.ckpt import save_checkpoint
    from seglearn.segment.net import build_net

    torch.manual_seed(0)
    net_cfg = {"in_channels": 3, "n_classes": 3, "mode": "2.5d", "context": 1, "base": 4, "depth": 1}
    meta = {"net": net_cfg, "detectors": DETS, "derived": ["SE2-InLens"], "channels": DETS + ["SE2-InLens"],
            "classes": CLASSES, "normalisation": {"method": "fixed", "percentiles": None,
                                                  "ranges": [[0.0, 255.0], [0.0, 255.0], [-128.0, 128.0]]},
            "inference": {"tile": [4, 64, 64], "overlap": [0, 16, 16], "batch_size": 2}}
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    save_checkpoint(path, kind="unet", state_dict=build_net(net_cfg).state_dict(), meta=meta)
    return path


@pytest.fixture(scope="module")
def tiny_forest(tiny_phantom):
    """The tailored forest (5 trees) fitted on the tiny phantom's scribbles, and its config."""
    from seglearn.pretrain.blend import fit_forest, forest_config

    cfg = forest_config("rf_tailored", DETS, trees=5)
    clf = fit_forest(tiny_phantom.channels(), DETS, tiny_phantom.train, cfg,
                     voxel_size_nm=tiny_phantom.config.voxel_size_nm)
    return clf, cfg


# ----------------------------------------------------------------------------------- choosing w
def _case(rng, wrong_net: float, wrong_forest: float):
    """Labels of 3 classes in blocks and two models, each confidently wrong on a share of the edge voxels."""
    labels = np.zeros((2, 40, 60), np.uint8)
    labels[:, 5:35, 2:18], labels[:, 5:35, 22:38], labels[:, 5:35, 42:58] = 1, 2, 3
    truth = np.clip(labels.astype(int) - 1, 0, None)
    good = np.eye(3)[truth].transpose(3, 0, 1, 2) * 0.8 + 0.2 / 3
    edge = np.zeros(labels.shape, bool)
    edge[:, 5:8], edge[:, 32:35] = True, True
    probs = []
    for share in (wrong_net, wrong_forest):
        p = good.copy()
        bad = edge & (rng.random(labels.shape) < share) & (labels > 0)
        p[:, bad] = np.eye(3)[(truth[bad] + 1) % 3].T * 0.9 + 0.1 / 3
        probs.append(p)
    return probs[0], probs[1], labels


def test_the_weight_follows_the_model_that_is_right_near_the_edges():
    from seglearn.pretrain.blend import choose_weight

    rng = np.random.default_rng(0)
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    pn, pf, lab = _case(rng, wrong_net=0.6, wrong_forest=0.0)
    forest_better = choose_weight(pn, pf, lab, grid)
    pn, pf, lab = _case(rng, wrong_net=0.0, wrong_forest=0.6)
    net_better = choose_weight(pn, pf, lab, grid)
    assert forest_better["weight"] <= 0.25 and net_better["weight"] >= 0.75
    assert [s["w"] for s in net_better["scores"]] == grid
    errs = {s["w"]: s["error"] for s in net_better["scores"]}
    assert errs[1.0] < errs[0.0]
    # both right on every voxel: the log-loss decides, the sharper model wins
    pn, pf, lab = _case(rng, 0.0, 0.0)
    sharp = np.eye(3)[np.clip(lab.astype(int) - 1, 0, None)].transpose(3, 0, 1, 2) * 0.97 + 0.01
    assert choose_weight(sharp, pf, lab, grid)["weight"] == 1.0
    assert choose_weight(pn, sharp, lab, grid)["weight"] == 0.0
    with pytest.raises(InputError, match="no scored voxel"):
        choose_weight(pn, pf, np.zeros_like(lab), grid)


def test_judge_weights_balance_the_classes():
    from seglearn.pretrain.blend import judge_weights

    lab = np.zeros((1, 30, 30), np.uint8)
    lab[0, 2:28, 2:20] = 1  # a large class
    lab[0, 10:14, 24:28] = 2  # a small one
    w = judge_weights(lab)
    assert w[lab == 1].sum() == pytest.approx(0.5) and w[lab == 2].sum() == pytest.approx(0.5)
    assert w[0, 11, 25] == pytest.approx(w[0, 5, 5] * (26 * 18) / 16)
    assert (w[lab == 0] == 0).all()


# ----------------------------------------------------------------------------------- the packed forest
def test_packed_forest_gives_sklearns_probabilities_and_refuses_broken_arrays():
    from sklearn.ensemble import RandomForestClassifier

    from seglearn.pretrain.blend import pack as blend_pack
    from seglearn.segment import forest_pack

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = 1 + (x[:, 0] > 0) + (x[:, 1] > 0.5)  # classes 1..3
    y[y == 2] = 3  # class 2 has no sample: its column stays 0
    clf = RandomForestClassifier(n_estimators=7, random_state=0).fit(x, y)
    arrays = forest_pack.check(blend_pack(clf, 3), 5, 3)
    xt = rng.normal(size=(3000, 5)).astype(np.float32)
    p = forest_pack.proba(arrays, xt, threads=2)
    assert p.shape == (3000, 3) and np.allclose(p[:, 1], 0)
    np.testing.assert_allclose(p[:, [0, 2]], clf.predict_proba(xt), atol=1e-5)
    np.testing.assert_allclose(forest_pack._proba_numpy(xt, arrays), p, atol=1e-5)
    inner = int(np.flatnonzero(arrays["left"] != np.arange(len(arrays["left"])))[0])
    for key, value in (("left", inner), ("feature", 5), ("right", len(arrays["left"]))):
        bad = {k: v.copy() for k, v in arrays.items()}
        bad[key][inner] = value  # a loop onto itself from an inner node, a feature or child out of range
        with pytest.raises(InputError, match="inconsistent"):
            forest_pack.check(bad, 5, 3)


def _blended_ckpt(tiny_base, tiny_forest, tiny_phantom, path, weight=0.5):
    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.pretrain.blend import Blend
    from seglearn.pretrain.blend import pack as blend_pack

    clf, cfg = tiny_forest
    ck = load_checkpoint(tiny_base, kind="unet")
    bl = Blend(blend_pack(clf, 3), {"weight": weight, "features": cfg["features"], "detectors": DETS,
                                    "n_features": int(clf.n_features_in_), "n_classes": 3,
                                    "voxel_size_nm": list(tiny_phantom.config.voxel_size_nm),
                                    "max_chunk_mb": 1.0})  # small chunks: several per block
    tensors, meta = bl.to_checkpoint()
    save_checkpoint(path, kind="unet", state_dict=ck["state_dict"], meta={**ck["meta"], "blend": meta}, blend=tensors)
    return path


def test_blend_survives_a_weights_only_checkpoint_and_predicts_block_by_block(tiny_base, tiny_forest, tiny_phantom,
                                                                              tmp_path):
    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.segment.api import load_segmenter

    path = _blended_ckpt(tiny_base, tiny_forest, tiny_phantom, tmp_path / "blend.ckpt")
    raw = torch.load(path, weights_only=True)  # plain tensors and data only
    assert set(raw["blend"]) >= {"feature", "threshold", "left", "right", "roots", "leaf_value"}
    load_checkpoint(path, kind="unet")  # passes the checkpoint validation
    seg = load_segmenter(path, device="cpu", bf16=False)
    net_only = load_segmenter(tiny_base, device="cpu", bf16=False)
    images = tiny_phantom.channels()
    whole = seg.predict_proba(images, DETS)
    blocks = seg.predict_proba(images, DETS, block_slices=5)  # 24 slices: blocks cut through the z-halo
    np.testing.assert_allclose(blocks, whole, atol=1e-5)
    assert np.array_equal(blocks.argmax(0), whole.argmax(0))  # the same labels
    # the blend is w * P_net + (1 - w) * P_forest, the forest's probabilities those of sklearn
    clf, cfg = tiny_forest
    from seglearn.features.stack import FeatureStack

    stack = FeatureStack(images, DETS, cfg["features"], tiny_phantom.config.voxel_size_nm)
    p_rf = clf.predict_proba(stack.compute_samples(0, images.shape[1])).T.reshape(whole.shape)
    np.testing.assert_allclose(whole, 0.5 * net_only.predict_proba(images, DETS) + 0.5 * p_rf, atol=1e-4)
    # a tampered forest is refused at load time
    raw["blend"]["left"][int(raw["blend"]["roots"][1]) - 2] = 10**6
    torch.save(raw, tmp_path / "bad.ckpt")
    with pytest.raises(InputError, match="inconsistent"):
        load_checkpoint(tmp_path / "bad.ckpt", kind="unet")


def test_predict_py_applies_the_blend(tiny_base, tiny_forest, tiny_phantom, tiny_dataset, tmp_path):
    from omegaconf import OmegaConf

    from seglearn.ckpt import load_checkpoint
    from seglearn.io import read_stack
    from seglearn.segment.api import load_segmenter
    from seglearn.segment.predict import predict

    path = _blended_ckpt(tiny_base, tiny_forest, tiny_phantom, tmp_path / "blend.ckpt", weight=0.25)
    cfg = OmegaConf.create({"ckpt": str(path), "input": str(tiny_dataset), "output": str(tmp_path / "out"),
                            "block_slices": 7, "preview": False, "adapt": "off"})
    summary = predict(cfg, load_checkpoint(path, kind="unet"))
    assert summary["blend"] == {"network_weight": 0.25, "forest_trees": 5}
    labels, _ = read_stack(tmp_path / "out" / "labels.tif")
    expect = load_segmenter(path, device="cpu").predict(tiny_phantom.channels(), DETS)
    assert np.array_equal(labels, expect)


# ----------------------------------------------------------------------------------- in fine-tuning
def test_finetuning_blends_with_the_forest_and_blend_off_keeps_the_network_alone(tiny_base, tiny_phantom, tmp_path):
    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.api import load_segmenter

    ph = tiny_phantom
    images = ph.channels()
    auto = finetune(tiny_base, images, DETS, ph.train, tmp_path / "auto", settings=TINY_FT,
                    voxel_size_nm=ph.config.voxel_size_nm)
    off = finetune(tiny_base, images, DETS, ph.train, tmp_path / "off", settings={**TINY_FT, "blend": "off"},
                   voxel_size_nm=ph.config.voxel_size_nm)
    # an untrained network against a forest: the forest is clearly better on the held-out scribbles
    rec = auto["blend"]
    assert rec["weight"] < 1.0 and [s["w"] for s in rec["scores"]] == TINY_FT.get("blend_weights", [0, .25, .5, .75, 1])
    assert rec["trees"] == 5 and rec["bytes"] > 1000
    assert json.loads((tmp_path / "auto" / "finetune_summary.json").read_text())["blend"]["weight"] == rec["weight"]
    ck_auto, ck_off = (load_checkpoint(tmp_path / d / "best.ckpt", kind="unet") for d in ("auto", "off"))
    assert ck_auto["meta"]["blend"]["evidence"]["scores"] == rec["scores"]
    assert off["blend"] is None and "blend" not in ck_off and "blend" not in ck_off["meta"]
    # the network itself is the same either way; blend=off predicts with it alone
    assert all(torch.equal(ck_auto["state_dict"][k], ck_off["state_dict"][k]) for k in ck_off["state_dict"])
    seg_off, seg_auto = (load_segmenter(tmp_path / d / "best.ckpt", device="cpu") for d in ("off", "auto"))
    assert seg_off.blend is None and seg_auto.blend is not None
    p_net = seg_off.predict_proba(images, DETS)
    assert np.array_equal(seg_off.predict(images, DETS), (p_net.argmax(0) + 1).astype(np.uint8))
    assert not np.allclose(seg_auto.predict_proba(images, DETS), p_net)
