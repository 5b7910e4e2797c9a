"""A non-editable install runs the commands from any directory (issue 26).

The project is built into a wheel (``pip wheel --no-deps``) from a copy of its packaging files,
installed with ``pip install --no-deps --target T`` and run from an unrelated working directory
with ``PYTHONPATH=T`` only: the configs must come from the installed package, not the checkout.
To prove that, the installed copy of ``synth.yaml`` gets a different default ``name`` before the run.
About a minute on the shared 2-core machine (a wheel build and three commands; marked ``slow``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tifffile
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "seglearn" / "configs"


def _run(args: list[str], cwd: Path, target: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SEGLEARN"))}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{args[:3]} failed ({r.returncode}):\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """``(wheel, target)``: the wheel built from a copy of the checkout and the folder it is installed in."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"  # a copy, so the build writes nothing into the shared working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "seglearn", src / "seglearn", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # no build isolation: build with this environment's setuptools (offline, no index needed)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "wheel"), str(src)],
                   check=True, capture_output=True, cwd=base)
    wheel = next((base / "wheel").glob("seglearn-*.whl"))
    target = base / "target"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, cwd=base)
    return wheel, target


def test_wheel_ships_every_config(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as z:
        shipped = {n for n in z.namelist() if n.startswith("seglearn/configs/") and n.endswith(".yaml")}
        scripts = z.read(next(n for n in z.namelist() if n.endswith("entry_points.txt"))).decode()
    expected = {f"seglearn/{p.relative_to(ROOT / 'seglearn').as_posix()}" for p in CONFIGS.rglob("*.yaml")}
    assert expected and shipped == expected
    for name in ("train", "predict", "synth", "benchmark", "characterise", "preprocess", "tofsims", "suggest"):
        assert f"seglearn-{name} = " in scripts


@pytest.mark.slow
def test_commands_run_from_any_directory(installed, tmp_path):
    """``seglearn-synth``, ``python -m seglearn predict`` and ``seglearn-train`` from an unrelated cwd use the
    installed YAML and write nothing there."""
    _, target = installed
    synth_yaml = target / "seglearn" / "configs" / "synth.yaml"
    text = synth_yaml.read_text()
    assert "\nname: phantom\n" in text
    synth_yaml.write_text(text.replace("\nname: phantom\n", "\nname: from_the_wheel\n"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    where = _run([sys.executable, "-c", "import seglearn.paths as p; print(p.CONFIGS)"], cwd, target).stdout
    assert Path(where.strip()) == (target / "seglearn" / "configs").resolve()

    phantom = tmp_path / "ph"
    _run([str(target / "bin" / "seglearn-synth"), f"out={phantom}", "shape=[8,32,32]", "seed=1"], cwd, target)
    assert yaml.safe_load((phantom / "dataset.yaml").read_text())["name"] == "from_the_wheel"

    pred = tmp_path / "pred"
    _run([sys.executable, "-m", "seglearn", "predict", f"ckpt={ROOT / 'checkpoints' / 'demo.ckpt'}",
          f"input={phantom}", f"output={pred}", "device=cpu", "preview=false"], cwd, target)
    labels = tifffile.imread(pred / "labels.tif")
    assert labels.shape == (8, 32, 32) and set(labels.ravel().tolist()) <= {1, 2, 3}
    assert json.loads((pred / "summary.json").read_text())

    run = tmp_path / "run"  # training too: train.yaml and its groups (model, trainer, ...) from the wheel
    _run([str(target / "bin" / "seglearn-train"), f"data.root={phantom}", f"out_dir={run}", "trainer.max_steps=2",
          "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "model.net.base=4", "model.net.depth=2",
          "model.batch_size=2", "model.patch=[1,32,32]", "model.inference.tile=[4,32,32]", "model.steps_per_epoch=2"],
         cwd, target)
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2 and (run / "best.ckpt").is_file()
    assert sorted(p.name for p in cwd.iterdir()) == []  # nothing written into the working directory
