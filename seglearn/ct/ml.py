"""Machine-learning "users" of seed 003: a random forest trained from sparse painted slices.

Features are the ilastik-style filter bank of :mod:`seglearn.features` (computed once per volume
and shared by every user and coverage); the classifier is scikit-learn's random forest, as in
ilastik. The seed's "iterative interaction" is simulated: the user paints the central slice,
then goes through the other six slices one by one: on each they look at the current result
(retrained on everything painted so far) and spend up to half of their strokes correcting what
the model got wrong (as they see it), the rest in their usual style.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from seglearn.ct.annotators import annotate_volume, Annotator, paint_slice, perceived_labels
from seglearn.errors import InputError
from seglearn.features.stack import FeatureStack
from seglearn.paths import load_config

log = logging.getLogger("seglearn")



def study_default(key: str) -> dict:
    """``ct_study.<key>`` of ``configs/experiment/ct_user_study.yaml`` (``features``, ``rf``): the defaults' one home."""
    return dict(load_config("experiment/ct_user_study.yaml")["ct_study"][key])


def volume_features(image: np.ndarray, spec: Mapping[str, Any] | None = None) -> np.ndarray:
    """ilastik-style features of every voxel.

    Parameters
    ----------
    image : (Z, Y, X) ndarray
    spec : mapping, optional
        ``sigmas``, ``features``, ``dims`` of :func:`seglearn.features.ilastik.ilastik_features`.

    Returns
    -------
    (Z * Y * X, F) float32 ndarray
        Row ``i`` is voxel ``i`` of the C-ordered volume.
    """
    spec = dict(study_default("features") if spec is None else spec)
    stack = FeatureStack(np.asarray(image, np.float32)[None], ["CT"], {"inputs": ["CT"], "ilastik": spec})
    return stack.compute_samples(0, image.shape[0])


def fit_forest(features: np.ndarray, labels: np.ndarray, *, n_estimators: int = 24, max_depth: int | None = 14,
               min_samples_leaf: int = 3, max_samples: int | None = 20000, seed: int = 0):
    """Random forest on the labelled voxels.

    Parameters
    ----------
    features : (N, F) float32
        Rows of :func:`volume_features`.
    labels : (Z, Y, X) or (N,) uint8
        0 unlabelled, 1..K labelled.

    Returns
    -------
    sklearn.ensemble.RandomForestClassifier
    """
    from sklearn.ensemble import RandomForestClassifier

    lab = np.asarray(labels).ravel()
    if lab.size != features.shape[0]:
        raise InputError(f"labels hold {lab.size} voxels, features {features.shape[0]}")
    idx = np.flatnonzero(lab)
    if idx.size == 0:
        raise InputError("random forest: no labelled voxel to train on")
    if max_samples and idx.size > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(idx, int(max_samples), replace=False))
    if np.unique(lab[idx]).size < 2:
        raise InputError("random forest: the annotations hold a single class")
    clf = RandomForestClassifier(n_estimators=int(n_estimators), max_depth=max_depth,
                                 min_samples_leaf=int(min_samples_leaf), n_jobs=1, random_state=seed)
    clf.fit(features[idx], lab[idx])
    return clf


def predict_forest(clf, features: np.ndarray, shape: Sequence[int], rows: np.ndarray | None = None,
                   chunk: int = 262144) -> np.ndarray:
    """Labels of all voxels (or of ``rows`` only, others 0), in chunks.

    Returns
    -------
    (Z, Y, X) uint8
    """
    out = np.zeros(int(np.prod(shape)), np.uint8)
    rows = np.arange(out.size) if rows is None else np.asarray(rows)
    for a in range(0, rows.size, chunk):
        r = rows[a:a + chunk]
        out[r] = clf.predict(features[r]).astype(np.uint8)
    return out.reshape(tuple(shape))


def user_training_labels(truth: np.ndarray, user: Annotator, coverage: float, slices: Sequence[int],
                         features: np.ndarray, rng: np.random.Generator, *, iterative: bool = True,
                         rf: Mapping[str, Any] | None = None, seed: int = 0) -> np.ndarray:
    """The sparse labels one user paints (seed 003 MLX##).

    Parameters
    ----------
    truth : (Z, Y, X) uint8
        1 non-AM, 2 AM (what the user's eye is simulated from).
    coverage : float
        Share of each slice painted (0..1).
    slices : sequence of int
        Central slice first (see :func:`seglearn.ct.annotators.annotation_slices`).
    features : (N, F) float32
        Used only with ``iterative`` to compute the first result.

    Returns
    -------
    (Z, Y, X) uint8
    """
    if not iterative or len(slices) < 2:
        return annotate_volume(truth, user, coverage, slices, rng)
    rf = {**study_default("rf"), **(rf or {})}
    lab = np.zeros(truth.shape, np.uint8)
    centre, others = int(slices[0]), [int(z) for z in slices[1:]]
    lab[centre] = paint_slice(truth[centre], user, coverage, rng)
    plane = truth.shape[1] * truth.shape[2]
    # the live preview of ilastik: a smaller forest, refitted after each slice
    live = dict(rf, n_estimators=max(4, int(rf["n_estimators"]) // 4),
                max_samples=min(int(rf["max_samples"] or 3000), 3000))
    for z in others:
        try:
            clf = fit_forest(features, lab, seed=seed, **live)
        except InputError:  # one class only so far: nothing to correct yet
            lab[z] = paint_slice(truth[z], user, coverage, rng)
            continue
        first = predict_forest(clf, features, truth.shape, rows=np.arange(z * plane, (z + 1) * plane))[z]
        seen = perceived_labels(truth[z], user, rng)
        lab[z] = paint_slice(truth[z], user, coverage, rng, focus=(first != seen).astype(np.float32))
    return lab


def ml_segment(truth: np.ndarray, user: Annotator, coverage: float, slices: Sequence[int], features: np.ndarray,
               rng: np.random.Generator, *, iterative: bool = True, rf: Mapping[str, Any] | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paint, train and segment the whole volume.

    Returns
    -------
    segmentation : (Z, Y, X) uint8
        1 non-AM, 2 AM.
    labels : (Z, Y, X) uint8
        The user's sparse annotations.
    """
    rf = {**study_default("rf"), **(rf or {})}
    lab = user_training_labels(truth, user, coverage, slices, features, rng, iterative=iterative, rf=rf, seed=seed)
    clf = fit_forest(features, lab, seed=seed, **rf)
    return predict_forest(clf, features, truth.shape), lab
