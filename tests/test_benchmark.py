"""The benchmark runner and its command line on the tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seglearn.benchmark.report import markdown_table
from seglearn.benchmark.run import method_config

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_benchmark_cli_writes_table_json_and_panel(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    r = _cli(f"data.root={tiny_dataset}", f"out={out}", "methods=[double_threshold,rf_tailored]",
             "rf_tailored.n_estimators=20", "rf_tailored.n_jobs=1", "rf_tailored.features.ilastik.sigmas=[0.7,1.6]",
             "roi=[[0,24],[8,40],[8,40]]")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    by = {m["method"]: m for m in res["methods"]}
    assert set(by) == {"double_threshold", "rf_tailored"}
    for m in by.values():
        assert "error" not in m
        assert len(m["full"]["iou"]) == 3 and m["fit_s"] >= 0 and m["predict_s"] >= 0
        assert m["roi"]["n_scored"] < m["full"]["n_scored"]
    assert by["rf_tailored"]["full"]["awe"] < by["double_threshold"]["full"]["awe"]
    md = (out / "results.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "method" not in ln]
    assert [ln.split("|")[1].strip() for ln in rows][-1] == "rf_tailored"  # sorted worst first
    assert "awe ROI %" in md
    assert (out / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # unknown methods fail in one line, before any work
    r = _cli(f"data.root={tiny_dataset}", f"out={tmp_path / 'b2'}", "methods=[nope]")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b2").exists()


def test_benchmark_refuses_to_overwrite(tiny_dataset, tmp_path):
    from seglearn.benchmark.run import run_benchmark
    from seglearn.errors import OutputExistsError

    (tmp_path / "results.json").write_text("{}")
    cfg = {"data": {"root": str(tiny_dataset)}, "out": str(tmp_path), "methods": ["otsu"],
           "otsu": {"impl": "otsu", "detector": "SE2"}}
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        run_benchmark(cfg)
    res = run_benchmark({**cfg, "overwrite": True})
    assert res["methods"][0]["method"] == "otsu" and "error" not in res["methods"][0]


def test_every_method_config_resolves():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from seglearn.baselines.registry import METHODS, fit_method  # noqa: F401
    import inspect

    from seglearn.baselines.registry import get_method

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("benchmark", overrides=["data.root=x"]), resolve=True)
    names = [p.stem for p in (ROOT / "configs" / "method").glob("*.yaml")]
    assert set(cfg["methods"]) <= set(names)
    for name in names:
        impl, params = method_config(cfg, name)
        fit, _ = get_method(impl)
        known = {k for k, p in inspect.signature(fit).parameters.items() if p.kind is p.KEYWORD_ONLY}
        # every parameter in the config is a parameter of the method, and every parameter is in the config
        assert set(params) == known, (name, set(params) ^ known)


def test_markdown_table_lists_failures():
    rows = [{"method": "a", "full": {"iou": [0.5, 0.5, 0.5], "awe": 50.0}, "roi": None, "fit_s": 1, "predict_s": 2},
            {"method": "b", "error": "boom"}]
    md = markdown_table(rows, ["p", "c", "n"], roi=False)
    assert "| a | 0.500 | 0.500 | 0.500 | 50.0 | 1.0 | 2.0 |" in md and "failed: boom" in md


def test_base_model_zero_shot_and_fine_tuned_are_methods(tiny_dataset, tmp_path):
    """benchmark.py scores a pretrained base model as it is and fine-tuned on the scribbles."""
    from seglearn.benchmark.run import run_benchmark

    import yaml

    def conf(name):
        return yaml.safe_load((ROOT / "configs" / "method" / f"{name}.yaml").read_text())

    base = ROOT / "checkpoints" / "fibsem_base.ckpt"
    cfg = {"data": {"root": str(tiny_dataset)}, "out": str(tmp_path / "b"), "methods": ["zs", "ft"],
           "zs": {**conf("unet_zeroshot"), "ckpt": str(base)},
           "ft": {**conf("unet_finetune"), "init": str(base), "out_dir": str(tmp_path / "ft"),
                  "finetune": {"max_steps": 3, "val_every": 2, "batch_size": 2, "patch": 32, "threads": 1}}}
    res = run_benchmark(cfg)
    by = {m["method"]: m for m in res["methods"]}
    assert "error" not in by["zs"] and "error" not in by["ft"], res
    assert (tmp_path / "ft" / "best.ckpt").exists()
    for m in by.values():
        assert 0 <= m["full"]["awe"] <= 100 and len(m["full"]["iou"]) == 3
