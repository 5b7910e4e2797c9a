"""The CT user study end to end: run(cfg), the CLI, outputs and the seed-003 statistics."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, real_file

TINY = {"phantom": {"shape": [16, 32, 32], "particle_radius_nm": 500.0},
        "datasets": [{"name": "noisy", "phantom": {"snr": 1.5}, "coverages": [25]}],
        "filters": ["raw"], "n_users": 3, "real_ct": {"enabled": False},
        "features": {"sigmas": [0.7, 1.6], "features": ["gauss", "ggm"], "dims": 3},
        "rf": {"n_estimators": 6, "max_samples": 2000}, "figures": True}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from seglearn.ct.study import run

    out = tmp_path_factory.mktemp("ct") / "study"
    return out, run({"ct_study": {**TINY, "out": str(out)}})


def test_outputs_and_statistics(tiny_study):
    out, res = tiny_study
    for name in ("results.json", "summary.csv", "per_user.csv", "fig4_ml_coverage.png",
                 "fig5_ml_vs_unsupervised.png", "fig8_datasets.png", "slices.png"):
        assert (out / name).stat().st_size > 0, name
    s = res["summary"]["noisy"]["raw"]
    assert set(s) == {"S1", "S2", "S3", "gWS", "cWS", "MLX25"}
    rows = [r for r in res["per_user"] if r["method"] == "S2"]
    fr = [r["am_fraction"] for r in rows]
    assert s["S2"]["std"] == pytest.approx(np.std(fr, ddof=1))
    assert s["S2"]["distance_to_true"] == pytest.approx(abs(np.mean(fr) - rows[0]["true_fraction"]))
    # S1 = S2 - 10 grey levels: more AM for every user
    s1 = [r["am_fraction"] for r in res["per_user"] if r["method"] == "S1"]
    assert all(a > b for a, b in zip(s1, fr))
    for m in s.values():
        assert 0 <= m["pct_differ"] <= 100 and 0 <= m["iou_am"] <= 1
    case = res["finding"]["cases"][0]
    assert case["ml_below_s2"]["MLX25"] == (s["MLX25"]["std"] < s["S2"]["std"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"]["noisy"]["raw"]["cWS"]["std"] == pytest.approx(s["cWS"]["std"])


def test_pct_differ_is_mean_over_pairs():
    from seglearn.ct.study import _summarise

    truth = np.ones((4, 4, 4), np.uint8)
    a, b, c = truth.copy(), truth.copy(), truth.copy()
    b[0] = 2
    c[:2] = 2
    s = _summarise([a, b, c], truth, 0.0)
    pairs = [np.mean(x != y) * 100 for x, y in itertools.combinations([a, b, c], 2)]
    assert s["pct_differ"] == pytest.approx(np.mean(pairs))
    assert s["fractions"] == [0.0, 0.25, 0.5]


def test_refuses_overwrite_and_bad_keys(tiny_study):
    from seglearn.errors import InputError, OutputExistsError
    from seglearn.ct.study import run, study_params

    out, _ = tiny_study
    with pytest.raises(OutputExistsError):
        run({"ct_study": {**TINY, "out": str(out)}})
    with pytest.raises(InputError, match="unknown"):
        study_params({"ct_study": {"coverage": 10}})
    with pytest.raises(InputError, match="filters"):
        study_params({"ct_study": {"filters": ["median"]}})


def _cli(args, tmp):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _overrides(out):
    return [f"ct_study.out={out}", "ct_study.phantom.shape=[16,24,24]", "ct_study.phantom.particle_radius_nm=400",
            "ct_study.datasets=[{name: d, phantom: {snr: 2.0}, coverages: [10]}]", "ct_study.filters=[gauss]",
            "ct_study.n_users=2", "ct_study.real_ct.enabled=false", "ct_study.figures=false",
            "ct_study.features={sigmas: [1.0], features: [gauss], dims: 3}", "ct_study.rf.n_estimators=4"]


def test_cli_runs_and_reports_errors(tmp_path):
    out = tmp_path / "cli"
    r = _cli(["-m", "seglearn.ct", *_overrides(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    assert set(res["summary"]["d"]["gauss"]) >= {"S2", "cWS", "MLX10"}
    r = _cli(["-m", "seglearn.ct", *_overrides(out)], tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def _benchmark_has_hook() -> bool:
    files = [ROOT / "benchmark.py", *sorted((ROOT / "seglearn" / "benchmark").glob("*.py"))]
    return any("ct_user_study" in f.read_text() or "seglearn.ct" in f.read_text() for f in files if f.exists())


@pytest.mark.slow
def test_benchmark_entry_point(tmp_path):
    if not _benchmark_has_hook():
        pytest.skip("benchmark.py does not dispatch study=ct_user_study yet")
    bench = (ROOT / "configs" / "benchmark.yaml").read_text()
    exp = "experiment=ct_user_study" if "experiment:" in bench else "+experiment=ct_user_study"
    out = tmp_path / "bench"
    r = _cli(["benchmark.py", exp, *_overrides(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "results.json").exists()


def test_real_ct_check_on_a_crop(tmp_path):
    """Users on a crop of the real cell CT slice, scored against its mask."""
    from seglearn.ct.annotators import make_users
    from seglearn.ct.study import real_ct_check, study_params
    from seglearn.io import read_stack, write_volume

    img, _ = read_stack(real_file("cell_xct_slice.tif"))
    mask, _ = read_stack(real_file("cell_xct_slice_mask.tif"))
    crop = (slice(None), slice(380, 476), slice(250, 346))  # a patch of the spiral electrode
    write_volume(tmp_path / "im.tif", np.ascontiguousarray(img[crop]))
    write_volume(tmp_path / "mask.tif", np.ascontiguousarray(mask[crop]))
    p = study_params({"ct_study": {**TINY, "real_ct": {"enabled": True, "image": str(tmp_path / "im.tif"),
                                                       "mask": str(tmp_path / "mask.tif"), "coverages": [25]}}})
    res = real_ct_check(p, make_users(2), 0)
    assert res["shape"] == [1, 96, 96]
    m = res["methods"]
    assert set(m) >= {"S2", "cWS", "MLX25"}
    assert all(0 <= v <= 1 for v in m["MLX25"]["iou_users"]) and len(m["MLX25"]["iou_users"]) == 2
    # the layers are much brighter than the gaps: every method finds most of them
    assert min(m["MLX25"]["iou_users"]) > 0.5 and min(m["S2"]["iou_users"]) > 0.3


def test_benchmark_script_prints_tables(tiny_study):
    out, res = tiny_study
    r = subprocess.run([sys.executable, "benchmarks/ct_user_study.py", "--results", str(out / "results.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = res["summary"]["noisy"]["raw"]["S2"]
    assert "| raw | S2 |" in r.stdout and f"{s['std']:.4f}" in r.stdout
    assert res["finding"]["lines"][0] in r.stdout
