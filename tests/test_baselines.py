"""Each baseline method on synthetic inputs and on the tiny phantom (bounds it truly meets)."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.baselines import registry
from seglearn.baselines import thresholds as T
from seglearn.baselines.gabor import gabor_kernel_cv
from seglearn.baselines.watershed import seeds
from seglearn.errors import InputError
from seglearn.metrics import score

# small forests / feature sets keep the tests fast; the benchmark configs use the seed's settings
RF_ILASTIK = {"inputs": ["SE2", "InLens", "SE2-InLens"],
              "ilastik": {"sigmas": [0.7, 1.6, 3.5], "features": ["gauss", "ggm", "log", "hoge"], "dims": 3}}
RF_TAILORED = {**RF_ILASTIK, "zevolution": {"inputs": ["SE2", "InLens"], "presmooth": 1.0, "tol": 6.0}}


def _awe(pred, ph):
    return score(pred, ph.test, 3)["awe"]


@pytest.fixture(scope="module")
def tiny(tiny_phantom):
    ph = tiny_phantom
    return ph, ph.channels(), list(ph.config.detectors)


@pytest.fixture(scope="module")
def awes(tiny):
    """awe on the tiny phantom's test slice of every method (fitted on its scribbles)."""
    ph, ch, det = tiny
    out = {}
    runs = {
        "double_threshold": ("double_threshold", {}),
        "double_threshold_fit": ("double_threshold", {"fit": "labels"}),
        "triple_threshold": ("triple_threshold", {}),
        "otsu": ("otsu", {}),
        "multi_otsu": ("multi_otsu", {}),
        "gabor": ("gabor", {"nlm_patch_distance": 3}),
        "watershed_gws": ("watershed", {"window": 4.0}),
        "watershed_cws": ("watershed", {"window": 15.0}),
        "zgradient": ("zgradient", {}),
        "rf_ilastik": ("random_forest", {"features": RF_ILASTIK, "n_estimators": 30, "n_jobs": 1,
                                         "voxel_size_nm": ph.config.voxel_size_nm}),
        "rf_tailored": ("random_forest", {"features": RF_TAILORED, "n_estimators": 30, "n_jobs": 1,
                                          "voxel_size_nm": ph.config.voxel_size_nm}),
    }
    for name, (impl, params) in runs.items():
        pred = registry.segment(impl, ch, det, ph.train, **params)
        assert pred.shape == ph.truth.shape and pred.dtype == np.uint8
        assert set(np.unique(pred)) <= {1, 2, 3}
        out[name] = _awe(pred, ph)
    return out


def test_every_method_beats_chance_and_rf_beats_thresholds(awes, tiny):
    ph = tiny[0]
    # chance level: labelling everything as the most frequent class of the scribbles
    major = int(np.argmax(np.bincount(ph.train[ph.train > 0])))
    chance = _awe(np.full(ph.truth.shape, major, dtype=np.uint8), ph)
    assert all(v < chance for v in awes.values()), (chance, awes)
    assert awes["rf_ilastik"] < awes["double_threshold"] - 10, awes
    assert awes["rf_tailored"] < awes["double_threshold"] - 10, awes
    assert awes["zgradient"] < awes["double_threshold"], awes
    assert awes["watershed_cws"] < awes["double_threshold"], awes
    # fitting the pair to the labels beats setting it from the histogram
    assert awes["double_threshold_fit"] < awes["double_threshold"], awes


def test_double_threshold_given_equals_apply(tiny):
    ph, ch, det = tiny
    pred = registry.segment("double_threshold", ch, det, None, thresholds=[60, 110], order=[1, 2, 3])
    img = ch[0]
    np.testing.assert_array_equal(pred, np.where(img < 60, 1, np.where(img < 110, 2, 3)))
    with pytest.raises(InputError, match="training labels"):
        registry.segment("double_threshold", ch, det, None, fit="labels")


def test_triple_threshold_finds_bright_void():
    # four grey-value ranges: void, carbon, NMC, bright void (seed 002, Fig. 2)
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 4, size=(4, 30, 30))
    centres = np.array([20, 45, 65, 110])
    img = (centres[cls] + rng.integers(-5, 6, size=cls.shape)).astype(np.uint8)
    labels = np.array([1, 2, 3, 1], dtype=np.uint8)[cls]
    m = T.fit_triple(img[None], ["SE2"], labels)
    assert m["classes"] == [1, 2, 3, 1]
    np.testing.assert_array_equal(T.predict_triple(m, img[None], ["SE2"]), labels)
    # a double threshold cannot separate the bright void
    d = T.fit_double(img[None], ["SE2"], labels, fit="labels")
    assert np.mean(T.predict_double(d, img[None], ["SE2"]) == labels) < 0.9


def test_histogram_double_threshold_finds_the_valleys():
    # three grey-value modes of unequal weight; the thresholds fall between them, no labels needed
    rng = np.random.default_rng(2)
    cls = rng.choice(3, size=(3, 60, 60), p=[0.35, 0.15, 0.5])
    img = np.clip(np.array([40.0, 100.0, 170.0])[cls] + rng.normal(0, 8, cls.shape), 0, 255).astype(np.uint8)
    t = T.histogram_thresholds(img, 3)
    assert 55 < t[0] < 85 and 120 < t[1] < 150, t
    m = T.fit_double(img[None], ["SE2"], None)
    assert np.mean(T.predict_double(m, img[None], ["SE2"]) == cls + 1) > 0.97
    with pytest.raises(InputError, match="fit must be"):
        T.fit_double(img[None], ["SE2"], None, fit="guess")


def test_otsu_and_multi_otsu_on_separated_modes():
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 3, size=(2, 40, 40))
    img = (np.array([30, 120, 220])[cls] + rng.integers(-6, 7, size=cls.shape)).astype(np.uint8)
    labels = (cls + 1).astype(np.uint8)
    m = T.fit_multi_otsu(img[None], ["SE2"], labels)
    np.testing.assert_array_equal(T.predict_otsu(m, img[None], ["SE2"]), labels)
    two = (cls > 0).astype(np.uint8) * 2 + 1  # classes 1 and 3
    m = T.fit_otsu(img[None], ["SE2"], two)
    assert m["classes"] == [1, 3]
    assert np.mean(T.predict_otsu(m, img[None], ["SE2"])[cls != 1] == two[cls != 1]) == 1.0


def test_gabor_kernel_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    args = dict(ksize=(31, 31), sigma=1.0, theta=np.pi / 3, lambd=10.0, gamma=1.9, psi=0.0)
    ref = cv2.getGaborKernel(**args, ktype=cv2.CV_64F)
    got = gabor_kernel_cv(31, 1.0, np.pi / 3, 10.0, 1.9, 0.0)
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_watershed_windows():
    img = np.arange(100, dtype=np.float32).reshape(1, 1, 100)
    g = seeds(img, (30, 70), (1, 2, 3), 4.0)
    c = seeds(img, (30, 70), (1, 2, 3), 15.0)
    assert (c == 0).sum() > (g == 0).sum() > 0
    assert g[0, 0, 10] == 1 and g[0, 0, 50] == 2 and g[0, 0, 90] == 3 and g[0, 0, 30] == 0


def test_registry_refuses_unknown_names(tiny):
    ph, ch, det = tiny
    with pytest.raises(InputError, match="unknown method"):
        registry.get_method("nope")
    with pytest.raises(InputError, match="unknown parameter"):
        registry.segment("otsu", ch, det, ph.train, colour="red")
    with pytest.raises(InputError, match="detector"):
        registry.segment("otsu", ch, det, ph.train, detector="BSE")


def test_unet_method_calls_the_segment_api(tiny, tmp_path, monkeypatch):
    """Without a checkpoint the method trains one with fit_segmenter, then predicts with load_segmenter."""
    from seglearn.benchmark import unet_method as unet

    ph, ch, det = tiny
    calls = {}

    class FakeApi:
        @staticmethod
        def fit_segmenter(images, train_labels, detectors, out_dir, overrides=None, val_labels=None):
            calls["fit"] = (images.shape, int(train_labels.max()), list(detectors), str(out_dir), overrides)
            return tmp_path / "best.ckpt"

        @staticmethod
        def load_segmenter(path):
            calls["load"] = str(path)

            class Seg:
                def predict(self, images, detectors, tta=None):
                    calls["tta"] = tta
                    return np.full(images.shape[1:], 3, dtype=np.uint8)
            return Seg()

    monkeypatch.setattr(unet, "_api", lambda: FakeApi)
    pred = registry.segment("unet", ch, det, ph.train, out_dir=str(tmp_path), voxel_size_nm=[40, 20, 20])
    assert calls["fit"] == (ch.shape, 3, det, str(tmp_path), {"voxel_size_nm": [40, 20, 20]})
    assert calls["load"] == str(tmp_path / "best.ckpt") and pred.shape == ph.truth.shape
    assert calls["tta"] == "none"
    pred = registry.segment("unet", ch, det, None, ckpt="given.ckpt", tta="dihedral", adapt="off")
    assert calls["load"] == "given.ckpt" and calls["tta"] == "dihedral"
    with pytest.raises(InputError, match="unet"):
        registry.segment("unet", ch, det, None)
    with pytest.raises(InputError, match="tta"):
        registry.segment("unet", ch, det, None, ckpt="given.ckpt", tta="rot45", adapt="off")
    with pytest.raises(InputError, match="adapt="):
        registry.segment("unet", ch, det, None, ckpt="given.ckpt", adapt="half")


def test_unet_api_has_the_expected_signature():
    api = pytest.importorskip("seglearn.segment")
    import inspect

    assert list(inspect.signature(api.fit_segmenter).parameters)[:4] == ["images", "train_labels", "detectors", "out_dir"]
    assert "overrides" in inspect.signature(api.fit_segmenter).parameters
    assert callable(api.load_segmenter)
