import numpy as np
import pytest

from seglearn.baselines.threshold_fit import apply_double_threshold, best_double_threshold
from seglearn.errors import InputError
from seglearn.metrics import score
from seglearn.synth import make_phantom
from seglearn.synth.forward import depth_behind
from seglearn.synth.microstructure import AM, CBD, PORE


def test_phantom_is_deterministic_and_complete(tiny_phantom):
    ph = tiny_phantom
    again = make_phantom(ph.config)
    for det in ph.images:
        np.testing.assert_array_equal(ph.images[det], again.images[det])
    np.testing.assert_array_equal(ph.truth, again.truth)
    assert ph.channels().shape == (2, 24, 64, 64)
    assert set(np.unique(ph.truth)) == {PORE, CBD, AM}
    # instances sit on the particle envelopes: every active voxel belongs to a particle
    assert np.all(ph.instances[ph.truth == AM] > 0)
    # scribbles are sparse, only on training slices, and agree with the truth
    lab = ph.train > 0
    assert 0 < lab.mean() < 0.02
    assert np.all(ph.train[lab] == ph.truth[lab])
    t = ph.info["test_slice"]
    assert not ph.train[t].any()
    assert np.array_equal(ph.test[t], ph.truth[t]) and not ph.test[:t].any()


def test_fractions_follow_config():
    ph = make_phantom({"shape": [32, 96, 96], "seed": 5, "voxel_size_nm": [40, 20, 20], "particle_radius_nm": 300,
                       "am_fraction": 0.45, "cbd_fraction": 0.12})
    fr = ph.info["fractions"]
    assert fr["carbon_binder"] == pytest.approx(0.12, abs=0.01)
    assert fr["active_material"] == pytest.approx(0.45, abs=0.06)


def test_depth_behind_by_hand():
    lab = np.full((5, 1, 2), PORE, np.uint8)
    lab[3, 0, 0] = AM
    depth, zhit = depth_behind(lab)
    assert list(depth[:, 0, 0]) == [3, 2, 1, 0, 10000]
    assert list(zhit[:, 0, 0]) == [3, 3, 3, 3, -1]
    assert zhit[0, 0, 1] == -1


def test_shine_through_makes_pores_look_solid(tiny_phantom):
    """Pore pixels with material just behind the face are brighter than deep pores in SE2."""
    ph = tiny_phantom
    depth, _ = depth_behind(ph.truth)
    se2 = ph.images["SE2"].astype(float)
    near = (ph.truth == PORE) & (depth >= 1) & (depth <= 2)
    deep = (ph.truth == PORE) & (depth > 15)
    assert near.any() and deep.any()
    assert se2[near].mean() > se2[deep].mean() + 20


def test_artefacts_can_be_switched_off():
    clean = make_phantom({"shape": [8, 32, 32], "seed": 1, "voxel_size_nm": [40, 20, 20], "particle_radius_nm": 200,
                          "se2": {"noise": 0, "curtain": 0, "texture_am": 0, "texture_cbd": 0, "edge_gain": 0,
                                  "wall_glow": 0, "shine_gain": 0},
                          "gradient_face": 0, "gradient_slices": 0, "redeposition": 0, "detectors": ["SE2"]})
    se2 = clean.images["SE2"]
    lab = clean.truth
    # without artefacts each phase is one grey level (up to the per-particle brightness offsets)
    assert np.ptp(se2[lab == CBD]) <= 1
    assert np.ptp(se2[lab == PORE]) <= 1


def test_double_threshold_search_matches_brute_force(rng):
    img = rng.integers(0, 16, (1, 20, 20)).astype(np.uint8)
    truth = rng.integers(1, 4, (1, 20, 20)).astype(np.uint8)
    res = best_double_threshold(img, truth, n_bins=16)
    best = min(score(apply_double_threshold(img, (a, b), o), truth, 3)["awe"]
               for a in range(17) for b in range(a, 17)
               for o in ([1, 2, 3], [1, 3, 2], [2, 1, 3], [2, 3, 1], [3, 1, 2], [3, 2, 1]))
    assert res["awe"] == pytest.approx(best)
    pred = apply_double_threshold(img, res["thresholds"], res["order"])
    assert score(pred, truth, 3)["awe"] == pytest.approx(res["awe"])


def test_synth_cli_writes_dataset(tmp_path):
    import subprocess
    import sys

    from seglearn.data import load_dataset

    out = tmp_path / "ph"
    r = subprocess.run([sys.executable, "-m", "seglearn.synth", f"out={out}", "seed=2", "shape=[12,48,48]",
                        "voxel_size_nm=[40,20,20]", "particle_radius_nm=200"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ds = load_dataset(out, require=("train", "test"))
    assert ds.shape == (12, 48, 48) and ds.truth is not None and ds.instances is not None
    import yaml

    assert yaml.safe_load((out / "dataset.yaml").read_text())["name"] == "phantom"  # not the temporary folder's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ph"]  # no lock or temporary folder left
    r = subprocess.run([sys.executable, "-m", "seglearn.synth", f"out={out}", "shape=[12,48,48]"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "overwrite=true" in r.stderr and "Traceback" not in r.stderr


def test_deep_glow_brightens_deep_pores_only_when_asked():
    base = {"shape": [24, 64, 64], "seed": 4, "voxel_size_nm": [40, 20, 20], "particle_radius_nm": 260,
            "detectors": ["SE2"]}
    plain = make_phantom(base)
    glow = make_phantom({**base, "se2": {"deep_glow": 0.5}})
    depth, zhit = depth_behind(plain.truth)
    deep = (plain.truth == PORE) & ((depth >= 6) | (zhit < 0))
    diff = glow.images["SE2"].astype(int) - plain.images["SE2"].astype(int)
    assert np.array_equal(glow.truth, plain.truth)
    assert np.all(diff[~deep] == 0)  # the rest of the phantom is drawn identically
    assert diff[deep].mean() > 5


_SMALL = {"shape": [12, 48, 48], "seed": 7, "voxel_size_nm": [40.0, 20.0, 20.0], "particle_radius_nm": 260.0,
          "n_train_slices": 3}


def test_fiducial_band_is_unlabelled_z_invariant_and_leaves_the_rest_alone():
    h = 16
    plain = make_phantom(_SMALL)
    ph = make_phantom({**_SMALL, "fiducial": h})
    assert plain.config.fiducial == 0 and "fiducial_rows" not in plain.info
    assert ph.channels().shape == plain.channels().shape  # the band overwrites rows, the shape stays
    assert ph.info["fiducial_rows"] == [0, h]
    for vol in (ph.truth, ph.instances, ph.train, ph.test):
        assert not vol[:, :h].any()  # not sample: unlabelled, unscored, no scribbles
    assert ph.truth[:, h:].min() >= 1 and ph.train[:, h:].any() and ph.test[:, h:].any()
    # below the band everything is drawn as without it (own random stream for the band)
    np.testing.assert_array_equal(ph.truth[:, h:], plain.truth[:, h:])
    for det in ph.images:
        np.testing.assert_array_equal(ph.images[det][:, h:], plain.images[det][:, h:])
        band = ph.images[det][:, :h].astype(np.float32)
        # the same mark in every slice (up to noise and gain), unlike the sample under it
        assert np.corrcoef(band[0].ravel(), band[-1].ravel())[0, 1] > 0.6
        assert band.mean() > plain.images[det][:, :h].mean()  # bright Pt cap
    with pytest.raises(InputError, match="fiducial"):
        make_phantom({**_SMALL, "fiducial": 40})  # leaves fewer than 16 rows of sample
