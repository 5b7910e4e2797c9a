"""The second FIB-SEM forward model (family b): determinism, each effect, layout, pretraining stream."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.synth import PhantomConfig, make_phantom, write_phantom
from seglearn.synth.forward import depth_behind
from seglearn.synth.forward_b import render_b
from seglearn.synth.microstructure import AM, CBD, PORE

SMALL = {"shape": [14, 48, 48], "seed": 4, "voxel_size_nm": [40.0, 20.0, 20.0], "particle_radius_nm": 240.0,
         "n_train_slices": 4, "scribble_coverage": 0.03, "test_gap": 3}

# every effect of family b switched off: each phase is one grey level
CLEAN_DET = {"grain_contrast": 0.0, "shine_gain": 0.0, "wall_gain": 0.0, "edge_gain": 0.0, "curvature_gain": 0.0,
             "fog": 0.0, "charging": 0.0, "charging_tail": 0.0, "electrons": 1e9, "read_noise": 0.0,
             "line_noise": 0.0, "bandwidth_px": 0.0, "curtain": 0.0, "vignette": 0.0}
CLEAN = {"cbd_nanoporosity": [0.0, 0.0], "redeposition": 0.0, "drift_brightness": 0.0, "drift_contrast": 0.0,
         "jumps": 0, "se2": CLEAN_DET, "inlens": CLEAN_DET}


@pytest.fixture(scope="module")
def ph_b():
    return make_phantom({**SMALL, "family": "b"})


def _render(ph, b: dict, **cfg):
    """Family b over the phantom's geometry with settings ``b`` (16-bit, to see small effects)."""
    c = PhantomConfig.from_dict({**SMALL, "family": "b", "bit_depth": 16, "b": b, **cfg})
    images, _ = render_b(ph.truth, ph.instances, c, np.random.default_rng(0))
    return {k: v.astype(np.float64) / 65535.0 for k, v in images.items()}


def _with(det: dict | None = None, **fam):
    """CLEAN with some family settings and the same detector settings on both detectors."""
    d = {**CLEAN_DET, **(det or {})}
    return {**CLEAN, **fam, "se2": d, "inlens": d}


def test_deterministic_and_shaped_like_family_a(ph_b):
    again = make_phantom(ph_b.config)
    pa = make_phantom({**SMALL, "family": "a"})
    np.testing.assert_array_equal(ph_b.truth, pa.truth)  # the family changes the rendering, not the geometry
    assert ph_b.info["train_slices"] == pa.info["train_slices"] and ph_b.info["test_slice"] == pa.info["test_slice"]
    for det in ("SE2", "InLens"):
        np.testing.assert_array_equal(ph_b.images[det], again.images[det])
        img = ph_b.images[det]
        assert img.dtype == pa.images[det].dtype == np.uint8 and img.shape == pa.images[det].shape
        assert np.ptp(img) > 100
        assert not np.array_equal(img, pa.images[det])
    other = make_phantom({**SMALL, "family": "b", "seed": 5})
    assert not np.array_equal(other.images["SE2"], ph_b.images["SE2"])
    b16 = make_phantom({**SMALL, "family": "b", "bit_depth": 16, "detectors": ["InLens"]})
    assert list(b16.images) == ["InLens"] and b16.images["InLens"].dtype == np.uint16


def test_inlens_contrast_orders_the_phases(ph_b):
    """InLens: active material bright, binder intermediate, pores dark; SE2 pores brighter than InLens'."""
    t = ph_b.truth
    med = {d: [np.median(ph_b.images[d][t == k]) for k in (PORE, CBD, AM)] for d in ph_b.images}
    assert med["InLens"][0] + 15 < med["InLens"][1] < med["InLens"][2] - 30
    assert med["SE2"][0] < med["SE2"][2]
    assert med["SE2"][0] > med["InLens"][0]  # SE2 sees deeper into the pores


def test_all_effects_off_gives_flat_phases(ph_b):
    img = _render(ph_b, CLEAN)["SE2"]
    for k in (PORE, CBD, AM):
        assert np.ptp(img[ph_b.truth == k]) < 1e-3


EFFECTS = {
    "shine_through": _with({"shine_gain": 0.8}),
    "grazing_walls": _with({"shine_gain": 0.8, "wall_gain": 0.5}),
    "edges": _with({"edge_gain": 0.5}),
    "curvature": _with({"curvature_gain": 0.5}),
    "grains": _with({"grain_contrast": 0.1}),
    "fog": _with({"fog": 0.2}),
    "charging": _with({"charging": 0.2}),
    "charging_tail": _with({"charging_tail": 0.2}),
    "shot_noise": _with({"electrons": 10.0}),
    "read_noise": _with({"read_noise": 0.05}),
    "line_noise": _with({"line_noise": 0.05}),
    "curtains": _with({"curtain": 0.2}),
    "vignette": _with({"vignette": 0.3}),
    "bandwidth": _with({"bandwidth_px": 2.0}),
    "cbd_nanoporosity": _with(cbd_nanoporosity=[0.3, 0.6]),
    "redeposition": _with(redeposition=0.9),
    "drift": _with(drift_brightness=0.05, drift_contrast=0.1, jumps=2),
}


def _neighbour_corr(a: np.ndarray, axis: int) -> float:
    """Correlation of each voxel with its neighbour along ``axis``."""
    n = a.shape[axis]
    return float(np.corrcoef(a.take(range(n - 1), axis).ravel(), a.take(range(1, n), axis).ravel())[0, 1])


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_each_effect_changes_the_image(ph_b, name):
    clean = _render(ph_b, CLEAN)["SE2"]
    on = _render(ph_b, EFFECTS[name])["SE2"]
    assert np.abs(on - clean).max() > 0.01, name
    if name == "bandwidth":  # the smear along the scan line correlates the shot noise along x only
        ref = _render(ph_b, _with({"electrons": 20.0}))["SE2"] - clean
        n = _render(ph_b, _with({"electrons": 20.0, "bandwidth_px": 2.0}))["SE2"] - _render(
            ph_b, _with({"bandwidth_px": 2.0}))["SE2"]
        assert _neighbour_corr(n, 2) > _neighbour_corr(ref, 2) + 0.3 and abs(_neighbour_corr(n, 1)) < 0.2


def test_effects_act_where_their_model_says(ph_b):
    t = ph_b.truth
    clean = _render(ph_b, CLEAN)["SE2"]
    # shine-through: pores with material just behind are brighter than deep ones
    depth, _ = depth_behind(t)
    shine = _render(ph_b, EFFECTS["shine_through"])["SE2"]
    near, deep = (t == PORE) & (depth == 1), (t == PORE) & (depth >= 6)
    assert near.any() and deep.any() and shine[near].mean() > shine[deep].mean() + 0.05
    # topographic contrast: a rim of bright edges on the solid, the interior unchanged
    edges = _render(ph_b, EFFECTS["edges"])["SE2"] - clean
    dist = np.stack([ndi.distance_transform_edt(s) for s in t == AM])
    assert edges[(t == AM) & (dist == 1)].mean() > 10 * max(edges[(t == AM) & (dist > 8)].mean(), 1e-4)
    # re-deposition sits only in pores (the truth keeps them pore) and grows with the milled volume
    red = _render(ph_b, EFFECTS["redeposition"])["SE2"] - clean
    changed = np.abs(red) > 1e-3
    assert changed.any() and np.all(t[changed] == PORE)
    assert changed[-4:].sum() > changed[:4].sum()
    # sub-voxel porosity of the binder: darker (partly pore signal) and textured, other phases unchanged
    nano = _render(ph_b, EFFECTS["cbd_nanoporosity"])["SE2"]
    assert nano[t == CBD].mean() < clean[t == CBD].mean() - 0.05 and nano[t == CBD].std() > 0.02
    np.testing.assert_allclose(nano[t == AM], clean[t == AM])
    # curtains: vertical streaks on the solid, nothing in open pores
    cur = _render(ph_b, EFFECTS["curtains"])["SE2"] - clean
    assert np.abs(cur[t == AM]).max() > 0.02 and np.abs(cur[t == PORE]).max() < 1e-6
    # drift: the slice mean moves, within a slice nothing changes
    dr = _render(ph_b, EFFECTS["drift"])["SE2"] - clean
    per_slice = dr.reshape(dr.shape[0], -1)
    assert np.ptp(per_slice.mean(axis=1)) > 0.01
    # shot noise falls with the dwell time
    noisy = [np.std(_render(ph_b, _with({"electrons": 10.0}, dwell_us=dw))["SE2"][t == AM] - clean[t == AM])
             for dw in (0.5, 8.0)]
    assert noisy[0] > 2 * noisy[1]


def test_dataset_layout_round_trips(tmp_path):
    from seglearn.data import load_dataset

    ph = write_phantom(tmp_path / "b", {**SMALL, "family": "b", "b": {"dwell_us": 2.0, "se2": {"cone": 0.3}}})
    ds = load_dataset(tmp_path / "b", labels=("train", "test", "truth", "instances"))
    assert ds.detectors == ["SE2", "InLens"]
    np.testing.assert_array_equal(ds.images, ph.channels())
    for name in ("train", "test", "truth", "instances"):
        np.testing.assert_array_equal(getattr(ds, name), getattr(ph, name))
    assert tuple(ds.voxel_size_nm) == tuple(SMALL["voxel_size_nm"])
    stored = ds.extra["phantom"]
    assert stored["family"] == "b" and stored["b"]["dwell_us"] == 2.0 and stored["b"]["se2"]["cone"] == 0.3
    again = make_phantom(PhantomConfig.from_dict(stored))  # the stored config re-renders the same images
    np.testing.assert_array_equal(again.images["SE2"], ph.images["SE2"])


def test_renders_over_an_external_geometry(tmp_path):
    """``source=`` works for family b (a segmented volume with taufactor's 0 / 85 / 170 values)."""
    import tifffile

    rng = np.random.default_rng(1)
    vol = np.zeros((10, 40, 40), np.uint8)
    vol[ndi.gaussian_filter(rng.standard_normal(vol.shape), 2) > 0.05] = 85
    vol[(vol == 0) & (ndi.gaussian_filter(rng.standard_normal(vol.shape), 1) > 0.15)] = 170
    tifffile.imwrite(tmp_path / "geo.tif", vol)
    ph = make_phantom({"source": str(tmp_path / "geo.tif"), "family": "b", "seed": 0, "n_train_slices": 2,
                       "test_gap": 2, "shape": [10, 40, 40]})
    assert ph.images["InLens"].shape == vol.shape
    np.testing.assert_array_equal(ph.truth == AM, vol == 85)
    np.testing.assert_array_equal(ph.truth == CBD, vol == 170)
    assert np.median(ph.images["InLens"][vol == 85]) > np.median(ph.images["InLens"][vol == 0]) + 50


def test_bad_family_settings_are_refused():
    with pytest.raises(InputError, match="family"):
        PhantomConfig.from_dict({"family": "c"})
    with pytest.raises(InputError, match="b.se2"):
        PhantomConfig.from_dict({"family": "b", "b": {"se2": {"yield_xx": 1}}})
    with pytest.raises(InputError, match="in b"):
        PhantomConfig.from_dict({"b": {"dwel_us": 1}})
    with pytest.raises(InputError, match="cbd_nanoporosity"):
        PhantomConfig.from_dict({"b": {"cbd_nanoporosity": [0.8, 0.2]}})


def test_stream_draws_family_b_when_asked():
    from seglearn.pretrain.randomise import Randomiser
    from seglearn.pretrain.stream import PhantomPatchStream

    shape = (8, 32, 32)
    only_a = Randomiser(ranges={}, shape=shape, p_flat=0.0)
    zero_b = Randomiser(ranges={}, shape=shape, p_flat=0.0, p_family_b=0.0)
    cfg_a, _ = only_a.sample_config(np.random.default_rng(3))
    cfg_0, _ = zero_b.sample_config(np.random.default_rng(3))
    assert cfg_a.to_dict() == cfg_0.to_dict() and cfg_a.family == "a"  # p_family_b=0: the stream as before
    mix = Randomiser(ranges={}, shape=shape, p_flat=0.0, p_family_b=0.5)
    rng = np.random.default_rng(0)
    fams = [mix.sample_config(rng)[0].family for _ in range(30)]
    assert 5 < fams.count("b") < 25
    only_b = Randomiser(ranges={}, shape=shape, p_flat=0.0, p_family_b=1.0)
    cfgs = [only_b.sample_config(np.random.default_rng(s))[0] for s in range(3)]
    assert all(c.family == "b" for c in cfgs)
    assert len({c.b.se2.collection_nm for c in cfgs}) == 3  # family-b settings are randomised too
    images, truth, info = only_b.draw(np.random.default_rng(1))
    assert info["config"]["family"] == "b" and images.shape == (2, *shape) and images.dtype == np.uint8
    assert truth.shape == shape and set(np.unique(truth)) <= {PORE, CBD, AM}
    x, y = next(iter(PhantomPatchStream(only_b, derived=["SE2-InLens"], patch=24, halo=1, cache=1, reuse=4)))
    assert x.shape == (3, 3, 24, 24) and y.shape == (1, 24, 24)
    with pytest.raises(InputError, match="p_family_b"):
        Randomiser(ranges={}, shape=shape, p_family_b=1.5)


def test_shared_options_work_with_family_b():
    """``fiducial`` and ``drift_px`` act on family b as on family a."""
    ph = make_phantom({**SMALL, "family": "b", "fiducial": 16, "drift_px": 0.5})
    assert ph.info["fiducial_rows"] == [0, 16] and len(ph.info["drift_px"]) == SMALL["shape"][0]
    assert not ph.truth[:, :16].any()
    band = ph.images["SE2"][:, 2:14].astype(float)
    assert band.mean() > ph.images["SE2"][:, 20:].mean()  # the bright Pt cap
