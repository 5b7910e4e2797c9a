"""Plausible inputs: voxel sizes (seglearn/io/voxel.py: µm typed as nm refused, print resolutions ignored) and
classes without any label named in a warning."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import yaml

from seglearn.errors import InputError
from seglearn.io import read_stack
from seglearn.io.voxel import check_voxel_size


def _tif(path, **kw):
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint8), **kw)
    return path


def test_dots_per_inch_are_not_a_calibration(tmp_path):
    """72 dpi (what GIMP, Photoshop or PIL write) once read as 352 778 nm voxels; centimetres still count."""
    _, meta = read_stack(_tif(tmp_path / "dpi.tif", resolution=(72.0, 72.0), resolutionunit="INCH"))
    assert meta["voxel_size_nm"] is None
    _, meta = read_stack(_tif(tmp_path / "cm.tif", resolution=(5e5, 5e5), resolutionunit="CENTIMETER"))
    assert meta["voxel_size_nm"] == pytest.approx((20.0, 20.0, 20.0))  # 5e5 px / cm = 20 nm


def test_implausible_calibration_in_a_file_is_ignored(tmp_path, caplog):
    # ImageJ metadata in metres: 2 px per metre = 0.5 m voxels
    path = _tif(tmp_path / "m.tif", imagej=True, resolution=(2.0, 2.0), metadata={"unit": "m", "axes": "ZYX"})
    with caplog.at_level("WARNING", logger="seglearn"):
        _, meta = read_stack(path)
    assert meta["voxel_size_nm"] is None and "not a tomogram's" in caplog.text


@pytest.mark.parametrize("vs, match", [([0.04, 0.02, 0.02], "given in µm"), ([20, 20], "3 positive"),
                                       ([20, -1, 20], "3 positive"), ([2e6, 20, 20], "above"),
                                       (["a", 1, 1], "3 numbers")])
def test_check_voxel_size_refuses_in_one_line(vs, match):
    with pytest.raises(InputError, match=match) as err:
        check_voxel_size(vs, "dataset.yaml: voxel_size_nm")
    assert "\n" not in str(err.value) and str(err.value).startswith("dataset.yaml")
    assert check_voxel_size([40, 20.0, 20], "x") == (40.0, 20.0, 20.0)


def test_dataset_yaml_in_micrometres_is_refused(tmp_path):
    from seglearn.data import load_dataset, write_dataset

    root = tmp_path / "ds"
    write_dataset(root, {"SE2": np.zeros((2, 8, 8), np.uint8), "InLens": np.zeros((2, 8, 8), np.uint8)},
                  voxel_size_nm=(40.0, 20.0, 20.0), name="um")
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    meta["voxel_size_nm"] = [0.04, 0.02, 0.02]
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match=r"dataset.yaml: voxel_size_nm: .*given in µm\? .*\[40.0, 20.0, 20.0\] nm"):
        load_dataset(root)


def test_classes_without_labels_are_named_in_a_warning(tmp_path, caplog):
    """Scribbles of one class give "best validation awe 0.0 %"; a test.tif of one class an IoU of 0 for the
    others: both named in a warning (train.py, fine-tuning, predict.py's score)."""
    from seglearn.data.layout import check_label_stack, warn_missing_classes
    from seglearn.io import open_stack

    classes = ["pore", "carbon_binder", "active_material"]
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[0, :2] = 1
    lab[1, :2] = 3
    with caplog.at_level("WARNING", logger="seglearn"):
        assert warn_missing_classes(lab, classes, "train.tif", "the model cannot learn them") == ["carbon_binder"]
    assert "train.tif: no voxel of carbon_binder (of 3 classes); the model cannot learn them" in caplog.text
    assert warn_missing_classes(np.array([5, 1, 1, 1]), classes, "x", "y", counts=True) == []
    tifffile.imwrite(tmp_path / "test.tif", lab)
    reader = open_stack(tmp_path / "test.tif")
    assert check_label_stack(reader, tmp_path / "test.tif", 3).tolist() == [96, 16, 0, 16]
    reader.close()


def test_ome_zarr_scale_follows_the_same_rule():
    from seglearn.io.omezarr import _voxel_nm

    level0 = {"coordinateTransformations": [{"type": "scale", "scale": [40.0, 20.0, 20.0]}]}
    assert _voxel_nm(level0, ["z", "y", "x"], {a: "nanometer" for a in "zyx"}) == (40.0, 20.0, 20.0)
    assert _voxel_nm(level0, ["z", "y", "x"], {a: "angstrom" for a in "zyx"}) == (4.0, 2.0, 2.0)
    tiny = {"coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}
    assert _voxel_nm(tiny, ["z", "y", "x"], {a: "angstrom" for a in "zyx"}) is None  # 0.1 nm: not a tomogram's
