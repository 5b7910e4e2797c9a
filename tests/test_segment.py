"""Unit tests of seglearn.segment: channels, network, tiling, sampling, augmentation, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seglearn.errors import InputError  # noqa: E402
from seglearn.segment.channels import apply_normalisation, compute_channels, fit_normalisation, resolve_derived  # noqa: E402
from seglearn.segment.net import SegNet, plan_anisotropy  # noqa: E402

torch.set_num_threads(1)  # tiny tensors: threads only add overhead, and the CI machine is shared


def _meta(net_cfg, detectors=("SE2", "InLens"), derived=("SE2-InLens",), ranges=None, **inference):
    n_ch = len(detectors) + len(derived)
    return {"net": net_cfg, "detectors": list(detectors), "derived": list(derived),
            "channels": list(detectors) + list(derived),
            "normalisation": {"method": "percentile", "percentiles": [0.1, 99.9],
                              "ranges": ranges or [[0.0, 255.0]] * len(detectors) + [[-255.0, 255.0]] * len(derived)},
            "classes": ["pore", "carbon_binder", "active_material"], "voxel_size_nm": [30.0, 15.0, 15.0],
            "mode": net_cfg["mode"], "inference": {"tile": [2, 64, 64], "overlap": [0, 32, 32], "batch_size": 2, **inference},
            "n_channels": n_ch}


def _segmenter(mode="2.5d", depth=1, base=4, seed=0, bf16=False, **inference):
    from seglearn.segment.api import Segmenter
    from seglearn.segment.net import build_net

    torch.manual_seed(seed)
    cfg = {"in_channels": 3, "n_classes": 3, "mode": mode, "context": 1, "base": base, "depth": depth}
    if mode == "3d":
        cfg["pool_z"], cfg["kernel_z"] = plan_anisotropy((15.0, 15.0, 15.0), depth)
    net = build_net(cfg)
    # non-trivial batch-norm statistics so that eval mode is not the identity
    for mod in net.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    return Segmenter(net, _meta(cfg, **inference), device="cpu", bf16=bf16)


def test_derived_channels_and_normalisation(rng):
    assert resolve_derived(["SE2", "InLens"], "auto") == ["SE2-InLens"]
    assert resolve_derived(["CT"], "auto") == []
    assert resolve_derived(["SE2", "InLens"], None) == []
    with pytest.raises(InputError, match="A-B"):
        resolve_derived(["SE2"], ["SE2-InLens"])
    img = rng.integers(0, 256, size=(2, 3, 8, 8)).astype(np.uint8)
    x = compute_channels(img, ["SE2", "InLens"], ["SE2-InLens"])
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[2], img[0].astype(np.float32) - img[1].astype(np.float32))
    ranges = fit_normalisation(x, (1, 99))
    assert ranges[0][0] < ranges[0][1]
    y = apply_normalisation(x.copy(), ranges)
    assert y.min() >= 0.0 and y.max() <= 1.0
    # the percentile range maps to [0, 1]: a voxel at the low percentile is ~0
    assert np.mean(y[0] == 0.0) == pytest.approx(0.01, abs=0.02)


@pytest.mark.parametrize("mode,context,zin,zout", [("2d", 0, 3, 3), ("2.5d", 2, 7, 3), ("3d", 0, 4, 4)])
def test_segnet_shapes(mode, context, zin, zout):
    net = SegNet(3, 4, mode=mode, context=context, base=4, depth=2, voxel_size_nm=(40.0, 10.0, 10.0)).eval()
    out = net(torch.rand(2, 3, zin, 32, 32))
    assert out.shape == (2, 4, zout, 32, 32)
    assert net.halo == (context if mode == "2.5d" else 0)


def test_anisotropic_pooling_plan():
    pool, kz = plan_anisotropy((40.0, 10.0, 10.0), 3)  # z 4x coarser: no z pooling until xy catches up
    assert pool == [False, False, True]
    assert kz[0] == 1 and kz[-1] == 3
    assert plan_anisotropy((10.0, 10.0, 10.0), 3)[0] == [True, True, True]


@pytest.mark.parametrize("mode", ["2.5d", "3d"])
def test_tiled_equals_untiled(mode, rng):
    """Tiles with Gaussian blending reproduce the whole-volume prediction when the border covers the receptive field."""
    seg = _segmenter(mode)
    img = rng.integers(0, 256, size=(2, 8, 72, 88)).astype(np.uint8)
    whole = seg.predict_proba(img, ["SE2", "InLens"], tile=[8, 96, 96], overlap=[0, 0, 0])
    # 2.5d tiles 4 slices at a time (each slice is independent); 3d tiles in-plane only
    tiled = seg.predict_proba(img, ["SE2", "InLens"], tile=[4 if mode == "2.5d" else 8, 32, 32], overlap=[0, 24, 24],
                              border=[0, 12, 12])
    assert whole.shape == (3, 8, 72, 88)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # without a border the seams differ, but the Gaussian weights keep them small
    seams = seg.predict_proba(img, ["SE2", "InLens"], tile=[4, 32, 32], overlap=[0, 16, 16], border=[0, 0, 0])
    assert np.abs(seams - whole).max() > 1e-6
    assert np.mean(np.argmax(seams, 0) == np.argmax(whole, 0)) > 0.95


def test_blockwise_prediction_equals_whole(rng):
    seg = _segmenter("2.5d")
    img = rng.integers(0, 256, size=(2, 9, 40, 40)).astype(np.uint8)
    whole = seg.predict_proba(img, ["SE2", "InLens"])
    blocks = seg.predict_proba(img, ["SE2", "InLens"], block_slices=2)
    np.testing.assert_allclose(blocks, whole, atol=1e-6)
    labels = seg.predict(img, ["InLens", "SE2"][::-1])
    assert labels.dtype == np.uint8 and labels.shape == (9, 40, 40) and labels.min() >= 1 and labels.max() <= 3


def test_channel_mismatch_is_refused(rng):
    seg = _segmenter("2d")
    img = rng.integers(0, 256, size=(1, 2, 32, 32)).astype(np.uint8)
    with pytest.raises(InputError, match=r"needs detectors \['SE2', 'InLens'\].*missing \['InLens'\]"):
        seg.predict(img, ["SE2"])
    with pytest.raises(InputError, match="do not match detectors"):
        seg.predict(img, ["SE2", "InLens"])
    # detectors given in another order are reordered, extra detectors ignored
    img3 = rng.integers(0, 256, size=(3, 2, 32, 32)).astype(np.uint8)
    a = seg.predict_proba(img3, ["BSE", "InLens", "SE2"])
    b = seg.predict_proba(img3[[2, 1]], ["SE2", "InLens"])
    np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip(tmp_path, rng):
    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.segment.api import load_segmenter

    seg = _segmenter("2.5d", depth=2, seed=1)
    path = save_checkpoint(tmp_path / "m.ckpt", kind="unet", state_dict=seg.net.state_dict(), meta=seg.meta)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["kind"] == "unet" and raw["meta"]["normalisation"]["ranges"] == seg.meta["normalisation"]["ranges"]
    back = load_segmenter(path, device="cpu", bf16=False)
    assert back.detectors == ["SE2", "InLens"] and back.derived == ["SE2-InLens"] and back.mode == "2.5d"
    img = rng.integers(0, 256, size=(2, 4, 32, 32)).astype(np.uint8)
    np.testing.assert_array_equal(back.predict_proba(img, ["SE2", "InLens"]), seg.predict_proba(img, ["SE2", "InLens"]))
    save_checkpoint(tmp_path / "other.ckpt", kind="stardist", state_dict={}, meta={})
    with pytest.raises(InputError, match="expected 'unet'"):
        load_segmenter(tmp_path / "other.ckpt")
    assert load_checkpoint(path)["meta"]["seglearn_version"]


def test_patch_sampling_is_biased_and_deterministic():
    from seglearn.segment.datamodule import PatchDataset

    x = np.random.default_rng(0).random((2, 10, 64, 64), dtype=np.float32)
    labels = np.zeros((10, 64, 64), np.uint8)
    labels[7, 50:53, 3:6] = 2  # 9 labelled voxels among 40960
    ds = PatchDataset(x, labels, patch=(1, 16, 16), halo=1, n_items=40, p_labelled=1.0, augment=None, seed=3)
    for i in range(40):
        xi, yi = ds[i]
        assert xi.shape == (2, 3, 16, 16) and yi.shape == (1, 16, 16)
        assert (yi >= 0).any() and set(np.unique(yi.numpy())) <= {-1, 1}
    ds2 = PatchDataset(x, labels, patch=(1, 16, 16), halo=1, n_items=40, p_labelled=1.0, augment={"flip": 0.5}, seed=3)
    a, b = ds2[5], ds2[5]
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    ds2.set_epoch(1)
    assert not np.array_equal(ds2[5][0].numpy(), a[0].numpy())


def test_augmentation_keeps_image_and_labels_aligned():
    from seglearn.segment.augment import CurtainStripes, augment_patch, build_augment

    y = np.full((1, 32, 32), -1, np.int64)
    y[0, 3:9, 20:30] = 1
    x = np.zeros((2, 3, 32, 32), np.float32)
    x[:, :, y[0] == 1] = 1.0
    aug = build_augment({"flip": 0.5, "rot90": 1.0})
    for seed in range(6):
        xa, ya = augment_patch(aug, x, y, seed)
        assert xa.shape == x.shape and ya.shape == y.shape
        np.testing.assert_array_equal(xa[0, 1] == 1.0, ya[0] == 1)
    stripes = CurtainStripes(strength=(0.1, 0.1), p=1.0)
    import albumentations as A

    out = A.Compose([stripes], seed=0)(image=np.full((16, 24, 2), 0.5, np.float32))["image"]
    assert np.allclose(out, out[:1])  # constant along y
    assert out[0, :, 0].std() > 0.01  # varying along x


def test_holdout_split_keeps_every_class():
    from seglearn.segment.datamodule import holdout_split

    labels = np.zeros((1, 40, 40), np.uint8)
    for i, c in enumerate([1, 1, 2, 2, 3, 3, 1, 2]):
        labels[0, 4 * i + 1, 2:10] = c
    train, val = holdout_split(labels, 0.3, seed=0)
    assert np.any(val) and not np.any((train > 0) & (val > 0))
    assert set(np.unique(train)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(np.maximum(train, val), labels)


def test_masked_losses_ignore_unlabelled():
    from seglearn.segment.module import class_weights, masked_dice_loss

    logits = torch.randn(2, 3, 1, 8, 8)
    target = torch.full((2, 1, 8, 8), -1)
    target[0, 0, 0, 0] = 2
    base = masked_dice_loss(logits, target)
    logits2 = logits.clone()
    logits2[:, :, :, 1:] += torch.randn_like(logits2[:, :, :, 1:]) * 5  # change only unlabelled voxels
    assert torch.isclose(masked_dice_loss(logits2, target), base)
    assert class_weights("balanced", [10, 30, 0]) == pytest.approx([1.5, 0.5, 0.0])
    assert class_weights(None, [1, 2]) is None


@pytest.mark.parametrize("mode", ["2d", "2.5d", "3d"])
def test_inference_copy_computes_the_same_function(mode, rng):
    """BN folding, fused conv+ReLU, strided max pooling and channels-last change nothing in fp32."""
    from seglearn.segment.net import _ConvReLU, _onednn_conv_relu, inference_copy

    seg = _segmenter(mode, depth=2)
    net = seg.net
    zin = 6 if mode == "2.5d" else 4
    x = torch.from_numpy(rng.random((2, 3, zin, 32, 48), dtype=np.float32))
    fast = inference_copy(net, dtype=torch.float32)
    with torch.inference_mode():
        want = net(x)
        got = fast(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d) for m in fast.modules())
    if _onednn_conv_relu() is not None:  # the fused oneDNN call is used where it exists
        assert all(m.fused for m in fast.modules() if isinstance(m, _ConvReLU))
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5)
    # the network it was copied from is untouched (still trainable, still has its BN)
    assert any(isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm3d) for m in net.modules())
    assert all(p.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize("factors", [(2, 2), (1, 2, 2), (2, 2, 2)])
def test_strided_max_pool_equals_max_pool(factors, rng):
    from seglearn.segment.net import _StridedMaxPool

    x = torch.from_numpy(rng.standard_normal((2, 3, *([8] * len(factors))), dtype=np.float32))
    x[0, 0, 1, 1] = float("nan")
    pool = torch.nn.MaxPool2d(2, 2) if len(factors) == 2 else torch.nn.MaxPool3d(factors, factors)
    np.testing.assert_array_equal(_StridedMaxPool(factors)(x).numpy(), pool(x).numpy())


def test_bf16_prediction_agrees_with_fp32(rng):
    """The bf16 default changes probabilities by little and labels almost nowhere."""
    seg32 = _segmenter("2.5d", depth=2, seed=4)
    seg16 = _segmenter("2.5d", depth=2, seed=4, bf16=True)
    assert seg16.bf16 and next(seg16.fast_net.parameters()).dtype == torch.bfloat16
    img = rng.integers(0, 256, size=(2, 6, 64, 64)).astype(np.uint8)
    p32 = seg32.predict_proba(img, ["SE2", "InLens"])
    p16 = seg16.predict_proba(img, ["SE2", "InLens"])
    assert p16.dtype == np.float32
    np.testing.assert_allclose(p16.sum(0), 1.0, atol=1e-5)
    assert np.abs(p16 - p32).mean() < 0.01
    assert np.mean(np.argmax(p16, 0) == np.argmax(p32, 0)) > 0.97


def test_iter_proba_predicts_only_the_blocks_asked_for(rng):
    seg = _segmenter("2.5d")
    img = rng.integers(0, 256, size=(2, 10, 32, 32)).astype(np.uint8)
    whole = seg.predict_proba(img, ["SE2", "InLens"])
    got = list(seg.iter_proba(lambda a, b: img[:, a:b], img.shape[1:], block_slices=3, blocks=[3, 1]))
    assert [z0 for z0, _ in got] == [3, 9]
    np.testing.assert_allclose(got[0][1], whole[:, 3:6], atol=1e-6)
    np.testing.assert_allclose(got[1][1], whole[:, 9:10], atol=1e-6)
