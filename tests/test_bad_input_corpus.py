"""The bad-input corpus of issue 25: every command refuses bad input with one line and exit code 2.

Each row is a :class:`cli_harness.Case` run in-process through the real entry point; rows come
from this file and from ``CORPUS_CASES`` of the other test files named in ``SOURCES`` (see the
docstring of ``tests/cli_harness.py``). ``docs/reliability.md`` lists the classes with counts that
:func:`test_reliability_doc_counts_match_the_corpus` keeps in step (``python
tests/test_bad_input_corpus.py`` prints the table).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from cli_harness import DEMO_CKPT, ROOT, Case, Workspace, check_case, run_case  # noqa: E402

#: test modules whose ``CORPUS_CASES`` join the corpus (a missing module or list is skipped)
SOURCES = ("test_intensity_scale", "test_outputs_lock", "test_checkpoint_validation")


#: file names of tests/bad_inputs.make_corpus entries, which the error line must name
FILE_NAMES = {"truncated_tif": "truncated.tif", "empty_tif": "empty.tif", "oned_tif": "oned.tif",
              "fourd_tif": "fourd.tif", "nan_tif": "nan.tif", "missing": "does_not_exist.tif",
              "ckpt_pickle": "pickle_payload.ckpt", "ckpt_future_version": "future_version.ckpt",
              "ckpt_foreign": "foreign.ckpt", "ckpt_garbage": "garbage.ckpt"}


def _root() -> str | None:
    """Root writes into read-only folders anyway."""
    return "running as root" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _ported() -> list[Case]:
    """The cases of issue 11 (formerly the subprocess test ``tests/test_reliability.py``)."""
    rows = []
    for name in ("ds_shape_mismatch", "ds_nan_image", "ds_labels_gt_k", "ds_labels_negative", "ds_labels_float",
                 "ds_labels_empty", "ds_missing_key", "ds_unknown_detector", "ds_truncated_image"):
        rows.append(Case(f"train-{name}", ["train.py", f"data.root={{bad[{name}]}}", "out_dir={out}",
                                           "trainer.max_steps=2"], name, ["{out}"], cls="files"))
    rows.append(Case("train-missing-root", ["train.py", "data.root={tmp}/nope", "out_dir={out}"], "nope", ["{out}"],
                     cls="files"))
    for name in ("ckpt_pickle", "ckpt_future_version", "ckpt_foreign", "ckpt_garbage"):
        rows.append(Case(f"predict-{name}", ["predict.py", f"ckpt={{bad[{name}]}}", "input={dataset}", "output={out}"],
                         FILE_NAMES[name], ["{out}"], cls="checkpoints"))
    rows.append(Case("predict-missing-ckpt", ["predict.py", "ckpt={tmp}/none.ckpt", "input={dataset}", "output={out}"],
                     "none.ckpt", ["{out}"], cls="checkpoints"))
    for name in ("truncated_tif", "empty_tif", "oned_tif", "fourd_tif", "nan_tif", "missing"):
        rows.append(Case(f"predict-{name}", ["predict.py", "ckpt={ckpt}", f"input=[{{bad[{name}]}},{{bad[{name}]}}]",
                                             "detectors=[SE2,InLens]", "output={out}"], FILE_NAMES[name], ["{out}"],
                         cls="files"))
    for name in ("ds_shape_mismatch", "ds_unknown_detector", "ds_truncated_image"):
        rows.append(Case(f"predict-{name}", ["predict.py", "ckpt={ckpt}", f"input={{bad[{name}]}}", "output={out}"],
                         name, ["{out}"], cls="files"))
    rows.append(Case("predict-channel-mismatch", ["predict.py", "ckpt={ckpt}", "input=[{bad[good_tif]}]",
                                                  "detectors=[SE2]", "output={out}"], "InLens", ["{out}"], cls="files"))
    rows.append(Case("predict-readonly-output", ["predict.py", "ckpt={ckpt}", "input={dataset}",
                                                 "output={bad[readonly_dir]}/out"], "readonly_out",
                     ["{bad[readonly_dir]}/out"], cls="outputs", skip=_root))
    rows.append(Case("predict-unwritable-output", ["predict.py", "ckpt={ckpt}", "input={dataset}",
                                                   "output={bad[good_tif]}/out"], "good.tif", cls="outputs"))
    for name in ("ds_labels_gt_k", "ds_missing_key", "ds_shape_mismatch"):
        rows.append(Case(f"benchmark-{name}", ["benchmark.py", f"data.root={{bad[{name}]}}", "out={out}",
                                               "methods=[otsu]"], name, ["{out}"], cls="files"))
    for name in ("truncated_tif", "empty_tif", "fourd_tif", "missing", "nan_tif"):
        rows.append(Case(f"characterise-{name}", ["characterise.py", f"input={{bad[{name}]}}", "output={out}",
                                                  "voxel_size_nm=10"], FILE_NAMES[name], ["{out}"], cls="files"))
    for name in ("ds_shape_mismatch", "ds_missing_key", "ds_truncated_image"):
        rows.append(Case(f"preprocess-{name}", ["preprocess.py", f"input={{bad[{name}]}}", "output={out}"], name,
                         ["{out}"], cls="files"))
    rows.append(Case("train-init-other-kind", ["train.py", "data.root={dataset}", "out_dir={out}",
                                               "init={bad[ckpt_other_kind]}"], "stardist_kind.ckpt", ["{out}"],
                     cls="checkpoints"))
    rows.append(Case("benchmark-unet-other-kind", ["benchmark.py", "data.root={dataset}", "out={out}", "methods=[unet]",
                                                   "unet.ckpt={bad[ckpt_other_kind]}", "fail_fast=true"],
                     "stardist_kind.ckpt", ["{out}"], cls="checkpoints"))
    rows.append(Case("train-foreign-target", ["train.py", "data.root={dataset}", "out_dir={out}",
                                              "+evil._target_=os.system", "+evil.command=touch_pwned"], "os.system",
                     ["{out}", "{root}/touch_pwned"], cls="config"))
    rows.append(Case("tofsims-ragged", ["tofsims.py", "input={bad[tofsims_ragged]}", "ions=[Ni+]", "output={out}"],
                     "Ni+", ["{out}"], cls="files"))
    return rows


#: valid command lines every bad case below varies by one option
BASE = {
    "predict": ["predict.py", "ckpt={ckpt}", "input={dataset}", "output={out}", "preview=false"],
    "train": ["train.py", "data.root={dataset}", "out_dir={out}", "trainer.max_steps=1", "model.batch_size=2",
              "trainer.enable_progress_bar=false"],
    "stardist": ["train.py", "model=stardist", "data.root={dataset}", "out_dir={out}", "model.max_minutes=0.02",
                 "model.batch_size=2", "model.patch_size=[16,16]", "model.depth=1", "model.base_filters=4",
                 "model.head_filters=4"],
    "finetune": ["train.py", "data.root={dataset}", "out_dir={out}", "init={root}/checkpoints/fibsem_base.ckpt",
                 "finetune.max_steps=1", "finetune.runs=1", "finetune.batch_size=2", "finetune.val_tile=16",
                 "finetune.denoise=off"],
    "benchmark": ["benchmark.py", "data.root={dataset}", "out={out}", "methods=[otsu]"],
    "characterise": ["characterise.py", "input={bad[good_labels]}", "output={out}", "voxel_size_nm=10",
                     "steps=[fractions]", "plots=false", "html=false", "progress=false"],
    "preprocess": ["preprocess.py", "input={dataset}", "output={out}", "preprocess=none", "progress=false"],
    "tofsims": ["tofsims.py", "input={bad[tofsims_good]}", "ions=[Ni+,C2H-]", "output={out}"],
    "synth": ["-m seglearn.synth", "out={out}", "shape=[6,32,32]", "n_train_slices=2", "test_gap=1"],
}

#: (command, id, override, text the error line must contain); each override alone is bad
OPTIONS = [
    ("predict", "tile-zero", "tile=[0,64,64]", "tile"),
    ("predict", "tile-two-numbers", "tile=[64,64]", "tile"),
    ("predict", "tile-text", "tile=big", "tile"),
    ("predict", "overlap-negative", "overlap=[0,-4,-4]", "overlap"),
    ("predict", "batch-size-zero", "batch_size=0", "batch_size"),
    ("predict", "batch-size-float", "batch_size=1.5", "batch_size"),
    ("predict", "block-slices-zero", "block_slices=0", "block_slices"),
    ("predict", "block-slices-negative", "block_slices=-3", "block_slices"),
    ("predict", "device-unknown", "device=tpu", "device"),
    ("predict", "device-cuda-index", "device=cuda:99", "device"),
    ("predict", "bf16-text", "bf16=maybe", "bf16"),
    ("predict", "tta-unknown", "tta=rotate", "tta"),
    ("predict", "adapt-out-of-range", "adapt=1.5", "adapt"),
    ("predict", "labels-frame-unknown", "labels_frame=sideways", "labels_frame"),
    ("predict", "probabilities-text", "probabilities=sometimes", "probabilities"),
    ("predict", "characterise-unknown-step", "characterise=[fractions,colour]", "characterise"),
    ("predict", "detectors-count", "input=[{bad[good_tif]},{bad[good_tif]}]", "detectors"),
    ("train", "seed-negative", "seed=-1", "seed"),
    ("train", "seed-too-large", "seed=99999999999", "seed"),
    ("train", "net-base-zero", "model.net.base=0", "model.net.base"),
    ("train", "net-depth-negative", "model.net.depth=-1", "model.net.depth"),
    ("train", "dropout-above-one", "model.net.dropout=1.5", "model.net.dropout"),
    ("train", "mode-unknown", "model.mode=4d", "model.mode"),
    ("train", "context-negative", "model.context=-2", "model.context"),
    ("train", "batch-size-zero", "model.batch_size=0", "model.batch_size"),
    ("train", "patch-zero", "model.patch=[1,0,96]", "model.patch"),
    ("train", "p-labelled-above-one", "model.p_labelled=2", "model.p_labelled"),
    ("train", "percentiles-reversed", "model.percentiles=[99,1]", "model.percentiles"),
    ("train", "lr-negative", "model.optim.lr=-0.1", "model.optim.lr"),
    ("train", "class-weights-negative", "model.loss.class_weights=[1,-2,1]", "model.loss.class_weights"),
    ("train", "augment-probability", "model.augment.flip=3", "model.augment.flip"),
    ("train", "steps-per-epoch-zero", "model.steps_per_epoch=0", "model.steps_per_epoch"),
    ("train", "val-fraction-one", "data.val_fraction=1.0", "data.val_fraction"),
    ("train", "num-workers-negative", "data.num_workers=-1", "data.num_workers"),
    ("train", "max-steps-zero", "trainer.max_steps=0", "trainer.max_steps"),
    ("train", "max-time-text", "trainer.max_time=soon", "trainer.max_time"),
    ("train", "precision-unknown", "trainer.precision=8-mixed", "trainer.precision"),
    ("train", "inference-tile-zero", "model.inference.tile=[0,64,64]", "model.inference.tile"),
    ("train", "detector-unknown", "data.detectors=[SE2,ESB]", "ESB"),
    ("stardist", "n-rays-two", "model.n_rays=2", "model.n_rays"),
    ("stardist", "grid-zero", "model.grid=[0,2]", "model.grid"),
    ("stardist", "views-unknown", "model.views=[xy,ab]", "model.views"),
    ("stardist", "max-minutes-negative", "model.max_minutes=-1", "model.max_minutes"),
    ("stardist", "threads-negative", "model.threads=-2", "model.threads"),
    ("finetune", "lr-zero", "finetune.lr=0", "finetune.lr"),
    ("finetune", "synth-fraction-above-one", "finetune.synth_fraction=1.5", "finetune.synth_fraction"),
    ("finetune", "runs-zero", "finetune.runs=0", "finetune.runs"),
    ("finetune", "adapt-bn-above-one", "finetune.adapt_bn=2", "finetune.adapt_bn"),
    ("finetune", "unknown-key", "finetune.learning_rate=0.1", "finetune"),
    ("finetune", "seed-negative", "finetune.seed=-1", "finetune.seed"),
    ("finetune", "patch-tiny", "finetune.patch=2", "finetune.patch"),
    ("finetune", "phantom-shape-zero", "finetune.phantom_shape=[0,80,80]", "finetune.phantom_shape"),
    ("finetune", "detector-unknown", "finetune.detector=ESB", "ESB"),
    ("benchmark", "method-unknown", "methods=[otsu,magic]", "magic"),
    ("benchmark", "roi-reversed", "roi=[[4,2],[0,32],[0,32]]", "roi"),
    ("benchmark", "predict-unknown", "predict=some", "predict"),
    ("characterise", "voxel-size-inf", "voxel_size_nm=inf", "voxel_size_nm"),
    ("characterise", "voxel-size-zero", "voxel_size_nm=[10,0,10]", "voxel_size_nm"),
    ("characterise", "voxel-size-micrometres", "voxel_size_nm=[0.02,0.01,0.01]", "given in µm"),
    ("characterise", "classes-duplicated", "classes=[pore,pore,active_material]", "classes"),
    ("characterise", "steps-unknown", "steps=[fractions,colour]", "steps"),
    ("characterise", "depth-regions-zero", "depth.n_regions=0", "depth.n_regions"),
    ("characterise", "rve-samples-zero", "rve.n_samples=0", "rve.n_samples"),
    ("characterise", "axis-unknown", "depth.axis=w", "depth.axis"),
    ("preprocess", "chunk-zero", "chunk=0", "chunk"),
    ("preprocess", "labels-frame-unknown", "labels_frame=sideways", "labels_frame"),
    ("preprocess", "step-unknown", "steps=[{{step:magic}}]", "magic"),
    ("tofsims", "percentile-above-100", "norm_percentile=150", "norm_percentile"),
    ("tofsims", "method-unknown", "method=kmeans", "method"),
    ("tofsims", "crop-unknown", "crop=some", "crop"),
    ("tofsims", "fov-negative", "fov_um=-5", "fov_um"),
    ("tofsims", "min-area-negative", "particles.min_area_px=-1", "particles.min_area_px"),
    ("synth", "shape-zero", "shape=[0,32,32]", "shape"),
    ("synth", "voxel-size-inf", "voxel_size_nm=[inf,15,15]", "voxel_size_nm"),
    ("synth", "fraction-above-one", "am_fraction=1.5", "am_fraction"),
    ("synth", "seed-negative", "seed=-1", "seed"),
    ("synth", "bit-depth", "bit_depth=7", "bit_depth"),
    ("synth", "radius-negative", "particle_radius_nm=-1", "particle_radius_nm"),
]


def _files() -> list[Case]:
    """Files that are readable but wrong: declared sizes, mixed slices, labels, dataset.yaml values."""
    two = "input=[{bad[%s]},{bad[%s]}]"
    rows = [
        Case("characterise-huge-header", ["characterise.py", "input={bad[huge_header_tif]}", "output={out}",
                                          "voxel_size_nm=10"], "GB of memory available", ["{out}"]),
        Case("predict-huge-header", [*BASE["predict"][:2], two % ("huge_header_tif", "huge_header_tif"),
                                     "detectors=[SE2,InLens]", "output={out}", "block_slices=8"],
             "GB of memory available", ["{out}"]),
        Case("predict-slices-mixed-shape", [*BASE["predict"][:2], two % ("slices_mixed", "slices_mixed"),
                                            "detectors=[SE2,InLens]", "output={out}"], "slice_001.tif", ["{out}"]),
        Case("characterise-slices-mixed-shape", ["characterise.py", "input={bad[slices_mixed]}", "output={out}",
                                                 "voxel_size_nm=10"], "slices_mixed", ["{out}"]),
        Case("predict-test-labels-gt-k", [*BASE["predict"][:2], "input={bad[ds_test_gt_k]}", "output={out}"],
             "label value 9 > number of classes 3", ["{out}"]),
        Case("predict-test-labels-float", [*BASE["predict"][:2], "input={bad[ds_test_float]}", "output={out}"],
             "labels must be integers", ["{out}"]),
        Case("train-dataset-inf-voxel-size", ["train.py", "data.root={bad[ds_inf_voxel]}", "out_dir={out}"],
             "voxel_size_nm", ["{out}"]),
        Case("predict-dataset-inf-voxel-size", [*BASE["predict"][:2], "input={bad[ds_inf_voxel]}", "output={out}"],
             "voxel_size_nm", ["{out}"]),
        Case("train-dataset-voxel-size-micrometres", ["train.py", "data.root={bad[ds_um_voxel]}", "out_dir={out}"],
             "given in µm", ["{out}"]),
        Case("predict-dataset-voxel-size-micrometres", [*BASE["predict"][:2], "input={bad[ds_um_voxel]}",
                                                        "output={out}"], "given in µm", ["{out}"]),
        Case("train-dataset-duplicate-classes", ["train.py", "data.root={bad[ds_duplicate_classes]}",
                                                 "out_dir={out}"], "names a class twice", ["{out}"]),
        Case("benchmark-dataset-duplicate-classes", ["benchmark.py", "data.root={bad[ds_duplicate_classes]}",
                                                     "out={out}", "methods=[otsu]"], "names a class twice", ["{out}"]),
    ]
    for r in rows:
        r.cls = "files"
    return rows


#: bad command lines Hydra itself refuses (syntax, unknown keys, a missing mandatory value)
COMMAND_LINE = [
    Case("predict-override-syntax", [*BASE["predict"], "tile=[1,2"], "tile=[1,2", ["{out}"], cls="command line"),
    Case("predict-unknown-key", [*BASE["predict"], "tiles=[4,64,64]"], "tiles", ["{out}"], cls="command line"),
    Case("characterise-missing-input", ["characterise.py", "output={out}"], "input", ["{out}"], cls="command line"),
    Case("train-unknown-model", ["train.py", "model=transformer", "data.root={dataset}", "out_dir={out}"],
         "transformer", ["{out}"], cls="command line"),
    Case("synth-unknown-key", [*BASE["synth"], "+colour=red"], "colour", ["{out}"], cls="command line"),
]

#: valid command lines: the same checks (exit 0, no error line, no traceback) must let them through
CONTROLS = [
    Case("predict-valid-dataset", [*BASE["predict"], "block_slices=4", "tile=[2,32,32]", "overlap=[0,8,8]",
                                   "batch_size=2", "device=cpu", "bf16=false", "adapt=off"], code=0,
         unchanged=["{dataset}"], cls="options"),
    Case("predict-valid-slice-folders", [*BASE["predict"][:2], "input=[{bad[slices_good]},{bad[slices_good]}]",
                                         "detectors=[SE2,InLens]", "output={out}", "preview=false"], code=0,
         cls="files"),
    Case("characterise-valid", [*BASE["characterise"], "classes=[pore,carbon_binder,active_material]"], code=0,
         unchanged=["{bad[good_labels]}"], cls="options"),
    Case("benchmark-valid", [*BASE["benchmark"], "roi=[[0,6],[0,16],[0,16]]"], code=0, cls="options"),
    Case("preprocess-valid", [*BASE["preprocess"], "chunk=4"], code=0, unchanged=["{dataset}"], cls="options"),
    Case("tofsims-valid", [*BASE["tofsims"], "norm_percentile=99"], code=0, cls="options"),
    Case("synth-valid", [*BASE["synth"], "seed=3"], code=0, cls="options"),
    Case("train-valid-unet", [*BASE["train"], "seed=1", "trainer.max_steps=2", "model.steps_per_epoch=1"], code=0,
         unchanged=["{dataset}"], cls="options"),
]


def _cuda() -> str | None:
    import torch

    return "CUDA is available here" if torch.cuda.is_available() else None


def _options() -> list[Case]:
    rows = [Case(f"{cmd}-{cid}", [*BASE[cmd], override], text, ["{out}"], cls="options")
            for cmd, cid, override, text in OPTIONS]
    rows += [Case("predict-device-cuda-without-cuda", [*BASE["predict"], "device=cuda"], "device", ["{out}"],
                  cls="options", skip=_cuda),
             Case("characterise-tortuosity-device-cuda-without-cuda", [*BASE["characterise"], "tortuosity.device=cuda"],
                  "tortuosity.device", ["{out}"], cls="options", skip=_cuda),
             Case("train-accelerator-unknown", [*BASE["train"], "trainer.accelerator=abacus"], "trainer.accelerator",
                  ["{out}"], cls="options")]
    return rows


CORPUS_CASES = _ported() + _files() + _options() + COMMAND_LINE + CONTROLS


def all_cases() -> list[Case]:
    """This file's rows and those of :data:`SOURCES`, ids checked unique."""
    cases = list(CORPUS_CASES)
    for name in SOURCES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        cases += list(getattr(mod, "CORPUS_CASES", []))
    dup = [k for k, n in Counter(c.id for c in cases).items() if n > 1]
    assert not dup, f"duplicate corpus ids {dup}"
    return cases


CASES = all_cases()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from bad_inputs import make_corpus

    return make_corpus(tmp_path_factory.mktemp("bad"))


@pytest.mark.slow  # one command run per case (~190, train / predict / benchmark controls among them): minutes on 2 cores
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(case: Case, corpus, tmp_path):
    if "{ckpt}" in " ".join(case.argv) and not DEMO_CKPT.exists():
        pytest.skip("checkpoints/demo.ckpt is absent")
    reason = case.skip() if case.skip is not None else None
    if reason:
        pytest.skip(reason)
    ws = Workspace(tmp=tmp_path / "case", bad=corpus, dataset=corpus["good_dataset"])
    check_case(case, run_case(case, ws))


# --- docs/reliability.md: the table of classes and cases, generated from the corpus ---------------

DOC = ROOT / "docs" / "reliability.md"
DOC_START, DOC_END = "<!-- corpus table: start (generated) -->", "<!-- corpus table: end -->"
COMMANDS = ("train", "predict", "benchmark", "characterise", "preprocess", "tofsims", "synth")


def command_of(case: Case) -> str:
    """``train.py`` -> ``train``; ``-m seglearn.synth`` -> ``synth``."""
    script = case.argv[0]
    return script.split(".")[-1] if script.startswith("-m ") else Path(script).stem


def corpus_table(cases: list[Case]) -> str:
    """The generated part of docs/reliability.md: per class, bad cases and valid controls by command,
    then every case id."""
    classes = sorted({c.cls for c in cases}, key=lambda k: (-sum(c.cls == k for c in cases), k))
    head = ["class", "bad inputs (exit 2)", "valid controls (exit 0)", *COMMANDS]
    lines = [DOC_START, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in [*classes, None]:
        sel = [c for c in cases if k is None or c.cls == k]
        per = Counter(command_of(c) for c in sel)
        bad = sum(c.code != 0 for c in sel)
        name = "**all**" if k is None else k
        lines.append("| " + " | ".join([name, str(bad), str(len(sel) - bad), *(str(per.get(m, "")) for m in COMMANDS)])
                     + " |")
    lines.append("")
    for k in classes:
        sel = sorted(c.id for c in cases if c.cls == k)
        lines.append(f"- **{k}** ({len(sel)}): " + ", ".join(f"`{i}`" for i in sel))
    lines += ["", DOC_END]
    return "\n".join(lines)


def _doc_block(text: str) -> str:
    if DOC_START not in text or DOC_END not in text:
        return ""
    return text[text.index(DOC_START): text.index(DOC_END) + len(DOC_END)]


def test_corpus_covers_every_command_with_80_cases():
    bad = [c for c in CASES if c.code != 0]
    assert len(bad) >= 80, len(bad)
    assert {command_of(c) for c in bad} >= set(COMMANDS)
    assert {command_of(c) for c in CASES if c.code == 0} >= set(COMMANDS)  # a valid control for each command


def test_reliability_doc_counts_match_the_corpus():
    """docs/reliability.md lists the classes, counts and case ids of this corpus
    (regenerate with ``python tests/test_bad_input_corpus.py --write-doc``)."""
    assert _doc_block(DOC.read_text()) == corpus_table(CASES), \
        "docs/reliability.md is out of date: run python tests/test_bad_input_corpus.py --write-doc"


def test_harness_restores_the_process_state(tmp_path):
    """An in-process run leaves cwd, environment, logging, Hydra and sys.argv as they were."""
    import logging

    from hydra.core.global_hydra import GlobalHydra

    from cli_harness import run_cli

    before = (os.getcwd(), dict(os.environ), list(logging.getLogger("seglearn").handlers), list(sys.argv))
    r = run_cli(["characterise.py", f"output={tmp_path / 'out'}"], cwd=tmp_path)
    assert r.code == 2 and "input is required" in r.stderr
    assert (os.getcwd(), dict(os.environ), list(logging.getLogger("seglearn").handlers), list(sys.argv)) == before
    assert not GlobalHydra.instance().is_initialized()


def test_internal_error_is_one_line_with_the_debug_hint(monkeypatch, capsys):
    from seglearn.cli import DEBUG_HINT, report_errors

    def broken():
        return {}["a bug"]

    monkeypatch.delenv("SEGLEARN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        report_errors(broken)()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 1 and len(err) == 1
    assert err[0].startswith("seglearn: internal error: KeyError") and DEBUG_HINT in err[0]
    monkeypatch.setenv("SEGLEARN_DEBUG", "1")
    with pytest.raises(KeyError):  # the traceback on request
        report_errors(broken)()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print (or write into docs/reliability.md) the corpus table.")
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args()
    table = corpus_table(CASES)
    if args.write_doc:
        text = DOC.read_text()
        block = _doc_block(text)
        if not block:
            raise SystemExit(f"{DOC}: no {DOC_START!r} ... {DOC_END!r} block to replace")
        DOC.write_text(text.replace(block, table))
        print(f"wrote {DOC}")
    else:
        print(table)
