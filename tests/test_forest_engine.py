"""The compiled forest engine gives sklearn's ``predict`` labels with the same trees; fallbacks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from seglearn.baselines import forest, forest_engine as fe
from seglearn.errors import InputError

needs_numba = pytest.mark.skipif(not fe.HAVE_NUMBA, reason="numba not installed")


def _data(n, f=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    x[:, 3] = np.round(x[:, 3] * 2)  # repeated values: thresholds halfway between close float32s
    y = np.array([1, 3, 7, 9])[(x[:, 0] + x[:, 1] ** 2 + rng.normal(0, 0.7, n) > 0.5) * 2 + (x[:, 3] > 0)]
    return x, y


@needs_numba
@pytest.mark.parametrize("cls,kw", [(RandomForestClassifier, {"min_samples_leaf": 1}),
                                    (RandomForestClassifier, {"min_samples_leaf": 3, "class_weight": "balanced"}),
                                    (ExtraTreesClassifier, {"max_depth": 6})])
def test_compiled_equals_sklearn_on_random_data(cls, kw):
    x, y = _data(600)
    clf = cls(n_estimators=25, n_jobs=1, random_state=0, **kw).fit(x, y)
    xt, _ = _data(3 * fe.BLOCK + 2 * fe.LANES + 5, seed=1)  # partial block and partial lane group
    got = fe.make_predictor(clf, "compiled", n_jobs=2)(xt)
    np.testing.assert_array_equal(got, clf.predict(xt))
    assert got.dtype == clf.classes_.dtype


@needs_numba
def test_samples_at_the_thresholds_go_the_same_way():
    x, y = _data(400)
    clf = RandomForestClassifier(n_estimators=10, n_jobs=1, random_state=0).fit(x, y)
    thr = np.concatenate([e.tree_.threshold[e.tree_.children_left >= 0] for e in clf.estimators_])
    t32 = thr.astype(np.float32)
    near = np.concatenate([t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))])
    xt = np.repeat(x[:1], len(near), axis=0)
    xt[:, :] = near[:, None]  # every feature at a threshold or one float32 step beside it
    got = fe.make_predictor(clf, "compiled", n_jobs=1)(xt)
    np.testing.assert_array_equal(got, clf.predict(xt))


@needs_numba
def test_nan_chunks_are_left_to_sklearn():
    x, y = _data(300)
    clf = RandomForestClassifier(n_estimators=5, n_jobs=1, random_state=0).fit(x, y)
    xt = x.copy()
    xt[::7, 2] = np.nan
    np.testing.assert_array_equal(fe.make_predictor(clf, "auto")(xt), clf.predict(xt))


@needs_numba
def test_forest_baseline_compiled_equals_sklearn_on_a_phantom(tiny_phantom):
    ph = tiny_phantom
    ch, det = ph.channels(), list(ph.config.detectors)
    spec = {"inputs": ["SE2"], "ilastik": {"sigmas": [0.7, 1.6], "features": ["gauss", "ggm", "hoge"], "dims": 3}}
    model = forest.fit(ch, det, ph.train, features=spec, n_estimators=20, n_jobs=1,
                       voxel_size_nm=ph.config.voxel_size_nm, engine="compiled")
    got = forest.predict(model, ch, det)
    ref = forest.predict({**model, "engine": "sklearn"}, ch, det)
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {1, 2, 3}
    np.testing.assert_array_equal(got, ref)


def test_fallback_without_numba(monkeypatch, caplog):
    x, y = _data(200)
    clf = RandomForestClassifier(n_estimators=5, n_jobs=1, random_state=0).fit(x, y)
    monkeypatch.setattr(fe, "HAVE_NUMBA", False)
    assert fe.resolve_engine(clf, "auto") == "sklearn"
    with caplog.at_level(logging.WARNING, logger="seglearn"):
        pred = fe.make_predictor(clf, "compiled")
    assert "numba is not installed" in caplog.text
    np.testing.assert_array_equal(pred(x), clf.predict(x))
    with pytest.raises(InputError, match="numba"):
        fe.predict_packed(fe.pack_forest(clf), x)


def test_engine_choice():
    x, y = _data(100)
    clf = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, y)
    assert fe.resolve_engine(clf, "sklearn") == "sklearn"
    assert fe.resolve_engine(clf, "auto") == ("compiled" if fe.HAVE_NUMBA else "sklearn")
    assert fe.resolve_engine(object(), "auto") == "sklearn"
    with pytest.raises(InputError, match="forest engine 'gpu'"):
        fe.check_engine("gpu")
    with pytest.raises(InputError, match="cannot compile"):
        fe.pack_forest(object())
