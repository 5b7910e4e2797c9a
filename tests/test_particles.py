"""The particle phantom of issue 29 (seglearn.synth.particles) and the per-stage error breakdown."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.errors import InputError

SMALL = {"shape": [16, 40, 40], "voxel_size_nm": [140.0, 70.0, 70.0], "particle_radius_nm": 420.0}


@pytest.fixture(scope="module")
def hard():
    from seglearn.synth.particles import make_particles

    return make_particles({**SMALL, "seed": 4, "crack_probability": 1.0})


def test_phantom_is_deterministic_and_consistent(hard):
    from seglearn.synth.particles import make_particles

    again = make_particles({**SMALL, "seed": 4, "crack_probability": 1.0})
    assert np.array_equal(again.image, hard.image) and np.array_equal(again.instances, hard.instances)
    other = make_particles({**SMALL, "seed": 5, "crack_probability": 1.0})
    assert not np.array_equal(other.instances, hard.instances)
    inst = hard.instances
    assert inst.dtype == np.uint32 and hard.image.dtype == np.uint16 and hard.image.shape == inst.shape
    ids = np.unique(inst[inst > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1)) and hard.info["n_particles"] == len(ids) >= 10
    assert np.bincount(inst.ravel())[1:].min() >= hard.params["min_voxels"]
    # solid material only inside particles; cracks are pore voxels inside particle envelopes
    assert not np.any(hard.solid & (inst == 0))
    crack = (inst > 0) & ~hard.solid
    assert crack.sum() > 0.01 * (inst > 0).sum() and hard.info["cracked"] > 0
    # particles are brighter than pores, cracks darker than the particle material
    img = hard.image.astype(float)
    assert img[hard.solid].mean() > img[crack].mean() > img[inst == 0].mean() - 0.05 * img.max()


def test_packing_and_touching_knobs():
    from seglearn.synth.particles import contact_voxels, make_particles

    dense = make_particles({**SMALL, "seed": 1, "solid_fraction": 0.6, "particle_min_gap": 0.8, "crack_probability": 0.0})
    loose = make_particles({**SMALL, "seed": 1, "solid_fraction": 0.25, "particle_min_gap": 1.3, "crack_probability": 0.0})
    assert dense.info["solid_fraction"] > 0.5 > 0.3 > loose.info["solid_fraction"]
    assert dense.info["contact_fraction"] > 0.05 > 0.01 > loose.info["contact_fraction"]
    assert contact_voxels(dense.instances).sum() > 5 * max(contact_voxels(loose.instances).sum(), 1)
    # no cracks asked: the particle material fills the envelopes
    assert np.array_equal(dense.solid, dense.instances > 0) and dense.info["cracked"] == 0


def test_contact_contrast_darkens_contacts_only():
    from seglearn.synth.particles import contact_voxels, make_particles

    base = {**SMALL, "seed": 2, "crack_probability": 0.0, "noise": 0.0, "blur_nm": 0.0, "particle_grey_cv": 0.0}
    faint = make_particles({**base, "contact_contrast": 0.0})
    dark = make_particles({**base, "contact_contrast": 1.0})
    assert np.array_equal(faint.instances, dark.instances)
    c = contact_voxels(dark.instances)
    inner = (dark.instances > 0) & ~c
    assert c.any() and np.array_equal(faint.image[inner], dark.image[inner])
    assert faint.image[c].mean() > dark.image[c].mean() + 0.2 * faint.image.max()
    assert np.abs(dark.image[c].astype(int) - dark.image[dark.instances == 0].astype(int).mean()).max() <= 1


def test_anisotropy_and_polydispersity():
    from seglearn.synth.particles import make_particles, place_spheres, particle_params

    iso = make_particles({**SMALL, "seed": 3, "voxel_size_nm": [70.0, 70.0, 70.0], "crack_probability": 0.0,
                          "shape": [32, 40, 40]})
    aniso = make_particles({**SMALL, "seed": 3, "crack_probability": 0.0})
    # the same physical particles take half as many slices when z voxels are twice as long
    zi = np.mean([s[0].stop - s[0].start for s in __import__("scipy.ndimage").ndimage.find_objects(iso.instances)])
    za = np.mean([s[0].stop - s[0].start for s in __import__("scipy.ndimage").ndimage.find_objects(aniso.instances)])
    assert 1.5 < zi / za < 2.6
    rng = np.random.default_rng(0)
    _, mono = place_spheres(particle_params({**SMALL, "particle_radius_cv": 0.0}), rng)
    _, poly = place_spheres(particle_params({**SMALL, "particle_radius_cv": 0.4}), rng)
    assert np.ptp(mono) == 0 and np.std(poly) / np.mean(poly) > 0.2


def test_bad_options_name_the_option():
    from seglearn.synth.particles import particle_params

    with pytest.raises(InputError, match="crack_probability"):
        particle_params({"crack_probability": 1.5})
    with pytest.raises(InputError, match="cracks"):
        particle_params({"cracks": 2})
    with pytest.raises(InputError, match="bit_depth"):
        particle_params({"bit_depth": 12})


def test_command_writes_a_dataset_train_reads(tmp_path):
    from seglearn.data import load_dataset
    from seglearn.errors import SeglearnError
    from seglearn.synth.particles import run

    out = tmp_path / "ph"
    run({"out": str(out), "overwrite": False, "seed": 1, **SMALL, "bit_depth": 8})
    ds = load_dataset(out, labels=("instances", "truth"), require=("instances",))
    assert ds.detectors == ["CT"] and ds.images.shape == (1, 16, 40, 40) and ds.images.dtype == np.uint8
    assert ds.instances.max() > 5 and set(np.unique(ds.truth)) <= {1, 2}
    assert list(ds.voxel_size_nm) == [140.0, 70.0, 70.0]
    with pytest.raises(SeglearnError):
        run({"out": str(out), "overwrite": False, "seed": 1, **SMALL})


def test_error_breakdown_counts_merges_splits_losses():
    from seglearn.instances.metrics import error_breakdown

    t = np.zeros((10, 20, 60), np.int32)
    t[2:8, 2:18, 2:12], t[2:8, 2:18, 12:22], t[2:8, 2:18, 25:38], t[2:8, 2:18, 42:55] = 1, 2, 3, 4
    p = np.zeros_like(t)
    p[2:8, 2:18, 2:22] = 1  # 1 and 2 merged
    p[2:8, 2:18, 25:31], p[2:8, 2:18, 31:38] = 2, 3  # 3 split; 4 lost
    p[0:2, 0:5, 0:5] = 4  # a false particle
    r = error_breakdown(t, p)
    assert (r["n_true"], r["n_pred"], r["merged"], r["split"], r["lost"], r["false"]) == (4, 4, 2, 1, 1, 1)
    assert r["f1_0.75"] == 0.0 and 0 < r["f1_0.5"] < 1 and 0 < r["boundary_iou"] < 1
    perfect = error_breakdown(t, t)
    assert perfect["f1_0.75"] == 1.0 and perfect["boundary_iou"] == 1.0
    assert perfect["merged"] == perfect["split"] == perfect["lost"] == perfect["false"] == 0


def test_isotropic_resampling_round_trip():
    from seglearn.instances.anisotropy import from_isotropic, iso_factors, to_isotropic

    assert iso_factors([140.0, 70.0, 70.0]) == (2.0, 1.0, 1.0)
    assert iso_factors([21.0, 20.0, 20.0]) == (1.0, 1.0, 1.0) and iso_factors(None) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    lbl = rng.integers(0, 50, (5, 6, 7)).astype(np.uint32)
    up = to_isotropic(lbl, (2.0, 1.0, 1.0), labels=True)
    assert up.shape == (10, 6, 7) and up.dtype == lbl.dtype and np.array_equal(up[::2], lbl) and np.array_equal(up[1::2], lbl)
    assert np.array_equal(from_isotropic(up, lbl.shape), lbl)
    odd = to_isotropic(lbl, (2.5, 1.0, 1.0), labels=True)
    assert odd.shape == (12, 6, 7) and np.array_equal(from_isotropic(odd, lbl.shape), lbl)
    img = np.stack([np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None], (5, 6, 7))])
    up = to_isotropic(img, (2.0, 1.0, 1.0))
    # linear along z, voxel centres kept: the mean of two neighbouring new slices is the old slice
    assert up.shape == (1, 10, 6, 7) and np.allclose(0.5 * (up[0, 2:8:2] + up[0, 3:9:2]), img[0, 1:4])


def test_isotropic_checkpoint_sees_resampled_volume(monkeypatch):
    import seglearn.instances.pipeline as pipeline
    import seglearn.instances.volume as volume
    from seglearn.instances.model import build_model
    from seglearn.instances.pipeline import segment_particles

    net = build_model({"n_rays": 8, "grid": [2, 2], "depth": 1, "base_filters": 4, "head_filters": 4}, in_channels=1)
    seen = []
    real = volume.predict_view

    def spy(net, images, view, **kw):
        seen.append((view, images.shape))
        return real(net, images, view, **kw)

    monkeypatch.setattr(pipeline, "predict_view", spy)  # where view_outputs looks it up
    x = np.random.default_rng(0).random((1, 6, 16, 16)).astype(np.float32)
    params = {"tile": [64, 64], "context": 8, "bf16": False,
              "fusion": {"foreground": "probability", "fg_prob": 0.0, "min_size": 1}}
    lbl, info = segment_particles(net, x, method="fusion", params={**params, "isotropic": True},
                                  voxel_size_nm=(40.0, 20.0, 20.0), progress=False)
    assert info["method"] == "fusion" and lbl.shape == (6, 16, 16) and lbl.max() >= 1
    assert seen == [(v, (1, 12, 16, 16)) for v in ("xy", "xz", "yz")]
    seen.clear()  # a checkpoint from before issue 29 (no "isotropic") sees the voxels as they are
    lbl, _ = segment_particles(net, x, method="linking", params=params, voxel_size_nm=(40.0, 20.0, 20.0),
                               progress=False)
    assert seen == [("xy", (1, 6, 16, 16))] and lbl.shape == (6, 16, 16)


def test_fusion_candidates_without_repeats():
    from seglearn.instances.tune import fusion_candidates

    base = {"foreground": "polygons", "fg_vote": 0.5, "fg_prob": 0.1, "seed_thresh": 0.4, "h": 0.05, "sigma": 1.0,
            "min_size": 20}
    grid = {"h": [0.05, 0.1], "foreground": ["polygons", "probability"], "fg_vote": [0.5, 0.67], "fg_prob": [0.1, 0.2]}
    cands = fusion_candidates(grid, base)
    # polygons: 2 h x 2 fg_vote; probability: 2 h x 2 fg_prob (fg_vote / fg_prob varied only where they matter)
    assert len(cands) == 8 and all(c["min_size"] == 20 and c["sigma"] == 1.0 for c in cands)
    assert {c["fg_prob"] for c in cands if c["foreground"] == "polygons"} == {0.1}
    assert {c["fg_vote"] for c in cands if c["foreground"] == "probability"} == {0.5}
    with pytest.raises(InputError, match="fusion_grid.*'hh'"):
        fusion_candidates({"hh": [1]}, base)


def test_tune_fusion_picks_the_best_candidate(tmp_path, monkeypatch):
    from stardist import edt_prob

    import seglearn.instances.tune as tune
    from seglearn.instances.targets import relabel_slice, unview_stack, view_stack
    from seglearn.instances.tune import tune_fusion
    from seglearn.synth.particles import write_particles

    ph = write_particles(tmp_path / "held_out", {**SMALL, "seed": 6, "voxel_size_nm": [70.0, 70.0, 70.0]})
    probs = [unview_stack(np.stack([edt_prob(relabel_slice(s)) for s in view_stack(ph.instances, v)]), v)
             for v in ("xy", "xz", "yz")]

    def oracle(net, x, **kw):  # a perfect network: the truth's own per-view probabilities and polygons
        assert x.shape == (1, *ph.instances.shape) and 0 <= x.min() and x.max() <= 1.0
        return probs, [(p > 0).astype(np.int32) for p in probs]

    monkeypatch.setattr(tune, "view_outputs", oracle)  # where tune_fusion looks it up
    meta = {"net": {"in_channels": 1}, "channels": ["CT"], "thresholds": {"prob": 0.5, "nms": 0.4},
            "normalisation": {"kind": "percentile", "lo": [0.0], "hi": [65535.0]}, "predict": {"isotropic": False}}
    # h = 5: no maximum stands out that much, so touching particles merge
    res = tune_fusion(None, meta, tmp_path / "held_out", {"h": [5.0, 0.05], "seed_thresh": [0.3]})
    assert len(res["table"]) == 2 and res["fusion"]["h"] == 0.05 and res["fusion"]["seed_thresh"] == 0.3
    bad, good = res["table"]
    assert good["f1_0.75"] == res["f1_0.75"] > bad["f1_0.75"] and res["f1_0.5"] > 0.9
    with pytest.raises(InputError, match="tune_data.*detectors"):
        tune_fusion(None, {**meta, "channels": ["SE2"]}, tmp_path / "held_out", {"h": [0.05]})
