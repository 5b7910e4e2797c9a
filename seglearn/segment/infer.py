"""The inference primitives shared by prediction (:mod:`~seglearn.segment.api`) and validation during
training (:mod:`~seglearn.segment.module`): the device, a network as a numpy function, tiling defaults."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from seglearn.paths import load_config
from seglearn.precision import resolve_device  # noqa: F401  (the one device rule; seglearn.segment.api uses it from here)

KIND = "unet"


def torch_net_fn(net, device, *, bf16: bool = False, temperature: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a network as ``(B, C, Z, Y, X)`` numpy -> softmax probabilities ``(B, K, z, Y, X)`` numpy.

    The input is cast to the network's weight dtype (a bfloat16 :func:`~seglearn.segment.net.inference_copy`
    takes bf16 input); ``bf16`` adds autocast around an fp32 network. Softmax is computed in fp32, of
    ``logits / temperature`` (the checkpoint's calibration, :mod:`seglearn.segment.calibrate`).
    """
    import torch

    dtype = next(net.parameters()).dtype
    autocast = bool(bf16) and dtype != torch.bfloat16

    def fn(batch: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(batch)).to(device=device, dtype=dtype)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = net(t)
        return torch.softmax(logits.float() / float(temperature), dim=1).cpu().numpy()

    return fn


def inference_kwargs(meta: Mapping, net, *, tile=None, overlap=None, border=None, batch_size=None) -> dict:
    """Keyword arguments of :func:`~seglearn.segment.tiling.sliding_window` from the checkpoint defaults."""
    inf = dict(meta.get("inference") or {})
    if not all(k in inf for k in ("tile", "overlap", "batch_size")):  # a checkpoint without them: the YAML's
        inf = {**mode_defaults(net.mode), "batch_size": load_config("model/unet.yaml")["inference"]["batch_size"],
               **inf}
    three_d = net.mode == "3d"
    kw = {
        "tile": [int(v) for v in (tile if tile is not None else inf["tile"])],
        "overlap": [int(v) for v in (overlap if overlap is not None else inf["overlap"])],
        "batch_size": int(batch_size if batch_size is not None else inf["batch_size"]),
        "align": net.align,
        "n_classes": net.n_classes,
        "gaussian_z": three_d,
    }
    if not three_d:
        kw["overlap"][0] = 0
    b = border if border is not None else inf.get("border")
    if b is not None:
        kw["border"] = [int(v) for v in b]
    return kw


def mode_defaults(mode: str) -> dict:
    """``patch``, ``tile`` and ``overlap`` ``[z, y, x]`` of a U-Net ``mode`` (2d, 2.5d, 3d) where its config
    leaves them null: ``configs/model/unet.yaml`` ``by_mode`` (``flat`` for 2d / 2.5d, ``3d``)."""
    by = load_config("model/unet.yaml")["by_mode"]["3d" if str(mode) == "3d" else "flat"]
    return {k: [int(v) for v in by[k]] for k in ("patch", "tile", "overlap")}
