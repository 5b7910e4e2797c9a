"""Every default once, in the YAML (issue 26): the code reads the configs instead of repeating them."""

from __future__ import annotations

from pathlib import Path

import pytest

from seglearn.paths import load_config


def test_predict_options_take_the_yaml_for_missing_keys():
    from seglearn.segment.predict_options import Options

    yaml = load_config("predict.yaml")
    opts = Options.from_config({"ckpt": "c.ckpt", "input": ["a.tif", "b.tif"], "block_slices": 7})
    assert opts.block_slices == 7 and opts.input == ["a.tif", "b.tif"] and opts.where == "['a.tif', 'b.tif']"
    assert opts.memory_budget_gib == float(yaml["memory_budget_gib"]) and opts.adapt == yaml["adapt"]
    assert opts.output_format == yaml["output_format"] and opts.preview is yaml["preview"]
    assert opts.iter_kwargs({"block_slices": 7, "band_rows": None})["block_slices"] == 7
    with pytest.raises(Exception):
        opts.ckpt = "other"  # read once: frozen


def test_unet_tile_patch_overlap_defaults_come_from_the_model_yaml():
    from seglearn.segment.infer import mode_defaults

    by = load_config("model/unet.yaml")["by_mode"]
    assert mode_defaults("2.5d") == mode_defaults("2d") == by["flat"]
    assert mode_defaults("3d") == by["3d"]
    import seglearn.segment.train as train

    assert not {"DEFAULT_PATCH", "DEFAULT_TILE", "DEFAULT_OVERLAP"} & set(vars(train))


def test_ct_study_and_tofsims_defaults_are_the_yaml():
    from seglearn.ct import ml, study
    from seglearn.tofsims import pipeline

    ct = load_config("experiment/ct_user_study.yaml")["ct_study"]
    p = study.study_params({"ct_study": {"n_users": 2}})
    assert p["n_users"] == 2 and p["rf"] == ct["rf"] and p["phantom"] == ct["phantom"]
    assert ml.study_default("features") == ct["features"]
    assert not hasattr(study, "DEFAULTS") and not hasattr(pipeline, "DEFAULTS")
    tof = load_config("tofsims.yaml")
    d = pipeline.defaults()
    assert d["particles"] == tof["particles"] and d["norm_percentile"] == tof["norm_percentile"]
    assert not set(d) & {"input", "ions", "output", "overwrite", "hydra"}


# ------------------------------------------------ no Python fallback repeats a YAML value (AST scan)

#: the package code this scan covers (characterise/ and instances/ keep their own rules, tests of their own)
SCANNED = ("pretrain", "segment", "ct", "tofsims", "benchmark", "baselines", "preprocess", "synth", "suggest.py",
           "runner.py", "commands.py", "tiling.py", "log.py", "cli.py")
#: fallbacks that are not defaults, each with why: (file, key) -> reason
NOT_DEFAULTS = {
    ("pretrain/randomise.py", "p_family_b"): "absent = family a only: what base models made before family b saw",
    ("pretrain/noise.py", "p_real"): "cache key of base models pretrained before p_real was recorded (fixed past value)",
    ("pretrain/noise.py", "p_flat"): "cache key of base models pretrained before p_flat was recorded (fixed past value)",
    ("pretrain/lit.py", "devices"): "without a trainer group: one process (the group's own default is all devices)",
    ("segment/blend.py", "dims"): "a stored feature spec without the key: FeatureStack's own reading of it",
    ("segment/blend.py", "max_settle"): "a stored feature spec without the key: FeatureStack's own reading of it",
    ("segment/blend.py", "settle_window"): "a stored feature spec without the key: FeatureStack's own reading of it",
    ("segment/blend.py", "max_chunk_mb"): "a blend stored before max_chunk_mb was recorded (FeatureStack's value)",
    ("preprocess/stage.py", "labels_frame"): "a checkpoint's preprocess entry written before labels_frame existed",
    # other owners' files (issue 26: to be folded into the YAML by their owners)
    ("pretrain/ft_setup.py", "p_real"): "reads a base model's meta.pretrain (old checkpoints)",
    ("pretrain/ft_setup.py", "p_flat"): "reads a base model's meta.pretrain (old checkpoints)",
    ("pretrain/ft_setup.py", "p_family_b"): "reads a base model's meta.pretrain (absent = family a only)",
}


def _yaml_leaves() -> dict:
    """``{key: [(value, file), ...]}`` of every non-mapping value in the shipped configs."""
    import yaml

    from seglearn.paths import CONFIGS

    out: dict = {}

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(v, dict):
                    out.setdefault(str(k), []).append((v, where))
                walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    for path in sorted(CONFIGS.rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text()) or {}, str(path.relative_to(CONFIGS)))
    return out


def yaml_repeats(source: str, leaves: dict) -> list[tuple[int, str, object, list]]:
    """``(line, key, literal, yaml hits)`` of every ``x.get("key", literal)`` / ``pop`` / ``setdefault`` in
    ``source`` whose literal equals a value of ``key`` somewhere in the YAML (``None`` fallbacks aside)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and len(node.args) == 2
                and node.func.attr in ("get", "pop", "setdefault") and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            continue
        try:
            literal = ast.literal_eval(node.args[1])
        except ValueError:
            continue
        if literal is None:
            continue
        key = node.args[0].value
        norm = list(literal) if isinstance(literal, tuple) else literal
        hits = [(v, f) for v, f in leaves.get(key, []) if v == norm and isinstance(v, bool) == isinstance(norm, bool)]
        if hits:
            found.append((node.lineno, key, literal, hits))
    return found


def test_the_scan_finds_a_repeated_yaml_value():
    leaves = {"top": [(10, "suggest.yaml")], "on": [(True, "x.yaml")]}
    src = 's.get("top", 10)\ns.get("top", 11)\ns.get("top", None)\nd.pop("on", True)\nd.pop("on", 1)\n'
    assert [(line, key) for line, key, _, _ in yaml_repeats(src, leaves)] == [(1, "top"), (4, "on")]


def test_no_python_fallback_repeats_a_yaml_value():
    import seglearn

    root = Path(seglearn.__file__).parent
    leaves = _yaml_leaves()
    files = [p for name in SCANNED for p in ([root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py")))]
    assert len(files) > 50
    bad = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        for line, key, literal, hits in yaml_repeats(path.read_text(), leaves):
            if (rel, key) not in NOT_DEFAULTS:
                bad.append(f"{rel}:{line} .get({key!r}, {literal!r}) repeats {hits[0][1]}")
    assert not bad, "read these from the YAML instead:\n  " + "\n  ".join(bad)


def test_no_defaults_dicts_in_python():
    """No module-level ``*DEFAULT*`` mapping of settings in the scanned code (the YAML holds them)."""
    import ast

    import seglearn

    root = Path(seglearn.__file__).parent
    bad = []
    for name in SCANNED:
        for path in ([root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py"))):
            for node in ast.parse(path.read_text()).body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                    node, ast.AnnAssign) else []
                for t in targets:
                    if isinstance(t, ast.Name) and "DEFAULT" in t.id and isinstance(node.value, ast.Dict):
                        bad.append(f"{path.relative_to(root)}:{node.lineno} {t.id}")
    assert not bad, f"Python defaults dicts (move them into seglearn/configs/): {bad}"


def test_pretraining_ranges_and_shares_are_the_yaml():
    from seglearn.pretrain.randomise import DEFAULT_RANGES, P_FLAT, P_REAL_SOURCE, resolve_ranges

    ranges = load_config("pretrain_ranges.yaml")
    assert list(DEFAULT_RANGES) == list(ranges) and DEFAULT_RANGES["noise"] == ranges["noise"]
    assert resolve_ranges({"noise": [0.01, 0.02]})["noise"] == [0.01, 0.02]
    pre = load_config("model/unet_pretrain.yaml")
    assert P_REAL_SOURCE == pre["p_real"] and P_FLAT == pre["p_flat"]


def test_suggest_and_benchmark_fill_missing_settings_from_the_yaml():
    from seglearn.suggest import acquisition_weights

    assert acquisition_weights({"distance": 0.0}) == {**load_config("suggest.yaml")["weights"], "distance": 0.0}


def test_ct_study_users_are_the_yaml():
    from seglearn.ct.annotators import DEFAULT_USERS, make_users

    users = load_config("ct_users.yaml")["users"]
    assert [{k: u.as_dict()[k] for k in y} for u, y in zip(DEFAULT_USERS, users)] == users
    first = make_users(4, seed=1)
    assert first[:3] == list(DEFAULT_USERS) and first[3].name not in {u["name"] for u in users}
