import numpy as np
import pytest
import tifffile

from seglearn.errors import InputError, OutputExistsError
from seglearn.io import open_stack, read_image, read_stack, write_preview, write_volume


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int16])
def test_roundtrip_with_voxel_size(tmp_path, dtype):
    vol = (np.arange(3 * 5 * 7) % 200).reshape(3, 5, 7).astype(dtype)
    p = write_volume(tmp_path / "v.tif", vol, voxel_size_nm=(30.0, 12.5, 12.5))
    out, meta = read_stack(p)
    np.testing.assert_array_equal(out, vol)
    assert out.dtype == vol.dtype
    np.testing.assert_allclose(meta["voxel_size_nm"], (30.0, 12.5, 12.5), rtol=1e-4)


def test_never_overwrites(tmp_path):
    p = tmp_path / "v.tif"
    write_volume(p, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(OutputExistsError):
        write_volume(p, np.ones((2, 4, 4), np.uint8))
    assert read_stack(p)[0].max() == 0
    write_volume(p, np.ones((2, 4, 4), np.uint8), overwrite=True)
    assert read_stack(p)[0].max() == 1
    assert [q.name for q in tmp_path.iterdir()] == ["v.tif"]  # no temporary left behind


def test_hyperstack_channels(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (4, 2, 8, 9), dtype=np.uint8)  # Z C Y X
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    img, _ = read_image(tmp_path / "h.tif")
    assert img.shape == (2, 4, 8, 9)
    np.testing.assert_array_equal(img[1], data[:, 1])


def test_slice_folder_sorted_by_number(tmp_path):
    folder = tmp_path / "stack"
    folder.mkdir()
    for i in (1, 2, 10, 9):
        tifffile.imwrite(folder / f"run_BSE_slice-{i:d}.tif", np.full((6, 5), i, np.uint16))
    img, _ = read_image(folder)
    assert img.shape == (1, 4, 6, 5)
    assert list(img[0, :, 0, 0]) == [1, 2, 9, 10]
    with open_stack(folder) as st:
        assert st.shape == (4, 6, 5)
        assert list(st.read(2, 4)[:, 0, 0]) == [9, 10]


def test_png_and_2d(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.arange(30, dtype=np.uint8).reshape(5, 6))
    img, _ = read_image(tmp_path / "a.png")
    assert img.shape == (1, 1, 5, 6)
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((5, 6), np.float32))
    assert read_stack(tmp_path / "b.tif")[0].shape == (1, 5, 6)


def test_block_reading_compressed_bigtiff(tmp_path):
    vol = np.random.default_rng(1).integers(0, 60000, (7, 16, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", vol, bigtiff=True, compression="zlib")
    with open_stack(tmp_path / "c.tif") as st:
        assert st.shape == vol.shape
        blocks = list(st.blocks(3))
        assert [z0 for z0, _ in blocks] == [0, 3, 6]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), vol)


@pytest.mark.parametrize("content", [b"", b"II*\x00garbage"])
def test_bad_files_clear_error(tmp_path, content):
    p = tmp_path / "bad.tif"
    p.write_bytes(content)
    with pytest.raises(InputError, match="bad.tif"):
        read_image(p)


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "x.jpg").write_bytes(b"123")
    with pytest.raises(InputError, match="unsupported"):
        read_image(tmp_path / "x.jpg")


def test_preview_png(tmp_path):
    img = np.random.default_rng(0).random((20, 30))
    lab = np.zeros((20, 30), np.uint8)
    lab[5:10] = 2
    p = write_preview(tmp_path / "p.png", [("img", img, None), ("lab", img, lab)], ["a", "b", "c"])
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------- calibration (issue 25)
def _imagej_calibration(path):
    """(spacing, unit, x pixels per unit) from the first ImageDescription (what Fiji reads) and the tags."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        desc = page.tags["ImageDescription"].value  # the first one
        xres = page.tags["XResolution"].value
    assert desc.startswith("ImageJ="), desc[:60]
    fields = dict(line.split("=", 1) for line in desc.strip().splitlines())
    return float(fields["spacing"]), fields["unit"], xres[0] / xres[1]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.uint32, np.float64, np.int16])
@pytest.mark.parametrize("big", [False, True])
def test_every_tiff_output_carries_imagej_calibration(tmp_path, monkeypatch, dtype, big):
    """uint32 instance ids and BigTIFFs are no ImageJ hyperstacks, yet carry the same calibration."""
    import seglearn.io.tiff_write as tiff

    if big:  # the BigTIFF branch of volumes over 2 GiB, on a small volume
        monkeypatch.setattr(tiff, "BIGTIFF_BYTES", 16)
    vol = (np.arange(3 * 5 * 7) % 200).reshape(3, 5, 7).astype(dtype)
    p = write_volume(tmp_path / "v.tif", vol, voxel_size_nm=(40.0, 16.5, 16.5), compression="zlib")
    spacing, unit, xres = _imagej_calibration(p)
    assert unit == "um" and spacing == pytest.approx(0.04) and xres == pytest.approx(1 / 0.0165, rel=1e-6)
    out, meta = read_stack(p)
    np.testing.assert_array_equal(out, vol)
    assert out.dtype == vol.dtype
    np.testing.assert_allclose(meta["voxel_size_nm"], (40.0, 16.5, 16.5), rtol=1e-6)
    with open_stack(p) as r:
        np.testing.assert_allclose(r.voxel_size_nm, (40.0, 16.5, 16.5), rtol=1e-6)
        np.testing.assert_array_equal(r.read(1, 3), vol[1:3])


def test_single_slice_uint32_keeps_its_shape(tmp_path):
    vol = np.arange(20, dtype=np.uint32).reshape(1, 4, 5)
    p = write_volume(tmp_path / "i.tif", vol, voxel_size_nm=(10.0, 10.0, 10.0))
    assert tifffile.imread(p).shape == (1, 4, 5) and read_stack(p)[1]["voxel_size_nm"] == (10.0, 10.0, 10.0)


def test_uncalibrated_volume_stays_uncalibrated(tmp_path):
    p = write_volume(tmp_path / "v.tif", np.zeros((2, 4, 4), np.uint32))
    assert read_stack(p)[1]["voxel_size_nm"] is None


def test_bool_files_are_read_as_0_1_but_say_so(tmp_path):
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((3, 4, 5), bool))
    img, meta = read_stack(tmp_path / "b.tif")
    assert img.dtype == np.uint8 and meta["dtype"] == "bool"
    with open_stack(tmp_path / "b.tif") as r:
        assert r.stored_dtype == np.bool_


def test_complex_stacks_refused_by_the_block_reader(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((5, 4, 6), np.complex64))
    with pytest.raises(InputError, match="complex64"):
        open_stack(tmp_path / "c.tif")


def test_choose_voxel_size_logs_its_source(caplog):
    import logging

    from seglearn.io.tiff_write import choose_voxel_size

    caplog.set_level(logging.INFO, logger="seglearn")
    v, src = choose_voxel_size([("option", None), ("input file", (30, 10, 10)), ("checkpoint", (33, 16.5, 16.5))])
    assert (v, src) == ([30.0, 10.0, 10.0], "input file")
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    caplog.clear()
    v, src = choose_voxel_size([("input file", None), ("checkpoint", (33, 16.5, 16.5))], where="a.tif")
    assert (v, src) == ([33.0, 16.5, 16.5], "checkpoint")
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "a.tif" in warn[0] and "voxel_size_nm=" in warn[0]
    caplog.clear()
    v, src = choose_voxel_size([("dataset.yaml", (40, 20, 20)), ("input file", (30, 10, 10))])
    assert src == "dataset.yaml" and any("differs" in r.getMessage() for r in caplog.records)
    assert choose_voxel_size([("input file", None)]) == (None, None)


@pytest.fixture(scope="module")
def demo_crop_files(tmp_path_factory):
    """SE2 / InLens crops of data/demo (4 x 64 x 64): uncalibrated files, calibrated files, a dataset without
    voxel_size_nm."""
    import yaml

    from seglearn.data import write_dataset

    root = tmp_path_factory.mktemp("vox")
    imgs = {d: read_stack(f"data/demo/images/{d}.tif")[0][30:34, :64, :64] for d in ("SE2", "InLens")}
    plain, calib = root / "plain", root / "calib"
    plain.mkdir()
    for d, v in imgs.items():
        tifffile.imwrite(plain / f"{d}.tif", v)
        write_volume(calib / f"{d}.tif", v, voxel_size_nm=(30.0, 12.0, 12.0))
    ds = write_dataset(root / "ds", imgs, voxel_size_nm=(50.0, 25.0, 25.0), name="ds")
    nods = write_dataset(root / "nods", imgs, name="nods")  # images uncalibrated ...
    for d, v in imgs.items():
        tifffile.imwrite(nods / "images" / f"{d}.tif", v)
    meta = yaml.safe_load((nods / "dataset.yaml").read_text())
    del meta["voxel_size_nm"]  # ... and dataset.yaml says nothing
    (nods / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return {"plain": [str(plain / f"{d}.tif") for d in imgs], "calib": [str(calib / f"{d}.tif") for d in imgs],
            "ds": str(ds), "nods": str(nods)}


def _predict(inp, out, **over):
    from omegaconf import OmegaConf

    from seglearn.runner import predict

    cfg = OmegaConf.merge(OmegaConf.load("configs/predict.yaml"),
                          {"ckpt": "checkpoints/demo.ckpt", "input": inp, "output": str(out), "preview": False,
                           "device": "cpu", "bf16": False, **over})
    return predict(cfg)


@pytest.mark.parametrize("case, over, source, voxel", [
    ("plain", {}, "checkpoint", [40.0, 20.0, 20.0]),  # demo.ckpt was trained at 40 x 20 x 20 nm
    ("nods", {}, "checkpoint", [40.0, 20.0, 20.0]),   # not the 1 nm read_meta assumes
    ("calib", {}, "input file", [30.0, 12.0, 12.0]),
    ("ds", {}, "dataset.yaml", [50.0, 25.0, 25.0]),
    ("calib", {"voxel_size_nm": [5, 6, 7]}, "voxel_size_nm option", [5.0, 6.0, 7.0]),
])
def test_predict_records_where_the_voxel_size_came_from(demo_crop_files, tmp_path, caplog, case, over, source, voxel):
    import json
    import logging

    lg = logging.getLogger("seglearn")
    lg.addHandler(caplog.handler)  # the command's own handler stops propagation to caplog's
    try:
        summary = _predict(demo_crop_files[case], tmp_path / "out", probabilities=True, **over)
    finally:
        lg.removeHandler(caplog.handler)
    assert summary["voxel_size_source"] == source and summary["voxel_size_nm"] == voxel
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["voxel_size_source"] == source
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("carries no voxel size" in w for w in warned) == (source == "checkpoint")
    assert any("differs" in w for w in warned) == ("option" in source)  # the option overrides the file's 30 x 12 x 12
    for name in ("labels.tif", "probabilities.tif"):
        spacing, unit, xres = _imagej_calibration(tmp_path / "out" / name)
        assert unit == "um" and spacing * 1e3 == pytest.approx(voxel[0]) and 1e3 / xres == pytest.approx(voxel[2])
    probs = tifffile.imread(tmp_path / "out" / "probabilities.tif")
    assert probs.shape == (4, 3, 64, 64) and probs.dtype == np.float16


def test_predict_refuses_a_bad_voxel_size_option(demo_crop_files, tmp_path):
    with pytest.raises(InputError, match="voxel_size_nm") as err:
        _predict(demo_crop_files["plain"], tmp_path / "out", voxel_size_nm=[1, "inf", 2])
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
