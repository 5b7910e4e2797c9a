"""Prediction within a byte budget (issue 28): blocks of slices, and bands of rows for huge slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seglearn.segment.memory import ACTIVATION_BYTES, plan_blocks

GIB = 2**30
ROOT = Path(__file__).resolve().parents[1]


def _plan(shape, budget=1.5, n=2, itemsize=2, base=400 * 2**20, halo=3):
    return plan_blocks(shape, n_raw=n, raw_itemsize=itemsize, n_channels=n + (n > 1), n_classes=3, halo=halo,
                       budget_bytes=int(budget * GIB), base_bytes=base)


def test_blocks_shrink_with_the_slice_and_stay_within_the_budget():
    small, big = _plan((256, 512, 512)), _plan((256, 1024, 1024))
    assert small.band_rows is None and big.band_rows is None
    assert small.block_slices > big.block_slices >= 1
    for p in (small, big):
        assert p.estimate() <= 1.5 * GIB
        assert p.fixed + (p.block_slices + 1) * p.bytes_per_slice > 1.5 * GIB  # the largest block that fits
        assert p.fixed > 400 * 2**20 + ACTIVATION_BYTES  # the 2.5D halo is counted
    assert _plan((3, 64, 64)).block_slices == 3  # never more slices than the volume has
    assert _plan((256, 1024, 1024), n=1, itemsize=1).block_slices > big.block_slices  # fewer detectors: more slices


def test_a_slice_too_large_for_the_budget_is_predicted_in_bands(caplog):
    p = _plan((512, 2048, 2048))
    assert p.block_slices == 1 and 64 <= p.band_rows < 2048 and p.estimate() <= 1.5 * GIB
    with caplog.at_level("WARNING", logger="seglearn"):
        tight = _plan((10, 8192, 8192))  # the budget cannot be kept: the smallest bands, said loudly
    assert "memory_budget_gib=1.50 is too small for slices of 8192 x 8192" in caplog.text
    assert tight.band_rows == 64 and tight.estimate() > 1.5 * GIB
    roomy = _plan((10, 8192, 8192), budget=8)
    assert 64 < roomy.band_rows < 8192 and roomy.estimate() <= 8 * GIB


def test_bands_agree_with_whole_slices(tiny_phantom):
    from seglearn.segment.api import load_segmenter
    from seglearn.segment.tiling import predict_banded

    seg = load_segmenter(ROOT / "checkpoints" / "demo.ckpt", device="cpu", bf16=False)
    raw = tiny_phantom.channels()[:, :6]
    whole = np.concatenate([p for _, p in seg.iter_proba(lambda a, b: raw[:, a:b], raw.shape[1:], block_slices=3)], 1)
    banded = np.concatenate([p for _, p in seg.iter_proba(lambda a, b: raw[:, a:b], raw.shape[1:], block_slices=3,
                                                          band_rows=24)], 1)
    assert banded.shape == whole.shape
    assert np.mean(banded.argmax(0) == whole.argmax(0)) > 0.99
    # without bands it is exactly predict_slab
    calls = []
    same = predict_banded(lambda b: calls.append(b.shape) or np.ones((b.shape[0], 2, *b.shape[2:]), np.float32),
                          lambda a, b: np.zeros((1, b - a, 64, 32), np.float32), 4, 0, 4, height=64, band_rows=None,
                          tile=[4, 32, 32], overlap=[0, 8, 8], n_classes=2)
    assert same.shape == (2, 4, 64, 32) and calls
