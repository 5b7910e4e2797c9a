"""Intervals of the numbers outside fractions / interfaces / sizes / τ: inner pores, sections, RVE, particles.

A known-probability volume (a phantom's one-hot blurred by a Gaussian of 0.8 or 1.6 voxels) is
characterised with every step; the draws' expected section fractions are known exactly (the mean
of ``p``), and flatter probabilities must give wider intervals (seglearn/characterise/intervals*.py).
"""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from seglearn.characterise import characterise
from seglearn.characterise.intervals import clip_to_range, flatten, interval

CLASSES = ["pore", "active_material", "carbon_binder"]
OPTS = {"progress": False, "inner_pores": {"radius_um": 0.04}, "tortuosity": {"phases": ["pore"]},
        "rve": {"n_samples": 16}, "geodesic": {"max_values": 2000}}
IV = {"n_samples": 16, "n_samples_slow": 8}
SHARP, FLAT = 0.8, 1.6


def _phantom():
    """Pore (1) with carbon binder (3) patches and five active-material balls (2, instances 1..5) with a pore inside."""
    rng = np.random.default_rng(0)
    shape = (20, 48, 48)
    f = ndi.gaussian_filter(rng.standard_normal(shape), 2.5)
    truth = np.where(f > 0.8 * f.std(), 3, 1).astype(np.uint8)
    inst = np.zeros(shape, np.int32)
    zz, yy, xx = np.indices(shape)
    for i, (z, y, x) in enumerate([(6, 12, 12), (13, 34, 14), (8, 30, 34), (14, 12, 36), (10, 24, 24)], 1):
        r2 = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2
        truth[r2 <= 6.5 ** 2], inst[r2 <= 6.5 ** 2] = 2, i
        truth[r2 <= 4], inst[r2 <= 4] = 1, 0  # an inner pore
    return truth, inst


def _probs(truth, sigma):
    p = np.stack([ndi.gaussian_filter((truth == c).astype(np.float32), sigma) for c in (1, 2, 3)])
    return p / p.sum(0)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The truth's numbers, and for each blur the probabilities and the report with intervals (sharp one written)."""
    truth, inst = _phantom()
    t: dict = {}
    true = flatten(characterise(truth, 10, CLASSES, instances=inst, values=[1, 2, 3], tables_out=t, plots=False,
                                html=False, **OPTS), t)
    out = {"true": true, "dir": tmp_path_factory.mktemp("every") / "report"}
    for sigma in (SHARP, FLAT):
        p = _probs(truth, sigma)
        tables: dict = {}
        rep = characterise((p.argmax(0) + 1).astype(np.uint8), 10, CLASSES, instances=inst, values=[1, 2, 3],
                           probabilities=p, tables_out=tables, intervals=IV, plots=sigma == SHARP,
                           html=sigma == SHARP, out_dir=out["dir"] if sigma == SHARP else None, **OPTS)
        out[sigma] = (p, rep, tables)
    return out


def _width(iv):
    return iv["high"] - iv["low"]


def test_inner_pores_sections_rve_and_particles_get_intervals_from_the_same_draws(reports):
    _, rep, tables = reports[SHARP]
    ivs = rep["intervals"]["values"]
    for key in ("inner_pores/inner_fraction_of_void", "inner_pores/particle_solid_fraction",
                "sections/volume/pore", "sections/std/xy/carbon_binder", "sections/xz/10/fraction_pore",
                "representative_volume/8/std_pore", "particles/count", "particles/equivalent_diameter_um/mean",
                "particles/3/aspect_ratio", "local_fraction/0.02/cumulative_solid_fraction"):
        assert ivs[key]["low"] is not None and ivs[key]["low"] <= ivs[key]["high"], key
    # cheap numbers on every draw, costly ones (inner pores, particles) on the slow draws only
    assert ivs["sections/volume/pore"]["n"] == 16 and ivs["representative_volume/8/std_pore"]["n"] == 16
    assert ivs["inner_pores/inner_fraction_of_void"]["n"] == 8 and ivs["particles/count"]["n"] == 8
    # the same draws: the section "volume" fraction is the volume fraction of every draw, identically
    a, b = ivs["sections/volume/pore"], ivs["fractions/pore/fraction"]
    assert (a["mean"], a["std"]) == pytest.approx((b["mean"], b["std"]), rel=1e-9)
    # bounds beside the numbers in the report and the tables
    assert rep["inner_pores"]["inner_fraction_of_void_low"] == ivs["inner_pores/inner_fraction_of_void"]["low"]
    assert rep["particles"]["count_high"] == ivs["particles/count"]["high"]
    assert rep["particles"]["equivalent_diameter_um"]["mean_low"] is not None
    assert all(r["fraction_pore_low"] is not None for r in tables["sections"])
    assert all(r["std_pore_low"] is not None for r in tables["representative_volume"])
    assert all("aspect_ratio_low" in r for r in tables["particles"])


def test_known_probabilities_intervals_hold_the_expected_value_and_widen_when_flatter(reports):
    true = reports["true"]
    widths = {}
    for sigma in (SHARP, FLAT):
        p, rep, tables = reports[sigma]
        ivs = rep["intervals"]["values"]
        # the draws keep every voxel's probabilities: E[fraction of class c] = mean(p_c), in the volume and per slice
        for c, name in enumerate(CLASSES):
            iv = ivs[f"sections/volume/{name}"]
            assert iv["low"] <= float(p[c].mean()) <= iv["high"], (sigma, name)
            rows = [r for r in tables["sections"] if r["plane"] == "xy"]
            inside = [r[f"fraction_{name}_low"] <= float(p[c, r["slice"]].mean()) <= r[f"fraction_{name}_high"]
                      for r in rows]
            assert np.mean(inside) >= 0.9, (sigma, name, np.mean(inside))
        widths[sigma] = {k: _width(v) for k, v in ivs.items() if v["low"] is not None}
    # the sharp probabilities' intervals hold the truth's inner pores, particle sizes and section spreads
    ivs = reports[SHARP][1]["intervals"]["values"]
    for key in ("inner_pores/inner_fraction_of_void", "inner_pores/particle_solid_fraction", "particles/count",
                "particles/equivalent_diameter_um/mean", "sections/std/xy/pore", "sections/std/yz/active_material"):
        assert ivs[key]["low"] <= true[key] <= ivs[key]["high"], key
    # flatter probabilities: wider intervals
    for key in ("sections/volume/pore", "sections/std/xz/active_material", "representative_volume/8/std_pore",
                "inner_pores/particle_volume_um3", "particles/equivalent_diameter_um/mean", "particles/2/volume_um3"):
        assert widths[FLAT][key] > 1.3 * widths[SHARP][key], key


def test_bounds_stay_in_the_range_of_the_number():
    # a rare phase: the normal-theory interval would reach below 0
    v = [0.0, 0.0, 0.001, 0.004, 0.0, 0.002]
    iv = clip_to_range("fractions/pore/fraction", interval(v), v)
    assert iv["low"] == 0.0 and 0 < iv["high"] < 0.01
    v = [0.999, 1.0, 0.996, 1.0, 0.99]
    assert clip_to_range("sections/xy/3/fraction_pore", interval(v), v)["high"] == 1.0
    assert clip_to_range("particles/count", interval([3.0, 4.0, 9.0]), [3.0, 4.0, 9.0])["low"] == 0.0
    assert clip_to_range("particles/count", interval([3.0, 4.0, 9.0]), [3.0, 4.0, 9.0])["high"] > 9
    # a number that can be negative keeps its bounds
    v = [-1.0, 0.5, 2.0]
    assert clip_to_range("x/y", interval(v), v) == interval(v)


def test_json_csv_html_and_plots_carry_them(reports, monkeypatch):
    import pandas as pd

    from seglearn.characterise import plots

    out = reports["dir"]
    doc = json.loads((out / "report.json").read_text())
    assert doc["inner_pores"]["particle_solid_fraction_low"] is not None and doc["particles"]["count_low"] is not None
    for name, col in (("sections", "fraction_pore"), ("representative_volume", "std_pore"),
                      ("local_fraction", "local_solid_fraction"), ("particles", "equivalent_diameter_um")):
        df = pd.read_csv(out / f"{name}.csv")
        assert {f"{col}_low", f"{col}_high"} <= set(df.columns), name
        df = df.dropna(subset=[f"{col}_low", f"{col}_high"])  # a shell beyond the largest distance: no number
        assert len(df) >= 3 and (df[f"{col}_low"] <= df[f"{col}_high"]).all(), name
    ivs = pd.read_csv(out / "intervals.csv")
    assert {"inner_pores/inner_fraction_of_void", "sections/volume/pore", "particles/count"} <= set(ivs["number"])
    page = (out / "report.html").read_text()
    assert "inner_pores/inner_fraction_of_void" in page and "sections/std/xy/pore" in page
    # the plots of sections, RVE and local fraction draw the bands, the particle plot names the intervals
    drawn = []
    monkeypatch.setattr(plots, "band", lambda ax, x, rows, col, color, alpha=0.2: drawn.append(col))
    _, rep, tables = reports[SHARP]
    png = plots.make_plots(rep, tables, {})
    assert {"fraction_pore", "std_pore", "cumulative_solid_fraction"} <= set(drawn)
    assert {"sections.png", "representative_volume.png", "particles.png", "intervals.png"} <= set(png)
    from seglearn.characterise.intervals_report import particle_title
    assert "5 particles [5, 5]" in particle_title(rep)
