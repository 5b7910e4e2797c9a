"""Every config group option and every experiment composes and passes the checks of the command that
reads it (issue 26). Nothing here lists the files: a new ``seglearn/configs/<group>/NAME.yaml`` is
composed into each top-level config whose ``defaults`` list names ``<group>`` and checked by that
command's own entry checks (:mod:`seglearn.options` rules, config targets, preprocessing steps,
method parameters, model / fine-tuning settings). The option tables themselves are checked
against the YAML in ``test_options.py``.
"""

from __future__ import annotations

import inspect

import pytest
import yaml
from omegaconf import OmegaConf

from seglearn import options, runner
from seglearn.baselines.registry import get_method
from seglearn.benchmark.run import RESERVED
from seglearn.config import check_targets, to_plain
from seglearn.ct.study import study_params
from seglearn.errors import InputError
from seglearn.paths import CONFIGS, compose
from seglearn.preprocess.pipeline import Pipeline
from seglearn.preprocess.stage import stage_config
from seglearn.pretrain.finetune import settings_from as finetune_settings
from seglearn.pretrain.randomise import resolve_ranges
from seglearn.pretrain.train import settings_from as pretrain_settings
from seglearn.segment.adapt import parse_predict_adapt
from seglearn.segment.tta import check_mode
from seglearn.synth.particles import RULES as PARTICLE_RULES

#: values of the options each command requires (``???`` in its YAML), so that its checks can run
REQUIRED = {
    "train": ["data.root=DATASET"],
    "benchmark": ["data.root=DATASET"],
    "characterise": ["input=PREDICTION"],
    "preprocess": ["input=DATASET", "output=OUT"],
    "tofsims": ["input=IN", "ions=[Li]", "output=OUT"],
    "synth": ["out=OUT"],
    "particles": ["out=OUT"],
}
#: the command an experiment is written for (``python COMMAND.py experiment=NAME``); the others are train.py's
EXPERIMENT_COMMAND = {"ct_user_study": "benchmark"}
BASE = "checkpoints/fibsem_base.ckpt"


def _top_level() -> list[str]:
    """The commands' configs: top-level YAML with a Hydra defaults list (others, e.g. pretrain_ranges.yaml,
    are tables the code reads with :func:`seglearn.paths.load_config`)."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml") if "defaults" in (yaml.safe_load(p.read_text()) or {}))


def _groups() -> list[str]:
    return sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and list(p.glob("*.yaml")))


def _defaults(command: str) -> list[str]:
    """The ``group`` or ``group@package`` entries of a top-level config's defaults list."""
    entries = yaml.safe_load((CONFIGS / f"{command}.yaml").read_text()).get("defaults") or []
    keys = [next(iter(e)) for e in entries if isinstance(e, dict)]
    return [k for k in keys if not k.startswith("override ")]


def _users(group: str) -> list[tuple[str, str]]:
    """``(command, defaults key)`` of every top-level config that composes ``group`` (first key per command)."""
    out = {}
    for command in _top_level():
        for key in _defaults(command):
            if key.split("@")[0] == group:
                out.setdefault(command, key)
    return sorted(out.items())


def _cases() -> list[tuple[str, str, str, str]]:
    cases = []
    for group in _groups():
        if group == "experiment":
            continue  # each experiment is composed once, by the command it is written for
        for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
            cases += [(group, option, command, key) for command, key in _users(group)]
    return cases


def _method_entries(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if isinstance(v, dict) and "impl" in v}


def check_method(name: str, entry: dict) -> None:
    """A method config's parameters are keyword-only parameters of its implementation's ``fit``
    (:func:`seglearn.baselines.registry.fit_method` refuses the others), ``impl`` a known name."""
    fit, _ = get_method(str(entry["impl"]))
    known = {k for k, p in inspect.signature(fit).parameters.items() if p.kind is p.KEYWORD_ONLY}
    bad = sorted(set(entry) - set(RESERVED) - known)
    assert not bad, f"method {name} ({entry['impl']}): parameters its fit() does not take: {bad}"


def check_preprocess(cfg) -> None:
    Pipeline.from_config(stage_config(cfg)[0])


def check_train(cfg) -> None:
    """What ``train.py`` checks before reading anything, plus the settings its model kind merges."""
    check_targets(cfg)
    kind = str(cfg.model.kind)
    runner._check_train_options(cfg, kind)  # the options of train.yaml, the model kind, finetune. (with init=)
    check_preprocess(cfg)
    if kind == "unet_pretrain":
        resolve_ranges(pretrain_settings(cfg.model)["ranges"])
    if cfg.get("init"):
        finetune_settings(cfg.finetune)


def check_predict(cfg) -> None:
    check_targets(cfg)
    for table in (options.PREDICT, options.PREDICT_UNET, options.PREDICT_STARDIST):  # either checkpoint kind
        options.check_options(cfg, table, "predict")
    check_mode(cfg.tta)
    parse_predict_adapt(cfg.adapt)


def check_benchmark(cfg) -> None:
    params = to_plain(cfg)
    if params.get("study") == "ct_user_study":
        study_params(params)
        return
    options.check_options(params, options.BENCHMARK, "benchmark")
    check_preprocess(params)
    entries = _method_entries(params)
    assert set(params["methods"]) <= set(entries), f"methods without a config: {set(params['methods']) - set(entries)}"
    for name, entry in entries.items():
        check_method(name, entry)


def check_suggest(cfg) -> None:
    for name, entry in _method_entries(to_plain(cfg)).items():
        check_method(name, entry)


def check_preprocess_command(cfg) -> None:
    options.check_options(cfg, options.PREPROCESS, "preprocess")
    Pipeline.from_config(to_plain(cfg)["steps"])


def check_particles(cfg) -> None:
    options.check_options(cfg, PARTICLE_RULES, "particles")


CHECKS = {
    "train": check_train, "predict": check_predict, "benchmark": check_benchmark, "suggest": check_suggest,
    "preprocess": check_preprocess_command, "particles": check_particles,
    "characterise": lambda cfg: options.check_options(cfg, options.CHARACTERISE, "characterise"),
    "tofsims": lambda cfg: options.check_options(cfg, options.TOFSIMS, "tofsims"),
    "synth": lambda cfg: options.check_options(cfg, options.SYNTH, "synth"),
}


def test_every_command_and_group_is_covered():
    """A new top-level config needs its checks here; a config group nothing composes is dead."""
    assert set(_top_level()) == set(CHECKS), "top-level configs without checks (add them to CHECKS) or stale entries"
    unused = [g for g in _groups() if not _users(g)]
    assert not unused, f"config groups that no top-level config's defaults list composes: {unused}"
    assert set(EXPERIMENT_COMMAND.values()) <= {c for c, _ in _users("experiment")}


@pytest.mark.parametrize("command", _top_level())
def test_every_top_level_config_composes_and_passes_its_checks(command):
    CHECKS[command](compose(command, REQUIRED.get(command, [])))


@pytest.mark.parametrize("group, option, command, key", _cases(),
                         ids=[f"{g}={o}-{c}" for g, o, c, _ in _cases()])
def test_every_group_option_composes_and_passes_the_checks(group, option, command, key):
    extra = [f"init={BASE}"] if group == "finetune" else []  # fine-tuning settings are read with init= only
    cfg = compose(command, [*REQUIRED.get(command, []), f"{key}={option}", *extra])
    chosen = key.split("@")[1] if "@" in key else group
    assert OmegaConf.select(cfg, chosen) is not None, f"{key}={option} composed nothing"
    CHECKS[command](cfg)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_passes_the_checks(experiment):
    command = EXPERIMENT_COMMAND.get(experiment, "train")
    cfg = compose(command, [*REQUIRED.get(command, []), f"experiment={experiment}"])
    CHECKS[command](cfg)
    if command == "train":
        assert str(cfg.model.kind) in runner.TRAINERS


def test_a_bad_option_in_a_group_is_caught():
    """The checks above can fail: a bad value in a group option or an unknown method parameter."""
    with pytest.raises(InputError, match="trainer.precision"):
        check_train(compose("train", ["data.root=D", "trainer=ddp", "trainer.precision=fp8"]))
    with pytest.raises(InputError, match="finetune.lr"):
        check_train(compose("train", ["data.root=D", f"init={BASE}", "finetune.lr=0"]))
    with pytest.raises(AssertionError, match="n_trees"):
        check_benchmark(compose("benchmark", ["data.root=D", "+rf_tailored.n_trees=5"]))
    with pytest.raises(InputError):
        check_predict(compose("predict", ["instances.method=bogus"]))
