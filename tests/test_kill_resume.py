"""Interrupted runs (issues 11, 25): train.py killed and resumed, predict.py killed leaves no
output folder (its set is written in a temporary sibling) and a re-run takes over its lock and
completes; two CPU runs give identical predictions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_train_predict_cli import ROOT, TINY_NET, run

pytestmark = pytest.mark.slow


def _start(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 240.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_train_killed_then_resumed_finishes(tiny_dataset, tmp_path, sig):
    out = tmp_path / "run"
    args = [f"data.root={tiny_dataset}", f"out_dir={out}", *TINY_NET, "model.early_stopping.patience=0"]
    proc = _start("train.py", *args, "trainer.max_steps=150", "trainer.max_time=null")
    assert _wait_for(lambda: (out / "last.ckpt").exists(), proc), "no last.ckpt before the run ended"
    time.sleep(0.3)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0, "the run finished before it could be killed; make it longer"
    from seglearn.ckpt import load_checkpoint

    ck = load_checkpoint(out / "last.ckpt")  # intact after the kill
    done = ck.get("global_step", 0)
    assert done < 150
    res = run("train.py", *args, "trainer.max_steps=150", "trainer.max_time=null", f"ckpt_path={out / 'last.ckpt'}")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 150


def test_predict_killed_leaves_no_labels_and_rerun_completes(tmp_path):
    out = tmp_path / "pred"
    # 8 TTA passes: the writing lasts long enough (seconds) for the kill to land inside it
    args = ["input=data/demo", f"output={out}", "block_slices=2", "preview=false", "tta=dihedral"]
    proc = _start("predict.py", *args)

    def writing() -> bool:  # the result set is written in a temporary sibling .pred.tmp-PID
        return any(p.name.startswith(".labels.tif.tmp-") for d in tmp_path.glob(".pred.tmp-*") for p in d.iterdir())

    assert _wait_for(writing, proc), "predict.py ended before writing started"
    time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=60)
    assert not out.exists(), "a partial result set appeared under the output folder's name"
    assert (tmp_path / ".pred.lock").exists()  # the killed run's lock: taken over by the re-run
    res = run("predict.py", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    from seglearn.io import read_stack

    labels, _ = read_stack(out / "labels.tif")
    assert labels.shape == (64, 128, 128) and labels.min() >= 1
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "summary.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"], "temporary folder or lock left behind"


def test_same_seed_bit_identical_predictions(tiny_dataset, tmp_path):
    outs = []
    for i in range(2):
        o = tmp_path / f"p{i}"
        res = run("predict.py", f"input={tiny_dataset}", f"output={o}", "preview=false", "probabilities=true")
        assert res.returncode == 0, res.stderr[-2000:]
        outs.append(o)
    import tifffile

    a = tifffile.imread(outs[0] / "probabilities.tif")
    b = tifffile.imread(outs[1] / "probabilities.tif")
    assert np.array_equal(a, b)
    assert (outs[0] / "labels.tif").read_bytes() == (outs[1] / "labels.tif").read_bytes()
