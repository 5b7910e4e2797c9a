"""OME-Zarr in and out (issue 28): multiscale pyramids with the voxel size, read block by block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ome_zarr")

from seglearn.errors import InputError  # noqa: E402
from seglearn.io import open_stack, read_stack  # noqa: E402
from seglearn.io.omezarr import OmeZarrReader, OmeZarrWriter, is_ome_zarr, pyramid_shapes, write_ome_zarr  # noqa: E402


def test_grey_stack_round_trips_with_its_voxel_size_and_pyramid(tmp_path, rng):
    vol = (rng.random((5, 600, 300)) * 60000).astype(np.uint16)
    p = write_ome_zarr(tmp_path / "SE2.ome.zarr", vol, voxel_size_nm=(30, 15, 15), chunks=(2, 128, 128))
    assert is_ome_zarr(p) and not is_ome_zarr(tmp_path)
    r = open_stack(p)
    assert isinstance(r, OmeZarrReader) and r.shape == (5, 600, 300) and r.dtype == np.uint16
    assert r.voxel_size_nm == (30.0, 15.0, 15.0)
    np.testing.assert_array_equal(r.read(1, 4), vol[1:4])
    np.testing.assert_array_equal(np.concatenate([b for _, b in r.blocks(2)]), vol)
    whole, meta = read_stack(p)
    np.testing.assert_array_equal(whole, vol)
    assert meta["voxel_size_nm"] == (30.0, 15.0, 15.0)
    ms = json.loads((p / ".zattrs").read_text())["multiscales"][0]
    assert ms["version"] == "0.4" and [a["unit"] for a in ms["axes"]] == ["nanometer"] * 3
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == \
        [[30.0, 15.0, 15.0], [30.0, 30.0, 30.0], [30.0, 60.0, 60.0]]
    import zarr

    lvl1 = zarr.open_array(str(p / "1"), mode="r")[:]
    np.testing.assert_allclose(lvl1[0, 0, 0], vol[0, :2, :2].mean(), atol=0.5)  # grey values averaged


def test_the_ome_zarr_package_reads_what_we_write(tmp_path, rng):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    p = write_ome_zarr(tmp_path / "a.ome.zarr", rng.integers(0, 255, (3, 520, 520), dtype=np.uint8),
                       voxel_size_nm=(40, 20, 20))
    node = list(Reader(parse_url(str(p)))())[0]
    assert [tuple(d.shape) for d in node.data] == pyramid_shapes((3, 520, 520))
    assert node.metadata["coordinateTransformations"][0][0]["scale"] == [40.0, 20.0, 20.0]


def test_labels_keep_their_ids_and_probabilities_their_channel_names(tmp_path, rng):
    import zarr

    lab = rng.integers(1, 4, (3, 520, 520)).astype(np.uint8)
    p = write_ome_zarr(tmp_path / "labels.ome.zarr", lab, labels=True, voxel_size_nm=(40, 20, 20))
    coarse = zarr.open_array(str(p / "2"), mode="r")[:]
    np.testing.assert_array_equal(coarse, lab[:, ::4, ::4])  # subsampled: no id that is not in the volume
    assert "image-label" in json.loads((p / ".zattrs").read_text())
    prob = rng.random((3, 4, 64, 64)).astype(np.float32)
    q = write_ome_zarr(tmp_path / "probabilities.ome.zarr", prob, channel_names=["pore", "carbon_binder", "am"])
    r = OmeZarrReader(q, channel="carbon_binder")
    assert r.channels == ["pore", "carbon_binder", "am"] and r.shape == (4, 64, 64)
    np.testing.assert_array_equal(r.read(0, 4), prob[1])
    with pytest.raises(InputError, match="name one"):
        OmeZarrReader(q)
    with pytest.raises(InputError, match="no channel 'binder'"):
        OmeZarrReader(q, channel="binder")


def test_writer_streams_blocks_and_refuses_an_existing_group(tmp_path, rng):
    vol = rng.random((7, 40, 50)).astype(np.float32)
    w = OmeZarrWriter(tmp_path / "s.ome.zarr", vol.shape, vol.dtype, voxel_size_nm=(10, 5, 5), chunks=(3, 16, 16))
    for z0 in range(0, 7, 3):
        w.write(z0, vol[z0:z0 + 3])
    np.testing.assert_array_equal(OmeZarrReader(w.finish()).read(0, 7), vol)
    with pytest.raises(Exception):
        OmeZarrWriter(tmp_path / "s.ome.zarr", vol.shape, vol.dtype)


def test_unitless_scale_gives_no_voxel_size_and_foreign_axes_are_refused(tmp_path, rng):
    p = write_ome_zarr(tmp_path / "u.ome.zarr", rng.random((2, 8, 8)).astype(np.float32))  # no voxel size given
    attrs = json.loads((p / ".zattrs").read_text())
    assert all("unit" not in a for a in attrs["multiscales"][0]["axes"])  # scale 1 is written without a unit
    assert OmeZarrReader(p).voxel_size_nm is None
    attrs["multiscales"][0]["axes"] = [{"name": n, "type": "space"} for n in ("t", "y", "x")]
    (p / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError, match="axes"):
        OmeZarrReader(p)


def test_a_dataset_with_ome_zarr_images_loads(tiny_dataset, tmp_path):
    import shutil

    from seglearn.data import load_dataset

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    ref = load_dataset(tiny_dataset, labels=("train",))
    for i, det in enumerate(ref.detectors):
        (root / "images" / f"{det}.tif").unlink()
        write_ome_zarr(root / "images" / f"{det}.ome.zarr", ref.images[i], voxel_size_nm=ref.voxel_size_nm)
    ds = load_dataset(root, labels=("train",))
    np.testing.assert_array_equal(ds.images, ref.images)


def test_predict_reads_and_writes_ome_zarr_like_tiff(tiny_dataset, tmp_path):
    """OME-Zarr input gives the labels TIFF input gives; output_format=ome-zarr holds the same labels and
    probabilities as the TIFF outputs, with the voxel size; blocks follow the memory budget."""
    import sys

    import tifffile
    import zarr

    sys.path.insert(0, str(Path(__file__).parent))
    from cli_harness import run_cli

    from seglearn.data import load_dataset

    ds = load_dataset(tiny_dataset, labels=())
    zin = []
    for i, det in enumerate(ds.detectors):
        zin.append(write_ome_zarr(tmp_path / f"{det}.ome.zarr", ds.images[i], voxel_size_nm=ds.voxel_size_nm))
    from seglearn.segment.memory import current_rss

    budget = round((current_rss() + 0.6 * 2**30) / 2**30, 2)  # in-process: what this test process holds, + 0.6 GiB
    common = ["ckpt=checkpoints/demo.ckpt", "probabilities=true", "uncertainty=true", "preview=false", "adapt=off"]
    r1 = run_cli(["predict.py", f"input={tiny_dataset}", f"output={tmp_path / 'tif'}", *common])
    r2 = run_cli(["predict.py", f"input=[{zin[0]},{zin[1]}]", "detectors=[SE2,InLens]", f"output={tmp_path / 'zarr'}",
                  "output_format=ome-zarr", f"memory_budget_gib={budget}", *common])
    assert r1.code == 0 and r2.code == 0, r1.stderr[-800:] + r2.stderr[-800:]
    lab_tif = tifffile.imread(tmp_path / "tif" / "labels.tif")
    lab_z = OmeZarrReader(tmp_path / "zarr" / "labels.ome.zarr")
    np.testing.assert_array_equal(lab_z.read(0, lab_z.shape[0]), lab_tif)
    assert lab_z.voxel_size_nm == tuple(float(v) for v in ds.voxel_size_nm)
    prob_tif = tifffile.imread(tmp_path / "tif" / "probabilities.tif")  # (Z, K, Y, X) float16
    prob_z = zarr.open_array(str(tmp_path / "zarr" / "probabilities.ome.zarr" / "0"), mode="r")[:]  # (K, Z, Y, X)
    np.testing.assert_array_equal(prob_z, prob_tif.transpose(1, 0, 2, 3))
    summary = json.loads((tmp_path / "zarr" / "summary.json").read_text())
    assert summary["labels"] == "labels.ome.zarr" and summary["output_format"] == "ome-zarr"
    assert summary["memory"]["source"] == "memory_budget_gib" and summary["memory"]["estimated_peak_gib"] <= budget
    assert not any(p.suffix == ".tif" for p in (tmp_path / "zarr").iterdir())
    # uncertainty: the normalised entropy of the probabilities, the same in both formats, in [0, 1]
    from seglearn.segment.calibrate import uncertainty_map

    unc_tif = tifffile.imread(tmp_path / "tif" / "uncertainty.tif")
    unc_z = OmeZarrReader(tmp_path / "zarr" / "uncertainty.ome.zarr")
    np.testing.assert_array_equal(unc_z.read(0, unc_z.shape[0]), unc_tif)
    assert unc_tif.dtype == np.float16 and 0 <= unc_tif.min() and unc_tif.max() <= 1 and unc_tif.max() > 0.1
    np.testing.assert_allclose(unc_tif, uncertainty_map(prob_tif.transpose(1, 0, 2, 3).astype(np.float32)), atol=2e-2)
    assert summary["uncertainty"] == "uncertainty.ome.zarr"
