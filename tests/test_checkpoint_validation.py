"""Untrusted checkpoints are checked before any network is built (issue 25), and training that
produced nothing says so: keys, declared sizes, tensor shapes, finite weights; resume
compatibility; a run of 0 steps exits non-zero. ``CORPUS_CASES`` join the bad-input corpus."""

from __future__ import annotations

import copy
import shutil
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from cli_harness import DEMO_CKPT, Case, run_cli  # noqa: E402

from seglearn.ckpt import load_checkpoint, save_checkpoint, validate_checkpoint  # noqa: E402
from seglearn.errors import InputError  # noqa: E402

pytestmark = pytest.mark.skipif(not DEMO_CKPT.exists(), reason="checkpoints/demo.ckpt is absent")

#: a small U-Net that trains in about a second in-process
TINY = ["model.net.base=4", "model.net.depth=2", "model.batch_size=2", "model.patch=[1,32,32]",
        "model.inference.tile=[4,32,32]", "model.inference.overlap=[0,16,16]", "model.steps_per_epoch=2",
        "trainer.enable_progress_bar=false"]


def _demo() -> dict:
    return load_checkpoint(DEMO_CKPT)


def _variant(edit):
    """A corpus ``setup``: the demo checkpoint changed by ``edit(ckpt)``, saved as {tmp}/bad.ckpt."""

    def setup(ws):
        ck = _demo()
        edit(ck)
        torch.save(ck, ws.tmp / "bad.ckpt")

    return setup


def _first(ck) -> str:
    return next(iter(ck["state_dict"]))


def _huge(ck):
    ck["meta"]["net"]["base"] = 1_000_000


def _tiny_state_huge_net(ws):
    """A few-KB file that declares a network of gigabytes (and holds almost no weights)."""
    ck = _demo()
    ck["meta"]["net"]["base"] = 1_000_000
    ck["state_dict"] = {"unet.head.bias": torch.zeros(3)}
    torch.save(ck, ws.tmp / "bad.ckpt")


def _stardist_huge(ws):
    save_checkpoint(ws.tmp / "bad.ckpt", kind="stardist", state_dict={"w": torch.zeros(2)},
                    meta={"net": {"in_channels": 2, "n_rays": 10 ** 6, "grid": [2, 2], "depth": 3,
                                  "base_filters": 32, "head_filters": 128},
                          "normalisation": {"kind": "per_image"}, "thresholds": {"prob": 0.5, "nms": 0.4}})


def _text(ws):
    (ws.tmp / "bad.ckpt").write_text("model: unet\nbase: 16\n")


_RUNS: dict = {}


def _trained_run(dataset) -> Path:
    """One tiny U-Net run (best.ckpt, last.ckpt) per session, copied by the resume cases."""
    key = str(dataset)
    if key not in _RUNS:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="seglearn_resume_")) / "run"
        r = run_cli(["train.py", f"data.root={dataset}", f"out_dir={out}", "trainer.max_steps=2", *TINY])
        assert r.code == 0, r.stderr[-2000:]
        _RUNS[key] = out
    return _RUNS[key]


def _with_run(ws):
    run = _trained_run(ws.dataset)
    shutil.copytree(run, ws.tmp / "run")


def _with_run_and_other_data(ws):
    _with_run(ws)
    from bad_inputs import _good_dataset

    _good_dataset(ws.tmp / "other_data", seed=7)


_PREDICT = ["predict.py", "ckpt={tmp}/bad.ckpt", "input={dataset}", "output={out}"]

CORPUS_CASES = [
    Case("predict-ckpt-huge-width", _PREDICT, "net.base", ["{out}"], setup=_variant(_huge), cls="checkpoints"),
    Case("predict-ckpt-tiny-file-huge-net", _PREDICT, "net.base", ["{out}"], setup=_tiny_state_huge_net,
         cls="checkpoints"),
    Case("predict-ckpt-wrong-shape", _PREDICT, "has shape", ["{out}"],
         setup=_variant(lambda ck: ck["state_dict"].__setitem__(_first(ck), torch.zeros(3, 3))), cls="checkpoints"),
    Case("predict-ckpt-missing-key", _PREDICT, "missing", ["{out}"],
         setup=_variant(lambda ck: ck["state_dict"].pop(_first(ck))), cls="checkpoints"),
    Case("predict-ckpt-extra-key", _PREDICT, "unexpected", ["{out}"],
         setup=_variant(lambda ck: ck["state_dict"].__setitem__("evil.weight", torch.zeros(2))), cls="checkpoints"),
    Case("predict-ckpt-nan-weights", _PREDICT, "NaN", ["{out}"],
         setup=_variant(lambda ck: ck["state_dict"][_first(ck)].fill_(float("nan"))), cls="checkpoints"),
    Case("predict-ckpt-classes-mismatch", _PREDICT, "classes", ["{out}"],
         setup=_variant(lambda ck: ck["meta"]["classes"].append("extra")), cls="checkpoints"),
    Case("predict-ckpt-no-net-meta", _PREDICT, "network description", ["{out}"],
         setup=_variant(lambda ck: ck["meta"].pop("net")), cls="checkpoints"),
    Case("predict-ckpt-bad-mode", _PREDICT, "net.mode", ["{out}"],
         setup=_variant(lambda ck: ck["meta"]["net"].__setitem__("mode", "4d")), cls="checkpoints"),
    Case("predict-ckpt-text-file", _PREDICT, "bad.ckpt", ["{out}"], setup=_text, cls="checkpoints"),
    Case("predict-ckpt-stardist-huge-rays", _PREDICT, "net.n_rays", ["{out}"], setup=_stardist_huge,
         cls="checkpoints"),
    Case("train-init-huge-width", ["train.py", "data.root={dataset}", "out_dir={out}", "init={tmp}/bad.ckpt"],
         "net.base", ["{out}"], setup=_variant(_huge), cls="checkpoints"),
    Case("benchmark-unet-ckpt-wrong-shape", ["benchmark.py", "data.root={dataset}", "out={out}", "methods=[unet]",
                                             "unet.ckpt={tmp}/bad.ckpt", "fail_fast=true"], "has shape", ["{out}"],
         setup=_variant(lambda ck: ck["state_dict"].__setitem__(_first(ck), torch.zeros(3, 3))), cls="checkpoints"),
    Case("train-resume-other-dataset", ["train.py", "data.root={tmp}/other_data", "out_dir={out}",
                                        "ckpt_path={tmp}/run/last.ckpt", "trainer.max_steps=3", *TINY],
         "other_data", ["{out}"], setup=_with_run_and_other_data, cls="checkpoints"),
    Case("train-resume-other-architecture", ["train.py", "data.root={dataset}", "out_dir={out}",
                                             "ckpt_path={tmp}/run/last.ckpt", "trainer.max_steps=3", *TINY,
                                             "model.net.base=8"], "base (4 vs 8)", ["{out}"], setup=_with_run,
         cls="checkpoints"),
    Case("train-resume-weights-only", ["train.py", "data.root={dataset}", "out_dir={out}",
                                       "ckpt_path={ckpt}", "trainer.max_steps=3", *TINY], "weights only", ["{out}"],
         cls="checkpoints"),
    Case("train-resume-control", ["train.py", "data.root={dataset}", "out_dir={tmp}/run",
                                  "ckpt_path={tmp}/run/last.ckpt", "trainer.max_steps=3", *TINY], code=0,
         setup=_with_run, cls="checkpoints"),
    Case("train-zero-steps", ["train.py", "data.root={dataset}", "out_dir={out}", "trainer.max_steps=2",
                              "+trainer.limit_train_batches=0", *TINY], "ran 0 steps", ["{out}"],
         cls="false-success"),
]


# --------------------------------------------------------------------------- unit tests


def test_shipped_checkpoints_pass_and_validation_allocates_nothing():
    ck = _demo()
    validate_checkpoint(ck, "demo.ckpt")
    big = copy.deepcopy(ck)
    big["meta"]["net"].update(base=512, depth=8, pool_z=[False] * 8, kernel_z=[1] * 9)
    tracemalloc.start()
    with pytest.raises(InputError, match="parameters"):  # within the per-key bounds, but far too large in total
        validate_checkpoint(big, "big.ckpt")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50e6, f"validation allocated {peak / 1e6:.0f} MB"


@pytest.mark.parametrize("key,value,match", [
    ("in_channels", 0, "net.in_channels"), ("n_classes", 300, "net.n_classes"), ("depth", 40, "net.depth"),
    ("base", 1.5, "net.base"), ("context", -1, "net.context"), ("dropout", 1.0, "net.dropout"),
    ("kernel_z", [5, 5, 5, 5], "net.kernel_z"), ("base", True, "net.base")])
def test_declared_sizes_out_of_bounds_are_refused(key, value, match):
    ck = _demo()
    ck["meta"]["net"][key] = value
    with pytest.raises(InputError, match=match):
        validate_checkpoint(ck, "x.ckpt")


@pytest.mark.parametrize("meta,match", [
    ({"calibration": {"temperature": float("inf")}}, "calibration.temperature"),
    ({"calibration": {"temperature": 1e6}}, "calibration.temperature"),
    ({"calibration": {"temperature": "hot"}}, "calibration.temperature"),
    ({"calibration": {}}, "calibration.temperature"),
])
def test_a_temperature_that_would_flatten_every_softmax_is_refused(meta, match):
    """A tampered calibration would make every voxel one class with exit code 0: refused on loading."""
    ck = _demo()
    ck["meta"].update(meta)
    with pytest.raises(InputError, match=match):
        validate_checkpoint(ck, "x.ckpt")
    ck["meta"]["calibration"] = {"temperature": 1.3}
    validate_checkpoint(ck, "x.ckpt")
    ck["meta"]["normalisation"]["smooth"] = [float("nan"), 0.0]
    with pytest.raises(InputError, match="normalisation.smooth"):
        validate_checkpoint(ck, "x.ckpt")


def test_lightning_training_checkpoint_and_stardist_checkpoint_validate(tmp_path):
    from seglearn.instances.model import build_model

    run = _trained_run(_dataset(tmp_path))
    last = load_checkpoint(run / "last.ckpt")  # net.-prefixed Lightning state dict
    assert any(k.startswith("net.") for k in last["state_dict"])
    net = {"in_channels": 2, "n_rays": 8, "grid": [2, 2], "depth": 2, "base_filters": 4, "head_filters": 8}
    meta = {"net": net, "normalisation": {"lo": [0.0, 0.0], "hi": [1.0, 1.0]}, "thresholds": {"prob": 0.5, "nms": 0.4}}
    sd = build_model(net, in_channels=2).state_dict()
    p = save_checkpoint(tmp_path / "sd.ckpt", kind="stardist", state_dict=sd, meta=meta)
    load_checkpoint(p, kind="stardist")
    bad = {**sd, "dist.weight": torch.zeros(9, 8, 1, 1)}
    p = save_checkpoint(tmp_path / "sd_bad.ckpt", kind="stardist", state_dict=bad, meta=meta)
    with pytest.raises(InputError, match="dist.weight has shape"):
        load_checkpoint(p)
    p = save_checkpoint(tmp_path / "sd_thr.ckpt", kind="stardist", state_dict=sd, meta={**meta, "thresholds": {}})
    with pytest.raises(InputError, match="thresholds"):
        load_checkpoint(p)


def _dataset(tmp_path) -> Path:
    from bad_inputs import _good_dataset

    root = tmp_path.parent / "ckv_dataset"
    if not (root / "dataset.yaml").exists():
        _good_dataset(root)
    return root


def test_resume_into_same_run_continues(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(_trained_run(_dataset(tmp_path)), run)
    r = run_cli(["train.py", f"data.root={_dataset(tmp_path)}", f"out_dir={run}", f"ckpt_path={run / 'last.ckpt'}",
                 "trainer.max_steps=3", *TINY])
    assert r.code == 0, r.stderr[-2000:]
    assert load_checkpoint(run / "last.ckpt")["global_step"] == 3
