"""Every default once, in the YAML (issue 26): the code reads the configs instead of repeating them."""

from __future__ import annotations

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
