"""The napari plugin in a real viewer (pytest-qt, Xvfb): reader, writer, the training widget."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    # pytest-xvfb sets DISPLAY when it could start Xvfb; without a display Qt would abort the whole run
    pytest.skip("no X display (install xvfb: make install does)", allow_module_level=True)

from seglearn.napari import session  # noqa: E402
from seglearn.napari.widget import SCRATCH, SeglearnWidget  # noqa: E402

BASE = str(Path(__file__).resolve().parents[1] / "checkpoints" / "fibsem_base.ckpt")
FAST = {"val_every": 2, "batch_size": 2, "patch": 32, "runs": 1, "adapt_bn": "off", "synth_fraction": 0.0,
        # no forest blended into the fine-tuned model (where fine-tuning has that setting): seconds matter here
        **({"blend": "off"} if "blend" in session.finetune_settings() else {})}


@pytest.fixture
def ds_copy(tiny_dataset, tmp_path):
    return shutil.copytree(tiny_dataset, tmp_path / "ds")


def test_open_dataset_layers_and_save(make_napari_viewer, ds_copy):
    viewer = make_napari_viewer()
    # as `napari DATASET/dataset.yaml` (plugin=None: napari picks the reader); only seglearn reads it
    viewer.open(str(ds_copy / "dataset.yaml"), plugin=None)
    names = [ly.name for ly in viewer.layers]
    assert names == ["SE2", "InLens", "SE2-InLens", "train labels", "test labels"]
    for ly in viewer.layers:
        np.testing.assert_allclose(ly.scale, [40.0, 20.0, 20.0])
    train = viewer.layers["train labels"]
    assert isinstance(train, napari.layers.Labels) and train.editable
    # paint (as a user would) and save through napari's writer: lands in labels/train.tif
    train.data[3, 1:5, 1:5] = 2
    saved = napari.save_layers(str(ds_copy / "labels" / "train.tif"), [train], plugin="seglearn")
    assert saved == [str(ds_copy / "labels" / "train.tif")]
    from seglearn.data import load_dataset

    np.testing.assert_array_equal(load_dataset(ds_copy).train, train.data)
    train.data[0, 0, 0] = 7
    from seglearn.errors import SeglearnError

    with pytest.raises(SeglearnError, match="label id 7 > number of classes 3"):
        napari.save_layers(str(ds_copy / "labels" / "train.tif"), [train], plugin="seglearn")


def _wait_idle(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def test_widget_train_predict_suggest_score_export(make_napari_viewer, qtbot, ds_copy, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(ds_copy), plugin="seglearn")
    w = SeglearnWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.labels_box.currentText() == "train labels"
    assert w.base_box.findText(SCRATCH) >= 0 and w.base_box.findText(BASE) >= 0
    w.base_box.setCurrentText(BASE)
    w.steps.setValue(4)
    w.forest_box.setChecked(False)
    viewer.dims.set_current_step(0, 5)
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    w._train(settings=FAST)
    assert not w.buttons["Train"].isEnabled() and w.buttons["Cancel"].isEnabled()
    qtbot.waitUntil(lambda: "prediction" in viewer.layers and w.worker is None, timeout=60000)
    timer.stop()
    assert len(ticks) >= 3  # the event loop ran while training and predicting
    assert w.ckpt is not None and w.ckpt.exists() and w.bar.value() == 1000
    pred = viewer.layers["prediction"].data
    assert pred.shape == (24, 64, 64) and pred[5].min() >= 1 and not pred[4].any()  # the current slice only
    unc = viewer.layers["uncertainty"].data
    assert 0 <= unc.min() and unc.max() <= 1 and unc[5].max() > 0
    np.testing.assert_allclose(viewer.layers["uncertainty"].scale, [40, 20, 20])

    w.where_box.setCurrentText("whole volume")
    w._on_predict()
    _wait_idle(qtbot, w)
    assert viewer.layers["prediction"].data.min() >= 1 and w.probs.shape == (3, 24, 64, 64), w.status.text()

    w._on_suggest()
    _wait_idle(qtbot, w)
    assert w.suggestions and "suggestions" in viewer.layers
    top = w.suggestions[0]
    assert viewer.dims.current_step[0] == top["z"]
    assert not viewer.layers["train labels"].data[top["z"], top["y0"]:top["y1"], top["x0"]:top["x1"]].all()

    w._on_score()
    _wait_idle(qtbot, w)
    assert w.scores is not None and 0 <= w.scores["awe"] < 30 and "awe" in w.status.text()

    out = w.export(tmp_path / "model.ckpt")
    from seglearn.segment.api import load_segmenter

    assert load_segmenter(out).classes == ["pore", "carbon_binder", "active_material"]
    viewer.layers["train labels"].data[2, 0:3, 0:3] = 1
    assert w.save_labels() == ds_copy / "labels" / "train.tif"


def test_widget_cancel_keeps_best_so_far(make_napari_viewer, qtbot, ds_copy):
    viewer = make_napari_viewer()
    viewer.open(str(ds_copy), plugin="seglearn")
    w = SeglearnWidget(viewer)
    w.base_box.setCurrentText(BASE)
    w.steps.setValue(100000)
    w._train(settings={**FAST, "patience": 0})  # no early stopping: only Cancel ends it
    qtbot.waitUntil(lambda: w.bar.value() > 0, timeout=60000)  # a step done
    w.buttons["Cancel"].click()
    qtbot.waitUntil(lambda: w.ckpt is not None and w.worker is None, timeout=60000)
    assert w.train_result["stopped"] and w.train_result["steps"] < 100000
    assert w.bar.value() == 1000 and w.ckpt.exists()
    # no labels layer -> a message in the widget, not an exception in the viewer
    viewer.layers.clear()
    w._on_train()
    assert "open a seglearn dataset" in w.status.text()


def test_ome_zarr_prediction_opens_multiscale_at_the_voxel_size(make_napari_viewer, tiny_dataset, tmp_path):
    """predict.py output_format=ome-zarr, then napari: labels and P(class) layers, multiscale, at the voxel size."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from cli_harness import run_cli

    out = tmp_path / "pred"
    r = run_cli(["predict.py", "ckpt=checkpoints/demo.ckpt", f"input={tiny_dataset}", f"output={out}",
                 "output_format=ome-zarr", "probabilities=true", "preview=false"])
    assert r.code == 0, r.stderr[-800:]
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="seglearn")
    pred = viewer.layers["prediction"]
    assert isinstance(pred, napari.layers.Labels) and not pred.multiscale  # 64 x 64 slices: one level
    np.testing.assert_allclose(pred.scale, [40.0, 20.0, 20.0])
    probs = [ly for ly in viewer.layers if ly.name.startswith("P(")]
    assert len(probs) == 3
    np.testing.assert_allclose(probs[0].scale, [40.0, 20.0, 20.0])
    from seglearn.io import read_stack

    np.testing.assert_array_equal(np.asarray(pred.data), read_stack(out / "labels.ome.zarr")[0])
    # slices of 520 x 520: a pyramid, opened as napari multiscale layers at the level-0 voxel size
    import json

    from seglearn.io.omezarr import write_ome_zarr

    big = tmp_path / "big"
    big.mkdir()
    lab = np.random.default_rng(0).integers(1, 4, (2, 520, 520)).astype(np.uint8)
    write_ome_zarr(big / "labels.ome.zarr", lab, labels=True, voxel_size_nm=(30, 15, 15))
    (big / "summary.json").write_text(json.dumps({"classes": ["pore", "carbon_binder", "active_material"],
                                                  "voxel_size_nm": [30, 15, 15], "labels": "labels.ome.zarr"}))
    viewer.layers.clear()
    viewer.open(str(big), plugin="seglearn")
    pred = viewer.layers["prediction"]
    assert pred.multiscale and len(pred.data) == 3  # 520, 260, 130 px
    np.testing.assert_allclose(pred.scale, [30.0, 15.0, 15.0])
