"""``trainer=ddp`` for fine-tuning: 2 CPU processes over gloo (issue 26). U-Net training and pretraining
under ``trainer=ddp`` are tested in ``test_distributed.py``; the three share one Trainer set-up
(:func:`seglearn.precision.trainer_device`, ``test_engine.py``).

Lightning's DDP launcher starts the other process by re-running the command line, so these run
``train.py`` in a subprocess, never in the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seglearn.ckpt import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "checkpoints" / "fibsem_base.ckpt"
TINY_FT = ["finetune.max_steps=3", "finetune.val_every=2", "finetune.batch_size=2", "finetune.patch=32",
           "finetune.phantom_shape=[8,32,32]", "finetune.cache=1", "finetune.threads=1", "finetune.blend=off",
           "finetune.keep_best=false"]  # the last weights: they must have moved


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SEGLEARN_DEBUG", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.parametrize("runs", [1, 2])
def test_ddp_finetuning_on_two_cpu_processes(tiny_dataset, tmp_path, runs):
    """``train.py init=BASE trainer=ddp trainer.devices=2`` on the CPU: one fine-tuned model written by rank 0,
    trained by both processes (``processes: 2`` in the summary) for the steps asked; with ``runs=2`` each run
    is its own Trainer under the same two processes and the runs are averaged into one model."""
    out = tmp_path / "ft"
    res = run(str(ROOT / "train.py"), f"data.root={tiny_dataset}", f"init={BASE}", f"out_dir={out}", "trainer=ddp",
              "trainer.accelerator=cpu", "trainer.devices=2", "trainer.enable_progress_bar=false",
              f"finetune.runs={runs}", *TINY_FT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stderr + res.stdout
    summary = json.loads((out / "finetune_summary.json").read_text())
    each = summary["runs"] if runs > 1 else [summary]
    assert len(each) == runs and all(r["steps"] == 3 for r in each)
    assert summary["precision"]["processes"] == 2 and summary["val_source"] == "test"
    assert [h["step"] for h in (json.loads((out / "runs" / "run0" / "finetune_summary.json").read_text())
                                if runs > 1 else summary)["history"]] == [0, 2, 3]
    ck = load_checkpoint(out / "best.ckpt", kind="unet")
    assert ck["meta"]["finetune"]["init"] == str(BASE)
    base = load_checkpoint(BASE, kind="unet")["state_dict"]
    moved = [k for k in base if k.endswith("weight") and not np.array_equal(base[k].numpy(), ck["state_dict"][k].numpy())]
    assert moved, "the fine-tuned weights equal the base model's"
    assert not list(out.glob("*.tmp*")) and not list(tmp_path.glob("ft.*"))  # rank 1 left nothing behind
