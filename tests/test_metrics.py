import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.metrics import (awe, confusion_matrix, fraction_std, iou_from_confusion, percent_differ, score,
                              volume_fractions)


def test_iou_and_awe_by_hand():
    truth = np.array([[1, 1, 2, 2], [3, 3, 3, 0]])
    pred = np.array([[1, 2, 2, 2], [3, 3, 1, 3]])
    cm = confusion_matrix(pred, truth, 3)
    # class 1: tp 1, fn 1, fp 1 (the 3 predicted as 1) -> 1/3
    # class 2: tp 2, fp 1, fn 0 -> 2/3 ; class 3: tp 2, fn 1, fp 0 -> 2/3 (the 0 voxel is not scored)
    iou = iou_from_confusion(cm)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 2 / 3])
    p = np.array([2, 2, 3]) / 7
    s = score(pred, truth, 3)
    assert s["awe"] == pytest.approx((1 - np.sum(np.array([1 / 3, 2 / 3, 2 / 3]) * p)) * 100)
    assert s["n_scored"] == 7
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert awe([1, 1, 1], p) == pytest.approx(0.0)


def test_unlabelled_prediction_counts_as_wrong():
    truth = np.array([1, 1, 2, 2])
    pred = np.array([1, 0, 2, 2])
    s = score(pred, truth, 2)
    assert s["iou"] == [pytest.approx(0.5), pytest.approx(1.0)]


def test_roi_restricts_scoring():
    truth = np.ones((4, 4), dtype=np.uint8)
    pred = np.ones((4, 4), dtype=np.uint8)
    pred[0, 0] = 2
    full = score(pred, np.where(truth > 0, truth, 0), 2)
    roi = score(pred, truth, 2, roi=[(1, 4), (1, 4)])
    assert full["awe"] > 0
    assert roi["awe"] == pytest.approx(0.0)


def test_score_errors():
    with pytest.raises(InputError):
        score(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(InputError, match="no scored voxel"):
        score(np.ones((2, 2)), np.zeros((2, 2)), 2)


def test_fractions_agreement_spread():
    a = np.array([1, 1, 2, 3, 0])
    np.testing.assert_allclose(volume_fractions(a, 3), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(volume_fractions(a, 3, ignore_zero=False), [0.4, 0.2, 0.2])
    b = np.array([1, 2, 2, 3, 0])
    assert percent_differ(a, b) == pytest.approx(20.0)
    assert percent_differ(a, b, mask=a > 0) == pytest.approx(25.0)
    segs = [np.array([3, 3, 1, 1]), np.array([3, 1, 1, 1]), np.array([3, 3, 3, 1])]
    assert fraction_std(segs, 3) == pytest.approx(np.std([0.5, 0.25, 0.75], ddof=1))
