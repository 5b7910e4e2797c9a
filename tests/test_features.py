"""Feature filters checked against scipy / scikit-image, chunk invariance, z-evolution semantics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from seglearn.features.filters import eigvals_sym2, eigvals_sym3, gaussian_derivatives
from seglearn.features.ilastik import feature_names, ilastik_features
from seglearn.features.zevolution import feature_names as z_names
from seglearn.features.zevolution import zevolution_features


@pytest.fixture(scope="module")
def vol():
    rng = np.random.default_rng(0)
    return (ndi.gaussian_filter(rng.random((28, 36, 40)), 1.2) * 200).astype(np.float32)


def _inner(a, m=10):
    return a[(Ellipsis,) + (slice(m, -m),) * 3]


@pytest.mark.parametrize("order", [(0, 0, 0), (1, 0, 0), (0, 0, 1), (2, 0, 0), (1, 1, 0), (0, 1, 1), (0, 0, 2)])
def test_gaussian_derivatives_equal_scipy(vol, order):
    sigma = (0.8, 1.6, 2.0)
    got = gaussian_derivatives(vol, sigma, [order])[order]
    ref = ndi.gaussian_filter(vol, sigma, order=order, mode="reflect")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_eigenvalues_equal_skimage(vol):
    from skimage.feature import (hessian_matrix, hessian_matrix_eigvals, structure_tensor,
                                 structure_tensor_eigenvalues)

    h = hessian_matrix(vol, sigma=1.5, use_gaussian_derivatives=True)
    np.testing.assert_allclose(np.stack(eigvals_sym3(*h)), hessian_matrix_eigvals(h), rtol=1e-4, atol=1e-4)
    s = structure_tensor(vol[5], sigma=1.0, mode="reflect")
    np.testing.assert_allclose(np.stack(eigvals_sym2(*s)), structure_tensor_eigenvalues(s), rtol=1e-4, atol=1e-3)
    # degenerate tensors (all equal eigenvalues) stay finite
    e = eigvals_sym3(*(np.array([2.0]), np.zeros(1), np.zeros(1), np.array([2.0]), np.zeros(1), np.array([2.0])))
    np.testing.assert_allclose(np.concatenate(e), [2, 2, 2], atol=1e-6)


def test_ilastik_features_match_skimage_and_scipy(vol):
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals
    from skimage.filters import gaussian

    s = 2.0
    f = ilastik_features(vol, sigmas=(s,), dims=3, anisotropy=1.0)
    names = feature_names("", (s,), ("gauss", "log", "ggm", "dog", "ste", "hoge"), 3)
    assert f.shape == (len(names),) + vol.shape
    by = dict(zip(names, f))
    np.testing.assert_allclose(by["gauss_s2"], gaussian(vol, sigma=s, mode="reflect", truncate=4.0, preserve_range=True),
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(by["log_s2"], ndi.gaussian_laplace(vol, s, mode="reflect"), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(by["ggm_s2"], ndi.gaussian_gradient_magnitude(vol, s, mode="reflect"), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(by["dog_s2"], ndi.gaussian_filter(vol, s) - ndi.gaussian_filter(vol, 0.66 * s),
                               rtol=1e-4, atol=1e-3)
    # skimage builds the Hessian from two first-derivative passes: equal away from the borders
    ref = hessian_matrix_eigvals(hessian_matrix(vol, sigma=s, use_gaussian_derivatives=True, mode="reflect"))
    got = np.stack([by[f"hoge{i}_s2"] for i in range(3)])
    scale = np.abs(ref).max()
    assert np.abs(_inner(got) - _inner(ref)).max() < 0.02 * scale


def test_structure_tensor_assembly_matches_skimage_eigenvalues(vol):
    from skimage.feature import structure_tensor_eigenvalues

    s, img = 1.6, vol[6]
    f = ilastik_features(vol, 6, 7, sigmas=(s,), features=("ste",), dims=2)
    gy = ndi.gaussian_filter(img, s, order=(1, 0))
    gx = ndi.gaussian_filter(img, s, order=(0, 1))
    t = [ndi.gaussian_filter(a * b, 0.5 * s) for a, b in ((gy, gy), (gy, gx), (gx, gx))]
    np.testing.assert_allclose(f[:, 0], structure_tensor_eigenvalues(np.stack(t)), rtol=1e-3, atol=1e-2)


def test_gauss_matches_multiscale_basic_features():
    from skimage.feature import multiscale_basic_features

    rng = np.random.default_rng(1)
    img = (ndi.gaussian_filter(rng.random((48, 52)), 1.0) * 255).astype(np.uint8)
    ref = multiscale_basic_features(img, intensity=True, edges=False, texture=False, sigma_min=1.0, sigma_max=4.0,
                                    num_sigma=3)
    sigmas = np.logspace(np.log2(1.0), np.log2(4.0), num=3, base=2, endpoint=True)
    got = ilastik_features(img[None].astype(np.float32), sigmas=tuple(sigmas), features=("gauss",), dims=2)[:, 0] / 255
    inner = (slice(None), slice(12, -12), slice(12, -12))  # skimage pads with 'nearest', ilastik with 'reflect'
    np.testing.assert_allclose(got[inner], np.moveaxis(ref, -1, 0)[inner], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_ilastik_chunks_equal_whole_volume(vol, dims):
    kw = dict(sigmas=(0.3, 1.0, 3.5), dims=dims, anisotropy=0.5)
    full = ilastik_features(vol, **kw)
    for z0, z1 in ((0, 5), (9, 17), (25, 28)):
        np.testing.assert_allclose(ilastik_features(vol, z0, z1, **kw), full[:, z0:z1], rtol=1e-5, atol=1e-4)


def test_zevolution_chunks_equal_whole_volume(vol):
    full = zevolution_features(vol, tol=3.0)
    assert full.shape[0] == len(z_names(""))
    for z0, z1 in ((0, 3), (11, 20), (27, 28)):
        np.testing.assert_array_equal(zevolution_features(vol, z0, z1, tol=3.0), full[:, z0:z1])


def test_zevolution_settle_on_a_rising_profile():
    # grey value rises by 10 per slice until slice 5, then stays: a pore until the cut reaches material
    z = np.arange(20, dtype=np.float32)
    vol = np.broadcast_to((np.minimum(z, 5) * 10)[:, None, None], (20, 4, 4)).copy()
    f = dict(zip(z_names(""), zevolution_features(vol, presmooth=0.0, tol=6.0, max_settle=16)))
    np.testing.assert_array_equal(f["settle"][:8, 0, 0], [5, 4, 3, 2, 1, 0, 0, 0])
    np.testing.assert_array_equal(f["settle_gain"][:8, 0, 0], [50, 40, 30, 20, 10, 0, 0, 0])
    np.testing.assert_array_equal(f["dz+1"][:7, 0, 0], [10, 10, 10, 10, 10, 0, 0])
    assert f["ahead_max4"][0, 0, 0] == 40 and f["ahead_max4"][10, 0, 0] == 0
    # stable_back counts slices behind within tol: 0 while rising, grows once settled
    np.testing.assert_array_equal(f["stable_back"][[3, 5, 6, 9], 0, 0], [0, 0, 1, 4])
