"""Random forest (scikit-learn) on ilastik-style or tailored z-evolution features (seed 002, 3.4-3.6).

Trained on the labelled voxels only (features of the labelled slices); predicted z-chunk by
z-chunk so memory stays bounded. ``engine`` picks how the fitted forest predicts: ``sklearn``
(``clf.predict``), ``compiled`` (the same trees in a numba kernel, same labels, see
:mod:`seglearn.baselines.forest_engine`) or ``auto`` (compiled where numba is installed).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from seglearn.baselines.common import need_labels
from seglearn.baselines.forest_engine import check_engine, make_predictor
from seglearn.features.stack import FeatureStack, predict_volume, training_samples

log = logging.getLogger("seglearn")


def fit(channels, detectors, train_labels=None, *, features: dict, n_estimators: int = 100, max_depth=None,
        min_samples_leaf: int = 1, max_features="sqrt", class_weight=None, n_jobs: int = -1, seed: int = 0,
        max_samples: int | None = None, max_chunk_mb: float = 1024.0, voxel_size_nm=None,
        engine: str = "auto") -> dict:
    """Fit a random forest on the features of the labelled voxels.

    Parameters
    ----------
    features : dict
        Feature spec (see :mod:`seglearn.features.stack`).
    voxel_size_nm : (z, y, x), optional
        Sets the z-sigma of 3D features.
    engine : {"auto", "sklearn", "compiled"}
        How :func:`predict` evaluates the forest (same labels either way).
    """
    from sklearn.ensemble import RandomForestClassifier

    lab = need_labels(train_labels, "random forest")
    check_engine(engine)  # an unknown engine fails before the work
    stack = FeatureStack(channels, detectors, features, voxel_size_nm)
    t0 = time.perf_counter()
    x, y = training_samples(stack, lab, max_chunk_mb=max_chunk_mb, max_samples=max_samples, seed=seed)
    t1 = time.perf_counter()
    clf = RandomForestClassifier(n_estimators=int(n_estimators), max_depth=max_depth,
                                 min_samples_leaf=int(min_samples_leaf), max_features=max_features,
                                 class_weight=class_weight, n_jobs=n_jobs, random_state=seed)
    clf.fit(x, y)
    log.info("random forest: %d features, %d samples (features %.1f s, fit %.1f s)", x.shape[1], len(y), t1 - t0,
             time.perf_counter() - t1)
    imp = sorted(zip(stack.names, clf.feature_importances_.tolist()), key=lambda t: -t[1])
    return {"clf": clf, "features": features, "voxel_size_nm": voxel_size_nm, "max_chunk_mb": float(max_chunk_mb),
            "n_jobs": n_jobs, "engine": engine, "importances": imp[:20], "n_features": x.shape[1]}


def predict(model, channels, detectors, slices=None) -> np.ndarray:
    """Labels ``(Z, Y, X)``; with ``slices`` only those slices are predicted (others stay 0)."""
    stack = FeatureStack(channels, detectors, model["features"], model["voxel_size_nm"])
    clf = model["clf"]
    pred = make_predictor(clf, model["engine"], n_jobs=model["n_jobs"])
    return predict_volume(stack, lambda x: np.asarray(pred(x)).astype(np.uint8), max_chunk_mb=model["max_chunk_mb"],
                          slices=slices)


def predict_proba(model, channels, detectors, n_classes: int | None = None) -> np.ndarray:
    """Class probabilities ``(K, Z, Y, X)`` float32: the trees' mean class fractions (sklearn's ``predict_proba``).

    ``K`` = ``n_classes`` (default the largest class id trained on); a class absent from the
    training labels has probability 0. Their argmax is :func:`predict`'s labels (up to ties).
    Written by ``benchmark.py ... probabilities=true`` for ``characterise.py probabilities=...``.
    """
    stack = FeatureStack(channels, detectors, model["features"], model["voxel_size_nm"])
    clf = model["clf"]
    ids = np.asarray(clf.classes_, dtype=np.int64)
    k = int(n_classes or ids.max())
    z_n, y_n, x_n = stack.shape
    out = np.zeros((k, z_n, y_n, x_n), np.float32)
    step = stack.chunk_slices(model["max_chunk_mb"])
    for z0 in range(0, z_n, step):
        z1 = min(z_n, z0 + step)
        p = clf.predict_proba(stack.compute_samples(z0, z1)).astype(np.float32)  # (N, len(ids))
        for j, c in enumerate(ids):
            out[c - 1, z0:z1] = p[:, j].reshape(z1 - z0, y_n, x_n)
    return out
