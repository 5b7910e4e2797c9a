"""predict.py's own rules: without output= only an earlier prediction of the same input is replaced; a stack that
looks stored (Y, X, Z) is named in a warning; a block is read once."""

from __future__ import annotations

import json
from pathlib import Path

from seglearn.segment.predict_guard import MARKER, default_output


def _earlier(folder: Path, inp) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({MARKER: True, "input": str(inp)}))


def test_default_output_replaces_only_the_same_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_output("sample", "A/sample") == (Path("outputs/sample"), False)
    _earlier(tmp_path / "outputs" / "sample", "A/sample")
    assert default_output("sample", "A/sample") == (Path("outputs/sample"), True)
    assert default_output("sample", str(tmp_path / "A" / "sample")) == (Path("outputs/sample"), True)  # same, resolved
    # another input of the same name (B/sample): beside it, and its own folder is replaced on the next run
    assert default_output("sample", "B/sample") == (Path("outputs/sample-2"), False)
    _earlier(tmp_path / "outputs" / "sample-2", "B/sample")
    assert default_output("sample", "B/sample") == (Path("outputs/sample-2"), True)
    # a folder that is not a prediction (a user's files) is never replaced
    (tmp_path / "outputs" / "mine").mkdir()
    (tmp_path / "outputs" / "mine" / "notes.txt").write_text("keep")
    assert default_output("mine", "C/mine") == (Path("outputs/mine-2"), False)


def test_a_stack_stored_z_last_is_named_in_a_warning(caplog):
    from seglearn.segment.predict_guard import warn_axis_order

    with caplog.at_level("WARNING", logger="seglearn"):
        assert warn_axis_order((96, 96, 16), "yxz.tif")
        assert not warn_axis_order((16, 96, 96), "zyx.tif") and not warn_axis_order((400, 256, 256), "deep.tif")
        assert not warn_axis_order((12, 20, 20), "small.tif")  # a small crop, not a swapped one
    assert "yxz.tif: 96 slices of 96 x 16 px; is the stack stored (Y, X, Z)?" in caplog.text
    assert "zyx.tif" not in caplog.text


def test_raw_reader_reads_a_block_once():
    """The block's own slices, read again after the network (blank-slice check), come from the last read."""
    import numpy as np
    import pytest

    from seglearn.segment.predict_io import raw_reader

    class Counting:
        def __init__(self, a):
            self.a, self.n = a, 0

        def read(self, a, b):
            self.n += 1
            return self.a[a:b]

    vols = [Counting(np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4) + i) for i in range(2)]
    read = raw_reader(["SE2.tif", "InLens.tif"], vols)
    block = read(2, 9)
    assert vols[0].n == 1 and np.array_equal(read(3, 6), block[:, 1:4]) and vols[0].n == 1
    with pytest.raises(ValueError):
        block[0, 0, 0, 0] = 7  # read-only: a later read of the same slices sees the file's values
    read(0, 4)
    assert vols[0].n == 2


def test_a_one_class_result_is_named_in_a_warning(tmp_path, caplog):
    """A 0/1 mask given as the image was segmented as 100 % pore with exit code 0: now a warning in the log
    and in summary.json (real predictions of data/demo stay quiet: test_intensity_scale.py)."""
    import numpy as np
    import tifffile
    from omegaconf import OmegaConf

    from seglearn.runner import predict
    from seglearn.segment.predict_guard import one_class_warning

    assert one_class_warning({"pore": 0.5, "carbon_binder": 0.1, "active_material": 0.4}, "x") is None
    assert "99.0 % of the segmented voxels are pore" in one_class_warning({"pore": 0.99, "active_material": 0.01}, "x")
    mask = (np.random.default_rng(0).random((6, 64, 64)) > 0.5).astype(np.uint8)  # 0 / 1: nearly black as 8-bit
    files = []
    for det in ("SE2", "InLens"):
        tifffile.imwrite(tmp_path / f"{det}.tif", mask)
        files.append(str(tmp_path / f"{det}.tif"))
    root = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.merge(OmegaConf.load(root / "configs" / "predict.yaml"),
                          {"ckpt": str(root / "checkpoints" / "demo.ckpt"), "input": files,
                           "output": str(tmp_path / "out"), "preview": False, "device": "cpu", "bf16": False})
    summary = predict(cfg)
    assert max(summary["fractions"].values()) > 0.98 and "of the segmented voxels are" in summary["warnings"][0]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["warnings"] == summary["warnings"]
