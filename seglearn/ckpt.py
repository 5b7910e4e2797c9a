"""seglearn's checkpoint format: plain tensors and JSON-like metadata, loaded with weights_only.

A checkpoint is a ``torch.save``'d dict::

    {"format": "seglearn", "version": 1, "kind": "unet" | "stardist" | ...,
     "state_dict": {name: tensor}, "meta": {...}}

``meta`` holds only str/int/float/bool/None/list/dict so that ``torch.load(weights_only=True)``
reads it; everything predict needs (network config, channels, normalisation, classes, voxel
size, seglearn version) goes there. Files with another format or a newer version are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import seglearn
from seglearn.errors import InputError
from seglearn.io.atomic import atomic_path
from seglearn.segment.calibrate import T_BOUNDS

FORMAT = "seglearn"
VERSION = 1


def _check_plain(obj: Any, where: str = "meta") -> None:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint {where}: key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"checkpoint {where}: {type(obj).__name__} is not JSON-like")


def save_checkpoint(path: str | os.PathLike, *, kind: str, state_dict: Mapping[str, Any], meta: Mapping[str, Any],
                    overwrite: bool = True, blend: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : path-like
    kind : str
        Model kind, used by ``predict.py`` to choose the predictor.
    state_dict : mapping of str to torch.Tensor
    meta : mapping
        JSON-like metadata (checked).
    blend : mapping of str to torch.Tensor, optional
        A packed forest blended with the network (top-level ``blend`` entry; described by
        ``meta["blend"]``, :mod:`seglearn.pretrain.blend`).
    """
    import torch

    meta = dict(meta)
    meta.setdefault("seglearn_version", seglearn.__version__)
    _check_plain(meta)
    payload = {"format": FORMAT, "version": VERSION, "kind": kind,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "meta": meta}
    if blend is not None:
        payload["blend"] = {k: v.detach().cpu() for k, v in blend.items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None, validate: bool = True) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check its format and contents.

    Parameters
    ----------
    path : path-like
    kind : str, optional
        Refuse a checkpoint of another model kind.
    validate : bool
        Check the metadata and weights against the declared network (:func:`validate_checkpoint`)
        before anything is built from them; only tools that read metadata of incomplete files turn
        it off.

    Returns
    -------
    dict
        ``kind``, ``state_dict``, ``meta``, ``version``.
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint does not exist")
    if path.is_dir():
        raise InputError(f"{path}: expected a checkpoint file, got a folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: checkpoint is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "unsupported global" in text.lower():
            raise InputError(f"{path}: refused to load checkpoint: it holds Python objects other than tensors and "
                             f"plain data (a pickle payload could run code)") from exc
        raise InputError(f"{path}: not a readable checkpoint (corrupted or not a torch file)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:160]})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = " (a Lightning training checkpoint? use best.ckpt / last.ckpt written by seglearn's train.py)" \
            if isinstance(obj, dict) and "pytorch-lightning_version" in obj and "seglearn" not in obj else ""
        raise InputError(f"{path}: not a seglearn checkpoint{hint}")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise InputError(f"{path}: checkpoint format version {version!r} is not supported (this seglearn reads 1..{VERSION})")
    if kind is not None and obj.get("kind") != kind:
        raise InputError(f"{path}: checkpoint holds a {obj.get('kind')!r} model, expected {kind!r}")
    if validate:
        validate_checkpoint(obj, path)
    return obj


#: bounds of the sizes a checkpoint may declare; a network beyond them is refused before it is built
MAX_PARAMETERS = 200_000_000
BOUNDS = {"in_channels": (1, 64), "n_classes": (1, 255), "context": (0, 16), "base": (1, 512), "depth": (0, 8),
          "n_rays": (1, 512), "depth_stardist": (0, 8), "base_filters": (1, 1024), "head_filters": (0, 2048),
          "n_conv_per_depth": (1, 8), "kernel_size": (1, 15), "pool": (1, 8), "grid": (1, 64)}


def _where(path, key: str) -> str:
    return f"{path}: checkpoint meta {key}"


def _int(net: Mapping, key: str, path, bounds_key: str | None = None, default=None) -> int:
    v = net.get(key, default)
    lo, hi = BOUNDS[bounds_key or key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InputError(f"{_where(path, 'net.' + key)} = {v!r}: expected an integer in {lo}..{hi}")
    return v


def _str_list(meta: Mapping, key: str, path, n: int | None = None) -> list:
    v = meta.get(key)
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise InputError(f"{_where(path, key)} = {str(v)[:80]}: expected a non-empty list of names")
    if n is not None and len(v) != n:
        raise InputError(f"{_where(path, key)} has {len(v)} entries, the network declares {n}")
    if len(set(v)) != len(v):
        raise InputError(f"{_where(path, key)} = {v}: names are repeated")
    return v


def _check_unet_meta(meta: Mapping, path) -> dict:
    from seglearn.segment.net import MODES

    net = meta.get("net")
    if not isinstance(net, dict):
        raise InputError(f"{_where(path, 'net')} is missing: no network description")
    cin, k = _int(net, "in_channels", path), _int(net, "n_classes", path)
    depth = _int(net, "depth", path)
    _int(net, "base", path)
    if net.get("mode") not in MODES:
        raise InputError(f"{_where(path, 'net.mode')} = {net.get('mode')!r}: expected one of {list(MODES)}")
    _int(net, "context", path, default=0)
    d = net.get("dropout", 0.0)
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0:
        raise InputError(f"{_where(path, 'net.dropout')} = {d!r}: expected a number in [0, 1)")
    for key, n, ok in (("pool_z", depth, lambda v: isinstance(v, bool)),
                       ("kernel_z", depth + 1, lambda v: v in (1, 3) and not isinstance(v, bool))):
        v = net.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != n or not all(ok(x) for x in v)):
            raise InputError(f"{_where(path, 'net.' + key)} = {v!r}: expected {n} values")
    _str_list(meta, "classes", path, k)
    _str_list(meta, "detectors", path)
    if meta.get("channels") is not None:
        _str_list(meta, "channels", path, cin)
    ranges = (meta.get("normalisation") or {}).get("ranges") if isinstance(meta.get("normalisation"), dict) else None
    if (not isinstance(ranges, list) or len(ranges) != cin
            or not all(isinstance(r, list) and len(r) == 2 and all(_finite(x) for x in r) for r in ranges)):
        raise InputError(f"{_where(path, 'normalisation.ranges')}: expected {cin} [low, high] pairs of numbers, "
                         f"found {str(ranges)[:80]}")
    cal = meta.get("calibration")
    if cal is not None:  # a huge or non-finite temperature would make every softmax uniform: all one class

        t = cal.get("temperature") if isinstance(cal, dict) else None
        if not _finite(t) or not T_BOUNDS[0] <= float(t) <= T_BOUNDS[1]:
            raise InputError(f"{_where(path, 'calibration.temperature')} = {t!r}: expected a number in "
                             f"[{T_BOUNDS[0]}, {T_BOUNDS[1]}]")
    smooth = (meta.get("normalisation") or {}).get("smooth")
    if smooth is not None and (not isinstance(smooth, list) or not all(_finite(v) and 0 <= float(v) <= 20
                                                                      for v in smooth)):
        raise InputError(f"{_where(path, 'normalisation.smooth')} = {str(smooth)[:60]}: expected sigmas in [0, 20] px")
    return net


def _check_stardist_meta(meta: Mapping, path) -> dict:
    net = meta.get("net")
    if not isinstance(net, dict):
        raise InputError(f"{_where(path, 'net')} is missing: no network description")
    cin = _int(net, "in_channels", path)
    _int(net, "n_rays", path, default=32)
    _int(net, "depth", path, "depth_stardist", default=3)
    _int(net, "base_filters", path, default=32)
    _int(net, "head_filters", path, default=128)
    if net.get("n_conv_per_depth") is not None:
        _int(net, "n_conv_per_depth", path)
    for key, dflt in (("grid", [2, 2]), ("kernel_size", 3), ("pool", 2)):
        v = net.get(key, dflt)
        v = dflt if v is None else v
        vals = v if isinstance(v, list) else [v]
        lo, hi = BOUNDS[key]
        if len(vals) not in (1, 2) or not all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
                                               for x in vals):
            raise InputError(f"{_where(path, 'net.' + key)} = {v!r}: expected one or two integers in {lo}..{hi}")
    norm = meta.get("normalisation")
    if not isinstance(norm, dict) or (norm.get("kind") != "per_image" and not all(
            isinstance(norm.get(b), list) and len(norm[b]) == cin and all(_finite(x) for x in norm[b])
            for b in ("lo", "hi"))):
        raise InputError(f"{_where(path, 'normalisation')}: expected per_image or {cin} lo / hi values, "
                         f"found {str(norm)[:80]}")
    thr = meta.get("thresholds")
    if not isinstance(thr, dict) or not all(_finite(thr.get(t)) for t in ("prob", "nms")):
        raise InputError(f"{_where(path, 'thresholds')}: expected numbers prob and nms, found {str(thr)[:80]}")
    return net


def _finite(x) -> bool:
    import math

    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _expected_shapes(kind: str, net_meta: dict, path) -> dict:
    """Parameter and buffer shapes of the declared network, built on the ``meta`` device (nothing allocated)."""
    import torch

    try:
        with torch.device("meta"):
            if kind == "unet":
                from seglearn.segment.net import build_net

                net = build_net(net_meta)
            else:
                from seglearn.instances.model import build_model

                net = build_model(net_meta, in_channels=int(net_meta["in_channels"]))
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise InputError(f"{path}: checkpoint declares a network that cannot be built "
                         f"({str(exc).splitlines()[0][:120]})") from exc
    n = sum(p.numel() for p in net.parameters())
    if n > MAX_PARAMETERS:
        raise InputError(f"{path}: checkpoint declares a network of {n:,} parameters; more than {MAX_PARAMETERS:,} "
                         f"is refused")
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def validate_checkpoint(obj: Mapping, path: str | os.PathLike = "checkpoint") -> None:
    """Check a loaded checkpoint before any network is built from it; raise a one-line :class:`InputError`.

    Checks the top-level keys, the metadata a predictor reads (network sizes within :data:`BOUNDS`,
    class / detector names, normalisation), that the state dict holds exactly the tensors of the
    declared network with their shapes (computed on the ``meta`` device, so a checkpoint declaring
    a huge network allocates nothing) and that the weights are finite. Kinds other than ``unet``
    and ``stardist`` are refused.
    """
    import torch

    kind, meta, state = obj.get("kind"), obj.get("meta"), obj.get("state_dict")
    if kind not in ("unet", "stardist"):
        raise InputError(f"{path}: checkpoint kind {kind!r} is unknown (expected 'unet' or 'stardist')")
    if not isinstance(meta, dict):
        raise InputError(f"{path}: checkpoint has no 'meta' dict")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: checkpoint has no 'state_dict' of tensors")
    net = _check_unet_meta(meta, path) if kind == "unet" else _check_stardist_meta(meta, path)
    expected = _expected_shapes(kind, net, path)
    got = {(k[4:] if kind == "unet" and k.startswith("net.") else k): v for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise InputError(f"{path}: checkpoint weights do not fit its declared network ({len(missing)} missing, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    for k, shape in expected.items():
        if tuple(got[k].shape) != shape:
            raise InputError(f"{path}: checkpoint tensor {k} has shape {list(got[k].shape)}, the declared network "
                             f"needs {list(shape)}")
        if got[k].is_floating_point() and not bool(torch.isfinite(got[k]).all()):
            raise InputError(f"{path}: checkpoint tensor {k} holds NaN or Inf values")
    if obj.get("blend") is not None or meta.get("blend") is not None:
        from seglearn.segment.blend import from_checkpoint

        from_checkpoint(obj, where=str(path))  # the packed forest: indices in range, every traversal ends
