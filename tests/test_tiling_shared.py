"""One tiler and one normaliser for the U-Net and the particle model (issue 26): both callers unchanged.

The references below are the callers' own implementations from before they shared
:func:`seglearn.tiling.sliding_window` and :mod:`seglearn.io.normalise`, kept here as the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def _old_predict_tiles(net, images, *, tile=(256, 256), context=64, batch_size=8):
    """The particle model's own tiler before issue 26 (fp32 path), verbatim in substance."""
    import torch

    images = np.asarray(images, dtype=np.float32)
    n, c, h, w = images.shape
    gy, gx = net.grid
    dy, dx = net.divisor
    ty, tx = _ceil_to(max(int(tile[0]), dy), dy), _ceil_to(max(int(tile[1]), dx), dx)
    cy, cx = _ceil_to(int(context), dy), _ceil_to(int(context), dx)
    if h <= ty + 2 * cy and w <= tx + 2 * cx:
        ty, tx, cy, cx = _ceil_to(h, dy), _ceil_to(w, dx), 0, 0
    ny, nx = -(-h // ty), -(-w // tx)
    ph, pw = ny * ty, nx * tx
    pad = ((0, 0), (0, 0), (cy, cy + ph - h), (cx, cx + pw - w))
    mode = "reflect" if min(h, w) > max(cy, cx, ph - h + cy, pw - w + cx) else "symmetric"
    padded = np.pad(images, pad, mode=mode)
    prob = np.zeros((n, ph // gy, pw // gx), np.float32)
    dist = np.zeros((n, net.n_rays, ph // gy, pw // gx), np.float32)
    with torch.inference_mode():
        for i0 in range(0, n, batch_size):
            for by in range(ny):
                for bx in range(nx):
                    y0, x0 = by * ty, bx * tx
                    block = padded[i0:i0 + batch_size, :, y0:y0 + ty + 2 * cy, x0:x0 + tx + 2 * cx]
                    p, d = net(torch.from_numpy(np.ascontiguousarray(block)))
                    p = torch.sigmoid(p.float())[:, 0].numpy()
                    d = d.float().numpy()
                    sy, sx = slice(cy // gy, (cy + ty) // gy), slice(cx // gx, (cx + tx) // gx)
                    oy, ox = slice(y0 // gy, (y0 + ty) // gy), slice(x0 // gx, (x0 + tx) // gx)
                    prob[i0:i0 + batch_size, oy, ox] = p[:, sy, sx]
                    dist[i0:i0 + batch_size, :, oy, ox] = d[:, :, sy, sx]
    hg, wg = -(-h // gy), -(-w // gx)
    return prob[:, :hg, :wg], dist[:, :, :hg, :wg]


@pytest.fixture(scope="module")
def star_net():
    import torch

    from seglearn.instances.model import StarDistNet

    torch.manual_seed(0)
    return StarDistNet(2, n_rays=8, grid=(2, 2), depth=1, base_filters=4, head_filters=8).eval()


@pytest.mark.parametrize("shape,tile,context,batch", [((5, 2, 70, 90), (16, 32), 16, 2),  # 5 x 4 x 3 tiles
                                                      ((3, 2, 37, 41), (16, 16), 8, 8),   # odd size, rounding
                                                      ((2, 2, 30, 28), (64, 64), 8, 1)])  # one tile, no context
def test_particle_tiling_on_the_shared_tiler_is_bit_identical(star_net, shape, tile, context, batch):
    from seglearn.instances.tiling import predict_tiles

    img = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    p_new, d_new = predict_tiles(star_net, img, tile=tile, context=context, batch_size=batch)
    p_old, d_old = _old_predict_tiles(star_net, img, tile=tile, context=context, batch_size=batch)
    assert p_new.shape == p_old.shape and d_new.shape == d_old.shape
    assert np.array_equal(p_new, p_old) and np.array_equal(d_new, d_old)


def _old_sliding_window(x, net_fn, *, n_classes, tile, overlap, align, border=None, batch_size=4,
                        sigma_scale=0.125, gaussian_z=True):
    """The U-Net tiler before it took ``grid`` / ``gaussian`` (halo 0), in substance."""
    import itertools

    from seglearn.tiling import _axis_weight, _round_up, _starts

    c, z, yy, xx = x.shape
    shape = (z, yy, xx)
    padded = tuple(_round_up(s, a) for s, a in zip(shape, align))
    tile = tuple(min(_round_up(int(t), a), p) for t, a, p in zip(tile, align, padded))
    overlap = tuple(max(0, min(int(o), t - a)) for o, t, a in zip(overlap, tile, align))
    border = tuple(o // 4 for o in overlap) if border is None else tuple(min(int(b), o // 2) for b, o in zip(border, overlap))
    pad = [(0, 0)] + [(0, p - s) for p, s in zip(padded, shape)]
    x = np.pad(x, pad, mode="edge")
    starts = [_starts(p, t, o, a) for p, t, o, a in zip(padded, tile, overlap, align)]
    out = np.zeros((n_classes, *padded), np.float32)
    wsum = np.zeros(padded, np.float32)
    tiles = list(itertools.product(*starts))
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i:i + batch_size]
        batch = np.stack([x[:, s[0]:s[0] + tile[0], s[1]:s[1] + tile[1], s[2]:s[2] + tile[2]] for s in chunk])
        for s, p in zip(chunk, net_fn(batch)):
            key = tuple((s0 > 0, s0 + t < n) for s0, t, n in zip(s, tile, padded))
            ws = [_axis_weight(t, sigma_scale, b, lo, hi, g)
                  for t, b, (lo, hi), g in zip(tile, border, key, (gaussian_z, True, True))]
            w = ws[0][:, None, None] * ws[1][None, :, None] * ws[2][None, None, :]
            sl = tuple(slice(s0, s0 + t) for s0, t in zip(s, tile))
            out[(slice(None), *sl)] += p * w
            wsum[sl] += w
    return out[:, :z, :yy, :xx] / np.maximum(wsum, 1e-12)[:z, :yy, :xx]


def test_unet_tiling_is_unchanged_and_grid_outputs_take_any_callable():
    from seglearn.tiling import sliding_window

    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 50, 70)).astype(np.float32)
    weights = rng.normal(size=(3, 2)).astype(np.float32)

    def fn(batch):  # a per-voxel "network": 3 outputs mixing the 2 channels, softmax
        logits = np.einsum("kc,bczyx->bkzyx", weights, batch)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    kw = {"n_classes": 3, "tile": (4, 32, 32), "overlap": (2, 12, 12), "align": (2, 4, 4), "batch_size": 3}
    new = sliding_window(x, fn, **kw)
    old = _old_sliding_window(x, fn, **kw)
    np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-7)  # a per-voxel function: tiling changes nothing
    np.testing.assert_allclose(new, fn(x[None])[0], rtol=1e-5, atol=1e-6)

    def pooled(batch):  # outputs on a (1, 2, 2) grid: the mean of each 2 x 2 block
        b, c, z, h, w = batch.shape
        return batch.reshape(b, c, z, h // 2, 2, w // 2, 2).mean(axis=(4, 6))

    got = sliding_window(x, pooled, n_classes=2, tile=(6, 16, 16), overlap=(0, 8, 8), align=(1, 4, 4),
                         border=(0, 4, 4), grid=(1, 2, 2), gaussian=False, gaussian_z=False)
    want = pooled(np.pad(x, ((0, 0), (0, 0), (0, 2), (0, 2)), mode="edge")[None])[0][:, :, :25, :35]
    assert got.shape == (2, 6, 25, 35)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_one_normaliser_keeps_each_callers_settings():
    from seglearn.instances.targets import fit_normalisation as inst_fit
    from seglearn.instances.targets import normalise
    from seglearn.segment.channels import apply_normalisation, fit_normalisation

    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 30.0, size=(2, 4, 40, 40)).astype(np.float32)
    # the U-Net: its percentiles, clipped to [0, 1], in place on float32 input
    ranges = fit_normalisation(x, (0.1, 99.9))
    want = [np.percentile(ch.astype(np.float64), [0.1, 99.9]) for ch in x]
    np.testing.assert_allclose(ranges, want)
    y = x.copy()
    out = apply_normalisation(y, ranges)
    assert out is y and out.min() == 0.0 and out.max() == 1.0
    # the particle model: its percentiles, not clipped, a new array; the old formulas to float precision
    lo, hi = inst_fit(x, (1.0, 99.8))
    old = [np.percentile(ch.astype(np.float32), [1.0, 99.8]) for ch in x]
    np.testing.assert_allclose(np.stack([lo, hi], 1), old, rtol=1e-6)
    z = normalise(x, lo, hi)
    assert z is not x and np.array_equal(x, x.copy()) and z.min() < 0 and z.max() > 1
    ref = np.stack([(x[c].astype(np.float32) - np.float32(lo[c])) / np.float32(hi[c] - lo[c]) for c in range(2)])
    np.testing.assert_array_max_ulp(z, ref, maxulp=2)
