"""Output folders (issue 25): claimed by one run (lock), published complete by one rename,
replaced as a whole with overwrite=true, and what killed runs left is cleaned or finished.
``CORPUS_CASES`` join the bad-input corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cli_harness import Case  # noqa: E402

from seglearn.errors import OutputExistsError  # noqa: E402
from seglearn.io.outset import FolderLock, OutputBusyError, OutputSet  # noqa: E402

#: locks held by corpus set-ups for the duration of the test session (a flock is per open file)
_HELD: list = []


def _dead_pid() -> int:
    """The id of a process that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _hold_lock(ws):
    while _HELD:  # the previous case's lock
        _HELD.pop().release()
    _HELD.append(FolderLock(ws.out).acquire())


def _stale(ws):
    """A lock file and a half-written temporary set of a killed run."""
    pid = _dead_pid()
    (ws.tmp / ".out.lock").write_text(json.dumps({"pid": pid, "host": "elsewhere", "time": "2026-01-01T00:00:00"}))
    tmp = ws.tmp / f".out.tmp-{pid}"
    tmp.mkdir()
    (tmp / "labels.tif").write_bytes(b"half")
    return {"dead": pid}


def _old_set(ws):
    ws.out.mkdir()
    (ws.out / "labels.tif").write_bytes(b"an earlier run")
    (ws.out / "probabilities.tif").write_bytes(b"an earlier run's probabilities")


def _keep(ws):
    ws.out.mkdir()
    (ws.out / "notes.txt").write_text("mine")


def _bad_test_labels(ws):
    """A dataset whose test labels have another shape: found after the output folder is claimed."""
    import shutil

    import numpy as np
    import tifffile

    shutil.copytree(ws.dataset, ws.tmp / "ds")
    tifffile.imwrite(ws.tmp / "ds" / "labels" / "test.tif", np.ones((6, 16, 16), np.uint8))


def _inputs_in_folder(ws):
    import shutil

    (ws.tmp / "in").mkdir()
    for det in ("SE2", "InLens"):
        shutil.copy(ws.dataset / "images" / f"{det}.tif", ws.tmp / "in" / f"{det}.tif")


def _file(ws):
    ws.out.write_text("a file where the output folder goes")


_PREDICT = ["predict.py", "ckpt={ckpt}", "input={dataset}", "output={out}", "preview=false"]

CORPUS_CASES = [
    Case("predict-output-locked-by-another-run", _PREDICT, "another run", ["{out}"], setup=_hold_lock, cls="outputs"),
    Case("predict-output-exists-no-overwrite", _PREDICT, "overwrite=true", unchanged=["{out}"], setup=_keep,
         cls="outputs"),
    Case("predict-output-is-a-file", _PREDICT, "is a file", unchanged=["{out}"], setup=_file, cls="outputs"),
    Case("predict-overwrite-output-holding-the-input", ["predict.py", "ckpt={ckpt}",
                                                         "input=[{tmp}/in/SE2.tif,{tmp}/in/InLens.tif]",
                                                         "output={tmp}/in", "overwrite=true"], "holds the input",
         unchanged=["{tmp}/in"], setup=_inputs_in_folder, cls="outputs"),
    Case("characterise-output-locked-by-another-run", ["characterise.py", "input={bad[good_labels]}", "output={out}",
                                                        "voxel_size_nm=10"], "another run", ["{out}"],
         setup=_hold_lock, cls="outputs"),
    Case("characterise-output-exists-no-overwrite", ["characterise.py", "input={bad[good_labels]}", "output={out}",
                                                      "voxel_size_nm=10"], "overwrite=true", unchanged=["{out}"],
         setup=_keep, cls="outputs"),
    # valid controls (that the stale files are gone is checked by test_cli_replaces_whole_set_and_takes_over_stale_lock)
    Case("predict-overwrite-replaces-whole-set", [*_PREDICT, "overwrite=true"], code=0, setup=_old_set, cls="outputs"),
    Case("predict-stale-lock-taken-over", _PREDICT, code=0, setup=_stale, cls="outputs"),
    Case("predict-failure-after-claim-leaves-nothing", ["predict.py", "ckpt={ckpt}", "input={tmp}/ds", "output={out}"],
         "test.tif", ["{out}", "{tmp}/.out.lock"], setup=_bad_test_labels, cls="outputs"),
]

#: the other commands that write a folder of results (synth, preprocess, tofsims): same three rows each
_FOLDER_COMMANDS = {
    "synth": ["-m seglearn.synth", "out={out}", "shape=[6,32,32]", "n_train_slices=2", "test_gap=1"],
    "preprocess": ["preprocess.py", "input={dataset}", "output={out}", "preprocess=none", "progress=false"],
    "tofsims": ["tofsims.py", "input={bad[tofsims_good]}", "ions=[Ni+,C2H-]", "output={out}"],
}
for _cmd, _argv in _FOLDER_COMMANDS.items():
    CORPUS_CASES += [
        Case(f"{_cmd}-output-locked-by-another-run", _argv, "another run", ["{out}"], setup=_hold_lock,
             cls="outputs"),
        Case(f"{_cmd}-output-exists-no-overwrite", _argv, "overwrite=true", unchanged=["{out}"], setup=_keep,
             cls="outputs"),
        # valid control (that the earlier set's files are gone: test_folder_commands_replace_the_whole_set)
        Case(f"{_cmd}-overwrite-replaces-whole-set", [*_argv, "overwrite=true"], code=0, setup=_old_set,
             cls="outputs"),
    ]

CORPUS_CASES += [
    Case("finetune-zero-steps", ["train.py", "data.root={dataset}", "out_dir={out}",
                                 "init={root}/checkpoints/fibsem_base.ckpt", "finetune.max_steps=1",
                                 "finetune.runs=1", "finetune.max_minutes=1e-9", "finetune.denoise=off"],
         "ran 0 steps", ["{out}"], cls="false-success"),
]


# --------------------------------------------------------------------------- unit tests


def test_second_claim_is_refused_and_released_lock_is_free(tmp_path):
    out = tmp_path / "out"
    first = OutputSet(out)
    tmp = first.claim()
    assert tmp.is_dir() and not out.exists()
    rec = json.loads((tmp_path / ".out.lock").read_text())
    assert rec["pid"] == os.getpid() and rec["host"]
    with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
        OutputSet(out, replace=True).claim()
    (tmp / "labels.tif").write_text("new")
    first.publish()
    assert (out / "labels.tif").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock, no temporary folder
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        OutputSet(out).claim()
    assert not (tmp_path / ".out.lock").exists()


def test_lock_of_another_process_is_respected(tmp_path):
    """A lock held by a live process (flock) refuses; once it ends the lock is taken over."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'{\"pid\": %d, \"host\": \"h\"}' % os.getpid()); "
            "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / ".out.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid} on h"):
            OutputSet(tmp_path / "out").claim()
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with OutputSet(tmp_path / "out") as tmp:  # the holder ended: its lock is taken over
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").exists()


def test_overwrite_replaces_the_whole_set_and_failure_keeps_the_old_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.tif").write_text("old")
    (out / "probabilities.tif").write_text("old")
    with pytest.raises(RuntimeError):
        with OutputSet(out, replace=True) as tmp:
            (tmp / "labels.tif").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif", "probabilities.tif"]
    assert (out / "labels.tif").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with OutputSet(out, replace=True) as tmp:
        (tmp / "labels.tif").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["labels.tif"]
    assert (out / "labels.tif").read_text() == "new"


def test_killed_runs_are_cleaned_or_finished(tmp_path):
    out = tmp_path / "out"
    pid = _dead_pid()
    half = tmp_path / f".out.tmp-{pid}"
    half.mkdir()
    (half / "labels.tif").write_text("half")
    (tmp_path / ".out.lock").write_text(json.dumps({"pid": pid, "host": "h"}))
    with OutputSet(out) as tmp:
        assert not half.exists()
        (tmp / "labels.tif").write_text("new")
    assert (out / "labels.tif").read_text() == "new"
    # killed between its two renames: the old set moved away, the complete new set not yet in place
    pid = _dead_pid()
    os.rename(out, tmp_path / f".out.old-{pid}")
    done = tmp_path / f".out.tmp-{pid}"
    done.mkdir()
    (done / "labels.tif").write_text("complete")
    with OutputSet(out, replace=True) as tmp:
        assert (out / "labels.tif").read_text() == "complete"  # published by the next claim
        (tmp / "labels.tif").write_text("newest")
    assert (out / "labels.tif").read_text() == "newest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_folder_holding_an_input_is_never_replaced(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "SE2.tif").write_text("input")
    with pytest.raises(OutputExistsError, match="holds the input"):
        OutputSet(data, replace=True, inputs=[data / "SE2.tif"]).claim()
    assert (data / "SE2.tif").read_text() == "input" and not (tmp_path / ".data.lock").exists()


def test_output_parent_that_is_a_file_is_refused(tmp_path):
    from seglearn.errors import SeglearnError

    (tmp_path / "f").write_text("x")
    with pytest.raises(SeglearnError, match="is a file"):
        OutputSet(tmp_path / "f" / "out").claim()


def test_cli_replaces_whole_set_and_takes_over_stale_lock(tmp_path):
    """predict.py: overwrite=true leaves no file of the earlier run; a killed run's lock and temporary set go."""
    from bad_inputs import _good_dataset
    from cli_harness import Workspace, run_cli

    dataset = _good_dataset(tmp_path / "ds")
    ws = Workspace(tmp=tmp_path / "case", bad={}, dataset=dataset)
    ws.tmp.mkdir()
    _old_set(ws)
    dead = _stale(ws)["dead"]
    r = run_cli([a.format(ckpt=ws.ckpt, dataset=dataset, out=ws.out) for a in _PREDICT] + ["overwrite=true"])
    assert r.code == 0, r.stderr[-2000:]
    assert "took over the lock" in r.stderr and str(dead) in r.stderr
    assert sorted(p.name for p in ws.out.iterdir()) == ["labels.tif", "summary.json"]
    assert sorted(p.name for p in ws.tmp.iterdir()) == ["out"]
    assert json.loads((ws.out / "summary.json").read_text())["labels"] == "labels.tif"


@pytest.mark.slow
def test_torchrun_prediction_into_a_locked_folder_stops_every_rank(tmp_path):
    """Only rank 0 claims the folder; when it cannot, every rank stops with its message (no deadlock)."""
    import time

    from bad_inputs import _good_dataset

    dataset = _good_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SEGLEARN_DEBUG")}
    lock = FolderLock(out).acquire()
    try:
        t0 = time.time()
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(Path(__file__).parents[1] / "predict.py"), f"input={dataset}", f"output={out}",
                              "device=cpu", "preview=false"], cwd=Path(__file__).parents[1],
                             env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    finally:
        lock.release()
    assert res.returncode != 0
    assert res.stderr.count("seglearn: error:") == 2 and "another run" in res.stderr  # one line from each rank
    assert time.time() - t0 < 150 and not out.exists()


@pytest.mark.parametrize("cmd", sorted(_FOLDER_COMMANDS))
def test_folder_commands_replace_the_whole_set(cmd, tmp_path):
    """synth / preprocess / tofsims with overwrite=true: only the new set remains, nothing beside it."""
    import numpy as np
    from bad_inputs import _good_dataset
    from cli_harness import Workspace, run_cli

    bad = {"tofsims_good": tmp_path / "tof"}
    bad["tofsims_good"].mkdir()
    for ion in ("Ni+", "C2H-"):  # as tests/bad_inputs.py writes it
        rows = "\n".join(" ".join(str(v) for v in r) for r in np.random.default_rng(3).integers(0, 50, (16, 16)))
        (bad["tofsims_good"] / f"{ion}.txt").write_text(f"# Ion: {ion}\n# Image size: 16 x 16\n"
                                                       f"# Field of view: 10 um\n{rows}\n")
    dataset = _good_dataset(tmp_path / "ds") if cmd == "preprocess" else tmp_path / "none"
    ws = Workspace(tmp=tmp_path / "case", bad=bad, dataset=dataset)
    ws.tmp.mkdir()
    _old_set(ws)
    r = run_cli([ws.fill(a) for a in _FOLDER_COMMANDS[cmd]] + ["overwrite=true"])
    assert r.code == 0, r.stderr[-2000:]
    names = {p.name for p in ws.out.iterdir()}
    assert "labels.tif" in names or "dataset.yaml" in names
    assert "probabilities.tif" not in names  # the earlier run's file went with its set
    assert sorted(p.name for p in ws.tmp.iterdir()) == ["out"]  # no lock, no temporary folder
    if cmd == "synth":
        import yaml

        assert yaml.safe_load((ws.out / "dataset.yaml").read_text())["name"] == "phantom"
    if cmd == "tofsims":  # summary.json names the published folder, not the temporary one
        outputs = json.loads((ws.out / "summary.json").read_text())["outputs"]
        assert all(str(Path(v).parent) == str(ws.out) for k, v in outputs.items() if k != "slicegan_rgb")
