"""Import a Keras StarDist2D model (stardist / csbdeep) as a seglearn ``stardist`` checkpoint.

    python -m seglearn.instances.keras_import MODEL_DIR out=particles.ckpt [weights=best|last|FILE.h5]
        [prob_thresh=P] [nms_thresh=N] [channels=SE2,InLens] [percentiles=1,99.8] [overwrite=true]
    python predict.py ckpt=particles.ckpt input=IMAGE.tif output=OUT

``MODEL_DIR`` is the folder stardist writes (``StarDist2D(config, name, basedir)``): ``config.json``
and ``weights_best.h5`` / ``weights_last.h5``, optionally ``thresholds.json``. Only ``h5py`` and
numpy are needed to read it, not TensorFlow. The network is rebuilt as a
:class:`~seglearn.instances.model.StarDistNet` with ``stem="stardist"`` (StarDist2D's layers one to
one) and the weights are copied: Keras convolution kernels ``(kh, kw, in, out)`` become torch
``(out, in, kh, kw)``; batch-norm ``gamma, beta, moving_mean, moving_variance`` become
``weight, bias, running_mean, running_var``. Architectures seglearn cannot reproduce exactly
(multi-class heads, another activation or expansion, 3D) are refused with the reason.

StarDist users normalise each image by its own 1st / 99.8th percentiles (csbdeep's ``normalize``);
the checkpoint says so (``normalisation.kind = "per_image"``) and ``predict.py`` does the same.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seglearn.ckpt import save_checkpoint
from seglearn.errors import InputError, OutputExistsError
from seglearn.paths import load_config

log = logging.getLogger("seglearn")

#: stardist's thresholds when a model folder has no ``thresholds.json`` (``StarDist2D.thresholds``)
DEFAULT_THRESHOLDS = {"prob": 0.5, "nms": 0.4}


def _predict_defaults() -> dict:
    """Prediction settings written into an imported checkpoint: those of ``configs/model/stardist.yaml``."""
    cfg = load_config("model/stardist.yaml")
    return {**cfg["predict"], "threads": cfg["threads"]}


def params_from_config(config: Mapping, where: str = "config.json") -> dict:
    """seglearn's ``meta['net']`` keys (without ``in_channels``) for a StarDist2D ``config.json``.

    Parameters
    ----------
    config : mapping
        stardist's ``Config2D`` as saved (``vars(config)``).

    Raises
    ------
    InputError
        For a configuration :class:`StarDistNet` does not reproduce exactly.
    """
    def get(key, default=None):
        return config.get(key, default)

    def refuse(key, expected):
        raise InputError(f"{where}: {key} = {get(key)!r} is not supported by seglearn's StarDistNet (expected {expected})")

    if int(get("n_dim", 2)) != 2:
        refuse("n_dim", "2; StarDist3D models cannot be imported")
    if str(get("backbone", "unet")).lower() != "unet":
        refuse("backbone", "'unet'")
    if get("n_classes") is not None:
        refuse("n_classes", "null; multi-class StarDist models cannot be imported")
    for key in ("unet_activation", "unet_last_activation"):
        if str(get(key, "relu")) != "relu":
            refuse(key, "'relu'")
    if float(get("unet_expansion", 2)) != 2:
        refuse("unet_expansion", "2")
    kernel = [int(k) for k in get("unet_kernel_size", (3, 3))]
    pool = [int(p) for p in get("unet_pool", (2, 2))]
    grid = [int(g) for g in get("grid", (1, 1))]
    if len(kernel) != 2 or any(k % 2 == 0 for k in kernel):
        refuse("unet_kernel_size", "two odd sizes")
    if len(pool) != 2 or min(pool) < 1:
        refuse("unet_pool", "two sizes >= 1")
    if len(grid) != 2 or any(g < 1 or g & (g - 1) for g in grid):
        refuse("grid", "two powers of 2")
    for key in ("n_rays", "n_channel_in", "unet_n_depth", "unet_n_filter_base", "unet_n_conv_per_depth"):
        if get(key) is None:
            raise InputError(f"{where}: {key} missing; not a StarDist2D config")
    return {"n_rays": int(get("n_rays")), "grid": grid, "depth": int(get("unet_n_depth")),
            "base_filters": int(get("unet_n_filter_base")), "head_filters": int(get("net_conv_after_unet", 128)),
            "n_conv_per_depth": int(get("unet_n_conv_per_depth")), "kernel_size": kernel,
            "batch_norm": bool(get("unet_batch_norm", False)), "stem": "stardist", "pool": pool}


def _keras_names(net, prefix: str = "") -> list[tuple[str, str, str | None]]:
    """``(torch module name, "conv" | "bn", Keras layer name or None)`` for every weighted layer of
    ``net`` (a ``stem="stardist"`` :class:`StarDistNet`), in the order of the Keras model's layers.
    ``None``: Keras gives the layer an automatic name (``conv2d_3``, ``batch_normalization_7``)."""
    from torch import nn

    n = net.n_conv_per_depth
    expected: dict[str, list[str]] = {"stem": [], "head": ["features"], "prob": ["prob"], "dist": ["dist"]}
    for level in range(net.depth):
        expected[f"down.{level}"] = [f"{prefix}down_level_{level}_no_{i}" for i in range(n)]
    expected["bottom"] = [f"{prefix}middle_{i}" for i in range(n - 1)] + [f"{prefix}middle_{n}"]
    for j, level in enumerate(reversed(range(net.depth))):
        expected[f"up.{j}"] = [f"{prefix}up_level_{level}_no_{i}" for i in range(n - 1)] + [f"{prefix}up_level_{level}_no_{n}"]
    out, used = [], {k: 0 for k in expected}
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            group = next(k for k in expected if name == k or name.startswith(k + "."))
            names = expected[group]
            out.append((name, "conv", names[used[group]] if names else None))
            used[group] += 1
        elif isinstance(mod, nn.BatchNorm2d):
            out.append((name, "bn", None))
    return out


def keras_to_state_dict(layers: Sequence[tuple[str, Sequence[np.ndarray]]], net, *, prefix: str = "",
                        where: str = "weights") -> dict[str, np.ndarray]:
    """Map Keras StarDist2D weights onto the ``state_dict`` names of ``net``.

    Parameters
    ----------
    layers : sequence of (str, sequence of ndarray)
        The Keras model's layers that hold weights, in model order, each with its arrays in Keras
        order: ``kernel (kh, kw, in, out), bias`` for a convolution, ``gamma, beta, moving_mean,
        moving_variance`` for batch norm (what :func:`read_keras_weights` returns).
    net : StarDistNet
        Built with ``stem="stardist"`` from the same config (:func:`params_from_config`).
    prefix : str
        The config's ``unet_prefix``.

    Returns
    -------
    dict of str to float32 ndarray
        Torch layout (conv ``(out, in, kh, kw)``), ready for ``net.load_state_dict``.
    """
    if getattr(net, "stem_kind", None) != "stardist":
        raise ValueError("net: build it with stem='stardist' to load StarDist2D weights")
    plan = _keras_names(net, prefix)
    named = {k for _, _, k in plan if k is not None}
    by_name = {name: arrays for name, arrays in layers}
    auto = [(name, arrays) for name, arrays in layers if name not in named]
    missing = sorted(named - set(by_name))
    if missing:
        raise InputError(f"{where}: layers {missing} missing; not the StarDist2D network its config.json describes")
    n_auto = sum(k is None for _, _, k in plan)
    if len(auto) != n_auto:
        raise InputError(f"{where}: {len(auto)} unnamed weighted layers ({[a for a, _ in auto][:6]}...), expected {n_auto} "
                         f"(grid convolutions and batch norms of the config)")
    state: dict[str, np.ndarray] = {}
    ref = net.state_dict()
    it = iter(auto)
    for tname, kind, kname in plan:
        lname, arrays = (kname, by_name[kname]) if kname is not None else next(it)
        arrays = [np.asarray(a, np.float32) for a in arrays]
        if kind == "conv":
            if len(arrays) != 2 or arrays[0].ndim != 4:
                raise InputError(f"{where}: layer {lname!r} holds {[a.shape for a in arrays]}, expected a 2D "
                                 f"convolution kernel and bias for {tname}")
            pairs = {"weight": np.transpose(arrays[0], (3, 2, 0, 1)), "bias": arrays[1]}
        else:
            if len(arrays) != 4:
                raise InputError(f"{where}: layer {lname!r} holds {len(arrays)} arrays, expected batch norm "
                                 f"(gamma, beta, moving_mean, moving_variance) for {tname}")
            pairs = dict(zip(("weight", "bias", "running_mean", "running_var"), arrays))
        for key, value in pairs.items():
            want = tuple(ref[f"{tname}.{key}"].shape)
            if value.shape != want:
                raise InputError(f"{where}: layer {lname!r} {key} has shape {value.shape} (torch layout), expected "
                                 f"{want} for {tname}; config.json and the weights disagree")
            state[f"{tname}.{key}"] = np.ascontiguousarray(value)
    for key, value in ref.items():  # batch norm's counter
        if key not in state:
            state[key] = value.numpy()
    return state


def read_keras_weights(path: str | Path) -> list[tuple[str, list[np.ndarray]]]:
    """The weighted layers of a Keras HDF5 weights file (``save_weights`` legacy format, Keras 2 or 3,
    as stardist writes it; or a whole-model ``.h5``), in the file's layer order."""
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py comes with TensorFlow
        raise InputError(f"{path}: reading Keras weights needs h5py (pip install h5py or seglearn[tf])") from exc
    path = Path(path)

    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)

    try:
        with h5py.File(path, "r") as f:
            g = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in g.attrs:
                raise InputError(f"{path}: not a Keras HDF5 weights file (no layer_names); a Keras 3 '.weights.h5' "
                                 f"or SavedModel cannot be read, save with stardist's model.keras_model.save_weights")
            out = []
            for name in map(text, g.attrs["layer_names"]):
                names = [text(w) for w in g[name].attrs.get("weight_names", [])]
                if names:
                    out.append((name, [np.asarray(g[name][w]) for w in names]))
            return out
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _weights_file(model_dir: Path, weights: str) -> Path:
    if weights in ("best", "last"):
        cands = [model_dir / f"weights_{weights}.h5"]
        cands.append(model_dir / f"weights_{'last' if weights == 'best' else 'best'}.h5")
    else:
        cands = [Path(weights) if Path(weights).is_absolute() or Path(weights).exists() else model_dir / weights]
    for c in cands:
        if c.is_file():
            if c != cands[0]:
                log.warning("%s not found; using %s", cands[0], c)
            return c
    raise InputError(f"{model_dir}: no weights file {cands[0].name} (expected weights_best.h5 or weights_last.h5)")


def import_keras_model(model_dir: str | Path, *, weights: str = "best", prob_thresh: float | None = None,
                       nms_thresh: float | None = None, channels: Sequence[str] | None = None,
                       percentiles: Sequence[float] = (1.0, 99.8)) -> tuple[dict, dict]:
    """Read a Keras StarDist2D model folder.

    Parameters
    ----------
    model_dir : path-like
        ``config.json`` + ``weights_best.h5`` / ``weights_last.h5`` [+ ``thresholds.json``].
    weights : {"best", "last"} or path
    prob_thresh, nms_thresh : float, optional
        Override ``thresholds.json`` (default 0.5 / 0.4 without one, as stardist).
    channels : sequence of str, optional
        Detector names of the input channels (for dataset inputs; default: none, any).
    percentiles : (lo, hi)
        Per-image normalisation percentiles (csbdeep's ``normalize`` defaults).

    Returns
    -------
    state_dict : dict of str to torch.Tensor
    meta : dict
        A ``stardist`` checkpoint's ``meta``; ``net`` builds the network
        (:func:`seglearn.instances.model.build_model`).
    """
    import torch

    from seglearn.instances.model import build_model

    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{model_dir}: no config.json; expected a StarDist2D model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{cfg_path}: not valid JSON ({exc})") from exc
    net_params = params_from_config(config, where=str(cfg_path))
    n_in = int(config["n_channel_in"])
    if channels is not None and len(channels) != n_in:
        raise InputError(f"channels={list(channels)}: the model has {n_in} input channel(s)")
    net = build_model(net_params, in_channels=n_in)
    wpath = _weights_file(model_dir, weights)
    state = keras_to_state_dict(read_keras_weights(wpath), net, prefix=str(config.get("unet_prefix") or ""),
                                where=str(wpath))
    thr = dict(DEFAULT_THRESHOLDS)
    thr_path = model_dir / "thresholds.json"
    if thr_path.is_file():
        try:
            saved = json.loads(thr_path.read_text())
            thr.update({k: float(saved[k]) for k in ("prob", "nms") if k in saved})
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{thr_path}: expected {{\"prob\": P, \"nms\": N}} ({exc})") from exc
    else:
        log.warning("%s: no thresholds.json; using stardist's defaults prob %.2f, nms %.2f", model_dir, thr["prob"],
                    thr["nms"])
    if prob_thresh is not None:
        thr["prob"] = float(prob_thresh)
    if nms_thresh is not None:
        thr["nms"] = float(nms_thresh)
    plain = json.loads(json.dumps(config))  # JSON-like for the checkpoint
    meta = {
        "net": {**net_params, "in_channels": n_in},
        "channels": list(channels) if channels is not None else None,
        "normalisation": {"kind": "per_image", "percentiles": [float(p) for p in percentiles]},
        "thresholds": thr,
        "views": ["xy"],
        "predict": _predict_defaults(),
        "keras": {"model_dir": str(model_dir.resolve()), "weights": wpath.name, "config": plain},
    }
    return {k: torch.from_numpy(v) for k, v in state.items()}, meta


def _parse(argv: Sequence[str]) -> tuple[str, dict]:
    usage = ("usage: python -m seglearn.instances.keras_import MODEL_DIR out=CKPT [weights=best|last|FILE] "
             "[prob_thresh=P] [nms_thresh=N] [channels=A,B] [percentiles=LO,HI] [overwrite=true]")
    pos = [a for a in argv if "=" not in a]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    known = {"out", "weights", "prob_thresh", "nms_thresh", "channels", "percentiles", "overwrite"}
    if len(pos) != 1 or "out" not in opts or set(opts) - known:
        raise InputError(f"{usage} (got {' '.join(argv)})")
    return pos[0], opts


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: import ``MODEL_DIR`` and write the checkpoint ``out``; returns its ``meta``."""
    model_dir, o = _parse(sys.argv[1:] if argv is None else argv)
    out = Path(o["out"])
    if out.exists() and str(o.get("overwrite", "false")).lower() not in ("1", "true", "yes"):
        raise OutputExistsError(f"{out}: output already exists; pass overwrite=true to replace it")
    state, meta = import_keras_model(
        model_dir, weights=o.get("weights", "best"),
        prob_thresh=float(o["prob_thresh"]) if "prob_thresh" in o else None,
        nms_thresh=float(o["nms_thresh"]) if "nms_thresh" in o else None,
        channels=o["channels"].split(",") if o.get("channels") else None,
        percentiles=[float(p) for p in o.get("percentiles", "1,99.8").split(",")])
    save_checkpoint(out, kind="stardist", state_dict=state, meta=meta, overwrite=True)
    log.info("imported %s (%s) into %s: %d rays, grid %s, thresholds prob %.3f nms %.3f", model_dir,
             meta["keras"]["weights"], out, meta["net"]["n_rays"], meta["net"]["grid"], meta["thresholds"]["prob"],
             meta["thresholds"]["nms"])
    return meta


if __name__ == "__main__":
    from seglearn.log import report_errors, setup_logging

    setup_logging()
    report_errors(main)()
