"""CT phantom (seed 003): phases -> attenuation, blur, noise at a given SNR, rings."""

import numpy as np
import pytest

from seglearn.ct.phantom import AM, NON_AM, CTConfig, gaussian_prefilter, make_ct_phantom, render_ct
from seglearn.errors import InputError


def _phases(shape=(12, 40, 40)):
    """Two-phase-ish block: AM spheres in a pore/CBD matrix."""
    z, y, x = np.indices(shape)
    ph = np.ones(shape, np.uint8)
    ph[(x + y) % 7 == 0] = 2
    for c in ((6, 12, 12), (6, 28, 26), (6, 12, 30)):
        ph[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < 49] = 3
    return ph


def test_generated_phantom_truth_and_grey_levels():
    ph = make_ct_phantom({"shape": [16, 32, 32], "snr": 3.0, "seed": 1})
    assert ph.image.shape == ph.truth.shape == (16, 32, 32) and ph.image.dtype == np.uint8
    assert set(np.unique(ph.truth)) <= {NON_AM, AM}
    assert np.array_equal(ph.truth == AM, ph.phases == 3)
    assert ph.info["am_fraction"] == pytest.approx((ph.truth == AM).mean())
    # AM is the bright phase
    assert ph.image[ph.truth == AM].mean() > ph.image[ph.truth == NON_AM].mean() + 0.5 * ph.info["contrast_grey"]


def test_snr_sets_noise():
    ph = _phases()
    out = {}
    for snr in (1.0, 4.0):
        cfg = CTConfig(shape=ph.shape, snr=snr, blur=0.0, noise_corr=0.0)
        img, info = render_ct(ph, cfg, np.random.default_rng(0))
        deep = ph == 1  # pore voxels: one attenuation level, so their spread is the noise
        out[snr] = (img[deep].std(), info)
    for snr, (std, info) in out.items():
        assert std == pytest.approx(info["noise_std_grey"], rel=0.15)
        assert info["contrast_grey"] / info["noise_std_grey"] == pytest.approx(snr, rel=1e-6)


def test_rings_are_concentric():
    ph = _phases((6, 48, 48))
    base = CTConfig(shape=ph.shape, snr=1e6, blur=0.0, noise_corr=0.0)
    ringed = CTConfig(shape=ph.shape, snr=1e6, blur=0.0, noise_corr=0.0, rings=0.5)
    a, _ = render_ct(ph, base, np.random.default_rng(3))
    b, _ = render_ct(ph, ringed, np.random.default_rng(3))
    d = b.astype(float) - a.astype(float)
    assert np.abs(d).max() > 5
    # the artefact of a slice is rotation symmetric about the slice centre
    flat, _ = render_ct(np.full(ph.shape, 1, np.uint8), ringed, np.random.default_rng(3))
    s = flat[2].astype(float)
    assert np.corrcoef(s.ravel(), np.rot90(s).ravel())[0, 1] > 0.95
    assert s.std() > 2


def test_source_volume_and_errors(tmp_path):
    from seglearn.io import write_volume

    src = np.zeros((20, 40, 40), np.uint8)
    src[:, 10:30, 10:30] = 1
    path = tmp_path / "bin.tif"
    write_volume(path, src)
    ph = make_ct_phantom({"source": str(path), "shape": [10, 24, 24], "snr": 2.0})
    # the centre crop of the source, value 1 = AM of a two-value volume
    assert np.array_equal(ph.truth == AM, src[5:15, 8:32, 8:32] == 1)
    with pytest.raises(InputError, match="smaller"):
        make_ct_phantom({"source": str(path), "shape": [30, 20, 20]})
    with pytest.raises(InputError, match="unknown"):
        CTConfig.from_dict({"nosie": 1})
    with pytest.raises(InputError, match="snr"):
        CTConfig.from_dict({"snr": 0})


def test_gaussian_prefilter_keeps_dtype_and_smooths():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (10, 20, 20)).astype(np.uint8)
    f = gaussian_prefilter(img, 1.1)
    assert f.dtype == np.uint8 and f.shape == img.shape
    assert f.astype(float).std() < 0.5 * img.astype(float).std()
