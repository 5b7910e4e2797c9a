"""Simulated users: 7-slice protocol, coverage, boundary bias, edge mistakes, stroke placement."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from seglearn.ct.annotators import (Annotator, annotation_slices, annotate_volume, make_users, paint_slice,
                                    perceived_labels)
from seglearn.ct.phantom import AM, NON_AM
from seglearn.errors import InputError


@pytest.fixture
def disc():
    y, x = np.mgrid[:64, :64]
    t = np.full((64, 64), NON_AM, np.uint8)
    t[(y - 20) ** 2 + (x - 22) ** 2 < 12 ** 2] = AM
    t[(y - 44) ** 2 + (x - 44) ** 2 < 9 ** 2] = AM
    return t


def test_seven_slices_of_seed_003():
    assert annotation_slices(200) == [100, 25, 50, 75, 125, 150, 175]
    s = annotation_slices(80)
    assert s[0] == 40 and len(set(s)) == 7
    with pytest.raises(InputError):
        annotation_slices(5, 7)


@pytest.mark.parametrize("coverage", [0.10, 0.25, 0.35, 0.50, 0.65])
def test_coverage_is_exact_and_labels_are_what_user_sees(disc, coverage):
    user = Annotator(edge_errors=0.0, boundary_bias=0.0)
    lab = paint_slice(disc, user, coverage, np.random.default_rng(0))
    assert (lab > 0).sum() == round(coverage * disc.size)
    assert np.array_equal(lab[lab > 0], disc[lab > 0])  # no bias, no mistakes: labels are the truth


def test_boundary_bias_and_edge_errors(disc):
    rng = np.random.default_rng(0)
    grow = perceived_labels(disc, Annotator(boundary_bias=1.0, edge_errors=0.0), rng)
    shrink = perceived_labels(disc, Annotator(boundary_bias=-1.0, edge_errors=0.0), rng)
    assert (grow == AM).sum() > (disc == AM).sum() > (shrink == AM).sum()
    sloppy = perceived_labels(disc, Annotator(edge_errors=0.3), rng)
    wrong = sloppy != disc
    assert 0 < wrong.mean() < 0.2
    # mistakes sit near edges only
    edge = ndi.binary_dilation(disc == AM, iterations=3) & ~ndi.binary_erosion(disc == AM, iterations=3)
    assert not (wrong & ~edge).any()


def test_margin_keeps_strokes_off_boundaries(disc):
    dist = ndi.distance_transform_edt(disc == AM) + ndi.distance_transform_edt(disc != AM)
    careful = paint_slice(disc, Annotator(margin=3.0, edge_errors=0.0), 0.2, np.random.default_rng(1))
    anywhere = paint_slice(disc, Annotator(margin=0.0, edge_errors=0.0), 0.2, np.random.default_rng(1))
    assert dist[careful > 0].mean() > dist[anywhere > 0].mean() + 0.5


def test_am_share_and_focus(disc):
    lab = paint_slice(disc, Annotator(am_share=0.6, edge_errors=0.0), 0.1, np.random.default_rng(2))
    assert (lab == AM).sum() / (lab > 0).sum() == pytest.approx(0.6, abs=0.01)
    focus = np.zeros(disc.shape, np.float32)
    focus[50:60, 5:15] = 1
    lab = paint_slice(disc, Annotator(edge_errors=0.0), 0.1, np.random.default_rng(2), focus=focus)
    assert (lab[50:60, 5:15] > 0).mean() > 0.5  # corrections go where the model was wrong


def test_annotate_volume_and_users(disc):
    truth = np.stack([disc] * 16)
    sl = annotation_slices(16)
    lab = annotate_volume(truth, make_users(3)[1], 0.25, sl, np.random.default_rng(0))
    painted = np.nonzero(lab.reshape(16, -1).max(1))[0]
    assert sorted(painted.tolist()) == sorted(sl)
    users = make_users(5, seed=1)
    assert [u.name for u in users] == ["A", "B", "C", "D", "E"]
    assert len({(u.boundary_bias, u.threshold_rule, u.am_share) for u in users}) == 5
    with pytest.raises(InputError):
        make_users(1)
    with pytest.raises(InputError, match="threshold_rule"):
        Annotator.from_dict({"threshold_rule": "guess"})
