"""The napari plugin's pure logic (no Qt): reader layers, writer validation, the widget's session work."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import yaml

from seglearn.errors import InputError, OutputExistsError
from seglearn.napari import layers as L
from seglearn.napari import session
from seglearn.suggest import normalised_entropy

BASE = str(L.Path(__file__).resolve().parents[1] / "checkpoints" / "fibsem_base.ckpt")
# fine-tuning in well under a second on the 24 x 64 x 64 phantom: no synthetic stream, one run
FAST = {"max_steps": 4, "val_every": 2, "batch_size": 2, "patch": 32, "runs": 1, "adapt_bn": "off",
        "synth_fraction": 0.0,
        # no forest blended into the fine-tuned model (where fine-tuning has that setting): seconds matter here
        **({"blend": "off"} if "blend" in session.finetune_settings() else {})}


@pytest.fixture
def ds_copy(tiny_dataset, tmp_path):
    """A writable copy of the tiny dataset."""
    return shutil.copytree(tiny_dataset, tmp_path / "ds")


def test_dataset_layers_scale_names_colours(tiny_dataset, tiny_phantom):
    layers = L.dataset_layer_data(tiny_dataset)
    by_name = {kw["name"]: (data, kw, kind) for data, kw, kind in layers}
    assert list(by_name) == ["SE2", "InLens", "SE2-InLens", "train labels", "test labels"]
    for data, kw, kind in layers:
        assert kw["scale"] == (40.0, 20.0, 20.0)
        assert data.shape == (24, 64, 64)
        assert kw["metadata"]["seglearn"]["root"] == str(tiny_dataset)
    diff = by_name["SE2-InLens"][0]
    ph = tiny_phantom
    np.testing.assert_allclose(diff, ph.images["SE2"].astype(np.float32) - ph.images["InLens"].astype(np.float32))
    train, kw, kind = by_name["train labels"]
    assert kind == "labels" and kw["metadata"]["seglearn"]["role"] == "train"
    np.testing.assert_array_equal(train, ph.train)
    np.testing.assert_array_equal(by_name["test labels"][0], ph.test)
    cmap = kw["colormap"]
    assert cmap[0][3] == 0 and all(cmap[i][3] == 1 for i in (1, 2, 3)) and len({cmap[i] for i in (1, 2, 3)}) == 3
    assert kw["metadata"]["seglearn"]["classes"] == ["pore", "carbon_binder", "active_material"]


def test_colours_from_dataset_yaml(ds_copy):
    meta = yaml.safe_load((ds_copy / "dataset.yaml").read_text())
    meta["colours"] = {"pore": "#ff0000", "active_material": [0, 0, 255]}
    (ds_copy / "dataset.yaml").write_text(yaml.safe_dump(meta))
    (ds_copy / "labels" / "test.tif").unlink()
    layers = L.dataset_layer_data(ds_copy)
    assert [kw["name"] for _, kw, _ in layers][-1] == "train labels"  # no test labels layer
    cmap = layers[-1][1]["colormap"]
    assert cmap[1] == (1.0, 0.0, 0.0, 1.0) and cmap[3] == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(InputError, match="colour of class 'pore'"):
        L.class_colours(["pore", "x"], {"colours": ["red-ish", None]})


def test_save_labels_roundtrip_and_refusals(ds_copy):
    from seglearn.data import load_dataset

    new = np.zeros((24, 64, 64), np.int32)
    new[5, 10:20, 10:20] = 3
    new[7, 30:40, 5:9] = 1
    # napari's save dialog appends .tif to the folder name
    out = L.save_labels(str(ds_copy) + ".tif", new)
    assert out == ds_copy / "labels" / "train.tif"
    np.testing.assert_array_equal(load_dataset(ds_copy).train, new)
    assert L.save_labels(ds_copy / "labels" / "test.tif", new) == ds_copy / "labels" / "test.tif"
    assert not [p for p in (ds_copy / "labels").iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(InputError, match=r"train.tif: labels of shape \(24, 64, 32\), expected"):
        L.save_labels(ds_copy, new[:, :, :32])
    bad = new.copy()
    bad[0, 0, 0] = 4
    with pytest.raises(InputError, match="label id 4 > number of classes 3"):
        L.save_labels(ds_copy, bad)
    with pytest.raises(InputError, match="labels must be integers"):
        L.save_labels(ds_copy, new.astype(np.float32))
    with pytest.raises(InputError, match="dataset folder"):
        L.save_labels(ds_copy.parent / "elsewhere.tif", new)
    np.testing.assert_array_equal(load_dataset(ds_copy).train, new)  # refused writes changed nothing


def _prediction_folder(root, probs, with_unc=None):
    k, z, y, x = probs.shape
    root.mkdir()
    tifffile.imwrite(root / "labels.tif", (probs.argmax(0) + 1).astype(np.uint8), photometric="minisblack")
    tifffile.imwrite(root / "probabilities.tif", np.moveaxis(probs, 0, 1).astype(np.float16), photometric="minisblack")
    (root / "summary.json").write_text(json.dumps({"classes": ["a", "b", "c"], "voxel_size_nm": [30, 10, 10]}))
    if with_unc is not None:
        tifffile.imwrite(root / "uncertainty.tif", with_unc, photometric="minisblack")
    return root


def test_prediction_layers_and_reader(tmp_path, tiny_dataset, rng):
    from seglearn.napari._io import get_reader

    probs = rng.dirichlet([1.0, 1.0, 1.0], size=(4, 8, 8)).transpose(3, 0, 1, 2).astype(np.float32)
    folder = _prediction_folder(tmp_path / "pred", probs)
    layers = {kw["name"] if isinstance(kw["name"], str) else "P": (d, kw, k) for d, kw, k in
              get_reader(str(folder))(str(folder))}
    assert set(layers) == {"prediction", "P", "uncertainty"}
    np.testing.assert_array_equal(layers["prediction"][0], probs.argmax(0) + 1)
    assert layers["P"][1]["channel_axis"] == 0 and layers["P"][1]["name"] == ["P(a)", "P(b)", "P(c)"]
    assert layers["uncertainty"][1]["scale"] == (30.0, 10.0, 10.0)
    np.testing.assert_allclose(layers["uncertainty"][0], normalised_entropy(probs.astype(np.float16)), atol=1e-3)
    unc = np.full((4, 8, 8), 0.25, np.float32)
    folder2 = _prediction_folder(tmp_path / "pred2", probs, with_unc=unc)
    got = [d for d, kw, _ in L.prediction_layer_data(folder2) if kw["name"] == "uncertainty"][0]
    np.testing.assert_array_equal(got, unc)
    assert get_reader(str(tiny_dataset / "dataset.yaml")) is not None
    assert get_reader(str(tmp_path)) is None and get_reader(str(tiny_dataset / "images" / "SE2.tif")) is None


def test_train_cancel_score_export(tiny_dataset, tmp_path):
    from seglearn.ckpt import load_checkpoint
    from seglearn.data import load_dataset
    from seglearn.segment.api import load_segmenter

    ds = load_dataset(tiny_dataset)
    seen = []
    res = session.train_model(tiny_dataset, ds.train, tmp_path / "a", base=BASE, settings=FAST,
                              on_step=lambda info: seen.append(info["step"]) or False)
    assert seen == [1, 2, 3, 4] and res["steps"] == 4 and not res["stopped"]
    # Cancel: the hook says stop at step 2 of 1000; the best weights so far are written
    res = session.train_model(tiny_dataset, ds.train, tmp_path / "b", base=BASE,
                              settings={**FAST, "max_steps": 1000, "runs": 2},
                              on_step=lambda info: info["step"] >= 2)
    assert res["stopped"] and res["steps"] == 2 and len(res["runs"]) == 1
    assert load_checkpoint(res["best_ckpt"])["kind"] == "unet"
    s = session.score_test(res["best_ckpt"], tiny_dataset)
    assert s["slices"] == [int(z) for z in np.unique(np.nonzero(ds.test)[0])]
    assert 0 <= s["awe"] < 30 and set(s["iou_by_class"]) == set(ds.classes)
    assert "awe" in session.format_scores(s)
    dest = session.export_checkpoint(res["best_ckpt"], tmp_path / "export" / "model.ckpt")
    labels = load_segmenter(dest).predict(ds.images, ds.detectors)
    assert labels.shape == ds.shape and set(np.unique(labels)) <= {1, 2, 3}
    with pytest.raises(OutputExistsError):
        session.export_checkpoint(res["best_ckpt"], dest)
    with pytest.raises(InputError, match="holds no labelled voxel"):
        session.train_model(tiny_dataset, np.zeros(ds.shape, np.uint8), tmp_path / "c", base=BASE, settings=FAST)
    with pytest.raises(InputError, match="label id 12 > number of classes 3"):
        session.train_model(tiny_dataset, ds.train + 9 * (ds.train > 0), tmp_path / "c", base=BASE, settings=FAST)


def test_train_from_scratch_stops_on_request(tiny_dataset, tmp_path):
    from seglearn.data import load_dataset

    ds = load_dataset(tiny_dataset)
    steps = []
    res = session.train_model(tiny_dataset, ds.train, tmp_path / "s", base=None,
                              settings={"trainer.max_steps": 500, "model.steps_per_epoch": 2, "model.batch_size": 2,
                                        "model.net.base": 4, "model.patch": [1, 32, 32]},
                              on_step=lambda info: steps.append(info["step"]) or info["step"] >= 3)
    assert res["steps"] == 3 and steps == [1, 2, 3]
    assert (tmp_path / "s" / "best.ckpt").exists() or (tmp_path / "s" / "last.ckpt").exists()


def test_progress_fraction():
    assert session.progress_fraction({"step": 5, "max_steps": 10}) == 0.5
    assert session.progress_fraction({"step": 5, "max_steps": 10, "run": 1, "runs": 2}) == 0.75
