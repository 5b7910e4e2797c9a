"""Particle model: bf16 autocast / channels-last against float32, and the patch sampler's targets."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seglearn.instances.model import StarDistNet  # noqa: E402
from seglearn.precision import autocast, bf16_supported, resolve_bf16, to_channels_last  # noqa: E402
from seglearn.instances.targets import slice_targets  # noqa: E402
from seglearn.instances.train import PatchSampler, ray_permutation  # noqa: E402
from disks import disks  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _disks(shape=(64, 64), spec=((16, 20, 9), (40, 42, 12), (20, 47, 7))):
    return disks(shape, spec)


def _net(seed=0):
    torch.manual_seed(seed)
    return StarDistNet(2, n_rays=16, grid=(2, 2), depth=2, base_filters=8, head_filters=16).eval()


def test_resolve_bf16():
    assert resolve_bf16(True, "cpu") is True and resolve_bf16("false", "cpu") is False
    assert resolve_bf16("auto", "cpu") == resolve_bf16(None, "cpu") == bf16_supported("cpu")
    with pytest.raises(ValueError, match="bf16"):
        resolve_bf16("maybe", "cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_channels_last_forward_matches_float32(device):
    net = _net().to(device)
    x = torch.from_numpy(np.random.default_rng(0).random((2, 2, 64, 48), dtype=np.float32)).to(device)
    with torch.inference_mode():
        p32, d32 = net(x)
        net_cl = to_channels_last(net)
        with autocast(device, True):
            p16, d16 = net_cl(to_channels_last(x))
    assert p16.dtype == torch.bfloat16 and p16.shape == p32.shape and d16.shape == d32.shape
    # bf16 keeps 8 bits of mantissa: agreement to ~1 % of the output range
    for a, b in ((p32, p16.float()), (d32, d16.float())):
        scale = float(a.abs().max())
        assert float((a - b).abs().max()) <= 0.03 * scale + 1e-3


def test_predict_tiles_bf16_matches_float32():
    from seglearn.instances.tiling import predict_tiles

    net = _net(1)
    img = np.random.default_rng(1).normal(size=(2, 2, 40, 56)).astype(np.float32)
    p32, d32 = predict_tiles(net, img, tile=(32, 32), context=16, bf16=False)
    p16, d16 = predict_tiles(net, img, tile=(32, 32), context=16, bf16=True)
    assert p16.dtype == np.float32 and d16.dtype == np.float32 and p16.shape == p32.shape
    assert np.abs(p16 - p32).max() < 0.01
    assert np.abs(d16 - d32).max() <= 0.03 * np.abs(d32).max() + 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_training_step_with_autocast(device):
    """Loss in float32 under autocast, close to the float32 loss; gradients reach every weight."""
    from seglearn.instances.lit import StarDistModule

    lbl = _disks()
    prob, dist = slice_targets(lbl, n_rays=16, grid=(2, 2))
    x = np.stack([lbl > 0, lbl % 2]).astype(np.float32)[None]
    batch = [torch.from_numpy(a).to(device) for a in (x, prob[None, None], dist[None])]
    losses = {}
    for bf16 in (False, True):
        net = _net(2).train().to(device)
        module = StarDistModule(net, sampler=None, val_data=[], bf16=bf16, channels_last=bf16)
        module.use_bf16 = resolve_bf16(bf16, device)  # what on_fit_start does
        out = module._loss(batch)
        assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
        out["loss"].backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        losses[bf16] = float(out["loss"].detach())
    assert losses[True] == pytest.approx(losses[False], rel=0.05)


@pytest.mark.parametrize("op", ["flip_y", "flip_x", "transpose"])
def test_ray_permutation_matches_star_dist(op):
    lbl = _disks()
    n = 16
    _, d = slice_targets(lbl, n_rays=n, grid=(1, 1))
    moved = {"flip_y": lbl[::-1], "flip_x": lbl[:, ::-1], "transpose": lbl.T}[op]
    _, d_moved = slice_targets(np.ascontiguousarray(moved), n_rays=n, grid=(1, 1))
    d_op = {"flip_y": d[:, ::-1], "flip_x": d[:, :, ::-1], "transpose": d.transpose(0, 2, 1)}[op]
    np.testing.assert_allclose(d_op[ray_permutation(n, op)], d_moved, atol=1e-3)


@pytest.mark.parametrize("cache_bytes", [2**30, 1])
def test_sampler_targets_follow_flips_and_transpose(cache_bytes):
    """Every augmented patch carries exactly the stardist targets of its (transformed) label patch."""
    lbl = _disks()
    inst = np.stack([lbl, lbl, lbl])
    img = inst[None].astype(np.float32)  # the image is the label: the patch tells where it came from
    smp = PatchSampler(img, inst, views=["xy"], patch_size=[64, 64], divisor=(16, 16), n_rays=32, grid=(2, 2),
                       augment=True, seed=1, cache_bytes=cache_bytes)
    seen = set()
    for _ in range(12):
        x, p, d = smp.sample()
        assert x.shape == (1, 64, 64) and p.shape == (1, 32, 32) and d.shape == (32, 32, 32)
        rank = np.unique(x[0], return_inverse=True)[1].reshape(x.shape[1:])  # undo the intensity jitter
        pt, dt = slice_targets(rank, n_rays=32, grid=(2, 2))
        np.testing.assert_allclose(p[0], pt, atol=1e-5)
        np.testing.assert_allclose(d, dt, atol=1e-3)
        seen.add((rank > 0).tobytes())
    assert len(seen) > 2  # the flips / transpositions did happen
    assert smp._cached <= cache_bytes
