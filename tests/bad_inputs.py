"""Generate the corpus of bad inputs that every CLI must refuse cleanly (issue 11).

``python tests/bad_inputs.py OUT`` writes it to a folder; tests call :func:`make_corpus`.
Each entry is a path: a file, or a dataset folder that is valid except for one defect.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile
import yaml


def _good_dataset(root: Path, shape=(6, 32, 32), seed: int = 0) -> Path:
    from seglearn.data import write_dataset

    rng = np.random.default_rng(seed)
    se2 = rng.integers(0, 255, shape, dtype=np.uint8)
    inl = rng.integers(0, 255, shape, dtype=np.uint8)
    train = np.zeros(shape, np.uint8)
    train[1, 4:8, 4:20] = 1
    train[1, 12:16, 4:20] = 2
    train[1, 20:24, 4:20] = 3
    test = np.zeros(shape, np.uint8)
    test[4] = rng.integers(1, 4, shape[1:], dtype=np.uint8)
    inst = np.zeros(shape, np.uint32)
    inst[:, 4:12, 4:12], inst[:, 18:28, 16:26] = 1, 2
    write_dataset(root, {"SE2": se2, "InLens": inl}, voxel_size_nm=(20, 10, 10), train=train, test=test,
                  instances=inst)
    return root


def _huge_header_tif(path: Path, shape=(8, 60000, 60000)) -> Path:
    """A ~2 KB TIFF whose pages declare ``shape`` float64 (230 GB): width, length and rows per strip
    of a small zlib-compressed stack patched in place."""
    import struct

    tifffile.imwrite(path, np.zeros((shape[0], 60, 60), np.float64), compression="zlib", metadata=None)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = [(pg.tags[name], value) for pg in tif.pages
                for name, value in (("ImageWidth", shape[2]), ("ImageLength", shape[1]), ("RowsPerStrip", shape[1]))]
    for tag, value in tags:
        struct.pack_into("<H" if tag.dtype == 3 else "<I", raw, tag.valueoffset, value)
    path.write_bytes(bytes(raw))
    return path


def _edit_yaml(root: Path, fn) -> None:
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    fn(meta)
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))


def make_corpus(out: str | Path) -> dict[str, Path]:
    """Write every bad input under ``out``; returns name -> path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c: dict[str, Path] = {}
    good = _good_dataset(out / "good_dataset")
    c["good_dataset"] = good
    # --- single files
    vol = np.random.default_rng(1).integers(0, 255, (6, 32, 32), dtype=np.uint8)
    p = out / "good.tif"
    tifffile.imwrite(p, vol)
    c["good_tif"] = p
    data = p.read_bytes()
    (out / "truncated.tif").write_bytes(data[: len(data) // 3])
    c["truncated_tif"] = out / "truncated.tif"
    (out / "empty.tif").write_bytes(b"")
    c["empty_tif"] = out / "empty.tif"
    tifffile.imwrite(out / "oned.tif", np.arange(10, dtype=np.uint8)[None])  # one row: effectively 1D
    c["oned_tif"] = out / "oned.tif"
    tifffile.imwrite(out / "fourd.tif", np.zeros((2, 3, 4, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "TZCYX"})
    c["fourd_tif"] = out / "fourd.tif"
    nan = vol.astype(np.float32)
    nan[2, 3, 3] = np.nan
    nan[3, 4, 4] = np.inf
    tifffile.imwrite(out / "nan.tif", nan)
    c["nan_tif"] = out / "nan.tif"
    tifffile.imwrite(out / "constant.tif", np.full((6, 32, 32), 7, np.uint8))
    c["constant_tif"] = out / "constant.tif"
    c["missing"] = out / "does_not_exist.tif"
    c["huge_header_tif"] = _huge_header_tif(out / "huge_header.tif")
    labels = np.random.default_rng(2).integers(1, 4, (6, 32, 32), dtype=np.uint8)
    tifffile.imwrite(out / "labels.tif", labels)  # a valid label volume (ids 1..3)
    c["good_labels"] = out / "labels.tif"
    sl = out / "slices_mixed"  # a folder of slices, one of another shape
    sl.mkdir(exist_ok=True)
    for i in range(3):
        tifffile.imwrite(sl / f"slice_{i:03d}.tif", vol[i] if i != 1 else vol[i, :20])
    c["slices_mixed"] = sl
    sl = out / "slices_good"
    sl.mkdir(exist_ok=True)
    for i in range(3):
        tifffile.imwrite(sl / f"slice_{i:03d}.tif", vol[i])
    c["slices_good"] = sl
    # --- datasets with one defect each
    def variant(name: str) -> Path:
        import shutil

        root = out / name
        shutil.copytree(good, root)
        c[name] = root
        return root

    r = variant("ds_shape_mismatch")
    tifffile.imwrite(r / "images" / "InLens.tif", np.zeros((6, 32, 30), np.uint8))
    r = variant("ds_nan_image")
    tifffile.imwrite(r / "images" / "SE2.tif", nan)
    r = variant("ds_labels_gt_k")
    lab = np.zeros((6, 32, 32), np.uint8)
    lab[1, :4, :4] = 7
    tifffile.imwrite(r / "labels" / "train.tif", lab)
    r = variant("ds_labels_negative")
    tifffile.imwrite(r / "labels" / "train.tif", np.full((6, 32, 32), -1, np.int8))
    r = variant("ds_labels_float")
    tifffile.imwrite(r / "labels" / "train.tif", np.full((6, 32, 32), 1.5, np.float32))
    r = variant("ds_labels_empty")
    tifffile.imwrite(r / "labels" / "train.tif", np.zeros((6, 32, 32), np.uint8))
    r = variant("ds_missing_key")
    _edit_yaml(r, lambda m: m.pop("classes"))
    r = variant("ds_unknown_detector")
    _edit_yaml(r, lambda m: m.__setitem__("detectors", ["SE2", "ESB"]))
    r = variant("ds_test_gt_k")
    tst = tifffile.imread(r / "labels" / "test.tif")
    tst[4, :3, :3] = 9
    tifffile.imwrite(r / "labels" / "test.tif", tst)
    r = variant("ds_test_float")
    tifffile.imwrite(r / "labels" / "test.tif", tst.astype(np.float32) + 0.5)
    r = variant("ds_inf_voxel")
    _edit_yaml(r, lambda m: m.__setitem__("voxel_size_nm", [float("inf"), 10.0, 10.0]))
    r = variant("ds_um_voxel")  # micrometres typed where nanometres are meant
    _edit_yaml(r, lambda m: m.__setitem__("voxel_size_nm", [0.02, 0.01, 0.01]))
    r = variant("ds_duplicate_classes")
    _edit_yaml(r, lambda m: m.__setitem__("classes", ["pore", "pore", "active_material"]))
    r = variant("ds_truncated_image")
    raw = (r / "images" / "SE2.tif").read_bytes()
    (r / "images" / "SE2.tif").write_bytes(raw[: len(raw) // 2])
    # --- checkpoints
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned: arbitrary code ran while loading",))

    torch.save({"format": "seglearn", "version": 1, "kind": "unet", "evil": Evil()}, out / "pickle_payload.ckpt")
    c["ckpt_pickle"] = out / "pickle_payload.ckpt"
    torch.save({"format": "seglearn", "version": 99, "kind": "unet", "state_dict": {}, "meta": {}},
               out / "future_version.ckpt")
    c["ckpt_future_version"] = out / "future_version.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, out / "foreign.ckpt")
    c["ckpt_foreign"] = out / "foreign.ckpt"
    from seglearn.ckpt import save_checkpoint

    save_checkpoint(out / "stardist_kind.ckpt", kind="stardist", state_dict={"w": torch.zeros(2)},
                    meta={"detectors": ["SE2", "InLens"]})
    c["ckpt_other_kind"] = out / "stardist_kind.ckpt"
    (out / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    c["ckpt_garbage"] = out / "garbage.ckpt"
    # --- ToF-SIMS ASCII with ragged rows
    tof = out / "tofsims_ragged"
    tof.mkdir(exist_ok=True)
    (tof / "Ni+.txt").write_text("# Image size: 4 x 3\n1 2 3 4\n5 6 7\n8 9 10 11\n")
    c["tofsims_ragged"] = tof
    tof = out / "tofsims_good"
    tof.mkdir(exist_ok=True)
    trng = np.random.default_rng(3)
    for ion in ("Ni+", "C2H-"):
        rows = "\n".join(" ".join(str(v) for v in r) for r in trng.integers(0, 50, (16, 16)))
        (tof / f"{ion}.txt").write_text(f"# Ion: {ion}\n# Image size: 16 x 16\n# Field of view: 10 um\n{rows}\n")
    c["tofsims_good"] = tof
    # --- outputs
    ro = out / "readonly_out"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    c["readonly_dir"] = ro
    return c


if __name__ == "__main__":
    corpus = make_corpus(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs")
    for k, v in corpus.items():
        print(f"{k}\t{v}")
