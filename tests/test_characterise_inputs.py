"""Inputs characterise.py must read right or refuse in one line: label ids, probabilities, grey images."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from seglearn.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["pore", "carbon_binder", "active_material"]
QUICK = {"steps": ["fractions"], "plots": False, "html": False, "progress": False,
         "parallel": {"workers": 1}, "intervals": {"n_samples": 2, "n_samples_slow": 0}}


@pytest.fixture
def records():
    """Messages of the ``seglearn`` logger (which does not propagate once the CLI set it up)."""
    got: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = got.append
    logger = logging.getLogger("seglearn")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(handler)
    logger.setLevel(level)


def _run(**cfg):
    from seglearn.characterise.cli import run

    return run({**QUICK, "voxel_size_nm": 10, "classes": None, **cfg})


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "characterise.py"), *args, "plots=false", "progress=false"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def _write(path: Path, arr: np.ndarray) -> Path:
    """One grey page per plane (tifffile would take a last axis of 3 or 4 for RGB)."""
    tifffile.imwrite(path, arr, photometric="minisblack")
    return path


def _probs(shape=(4, 12, 10), k=3, seed=0) -> np.ndarray:
    """(Z, K, Y, X) float32 probabilities as predict.py writes them."""
    p = np.random.default_rng(seed).random((shape[0], k) + shape[1:]).astype(np.float32) + 0.05
    return p / p.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------ label values

def test_zero_and_ids_up_to_k_are_seglearn_ids(tmp_path):
    """{0, 1, 3} for 3 classes: 0 outside, carbon-binder (2) absent; not 0 -> pore, 1 -> carbon_binder."""
    from seglearn.characterise.labels import map_labels

    raw = np.array([0, 0, 1, 3, 3, 3], np.uint8).reshape(1, 2, 3)
    lab, _, values = map_labels(raw, CLASSES)
    assert lab.ravel().tolist() == [0, 0, 1, 3, 3, 3] and values == [1, 2, 3]
    src = tmp_path / "masked.tif"
    _write(src, np.tile(raw, (2, 4, 4)))
    rep = _run(input=str(src), classes=CLASSES, output=str(tmp_path / "out"))
    assert rep["fractions"] == pytest.approx({"pore": 0.25, "carbon_binder": 0.0, "active_material": 0.75})
    assert rep["input"]["outside_voxels"] == 2 * 8 * 12 // 3


def test_zero_based_ids_are_ambiguous_and_warned(records):
    from seglearn.characterise.labels import map_labels

    raw = np.array([0, 1, 2, 2], np.uint8).reshape(1, 1, 4)
    lab, _, _ = map_labels(raw, CLASSES, source="zero.tif")
    assert lab.ravel().tolist() == [1, 2, 3, 3]  # today's documented reading: ascending
    warned = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "zero.tif" in warned[0] and "values=[1, 2, 3]" in warned[0]
    lab, _, _ = map_labels(raw, CLASSES, values=[1, 2, 3])  # the other reading, forced
    assert lab.ravel().tolist() == [0, 1, 2, 2]
    records.clear()
    map_labels(np.array([0, 85, 170], np.uint8).reshape(1, 1, 3), CLASSES)  # grey values: no doubt
    assert not [r for r in records if r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------- probabilities

def test_probabilities_with_the_class_axis_last_are_refused(tmp_path):
    src = tmp_path / "probs_last.tif"
    _write(src, np.ascontiguousarray(np.moveaxis(_probs(), 1, -1)))  # (Z, Y, X, K)
    with pytest.raises(InputError, match=r"probs_last\.tif: expected probabilities of shape \(Z, K, Y, X\).*"
                                         r"class axis last\?"):
        _run(probabilities=str(src), output=str(tmp_path / "out"))
    r = _cli(f"probabilities={src}", "voxel_size_nm=10", f"output={tmp_path / 'o2'}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "class axis last?" in lines[-1] and str(src) in lines[-1]
    assert "Traceback" not in r.stderr and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("name, make, match", [
    ("logp", lambda p: np.log(p), "negative values"),
    ("scaled", lambda p: p * 10, "values up to"),
    ("unnormalised", lambda p: p * 0.5, "sums over K"),
    ("k300", lambda p: np.full((2, 300, 3, 3), 1 / 300, np.float32), "K = 300"),
])
def test_values_that_are_not_probabilities_are_refused(tmp_path, name, make, match):
    src = tmp_path / f"{name}.tif"
    _write(src, make(_probs()).astype(np.float32))
    with pytest.raises(InputError, match=rf"{name}\.tif: expected probabilities .*{match}"):
        _run(probabilities=str(src), output=str(tmp_path / "out"))


def test_class_names_not_matching_k_name_the_layout_and_shape(tmp_path):
    src = tmp_path / "probs.tif"
    _write(src, _probs(k=4))
    with pytest.raises(InputError, match=r"probs\.tif: 3 class names .* shape \(4, 4, 12, 10\); "
                                         r"expected \(Z, K, Y, X\) with K = 3"):
        _run(probabilities=str(src), classes=CLASSES, output=str(tmp_path / "out"))
    rep = _run(probabilities=str(src), classes=CLASSES + ["other"], output=str(tmp_path / "ok"))
    assert rep["intervals"]["values"]["fractions/pore/fraction"]["n"] == 2  # valid probabilities still run


# ------------------------------------------------------------------------------- grey image

def test_grey_image_given_as_labels_is_refused(tmp_path):
    from seglearn.characterise import labels

    grey = (np.arange(4 * 16 * 16) % 128).astype(np.uint8).reshape(4, 16, 16)
    with pytest.raises(InputError, match="grey.tif: 128 distinct values; a label volume holds a few phase ids"):
        labels.map_labels(grey, source="grey.tif")
    map_labels, MAX_UNNAMED_VALUES = labels.map_labels, labels.MAX_UNNAMED_VALUES
    few = grey % MAX_UNNAMED_VALUES  # at the limit: still measured as phases
    assert map_labels(few)[0].max() == MAX_UNNAMED_VALUES
    assert map_labels(grey, [f"c{i}" for i in range(128)])[0].max() == 128  # named classes: the user's choice
    src = tmp_path / "grey7bit.tif"
    _write(src, grey)
    r = _cli(f"input={src}", "voxel_size_nm=10", f"output={tmp_path / 'out'}", "steps=[fractions]")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "is this a grey image?" in lines[-1] and str(src) in lines[-1]
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------- logging

def test_report_line_names_a_file_that_was_written(tmp_path, records):
    src = tmp_path / "labels.tif"
    _write(src, np.tile(np.array([1, 2, 3], np.uint8), (2, 4, 2)))
    out = tmp_path / "out"
    _run(input=str(src), classes=CLASSES, output=str(out))
    said = [r.getMessage() for r in records if r.getMessage().startswith("report: ")]
    assert said == [f"report: {out / 'report.json'}"] and not (out / "report.html").exists()
    records.clear()
    _run(input=str(src), classes=CLASSES, output=str(tmp_path / "html"), html=True)
    assert [r.getMessage() for r in records if r.getMessage().startswith("report: ")] == [
        f"report: {tmp_path / 'html' / 'report.html'}"]


# ------------------------------------------------------------------------- predict.py's outputs

def test_predict_outputs_keep_blank_slices_outside(tmp_path):
    """predict.py leaves blank slices unsegmented: label 0 and uniform probabilities. characterise reads both
    so: uniform probabilities are outside, and labels beside a predict.py summary are ids 1..K whatever values
    occur ({0, 1, 2} there is not the 0-based reading that would shift every class)."""
    import json

    from seglearn.io.outset import PREDICTION_MARKER

    p = _probs()
    p[1] = 1 / 3  # a blank slice
    rep = _run(probabilities=str(_write(tmp_path / "probabilities.tif", p)), output=str(tmp_path / "o1"),
               classes=["pore", "carbon_binder", "active_material"])
    lab = np.argmax(p, axis=1) + 1
    lab[1] = 0
    inside = lab > 0
    assert rep["fractions"]["pore"] == pytest.approx(np.mean(lab[inside] == 1), abs=1e-6)
    labels = np.ones((4, 12, 10), np.uint8)
    labels[:, :, 5:] = 2
    labels[1] = 0
    folder = tmp_path / "pred"
    folder.mkdir()
    _write(folder / "labels.tif", labels)
    (folder / "summary.json").write_text(json.dumps({PREDICTION_MARKER: True,
                                                     "classes": ["pore", "carbon_binder", "active_material"]}))
    rep = _run(input=str(folder / "labels.tif"), output=str(tmp_path / "o2"))
    assert rep["fractions"]["pore"] == pytest.approx(0.5) and rep["fractions"]["active_material"] == 0.0
