"""Bad inputs through the real command-line entry points (issue 11).

Every case must exit non-zero with one clear line on stderr naming the file and the problem, no
traceback, and leave no output behind. The corpus comes from tests/bad_inputs.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_inputs import make_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo.ckpt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("bad"))


def _cases(c: dict, out: Path) -> list[tuple[str, list[str], str, Path | None]]:
    """(case id, argv, text the error must contain, output path that must not appear)."""
    cases = []
    for name in ("ds_shape_mismatch", "ds_nan_image", "ds_labels_gt_k", "ds_labels_negative", "ds_labels_float",
                 "ds_labels_empty", "ds_missing_key", "ds_unknown_detector", "ds_truncated_image"):
        o = out / f"train_{name}"
        cases.append((f"train-{name}", ["train.py", f"data.root={c[name]}", f"out_dir={o}", "trainer.max_steps=2"],
                      Path(c[name]).name, o))
    o = out / "train_missing"
    cases.append(("train-missing", ["train.py", f"data.root={out / 'nope'}", f"out_dir={o}"], "nope", o))
    for name in ("ckpt_pickle", "ckpt_future_version", "ckpt_foreign", "ckpt_garbage"):
        o = out / f"pred_{name}"
        cases.append((f"predict-{name}", ["predict.py", f"ckpt={c[name]}", f"input={c['good_dataset']}", f"output={o}"],
                      Path(c[name]).name, o))
    o = out / "pred_missing_ckpt"
    cases.append(("predict-missing-ckpt", ["predict.py", f"ckpt={out / 'none.ckpt'}", f"input={c['good_dataset']}",
                                           f"output={o}"], "none.ckpt", o))
    if DEMO_CKPT.exists():
        for name in ("truncated_tif", "empty_tif", "oned_tif", "fourd_tif", "nan_tif", "missing"):
            o = out / f"pred_{name}"
            cases.append((f"predict-{name}", ["predict.py", f"ckpt={DEMO_CKPT}", f"input=[{c[name]},{c[name]}]",
                                              "detectors=[SE2,InLens]", f"output={o}"], Path(c[name]).name, o))
        for name in ("ds_shape_mismatch", "ds_unknown_detector", "ds_truncated_image"):
            o = out / f"pred_{name}"
            cases.append((f"predict-{name}", ["predict.py", f"ckpt={DEMO_CKPT}", f"input={c[name]}", f"output={o}"],
                          Path(c[name]).name, o))
        o = out / "pred_channels"
        cases.append(("predict-channel-mismatch", ["predict.py", f"ckpt={DEMO_CKPT}", f"input=[{c['good_tif']}]",
                                                   "detectors=[SE2]", f"output={o}"], "InLens", o))
        if os.geteuid() != 0:  # root writes into read-only folders anyway
            ro = c["readonly_dir"] / "out"
            cases.append(("predict-readonly-output", ["predict.py", f"ckpt={DEMO_CKPT}", f"input={c['good_dataset']}",
                                                      f"output={ro}"], "readonly_out", ro))
        blocked = c["good_tif"] / "out"  # a folder that cannot be made: its parent is a file
        cases.append(("predict-unwritable-output", ["predict.py", f"ckpt={DEMO_CKPT}", f"input={c['good_dataset']}",
                                                    f"output={blocked}"], "good.tif", None))
    for name in ("ds_labels_gt_k", "ds_missing_key", "ds_shape_mismatch"):
        o = out / f"bench_{name}"
        cases.append((f"benchmark-{name}", ["benchmark.py", f"data.root={c[name]}", f"out={o}", "methods=[otsu]"],
                      Path(c[name]).name, o))
    for name in ("truncated_tif", "empty_tif", "fourd_tif", "missing", "nan_tif"):
        o = out / f"char_{name}"
        cases.append((f"characterise-{name}", ["characterise.py", f"input={c[name]}", f"output={o}",
                                               "voxel_size_nm=10"], Path(c[name]).name, o))
    for name in ("ds_shape_mismatch", "ds_missing_key", "ds_truncated_image"):
        o = out / f"pre_{name}"
        cases.append((f"preprocess-{name}", ["preprocess.py", f"input={c[name]}", f"output={o}"], Path(c[name]).name, o))
    o = out / "train_other_kind"
    cases.append(("train-init-other-kind", ["train.py", f"data.root={c['good_dataset']}", f"out_dir={o}",
                                            f"init={c['ckpt_other_kind']}"], "stardist_kind.ckpt", o))
    o = out / "bench_other_kind"
    cases.append(("benchmark-unet-other-kind", ["benchmark.py", f"data.root={c['good_dataset']}", f"out={o}",
                                                "methods=[unet]", f"unet.ckpt={c['ckpt_other_kind']}", "fail_fast=true"],
                  "stardist_kind.ckpt", o))
    o = out / "train_target"
    cases.append(("train-foreign-target", ["train.py", f"data.root={c['good_dataset']}", f"out_dir={o}",
                                           "+evil._target_=os.system", "+evil.command=touch_pwned"], "os.system", o))
    o = out / "tof_ragged"
    cases.append(("tofsims-ragged", ["tofsims.py", f"input={c['tofsims_ragged']}", "ions=[Ni+]", f"output={o}"],
                  "Ni+", o))
    return cases


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bad_inputs_through_clis(corpus, tmp_path):
    cases = _cases(corpus, tmp_path)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: _run(case[1]), cases))
    failures = []
    for (cid, argv, must, out), r in zip(cases, results):
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith("seglearn: error:")]
        problems = []
        if r.returncode == 0:
            problems.append("exit code 0")
        if "Traceback" in r.stderr:
            problems.append("traceback on stderr")
        if len(errs) != 1:
            problems.append(f"expected one 'seglearn: error:' line, got {len(errs)}")
        elif must not in errs[0]:
            problems.append(f"error line does not name {must!r}")
        if out is not None and out.exists() and any(out.rglob("*")):
            problems.append(f"output left behind: {sorted(p.name for p in out.rglob('*'))[:5]}")
        if problems:
            failures.append(f"{cid}: {'; '.join(problems)} | stderr: {r.stderr.strip()[-300:]!r}")
    assert not failures, "\n".join(failures)
