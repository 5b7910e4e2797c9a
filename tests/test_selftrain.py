"""seglearn.pretrain.selftrain: pseudo-labels for self-training on the target's unlabelled voxels (issue 23)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.pretrain.selftrain import (boundary_mask, choose_pseudo_labels, decode, encode, near_agreed_boundary,
                                         pseudo_slices)

DETS = ["SE2", "InLens"]
KW = {"threshold": 0.8, "ratio": 1000.0, "boundary_px": 0, "boundary_weight": 1.0, "weight": 0.5}


def _onehot(lab: np.ndarray, k: int, p: float) -> np.ndarray:
    """``(K, Z, Y, X)`` probabilities: ``p`` on ``lab`` (1..K), the rest spread over the others."""
    out = np.full((k, *lab.shape), (1.0 - p) / (k - 1), np.float32)
    for c in range(k):
        out[c][lab == c + 1] = p
    return out


def _halves(z=1, y=8, x=8):
    lab = np.ones((z, y, x), np.int64)
    lab[:, :, x // 2:] = 2
    return lab


def test_agreement_and_confidence_decide():
    lab = _halves()
    p_net, p_forest = _onehot(lab, 2, 0.95), _onehot(lab, 2, 0.95)
    p_forest[:, 0, 0, 0] = [0.05, 0.95]  # disagree
    p_net[:, 0, 1, 0] = [0.7, 0.3]  # agree, net not confident
    p_forest[:, 0, 2, 0] = [0.75, 0.25]  # agree, forest not confident
    out, w, rec = choose_pseudo_labels(p_net, p_forest, np.zeros_like(lab), **KW)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, 1, 0] == 0 and out[0, 2, 0] == 0
    assert out[0, 3, 0] == 1 and out[0, 3, 7] == 2
    sel = np.ones(lab.shape, bool)
    sel[0, :3, 0] = False
    assert np.array_equal(out[sel], lab[sel])
    assert np.all(w[out > 0] == 0.5) and np.all(w[out == 0] == 0)
    assert rec["candidates"] == [29, 32] and rec["kept"] == [29, 32]
    # a lower threshold takes the unconfident but agreeing voxels, never the disagreeing one
    out2, _, _ = choose_pseudo_labels(p_net, p_forest, np.zeros_like(lab), **{**KW, "threshold": 0.6})
    assert out2[0, 0, 0] == 0 and out2[0, 1, 0] == 1 and out2[0, 2, 0] == 1


def test_scribbles_and_excluded_voxels_are_never_overridden():
    lab = _halves()
    p = _onehot(lab, 2, 0.99)
    scrib = np.zeros_like(lab)
    scrib[0, 0, 0] = 2  # a scribble the models contradict
    scrib[0, 5, 6] = 2
    excl = np.zeros(lab.shape, bool)
    excl[0, 7, :] = True
    out, w, _ = choose_pseudo_labels(p, p, scrib, exclude=excl, **KW)
    assert out[0, 0, 0] == 0 and out[0, 5, 6] == 0 and w[0, 0, 0] == 0
    assert not out[0, 7].any() and out[0, 6].all()
    code = encode(scrib, out, w)
    labels, weights = decode(code, max(1.0, float(w.max())))
    assert labels[0, 0, 0] == 2 and weights[0, 0, 0] == pytest.approx(1.0)  # the scribble, weight 1
    assert labels[0, 6, 0] == 1 and weights[0, 6, 0] == pytest.approx(0.5, abs=0.01)
    assert labels[0, 7, 0] == 0 and weights[0, 7, 0] == 0  # 0 = unlabelled, weight 0


def test_per_class_quota_balances_the_classes():
    lab = np.ones((2, 20, 20), np.int64)
    lab[:, :2, :2] = 2  # a rare class: 8 voxels
    p = _onehot(lab, 2, 0.9)
    out, _, rec = choose_pseudo_labels(p, p, np.zeros_like(lab), **{**KW, "ratio": 3.0}, seed=1)
    assert rec["candidates"] == [792, 8] and rec["kept"] == [24, 8] and rec["quota"] == 24
    assert (out == 1).sum() == 24 and (out == 2).sum() == 8
    assert np.all(lab[out > 0] == out[out > 0])


def test_boundaries_both_models_draw_weigh_more_and_are_kept_first():
    lab = _halves(z=1, y=16, x=16)
    p_net = _onehot(lab, 2, 0.9)
    lab_f = lab.copy()
    lab_f[0, 8:, 8] = 1  # the forest draws the lower half of the edge one pixel to the right
    p_forest = _onehot(lab_f, 2, 0.9)
    near = near_agreed_boundary(p_net.argmax(0) + 1, p_forest.argmax(0) + 1, 1)
    assert near[0, 0, 7] and near[0, 0, 8] and near[0, 0, 6] and not near[0, 0, 4]
    assert not near[0, 12, 8]  # disagreed there
    out, w, rec = choose_pseudo_labels(p_net, p_forest, np.zeros_like(lab), **{**KW, "boundary_px": 1,
                                                                               "boundary_weight": 3.0})
    assert w[0, 0, 7] == pytest.approx(1.5) and w[0, 0, 0] == pytest.approx(0.5) and rec["near_boundary"] > 0
    # with a tight quota the voxels near agreed boundaries go first
    out_q, _, _ = choose_pseudo_labels(p_net, p_forest, np.zeros_like(lab), **{**KW, "boundary_px": 1,
                                                                                 "ratio": 1.0})
    kept = out_q > 0
    assert kept.sum() > 0 and near[kept].mean() > near[(out > 0)].mean()
    assert boundary_mask(lab)[0, 3, 7] and not boundary_mask(lab)[0, 3, 3]


def test_bad_inputs_are_refused():
    p = np.zeros((2, 1, 4, 4), np.float32)
    with pytest.raises(InputError, match="do not agree"):
        choose_pseudo_labels(p, p[:, :, :3], np.zeros((1, 4, 4)), **KW)
    with pytest.raises(InputError, match="threshold"):
        choose_pseudo_labels(p, p, np.zeros((1, 4, 4)), **{**KW, "threshold": 1.5})


def test_pseudo_slices_spread_and_avoid_the_scribbled_ones():
    zs = pseudo_slices(128, 16, exclude=[0, 9, 19, 28, 99, 108, 118, 127])
    assert len(zs) == 16 and not set(zs) & {0, 9, 19, 28, 99, 108, 118, 127}
    assert min(zs) < 20 and max(zs) > 105
    assert pseudo_slices(5, 10, exclude=[2]) == [0, 1, 3, 4] and pseudo_slices(5, 0) == []


def test_finetuning_with_selftrain_runs_and_records_it(tmp_path):
    """An in-process fine-tune (tiny base, tiny phantom) with ``selftrain: auto``: two rounds, summary records."""
    import torch

    from seglearn.ckpt import save_checkpoint
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.net import build_net
    from seglearn.synth import make_phantom

    torch.manual_seed(0)
    net_cfg = {"in_channels": 3, "n_classes": 3, "mode": "2.5d", "context": 1, "base": 4, "depth": 1}
    meta = {"net": net_cfg, "detectors": DETS, "derived": ["SE2-InLens"], "channels": DETS + ["SE2-InLens"],
            "classes": ["pore", "carbon_binder", "active_material"],
            "normalisation": {"method": "fixed", "percentiles": None,
                              "ranges": [[0.0, 255.0], [0.0, 255.0], [-128.0, 128.0]]},
            "inference": {"tile": [4, 64, 64], "overlap": [0, 16, 16], "batch_size": 2}}
    base = tmp_path / "base.ckpt"
    save_checkpoint(base, kind="unet", state_dict=build_net(net_cfg).state_dict(), meta=meta)
    ph = make_phantom({"shape": [24, 64, 64], "seed": 3, "voxel_size_nm": [40.0, 20.0, 20.0],
                       "particle_radius_nm": 260.0, "n_train_slices": 6, "scribble_coverage": 0.03})
    tiny = {"max_steps": 4, "val_every": 1, "batch_size": 2, "patch": 32, "synth_fraction": 0.0, "threads": 1,
            "runs": 1, "denoise": "off", "adapt_bn": "off", "blend_trees": 5, "patience": 0,
            "selftrain": "auto", "selftrain_threshold": 0.4, "selftrain_slices": 4}
    res = finetune(base, ph.channels(), DETS, ph.train, tmp_path / "ft", settings=tiny,
                   voxel_size_nm=ph.config.voxel_size_nm)
    summary = json.loads((tmp_path / "ft" / "finetune_summary.json").read_text())
    rec = summary["selftrain"]
    assert rec["mode"] == "auto" and rec["kept"] == "round 2"  # selftrain_keep: last (the default)
    scribbled = set(np.unique(np.nonzero(ph.train)[0]).tolist())
    assert len(rec["pseudo"]["slices"]) == 4 and not set(rec["pseudo"]["slices"]) & scribbled
    assert sum(rec["pseudo"]["kept"]) > 0 and rec["round2"]["steps"] == 4
    assert (tmp_path / "ft" / "selftrain" / "best.ckpt").is_file() and (tmp_path / "ft" / "best.ckpt").is_file()
    assert res["selftrain"] == rec
    off = finetune(base, ph.channels(), DETS, ph.train, tmp_path / "off", settings={**tiny, "selftrain": "off"},
                   voxel_size_nm=ph.config.voxel_size_nm)
    assert off["selftrain"] == {"mode": "off"} and not (tmp_path / "off" / "selftrain").exists()
    # every unscribbled slice asked for: the dense test slice (the validation slice) and its context slices are
    # still never pseudo-labelled
    with_test = finetune(base, ph.channels(), DETS, ph.train, tmp_path / "test", test=ph.test,
                         settings={**tiny, "max_steps": 2, "selftrain_slices": 100},
                         voxel_size_nm=ph.config.voxel_size_nm)
    tested = {z + d for z in np.unique(np.nonzero(ph.test)[0]).tolist() for d in (-1, 0, 1)}  # the 2.5D context: 1
    picked = set(with_test["selftrain"]["pseudo"]["slices"])
    assert tested and not picked & tested and not picked & scribbled
    assert len(picked) == ph.train.shape[0] - len(scribbled | tested)
    with pytest.raises(InputError, match="finetune.selftrain"):
        finetune(base, ph.channels(), DETS, ph.train, tmp_path / "bad", settings={**tiny, "selftrain": "yes"})
