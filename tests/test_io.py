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
