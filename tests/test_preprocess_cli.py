"""``python preprocess.py input=... output=...`` through the real command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import yaml

from conftest import ROOT


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "preprocess.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_cli_writes_new_dataset_with_moved_labels(tiny_dataset, tmp_path):
    from seglearn.data import load_dataset
    from seglearn.preprocess import Pipeline, read_shifts_csv

    out = tmp_path / "pre"
    steps = "[{step:register,channel:InLens},{step:clahe,clip:2,grid:4},{step:crop,z:[2,22]}]"
    res = run_cli(f"input={tiny_dataset}", f"output={out}", f"steps={steps}", "progress=false")
    assert res.returncode == 0, res.stderr
    src = load_dataset(tiny_dataset)
    ds = load_dataset(out)
    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert [s["step"] for s in meta["preprocess"]["steps"]] == ["register", "clahe", "crop"]
    assert meta["preprocess"]["labels_frame"] == "raw"  # not a synthetic dataset
    y0, y1, x0, x1 = meta["preprocess"]["state"][0]["crop_yx"]
    assert ds.images.shape == (2, 20, y1 - y0, x1 - x0) and ds.images.dtype == src.images.dtype
    for name in ("train", "test", "truth", "instances"):
        assert getattr(ds, name).shape == ds.images.shape[1:]
    shifts = read_shifts_csv(out / "registration_shifts.csv")
    assert shifts.shape == (24, 2) and (out / "registration_shifts.png").stat().st_size > 0
    # the same pipeline in memory gives the same images and labels (shifts re-estimated)
    pipe = Pipeline.from_config(meta["preprocess"]["steps"])
    np.testing.assert_array_equal(pipe.apply(src.images, detectors=src.detectors), ds.images)
    np.testing.assert_array_equal(pipe.apply_labels(src.truth, frame="raw"), ds.truth)
    np.testing.assert_allclose(pipe.steps[0].shifts, shifts, atol=1e-3)
    # no overwrite without overwrite=true: one line, exit 2
    again = run_cli(f"input={tiny_dataset}", f"output={out}", "progress=false")
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0 and "overwrite=true" in again.stderr


def test_cli_reports_bad_step_in_one_line(tiny_dataset, tmp_path):
    res = run_cli(f"input={tiny_dataset}", f"output={tmp_path / 'x'}", "steps=[{step:sharpen}]")
    assert res.returncode == 2
    assert "unknown step 'sharpen'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x" / "dataset.yaml").exists()
