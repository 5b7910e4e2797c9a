"""Test-time augmentation (seglearn.segment.tta) and its use in Segmenter / predict.py."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.segment.tta import MODES, _backward, _forward, check_mode, tta_net_fn


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_pass_is_undone(mode, rng):
    a = rng.normal(size=(2, 3, 1, 6, 6))
    for p in MODES[mode]:
        b = _forward(a, *p)
        np.testing.assert_array_equal(_backward(b, *p), a)
    assert len({_forward(a, *p).tobytes() for p in MODES[mode]}) == len(MODES[mode])  # distinct views


def test_tta_averages_back_transformed_outputs(rng):
    """A position-dependent tile function: TTA = mean over passes of the back-transformed outputs."""
    ramp = np.linspace(0.0, 1.0, 8)[None, None, None, None, :] + np.linspace(0.0, 2.0, 8)[None, None, None, :, None] ** 2

    def fn(batch):
        return batch[:, :2] * ramp + batch[:, 2:3]

    x = rng.normal(size=(1, 3, 1, 8, 8))
    out = tta_net_fn(fn, "dihedral")(x)
    want = np.mean([_backward(fn(np.ascontiguousarray(_forward(x, *p))), *p) for p in MODES["dihedral"]], axis=0)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert np.abs(out - fn(x)).max() > 1e-3  # the augmentation changed something here
    assert tta_net_fn(fn, None) is fn and tta_net_fn(fn, "none") is fn


def test_tta_is_exact_for_an_equivariant_function(rng):
    def fn(batch):  # pointwise: commutes with every flip and transpose
        e = np.exp(batch[:, :2])
        return e / e.sum(1, keepdims=True)

    x = rng.normal(size=(2, 3, 1, 8, 12))
    np.testing.assert_allclose(tta_net_fn(fn, "dihedral")(x), fn(x), rtol=1e-6)


def test_bad_mode_is_refused():
    assert check_mode(None) == "none"
    with pytest.raises(InputError, match="tta must be one of"):
        check_mode("rot45")


def test_segmenter_tta_probabilities(rng):
    torch = pytest.importorskip("torch")
    from test_segment import _segmenter

    torch.set_num_threads(1)
    seg = _segmenter("2.5d")
    img = rng.integers(0, 256, size=(2, 4, 40, 40)).astype(np.uint8)
    plain = seg.predict_proba(img, ["SE2", "InLens"])
    flips = seg.predict_proba(img, ["SE2", "InLens"], tta="flips")
    assert flips.shape == plain.shape
    np.testing.assert_allclose(flips.sum(0), 1.0, atol=1e-5)
    assert np.abs(flips - plain).max() > 1e-4
    # the x-flipped volume gives the x-flipped TTA probabilities (the flips group is closed)
    mirrored = seg.predict_proba(img[..., ::-1].copy(), ["SE2", "InLens"], tta="flips")
    np.testing.assert_allclose(mirrored[..., ::-1], flips, atol=1e-5)
