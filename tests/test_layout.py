import numpy as np
import pytest
import tifffile
import yaml

from seglearn.data import load_dataset, write_dataset
from seglearn.errors import InputError, OutputExistsError


def _write(root, **kw):
    images = kw.pop("images", {"SE2": np.zeros((3, 8, 8), np.uint8), "InLens": np.ones((3, 8, 8), np.uint16)})
    return write_dataset(root, images, voxel_size_nm=(20, 10, 10), **kw)


def test_roundtrip(tmp_path):
    train = np.zeros((3, 8, 8), np.uint8)
    train[1, 2:4, 2:4] = 3
    inst = np.zeros((3, 8, 8), np.uint32)
    inst[0, :2, :2] = 70000
    _write(tmp_path / "d", train=train, instances=inst)
    ds = load_dataset(tmp_path / "d", require=("train",))
    assert ds.detectors == ["SE2", "InLens"] and ds.classes == ["pore", "carbon_binder", "active_material"]
    assert ds.images.shape == (2, 3, 8, 8)
    assert ds.voxel_size_nm == (20.0, 10.0, 10.0)
    np.testing.assert_array_equal(ds.train, train)
    assert ds.instances.max() == 70000 and ds.test is None
    assert ds.channel("InLens").max() == 1
    with pytest.raises(OutputExistsError):
        _write(tmp_path / "d")


def test_validation_errors(tmp_path):
    root = _write(tmp_path / "d", train=np.zeros((3, 8, 8), np.uint8))
    tifffile.imwrite(root / "labels" / "train.tif", np.full((3, 8, 8), 4, np.uint8))
    with pytest.raises(InputError, match=r"label value 4 > number of classes 3"):
        load_dataset(root)
    tifffile.imwrite(root / "labels" / "train.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="shape"):
        load_dataset(root)
    tifffile.imwrite(root / "labels" / "train.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="no labelled voxel"):
        load_dataset(root, require=("train",))
    tifffile.imwrite(root / "images" / "InLens.tif", np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(InputError, match="differ in shape"):
        load_dataset(root)


def test_meta_errors(tmp_path):
    root = _write(tmp_path / "d")
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    meta["detectors"] = ["SE2", "ESB"]
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match="ESB"):
        load_dataset(root)
    del meta["classes"]
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(InputError, match="missing key"):
        load_dataset(root)
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nothing")
