"""benchmarks/gpu_check.py on the CPU path (issue 28): it runs every check tiny, writes its JSON + table, exits 0."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_cpu_smoke_run(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--quick"]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["mode"].startswith("cpu smoke run") and result["env"]["torch"] == torch.__version__
    rows = {(r["name"], r["precision"]): r for r in result["rows"]}
    for name in ("train_unet", "train_stardist"):
        assert rows[(name, "fp32")]["value"] > 0 and rows[(name, "fp32")]["unit"] == "steps/s"
    for name in ("pretrain_stream", "pretrain_step", "pretrain"):
        assert next(r for r in result["rows"] if r["name"] == name)["value"] > 0
    pred = [r for r in result["rows"] if r["name"].startswith("predict")]
    assert len(pred) == 4 and all(r["value"] > 0 and r["unit"] == "voxels/s" for r in pred)
    assert not [r for r in result["rows"] if str(r["note"]).startswith("failed")]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| check | device | precision |" in table and table.count("\n| ") == len(result["rows"]) + 1
    if not torch.cuda.is_available():
        assert "no CUDA" in capsys.readouterr().err
