"""The option tables of seglearn.options against the documented configs (issue 25).

Every option a command's YAML documents is either checked by a rule of ``seglearn/options.py`` or
listed in :data:`CHECKED_ELSEWHERE` with the code that checks it; every rule names an option that
exists (a misspelt key would never be checked). A new option without either fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seglearn import options
from seglearn.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
METHODS = tuple(p.stem for p in (CONFIGS / "method").glob("*.yaml"))

#: options (or whole sections, ending in ".") whose values another part of seglearn checks
CHECKED_ELSEWHERE = {
    "predict": {"ckpt", "input", "output",            # paths: opened with a one-line error
                "tta",                                # seglearn.segment.tta.check_mode
                "adapt",                              # seglearn.pretrain.adapt.parse_predict_adapt
                "voxel_size_nm"},                     # predict's voxel-size resolution (calibration)
    "train": {"model.kind",                           # seglearn.runner (unknown kinds refused)
              "data.derived",                         # seglearn.segment.channels
              "trainer.devices", "trainer.strategy",  # Lightning (and the 0-steps check)
              "preprocess.",                          # the preprocessing steps (seglearn.preprocess)
              "finetune."},                           # options.FINETUNE (test_every_finetune_option_has_a_rule)
    "stardist": {"model.kind", "data.derived", "trainer.devices", "trainer.strategy", "preprocess.", "finetune."},
    "pretrain": {"model.kind", "data.derived", "trainer.devices", "trainer.strategy", "preprocess.", "finetune.",
                 "model.detectors", "model.derived",  # seglearn.pretrain (detector names)
                 "model.sources", "model.init",       # paths
                 "model.ranges"},                     # seglearn.pretrain.randomise (merge_settings)
    "finetune": {"ranges",                            # seglearn.pretrain.randomise
                 "blend", "blend_forest",             # seglearn.pretrain.blend (mode, method registry)
                 "autocontext", "autocontext_folds", "autocontext_dropout", "autocontext_lr"},  # seglearn.pretrain.autocontext.check_settings
    "benchmark": {"data.", "out", "preprocess.", "study", "experiment",
                  *(f"{m}." for m in METHODS)},       # each method's own settings (seglearn.baselines)
    "characterise": {"instances", "output",           # paths
                     "pore", "active", "binder",      # class names: seglearn.characterise.labels
                     "geodesic.phase", "inner_pores.solid"},
    "preprocess": {"input", "output", "steps", "preprocess."},  # steps: seglearn.preprocess.pipeline
    "tofsims": {"mains", "am", "cc_ion", "particles.phase",  # ion names: seglearn.tofsims.pipeline
                "crop_rows", "crop_cols"},            # crop boxes: seglearn.tofsims.preprocess
    "synth": {"name", "source", "source_classes", "family",   # seglearn.synth.config.PhantomConfig
              "se2.", "inlens.", "b."},
}

#: documented options given only on the command line (``+model.seed=N``), so not in the composed config
COMMAND_LINE_ONLY = {"model.seed"}

#: (tables, config name, overrides) per command of CHECKED_ELSEWHERE
COMPOSED = {
    "predict": ((options.PREDICT, options.PREDICT_UNET, options.PREDICT_STARDIST), "predict", []),
    "train": ((options.TRAIN, options.UNET), "train", []),
    "stardist": ((options.TRAIN, options.STARDIST), "train", ["model=stardist"]),
    "pretrain": ((options.TRAIN, options.PRETRAIN), "train", ["model=unet_pretrain"]),
    "benchmark": ((options.BENCHMARK,), "benchmark", []),
    "characterise": ((options.CHARACTERISE,), "characterise", []),
    "preprocess": ((options.PREPROCESS,), "preprocess", []),
    "tofsims": ((options.TOFSIMS,), "tofsims", []),
    "synth": ((options.SYNTH,), "synth", []),
}


def _leaves(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return set().union(*(_leaves(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix[:-1]}


def _composed(name: str, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def _uncovered(leaves: set[str], rules: set[str], elsewhere: set[str]) -> list[str]:
    return sorted(k for k in leaves - rules - elsewhere
                  if not any(k.startswith(e) or k == e[:-1] for e in elsewhere if e.endswith(".")))


@pytest.mark.parametrize("command", sorted(COMPOSED))
def test_every_documented_option_has_a_rule(command):
    tables, name, overrides = COMPOSED[command]
    leaves = _leaves(_composed(name, overrides))
    rules = set().union(*(t.keys() for t in tables))
    unknown = sorted(rules - leaves - COMMAND_LINE_ONLY)
    assert not unknown, f"rules for options that {name}.yaml does not have: {unknown}"
    missing = _uncovered(leaves, rules, CHECKED_ELSEWHERE[command])
    assert not missing, (f"{command}: options without a rule in seglearn/options.py (or an entry of "
                         f"CHECKED_ELSEWHERE naming what checks them): {missing}")


def test_every_finetune_option_has_a_rule():
    leaves = _leaves(yaml.safe_load((CONFIGS / "finetune" / "default.yaml").read_text()))
    assert not set(options.FINETUNE) - leaves
    assert not _uncovered(leaves, set(options.FINETUNE), CHECKED_ELSEWHERE["finetune"])


def test_the_documented_defaults_pass_their_rules():
    """The YAML defaults are valid (a rule stricter than the documented default would refuse every run)."""
    for command, (tables, name, overrides) in COMPOSED.items():
        cfg = _composed(name, overrides)
        cfg = {k: v for k, v in cfg.items() if v != "???"}
        for table in tables:
            options.check_options(_fill_interpolations(cfg), table, command)
    ft = yaml.safe_load((CONFIGS / "finetune" / "default.yaml").read_text())
    options.check_options(ft, options.FINETUNE, "train", prefix="finetune.")


# every experiment and every config group option, composed and checked as its command checks it:
# tests/test_config_groups.py


def _fill_interpolations(cfg):
    if isinstance(cfg, dict):
        return {k: _fill_interpolations(v) for k, v in cfg.items()
                if not (isinstance(v, str) and (v.startswith("${") or v == "???"))}
    return cfg


def test_rules_say_what_they_expect():
    rule = options.NULL | options.integers(3, 1)
    assert rule(None) and rule([1, 2, 3]) and not rule([0, 2, 3]) and not rule([1, 2]) and not rule([1, 2, True])
    assert options.number(0, 1)(0.5) and not options.number(0, 1)(float("inf")) and not options.number(0, 1)(True)
    assert not options.number(0, lo_open=True)(0) and options.SEED(0) and not options.SEED(-1)
    assert options.names()(["a", "b"]) and not options.names()(["a", "a"]) and not options.names(("a",))(["b"])
    assert options.numbers(2, 0, 100, increasing=True)([1, 99]) and not options.PERCENTILES([99, 1])
    assert options.DEVICE("cpu") and options.DEVICE("auto") and not options.DEVICE("tpu") and not options.DEVICE(3)
    with pytest.raises(InputError, match=r"^predict: tile=\[0, 64, 64\]: expected null or 3 integers >= 1$"):
        options.check_options({"tile": [0, 64, 64]}, options.PREDICT_UNET, "predict")
    with pytest.raises(InputError, match="finetune.lr=0: expected a finite number > 0"):
        options.check_options({"lr": 0}, options.FINETUNE, "train", prefix="finetune.")
    with pytest.raises(InputError, match="input is required"):
        options.check_options({"input": "???"}, options.CHARACTERISE, "characterise")
    options.check_options({"unknown": 1, "tile": None}, options.PREDICT_UNET, "predict")  # absent keys: not checked
