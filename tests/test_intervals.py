"""95 % intervals of the microstructure numbers from probabilities (seglearn/characterise/intervals.py)."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from seglearn.characterise import characterise
from seglearn.characterise.intervals import _unit_field, correlation_length, flatten, interval, sample_labels

CLASSES = ["pore", "active_material"]
STEPS = ["fractions", "interfaces", "tortuosity"]
SLOW = ("surface/pore/ssa_mesh_per_um", "tortuosity/pore/z/tau")
QUICK = {"plots": False, "html": False, "progress": False, "tortuosity": {"phases": ["pore"]}}


@pytest.fixture(scope="module")
def blobs():
    """A two-phase truth and probabilities made from it: its one-hot blurred (uncertain boundaries)."""
    rng = np.random.default_rng(0)
    f = ndi.gaussian_filter(rng.standard_normal((20, 40, 40)), 3)
    truth = np.where(f > 0.02, 2, 1).astype(np.uint8)
    p = np.stack([ndi.gaussian_filter((truth == c).astype(np.float32), 1.2) for c in (1, 2)])
    return truth, p / p.sum(0)


@pytest.fixture(scope="module")
def with_intervals(blobs, tmp_path_factory):
    truth, p = blobs
    out = tmp_path_factory.mktemp("iv") / "report"
    tables: dict = {}
    rep = characterise((p.argmax(0) + 1).astype(np.uint8), 10, CLASSES, values=[1, 2], probabilities=p, out_dir=out,
                       steps=STEPS, tables_out=tables, intervals={"n_samples": 16, "n_samples_slow": 6, "correlation_scale": 1.0},
                       **{**QUICK, "plots": True, "html": True})
    return rep, tables, out


def test_samples_keep_the_marginals_and_are_spatially_correlated():
    p = np.stack([np.full((8, 24, 24), 0.3, np.float32), np.full((8, 24, 24), 0.7, np.float32)])
    rng = np.random.default_rng(1)
    white = np.stack([sample_labels(np.log(p), [0, 0, 0], rng) for _ in range(20)])
    smooth = np.stack([sample_labels(np.log(p), [1.5, 3, 3], rng) for _ in range(20)])
    for s in (white, smooth):
        assert s.dtype == np.uint8 and set(np.unique(s)) == {1, 2}
        assert np.mean(s == 1) == pytest.approx(0.3, abs=0.04)
    # neighbours agree far more often with shared noise than without (0.3² + 0.7² = 0.58 for independent voxels)
    agree = lambda s: np.mean(s[..., 1:] == s[..., :-1])  # noqa: E731
    assert agree(white) == pytest.approx(0.58, abs=0.03) and agree(smooth) > 0.8
    # the correlation length of probabilities follows the size of their features
    rng = np.random.default_rng(2)
    lengths = [correlation_length(ndi.gaussian_filter(rng.random((1, 24, 48, 48)), (0, s, s, s)))[1] for s in (1, 4)]
    assert lengths[0] < lengths[1]


@pytest.mark.parametrize("shape", [(1, 96, 96), (4, 64, 64), (48, 32, 32)])
def test_noise_has_unit_variance_on_short_axes(shape):
    """The wrapped kernel folds on axes shorter than its support; the draws still follow p there."""
    rng = np.random.default_rng(4)
    sigma = [13.0, 3.0, 3.0]  # sigma_z far longer than the axis, as on thin stacks and single slices
    g = np.concatenate([_unit_field(shape, sigma, rng).ravel() for _ in range(40)])
    assert g.std() == pytest.approx(1.0, abs=0.06)
    p = np.stack([np.full(shape, 0.2, np.float32), np.full(shape, 0.8, np.float32)])
    drawn = np.mean([np.mean(sample_labels(np.log(p), sigma, rng) == 1) for _ in range(40)])
    assert drawn == pytest.approx(0.2, abs=0.03)


def test_interval_is_a_prediction_interval():
    v = np.random.default_rng(3).normal(5.0, 2.0, 400).tolist()
    iv = interval(v + [None])
    assert iv["n"] == 400 and iv["n_missing"] == 1
    assert iv["low"] == pytest.approx(5 - 1.96 * 2, abs=0.4) and iv["high"] == pytest.approx(5 + 1.96 * 2, abs=0.4)
    assert interval([1.0, None])["low"] is None
    # with the argmax's value: the interval spans it and the mean, each +- the same half width
    iv2 = interval(v, point=12.0)
    half = (iv["high"] - iv["low"]) / 2
    assert iv2["low"] == pytest.approx(iv["low"]) and iv2["high"] == pytest.approx(12.0 + half)
    assert interval(v, point=float("nan"))["high"] == pytest.approx(iv["high"])


def test_intervals_contain_the_truth_and_are_not_trivially_wide(blobs, with_intervals):
    truth, _ = blobs
    rep, _, _ = with_intervals
    t: dict = {}
    true = flatten(characterise(truth, 10, CLASSES, steps=STEPS, tables_out=t, **QUICK), t)
    ivs = rep["intervals"]["values"]
    for key in ("fractions/pore/fraction", "surface/pore/ssa_faces_per_um", "surface/pore/ssa_mesh_per_um",
                "tortuosity/pore/z/tau"):
        iv = ivs[key]
        assert iv["low"] <= true[key] <= iv["high"], key
        # informative, not everything: this 20 x 40 x 40 box of blurred probabilities gives widths of ~15 % (fraction)
        # to ~30 % (faces: its draws' rough boundaries add ~30 % faces, and the interval spans the argmax too) and
        # 40 % (mesh, 6 draws) of the value
        assert iv["high"] - iv["low"] < (0.5 if key in SLOW or "faces" in key else 0.25) * true[key], key
        # the interval spans both the draws' mean and the argmax's value, each +- the same half width
        half = (iv["high"] - iv["low"] - abs(iv["mean"] - iv["value"])) / 2
        assert half > 0 and iv["low"] == pytest.approx(min(iv["mean"], iv["value"]) - half), key
    assert ivs["fractions/pore/fraction"]["n"] == 16 and ivs["tortuosity/pore/z/tau"]["n"] == 6
    assert ivs["surface/pore/ssa_mesh_per_um"]["n"] == 6 and ivs["surface/pore/ssa_mesh_per_um"]["n_missing"] == 0


def test_json_csv_and_html_carry_the_intervals(with_intervals):
    import pandas as pd

    rep, _, out = with_intervals
    doc = json.loads((out / "report.json").read_text())
    assert doc["intervals"]["values"]["fractions/pore/fraction"]["low"] is not None
    assert doc["tortuosity"][0]["tau_low"] < doc["tortuosity"][0]["tau_high"]
    assert doc["specific_surface_area"]["pore"]["ssa_mesh_per_um_low"] is not None
    fr = pd.read_csv(out / "fractions.csv")
    assert {"fraction_low", "fraction_high"} <= set(fr.columns)
    assert np.all(fr["fraction_low"] <= fr["fraction_high"])
    assert "tau_low" in pd.read_csv(out / "tortuosity.csv").columns
    assert len(pd.read_csv(out / "intervals.csv")) == len(doc["intervals"]["values"])
    assert (out / "intervals.png").is_file() and "Uncertainty intervals" in (out / "report.html").read_text()


def test_cli_with_probabilities(blobs, tmp_path):
    import tifffile

    from seglearn.characterise.cli import run
    from seglearn.errors import InputError

    _, p = blobs
    pred = tmp_path / "pred"
    pred.mkdir()
    tifffile.imwrite(pred / "probabilities.tif", np.moveaxis(p, 0, 1).astype(np.float16))
    (pred / "summary.json").write_text(json.dumps({"classes": CLASSES}))
    cfg = {"input": str(pred), "voxel_size_nm": 10, "steps": ["fractions", "interfaces"], "plots": False,
           "html": False, "progress": False, "intervals": {"n_samples": 4, "n_samples_slow": 0}}
    rep = run(cfg)
    assert rep["input"]["classes"] == CLASSES
    assert (pred / "characterise_intervals" / "report.json").is_file()
    assert rep["intervals"]["values"]["fractions/pore/fraction"]["n"] == 4
    with pytest.raises(InputError, match="probabilities"):
        run({**cfg, "input": "???", "probabilities": str(tmp_path / "missing.tif")})


def test_forest_probabilities_match_its_labels_and_feed_the_intervals(tiny_phantom):
    from seglearn.baselines import forest

    ph = tiny_phantom
    ch, det = ph.channels(), list(ph.config.detectors)
    spec = {"inputs": ["SE2"], "ilastik": {"sigmas": [0.7, 1.6], "features": ["gauss", "ggm"], "dims": 3}}
    model = forest.fit(ch, det, ph.train, features=spec, n_estimators=10, n_jobs=1,
                       voxel_size_nm=ph.config.voxel_size_nm, engine="sklearn")
    p = forest.predict_proba(model, ch, det, n_classes=3)
    assert p.shape == (3,) + ph.truth.shape and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    lab = forest.predict(model, ch, det)
    assert np.mean(p.argmax(0) + 1 == lab) > 0.99  # equal up to ties of the tree votes
    rep = characterise((p.argmax(0) + 1).astype(np.uint8), ph.config.voxel_size_nm,
                       ["pore", "carbon_binder", "active_material"], values=[1, 2, 3], probabilities=p,
                       steps=["fractions"], intervals={"n_samples": 6}, **QUICK)
    iv = rep["intervals"]["values"]["fractions/pore/fraction"]
    assert iv["low"] < iv["high"] and iv["n"] == 6
