"""Threshold users (S1/S2/S3), watershed gWS/cWS and the random forest from painted slices."""

import numpy as np
import pytest

from seglearn.ct.annotators import Annotator, annotation_slices
from seglearn.ct.ml import fit_forest, ml_segment, predict_forest, user_training_labels, volume_features
from seglearn.ct.phantom import AM, NON_AM, make_ct_phantom
from seglearn.ct.unsupervised import apply_threshold, pick_threshold, watershed_segment
from seglearn.errors import InputError


@pytest.fixture(scope="module")
def ct():
    return make_ct_phantom({"shape": [16, 40, 40], "snr": 2.5, "seed": 2, "particle_radius_nm": 500.0})


def _bimodal(rng, n=20000):
    return np.concatenate([rng.normal(60, 8, n), rng.normal(180, 8, n)]).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("rule", ["otsu", "minimum", "li", "isodata", "mean"])
def test_threshold_rules_fall_between_peaks(rule):
    img = _bimodal(np.random.default_rng(0)).reshape(2, 100, 200)
    t = pick_threshold(img, Annotator(threshold_rule=rule))
    assert 80 < t < 160
    t_off = pick_threshold(img, Annotator(threshold_rule=rule, threshold_offset=7.0))
    assert t_off == pytest.approx(t + 7.0)


def test_eye_rule_matches_perceived_area(ct):
    z = 8
    u = Annotator(threshold_rule="eye", edge_errors=0.0)
    t = pick_threshold(ct.image, u, truth_slice=ct.truth[z], image_slice=ct.image[z])
    frac = (ct.image[z] >= t).mean()
    assert frac == pytest.approx((ct.truth[z] == AM).mean(), abs=0.02)
    with pytest.raises(InputError):
        pick_threshold(ct.image, u)


def test_s1_s3_move_fraction_monotonically(ct):
    t = pick_threshold(ct.image, Annotator())
    f = [(apply_threshold(ct.image, t + d) == AM).mean() for d in (-10, 0, 10)]
    assert f[0] > f[1] > f[2]


def test_watershed_windows(ct):
    t = pick_threshold(ct.image, Annotator())
    thr = apply_threshold(ct.image, t)
    g = watershed_segment(ct.image, t, 0.0)
    assert np.array_equal(g, thr)  # no window: every voxel is a seed, the watershed is the threshold
    c = watershed_segment(ct.image, t, 60.0)
    assert set(np.unique(c)) == {NON_AM, AM}
    # flooding the gradient removes isolated noisy voxels: closer to the truth than the threshold
    acc = lambda s: (s == ct.truth).mean()  # noqa: E731
    assert acc(c) > acc(thr)
    with pytest.raises(InputError):
        watershed_segment(ct.image, t, -1.0)


def test_forest_from_painted_slices(ct):
    feats = volume_features(ct.image, {"sigmas": [0.7, 1.6], "features": ["gauss", "ggm"], "dims": 3})
    assert feats.shape == (ct.image.size, 4)
    slices = annotation_slices(ct.image.shape[0])
    user = Annotator(edge_errors=0.0)
    seg, lab = ml_segment(ct.truth, user, 0.25, slices, feats, np.random.default_rng(0), iterative=True,
                          rf={"n_estimators": 8, "max_samples": 3000})
    assert set(np.flatnonzero(lab.reshape(lab.shape[0], -1).max(1))) == set(slices)
    for z in slices:
        assert (lab[z] > 0).sum() == round(0.25 * lab[z].size)
    thr = apply_threshold(ct.image, pick_threshold(ct.image, Annotator()))
    acc = lambda s: (s == ct.truth).mean()  # noqa: E731
    assert acc(seg) > acc(thr)  # the forest beats a plain threshold on noisy data
    with pytest.raises(InputError, match="no labelled"):
        fit_forest(feats, np.zeros(ct.truth.shape, np.uint8))


def test_iterative_corrections_differ_from_one_shot(ct):
    feats = volume_features(ct.image, {"sigmas": [1.0], "features": ["gauss"], "dims": 3})
    slices = annotation_slices(ct.image.shape[0])
    user = Annotator(am_share=0.7, edge_errors=0.0)
    one = user_training_labels(ct.truth, user, 0.1, slices, feats, np.random.default_rng(0), iterative=False)
    it = user_training_labels(ct.truth, user, 0.1, slices, feats, np.random.default_rng(0), iterative=True,
                              rf={"n_estimators": 8})
    share = lambda lab: (lab == AM).sum() / (lab > 0).sum()  # noqa: E731
    # correcting a forest biased towards AM adds non-AM strokes: the painted AM share falls
    assert share(it) < share(one)
    clf = fit_forest(feats, it, n_estimators=4)
    part = predict_forest(clf, feats, ct.truth.shape, rows=np.arange(40 * 40))
    assert part[0].min() >= 1 and part[1:].max() == 0
