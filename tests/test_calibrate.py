"""Temperature scaling, expected calibration error and the uncertainty map (seglearn/segment/calibrate.py)."""

import numpy as np
import pytest

from seglearn.segment.calibrate import (calibration_record, expected_calibration_error, fit_temperature, softmax,
                                        temperature_of, uncertainty_map)


def _draw(t_true: float, n: int = 40000, k: int = 3, seed: int = 0):
    """Logits (K, N) and labels 1..K drawn from softmax(logits / t_true): calibrated at t_true."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3.0, (k, n))
    p = softmax(logits / t_true, 0)
    cum = np.cumsum(p, 0)
    labels = (rng.random(n)[None] > cum).sum(0) + 1
    return logits, labels


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t_true):
    logits, labels = _draw(t_true)
    t = fit_temperature(logits, labels, probs=False)
    assert t == pytest.approx(t_true, rel=0.06)
    # probabilities given instead of logits: log p is the same softmax
    assert fit_temperature(softmax(logits, 0), labels) == pytest.approx(t, rel=1e-3)


def test_ece_drops_after_calibration_and_unlabelled_voxels_are_ignored():
    logits, labels = _draw(2.5)  # the raw logits are overconfident
    labels = labels.copy()
    labels[:5000] = 0  # not labelled
    rec = calibration_record(logits, labels, source="held-out scribbles", scribbles=True)
    assert rec["ece_before"] > 0.08
    assert rec["ece_after"] < 0.02 < rec["ece_before"] / 4
    assert rec["n_voxels"] == 35000 and rec["temperature"] == pytest.approx(2.5, rel=0.06)
    # a perfectly calibrated case has a small ECE, a wrong one a large ECE
    assert expected_calibration_error(softmax(logits / 2.5, 0), labels) < 0.02
    assert temperature_of({"calibration": rec}) == rec["temperature"] and temperature_of({}) == 1.0


def test_uncertainty_map_range_and_shape():
    k, shape = 3, (2, 5, 6)
    p = np.zeros((k,) + shape, np.float32)
    p[0] = 1.0  # certain
    p[:, 1] = 1.0 / k  # uniform in the second slice
    u = uncertainty_map(p)
    assert u.shape == shape and u.dtype == np.float16
    assert np.all(u[0] == 0) and np.allclose(u[1], 1.0, atol=1e-3)
    rnd = softmax(np.random.default_rng(1).normal(size=(k,) + shape), 0)
    v = uncertainty_map(rnd)
    assert v.min() >= 0 and v.max() <= 1 and 0 < float(v.mean()) < 1


def test_torch_net_fn_applies_the_temperature():
    import torch

    from seglearn.segment.api import torch_net_fn

    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, 1).eval()
    x = np.random.default_rng(0).normal(size=(1, 2, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    for t in (1.0, 2.5):
        p = torch_net_fn(net, torch.device("cpu"), temperature=t)(x)
        np.testing.assert_allclose(p, softmax(logits / t, 1), atol=1e-6)


def test_scribbles_can_soften_but_never_sharpen():
    """Scribbles lie inside the phases: T fitted on them is kept >= 1 (a dense test set may give T < 1)."""
    from seglearn.pretrain.ft_final import blend_temperature

    logits, labels = _draw(0.5)  # the raw logits are under-confident: the best T is 0.5
    assert calibration_record(logits, labels, source="test", scribbles=False)["temperature"] == pytest.approx(0.5, rel=0.06)
    for source in ("held-out scribbles", "held-out scribbles of run 1 of 3 (runs 2..3 trained on part of them)"):
        rec = calibration_record(logits, labels, source=source, scribbles=True)
        assert rec["temperature"] == pytest.approx(1.0, abs=1e-6)
        assert rec["ece_after"] == pytest.approx(rec["ece_before"], abs=1e-6)  # T = 1: nothing changed
    over_logits, over_labels = _draw(2.5)  # over-confident: scribbles still soften
    assert calibration_record(over_logits, over_labels, source="held-out scribbles", scribbles=True)["temperature"] == \
        pytest.approx(2.5, rel=0.06)
    # the blend's temperature follows the same bounds: (N, K, Y, X) logits, a forest of uniform probabilities
    z = logits.T.reshape(40, 1000, 3).transpose(0, 2, 1)[..., None]
    y = labels.reshape(40, 1000)[..., None]
    pf = np.full_like(z, 1 / 3)
    assert blend_temperature(z, y, weight=0.75, p_forest=pf) < 0.9
    assert blend_temperature(z, y, weight=0.75, p_forest=pf, bounds=(1.0, 20.0)) == pytest.approx(1.0, abs=1e-3)
