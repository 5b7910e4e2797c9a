"""seglearn.pretrain.noise: relative noise, the Gaussian's noise factor, and the smoothing rule."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.pretrain.noise import (choose_smoothing, gaussian_noise_factor, relative_noise, resolve_smoothing,
                                     sigma_for_factor)


def _two_class(noise: float, contrast: float = 40.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = np.ones((3, 96, 96), np.uint8)
    truth[:, 24:72, 24:72] = 2
    img = 100.0 + contrast * (truth == 2) + rng.normal(0, noise, truth.shape)
    scr = np.zeros_like(truth)
    scr[:, 2:12, 2:90] = 1
    scr[:, 35:60, 35:60] = 2
    return img[None], scr


@pytest.mark.parametrize("sigma", [0.6, 0.9, 1.5])
def test_gaussian_noise_factor_is_the_measured_drop_of_white_noise(sigma):
    from scipy import ndimage as ndi

    x = np.random.default_rng(1).normal(0, 1, (512, 512))
    measured = ndi.gaussian_filter(x, sigma).std()
    assert gaussian_noise_factor(sigma) == pytest.approx(measured, rel=0.03)
    assert sigma_for_factor(gaussian_noise_factor(sigma)) == pytest.approx(sigma, abs=0.01)
    assert gaussian_noise_factor(0) == 1.0 and sigma_for_factor(1.2) == 0.0


def test_relative_noise_is_noise_over_class_contrast():
    img, scr = _two_class(noise=10.0, contrast=40.0)
    assert relative_noise(img, scr)[0] == pytest.approx(0.25, rel=0.1)
    one = np.where(scr == 2, 2, 0).astype(np.uint8)  # a single class: no contrast to compare with
    assert np.isnan(relative_noise(img, one)[0])
    with pytest.raises(InputError, match="do not agree"):
        relative_noise(img, scr[0])


def test_only_detectors_noisier_than_the_reference_are_smoothed_to_its_median():
    ref = np.column_stack([np.linspace(0.05, 0.25, 101), np.linspace(0.05, 0.25, 101)])  # median 0.15, p90 0.23
    sig = choose_smoothing([0.45, 0.2], ref)
    assert sig[1] == 0.0 and sig[0] > 0
    assert 0.45 * gaussian_noise_factor(sig[0]) == pytest.approx(0.15, rel=0.01)
    assert choose_smoothing([float("nan"), 0.5], ref)[0] == 0.0


def test_resolve_smoothing_settings():
    img, scr = _two_class(noise=10.0)
    meta = {"detectors": ["SE2", "InLens"]}
    images = np.concatenate([img, img])
    assert resolve_smoothing("off", meta, images, scr)[0] == [0.0, 0.0]
    assert resolve_smoothing(0.7, meta, images, scr)[0] == [0.7, 0.7]
    assert resolve_smoothing([0.5, 0.0], meta, images, scr) == ([0.5, 0.0], {"mode": "given", "sigma": [0.5, 0.0]})
    own = {**meta, "normalisation": {"smooth": [0.8, 0.6]}}
    assert resolve_smoothing("auto", own, images, scr)[0] == [0.8, 0.6]  # a model that smooths keeps its smoothing
    for bad in ([0.5, 0.5, 0.5], [-1.0], "strong"):
        with pytest.raises(InputError, match="denoise"):
            resolve_smoothing(bad, meta, images, scr)


def test_relative_noise_unlabelled_needs_no_labels():
    from seglearn.pretrain.noise import relative_noise_unlabelled

    rng = np.random.default_rng(0)
    truth = np.zeros((3, 96, 96), np.uint8)
    truth[:, 24:72, 24:72] = 1
    truth[:, 40:56, :] = 2
    clean = 60.0 + 40.0 * truth  # three classes: spread of the class medians 80
    for noise in (4.0, 12.0):
        img = (clean + rng.normal(0, noise, clean.shape))[None]
        got = relative_noise_unlabelled(img)[0]
        assert got == pytest.approx(noise / 80.0, rel=0.15)
        assert relative_noise_unlabelled(3.0 * img + 7.0)[0] == pytest.approx(got, rel=1e-6)  # no grey-value scale
    assert np.isnan(relative_noise_unlabelled(np.full((1, 2, 32, 32), 9.0))[0])  # flat: no contrast
    with pytest.raises(InputError, match=r"\(C, Z, Y, X\)"):
        relative_noise_unlabelled(clean)
