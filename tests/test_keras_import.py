"""Importing Keras StarDist2D models (seglearn.instances.keras_import).

The layout conversion is tested on synthetic Keras-layout arrays (no TensorFlow needed); the file
reader with h5py when present; the equivalence with stardist's own network only where TensorFlow
is installed (the ``tf`` extra).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seglearn.errors import InputError, OutputExistsError
from seglearn.instances.keras_import import _keras_names, keras_to_state_dict, params_from_config
from seglearn.instances.model import StarDistNet, build_model

TINY = {"n_rays": 6, "n_channel_in": 2, "grid": [2, 2], "unet_n_depth": 2, "unet_n_filter_base": 4,
        "unet_n_conv_per_depth": 2, "unet_kernel_size": [3, 3], "unet_pool": [2, 2], "unet_batch_norm": False,
        "net_conv_after_unet": 8, "n_dim": 2, "backbone": "unet", "n_classes": None}


def keras_layers(net: StarDistNet, seed: int = 0) -> list[tuple[str, list[np.ndarray]]]:
    """Random weights for ``net`` in Keras layout and order, named as stardist names its layers."""
    rng = np.random.default_rng(seed)
    sd = net.state_dict()
    out, auto = [], 0
    for tname, kind, kname in _keras_names(net):
        if kind == "conv":
            o, i, kh, kw = sd[f"{tname}.weight"].shape
            arrays = [rng.normal(0, 0.3, (kh, kw, i, o)).astype(np.float32), rng.normal(0, 0.1, o).astype(np.float32)]
        else:
            c = sd[f"{tname}.weight"].shape[0]
            arrays = [rng.normal(1, 0.1, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c)]
            arrays = [a.astype(np.float32) for a in arrays]
        if kname is None:
            kname = ("conv2d" if kind == "conv" else "batch_normalization") + (f"_{auto}" if auto else "")
            auto += 1
        out.append((kname, arrays))
    return out


def keras_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Keras ``Conv2D(padding='same')`` by definition: ``(H, W, I)`` x ``(kh, kw, I, O)`` -> ``(H, W, O)``."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[3]), np.float64) + bias
    for dy in range(kh):
        for dx in range(kw):
            out += xp[dy:dy + h, dx:dx + w] @ kernel[dy, dx]
    return out


def test_params_from_config_maps_stardist_keys():
    p = params_from_config(TINY)
    assert p == {"n_rays": 6, "grid": [2, 2], "depth": 2, "base_filters": 4, "head_filters": 8, "n_conv_per_depth": 2,
                 "kernel_size": [3, 3], "batch_norm": False, "stem": "stardist", "pool": [2, 2]}


@pytest.mark.parametrize("key, value", [("n_classes", 3), ("n_dim", 3), ("unet_activation", "elu"),
                                        ("unet_expansion", 3), ("unet_kernel_size", [4, 4]), ("grid", [3, 3]),
                                        ("backbone", "resnet")])
def test_params_from_config_refuses_what_it_cannot_reproduce(key, value):
    with pytest.raises(InputError, match=key):
        params_from_config({**TINY, key: value})


def test_conv_kernels_keep_keras_semantics():
    net = build_model(params_from_config(TINY), in_channels=2).eval()
    layers = keras_layers(net)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in keras_to_state_dict(layers, net).items()})
    x = np.random.default_rng(1).random((12, 10, 2)).astype(np.float32)
    kernel, bias = layers[0][1]  # the first (unnamed) grid convolution, as Keras computes it
    want = np.maximum(keras_conv(x, kernel, bias), 0)
    with torch.no_grad():
        got = net.stem[:2](torch.from_numpy(x).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    kernel, bias = dict(layers)["dist"]  # a 1x1 head
    np.testing.assert_array_equal(net.dist.weight.detach().numpy()[:, :, 0, 0], kernel[0, 0].T)


def test_batch_norm_and_variants_fill_every_weight():
    for extra in ({"unet_batch_norm": True}, {"grid": [4, 2], "unet_n_conv_per_depth": 3, "unet_kernel_size": [5, 3]},
                  {"grid": [1, 1], "unet_n_conv_per_depth": 1, "net_conv_after_unet": 0}):
        net = build_model(params_from_config({**TINY, **extra}), in_channels=2)
        layers = keras_layers(net, seed=2)
        state = keras_to_state_dict(layers, net)
        assert set(state) == set(net.state_dict())
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        if extra.get("unet_batch_norm"):
            gamma, beta, mean, var = layers[3][1]  # down_level_0_no_0's batch norm follows it
            bn = net.down[0][1]
            for t, k in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), (gamma, beta, mean, var)):
                np.testing.assert_array_equal(t.detach().numpy(), k)
            assert bn.eps == 1e-3
        with torch.no_grad():
            p, d = net.eval()(torch.zeros(1, 2, *net.divisor))
        assert d.shape[1] == 6 and p.shape[-2:] == (net.divisor[0] // net.grid[0], net.divisor[1] // net.grid[1])


def test_mismatched_weights_are_refused():
    net = build_model(params_from_config(TINY), in_channels=2)
    layers = keras_layers(net)
    with pytest.raises(InputError, match="middle_2"):
        keras_to_state_dict([(n, a) for n, a in layers if n != "middle_2"], net)
    wrong = [(n, [a[..., :-1], b[:-1]] if n == "features" else [a, b]) for n, (a, b) in layers]
    with pytest.raises(InputError, match="features"):
        keras_to_state_dict(wrong, net)
    with pytest.raises(ValueError, match="stem"):
        keras_to_state_dict(layers, build_model({"n_rays": 6}, in_channels=2))


def test_default_network_keeps_its_checkpoint_layout():
    """Checkpoints written before the architecture options still load (same names and shapes)."""
    sd = build_model({"n_rays": 32, "grid": [2, 2], "depth": 3, "base_filters": 32, "head_filters": 64}, 2).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert len(shapes) == 2 * (1 + 6 + 2 + 6 + 1 + 2)
    assert shapes["stem.0.weight"] == (32, 2, 3, 3)
    assert shapes["down.2.2.weight"] == (128, 128, 3, 3)
    assert shapes["bottom.0.0.weight"] == (256, 128, 3, 3) and shapes["bottom.1.0.weight"] == (128, 256, 3, 3)
    assert shapes["up.0.0.0.weight"] == (128, 256, 3, 3) and shapes["up.2.1.0.weight"] == (32, 32, 3, 3)
    assert shapes["head.0.weight"] == (64, 32, 3, 3) and shapes["dist.weight"] == (32, 64, 1, 1)


def write_legacy_h5(path, layers):
    """A weights file laid out as Keras' legacy ``save_weights`` writes it (what stardist saves)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        names = ["input"] + [n for n, _ in layers]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.create_group("input").attrs["weight_names"] = np.array([], dtype="S1")
        for name, arrays in layers:
            g = f.create_group(name)
            wn = [f"{name}/w{i}" for i in range(len(arrays))]
            g.attrs["weight_names"] = np.array([w.encode() for w in wn])
            for w, a in zip(wn, arrays):
                g.create_dataset(w, data=a)


def test_cli_writes_a_checkpoint_predict_can_use(tmp_path):
    from seglearn.ckpt import load_checkpoint
    from seglearn.instances.keras_import import main
    from seglearn.instances.pipeline import load_model, prepare_images

    net = build_model(params_from_config(TINY), in_channels=2).eval()
    layers = keras_layers(net)
    model_dir = tmp_path / "stardist_model"
    model_dir.mkdir()
    write_legacy_h5(model_dir / "weights_best.h5", layers)
    (model_dir / "config.json").write_text(json.dumps(TINY))
    (model_dir / "thresholds.json").write_text(json.dumps({"prob": 0.61, "nms": 0.3}))
    out = tmp_path / "imported.ckpt"
    main([str(model_dir), f"out={out}"])
    ckpt = load_checkpoint(out, kind="stardist")
    assert ckpt["meta"]["thresholds"] == {"prob": 0.61, "nms": 0.3}
    imported = load_model(ckpt, device="cpu")
    x = prepare_images(np.random.default_rng(0).random((2, 1, 16, 16)) * 100, ckpt["meta"])
    assert -0.05 < x.min() < 0.05 and 0.95 < x.max() < 1.05  # per-image percentiles
    net.load_state_dict({k: torch.from_numpy(v) for k, v in keras_to_state_dict(layers, net).items()})
    with torch.no_grad():
        a, b = net(torch.from_numpy(x[:, 0])[None]), imported(torch.from_numpy(x[:, 0])[None])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(OutputExistsError, match="exists"):
        main([str(model_dir), f"out={out}"])
    with pytest.raises(InputError, match="usage"):
        main([str(model_dir)])
    with pytest.raises(InputError, match="config.json"):
        main([str(tmp_path), f"out={tmp_path / 'x.ckpt'}"])


# --- against stardist's TensorFlow model ----------------------------------------------------------------

@pytest.mark.parametrize("extra", [{"unet_batch_norm": True},
                                   {"grid": (4, 2), "unet_n_conv_per_depth": 1, "net_conv_after_unet": 0}])
def test_matches_stardist_tensorflow(tmp_path, extra):
    tf = pytest.importorskip("tensorflow")
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from stardist.models import Config2D, StarDist2D

    from seglearn.instances.keras_import import import_keras_model

    conf = Config2D(**{"n_rays": 8, "n_channel_in": 1, "grid": (2, 2), "unet_n_depth": 2, "unet_n_filter_base": 8,
                       "net_conv_after_unet": 16, "train_tensorboard": False, **extra})
    keras = StarDist2D(conf, name="m", basedir=str(tmp_path))
    rng = np.random.default_rng(0)
    for layer in keras.keras_model.layers:  # non-trivial weights everywhere, batch-norm statistics included
        ws = layer.get_weights()
        if "batch_normalization" in layer.name:
            layer.set_weights([rng.normal(1, .2, w.shape) if i != 3 else rng.uniform(.5, 2, w.shape) for i, w in enumerate(ws)])
        elif ws:
            layer.set_weights([rng.normal(0, 1 / np.sqrt(np.prod(w.shape[:3])) if w.ndim == 4 else .1, w.shape) for w in ws])
    keras.keras_model.save_weights(str(tmp_path / "m" / "weights_best.h5"))
    x = rng.random((1, 64, 48, 1)).astype(np.float32)
    prob_k, dist_k = keras.keras_model.predict(x, verbose=0)
    state, meta = import_keras_model(tmp_path / "m")
    net = build_model(meta["net"], 1).eval()
    net.load_state_dict(state)
    with torch.no_grad():
        p, d = net(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert np.abs(torch.sigmoid(p)[0, 0].numpy() - prob_k[0, ..., 0]).max() < 1e-4
    assert np.abs(d[0].permute(1, 2, 0).numpy() - dist_k[0]).max() < 1e-4
    assert np.abs(dist_k).max() > 0.1  # not a trivially zero output
