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

from seglearn.errors import InputError
from seglearn.io.atomic import atomic_path

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
                    overwrite: bool = True) -> Path:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : path-like
    kind : str
        Model kind, used by ``predict.py`` to choose the predictor.
    state_dict : mapping of str to torch.Tensor
    meta : mapping
        JSON-like metadata (checked).
    """
    import torch

    import seglearn

    meta = dict(meta)
    meta.setdefault("seglearn_version", seglearn.__version__)
    _check_plain(meta)
    payload = {"format": FORMAT, "version": VERSION, "kind": kind,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "meta": meta}
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> dict:
    """Load a checkpoint safely (``weights_only=True``) and check its format.

    Parameters
    ----------
    path : path-like
    kind : str, optional
        Refuse a checkpoint of another model kind.

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
    return obj
