"""Suggested labelling (seglearn.suggest): the acquisition maps, the ranking and the CLI."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from seglearn.errors import InputError, OutputExistsError
from seglearn.suggest import (
    acquisition,
    distance_factor,
    load_config,
    normalised_entropy,
    rank_regions,
    run,
    suggest,
)


def test_normalised_entropy_bounds():
    k, shape = 3, (2, 4, 4)
    uniform = np.full((k, *shape), 1 / k, np.float32)
    onehot = np.zeros((k, *shape), np.float32)
    onehot[1] = 1
    np.testing.assert_allclose(normalised_entropy(uniform), 1.0, atol=1e-5)
    np.testing.assert_allclose(normalised_entropy(onehot), 0.0, atol=1e-5)
    half = np.zeros((2, 1, 1, 1), np.float32) + 0.5
    assert normalised_entropy(half)[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="at least 2 classes"):
        normalised_entropy(np.ones((1, 2, 2, 2)))


def test_distance_factor_zero_on_labels_and_physical():
    train = np.zeros((5, 10, 10), np.uint8)
    train[2, 5, 5] = 1
    f = distance_factor(train, train.shape, (100.0, 10.0, 10.0), distance_nm=100.0)
    assert f[2, 5, 5] == 0
    # one slice away (100 nm) is as far as ten pixels in-plane (10 x 10 nm)
    assert f[3, 5, 5] == pytest.approx(1 - np.exp(-1), abs=1e-6)
    np.testing.assert_allclose(f[2, 5, 0], 1 - np.exp(-0.5), atol=1e-6)
    assert np.all(distance_factor(None, (2, 3, 3), (1, 1, 1), 5.0) == 1)


def test_rank_regions_finds_planted_region_with_gap():
    score = np.zeros((20, 64, 64), np.float32)
    score[7, 40:56, 8:24] = 1.0    # the best place
    score[8, 40:56, 8:24] = 0.9    # right next to it: skipped by min_gap
    score[15, 0:16, 48:64] = 0.5
    ranked = rank_regions(score, region=(16, 16), top=3, min_gap=2)
    assert [r["z"] for r in ranked[:2]] == [7, 15]
    assert (ranked[0]["y0"], ranked[0]["x0"], ranked[0]["y1"], ranked[0]["x1"]) == (40, 8, 56, 24)
    assert (ranked[1]["y0"], ranked[1]["x0"]) == (0, 48)
    assert ranked[0]["score"] == pytest.approx(1.0)
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert all(abs(a["z"] - b["z"]) >= 2 for a in ranked for b in ranked if a is not b)
    # region larger than the slice is clipped
    assert rank_regions(score, region=(100, 100), top=1)[0]["y1"] == 64


def test_suggest_combines_uncertainty_disagreement_distance():
    k, shape = 3, (10, 32, 32)
    probs = np.zeros((k, *shape), np.float32)
    probs[0] = 1.0
    probs[:, 3, 0:8, 0:8] = 1 / 3          # uncertain, but already labelled: never suggested
    probs[:, 6, 16:24, 16:24] = 1 / 3      # uncertain and unlabelled
    train = np.zeros(shape, np.uint8)
    train[3, 0:8, 0:8] = 1
    forest = np.ones(shape, np.uint8)
    forest[9, 0:8, 24:32] = 2              # the forest disagrees here (the model is sure)
    forest[6, 16:24, 16:24] = 2            # ... and where the model is unsure: the best place
    s = {"top": 3, "region": [8, 8], "min_gap": 1, "distance_nm": 5.0,
         "weights": {"uncertainty": 1.0, "disagreement": 1.0, "distance": 1.0}}
    ranked, maps = suggest(probs, train, voxel_size_nm=(10, 10, 10), forest_labels=forest, settings=s)
    assert ranked[0]["z"] == 6 and (ranked[0]["y0"], ranked[0]["x0"]) == (16, 16)
    assert ranked[1]["z"] == 9 and (ranked[1]["y0"], ranked[1]["x0"]) == (0, 24)
    assert ranked[0]["uncertainty"] == pytest.approx(1.0, abs=1e-4) and ranked[1]["disagreement"] == 1.0
    assert ranked[0]["score"] == pytest.approx(1.0, abs=1e-3) and ranked[1]["score"] == pytest.approx(0.5, abs=1e-3)
    assert 3 not in [r["z"] for r in ranked[:2]] and maps["score"][3, 0:8, 0:8].max() == 0
    # without the forest only the uncertain region scores
    ranked2, maps2 = suggest(probs, train, voxel_size_nm=(10, 10, 10), settings=s)
    assert "disagreement" not in maps2 and ranked2[0]["z"] == 6 and ranked2[1]["score"] < 0.01
    with pytest.raises(InputError, match="weights"):
        acquisition(maps["uncertainty"], None, None, {"uncertainty": 0.0})
    with pytest.raises(InputError, match="do not fit"):
        suggest(probs, train[:2], settings=s)


def test_suggest_cli_writes_ranked_csv_json(tiny_dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sg"
    over = [f"input={tiny_dataset}", f"output={out}", "top=4", "region=[32,32]",
            "forest.n_estimators=10", "forest.n_jobs=1"]
    from omegaconf import OmegaConf

    res = run(OmegaConf.create(load_config(over)))
    got = json.loads((out / "suggestions.json").read_text())
    rows = list(csv.DictReader(open(out / "suggestions.csv")))
    assert got["forest"] is True and got["labelled_voxels"] > 0 and len(rows) == 4 == len(res["suggestions"])
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    for r in rows:
        assert 0 <= int(r["z"]) < 24 and int(r["y1"]) - int(r["y0"]) == 32 and 0 <= float(r["disagreement"]) <= 1
    with pytest.raises(OutputExistsError, match="suggestions.json: exists"):
        run(OmegaConf.create(load_config(over)))
    # the command line: one line and exit code 2 for an error the user made
    monkeypatch.setattr(sys, "argv", ["suggest", f"input={tmp_path / 'nope'}", f"output={tmp_path / 'o'}"])
    import runpy

    with pytest.raises(SystemExit) as exc:
        runpy.run_module("seglearn.suggest", run_name="__main__")
    assert exc.value.code == 2
    assert "seglearn: error:" in capsys.readouterr().err
