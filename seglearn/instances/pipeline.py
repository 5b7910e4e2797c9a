"""From a trained particle checkpoint and an image to instances: 2D, linking or view fusion."""

from __future__ import annotations

import logging
import time
from typing import Mapping

import numpy as np

from seglearn.errors import InputError
from seglearn.instances.targets import normalise

log = logging.getLogger("seglearn")

METHODS = ("auto", "fusion", "linking", "2d")


def load_model(ckpt: Mapping, device: str | None = None):
    """The network of a ``stardist`` checkpoint (from :func:`seglearn.ckpt.load_checkpoint`), in eval mode."""
    import torch

    from seglearn.instances.model import build_model

    meta = ckpt["meta"]
    net = build_model(meta["net"], in_channels=int(meta["net"]["in_channels"]))
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"checkpoint weights do not fit its network description ({str(exc).splitlines()[0][:160]})") from exc
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return net.eval().to(device)


def prepare_images(images: np.ndarray, meta: Mapping, where: str = "input") -> np.ndarray:
    """Check the channel count against the checkpoint and apply its normalisation; ``(C, Z, Y, X)`` float32.

    ``normalisation.kind``: ``percentile`` (the training volume's ``lo`` / ``hi``, stored) or
    ``per_image`` (the input's own ``percentiles``, as for imported Keras StarDist models)."""
    n = int(meta["net"]["in_channels"])
    if images.ndim != 4 or images.shape[0] != n:
        raise InputError(f"{where}: the model expects {n} channel(s) {meta.get('channels')}, got image of shape "
                         f"{images.shape} (C, Z, Y, X)")
    norm = meta["normalisation"]
    if norm.get("kind") == "per_image":  # imported StarDist models: each input by its own percentiles (csbdeep)
        from seglearn.instances.targets import fit_normalisation

        lo, hi = fit_normalisation(images, norm.get("percentiles", (1.0, 99.8)))
        return normalise(images, lo, hi)
    return normalise(images, norm["lo"], norm["hi"])


def segment_particles(net, images: np.ndarray, *, method: str = "auto", prob_thresh: float = 0.5,
                      nms_thresh: float = 0.4, params: Mapping | None = None, progress: bool = True) -> tuple[np.ndarray, dict]:
    """Particle instances of a normalised image.

    Parameters
    ----------
    net : StarDistNet
    images : (C, Z, Y, X) float32
        Normalised (see :func:`prepare_images`).
    method : {"auto", "fusion", "linking", "2d"}
        ``fusion``: xy/xz/yz probability maps fused into 3D particles; ``linking``: xy slice labels
        linked by Hungarian assignment; ``2d``: independent 2D labels per xy slice. ``auto`` is
        fusion for a stack and 2d for a single slice.
    prob_thresh, nms_thresh : float
    params : mapping
        ``tile``, ``context``, ``batch_size``, ``bf16`` (true / false / auto), ``fusion`` and
        ``linking`` options (see ``configs/model/stardist.yaml``, ``predict``).

    Returns
    -------
    labels : (Z, Y, X) uint32 (int32 ids per slice for ``2d``)
    info : dict
        ``method``, ``seconds``.
    """
    from seglearn.instances.fusion import fuse_views
    from seglearn.instances.linking import link_slices
    from seglearn.precision import resolve_bf16
    from seglearn.instances.volume import predict_view

    params = dict(params or {})
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {list(METHODS)}")
    z = images.shape[1]
    if method == "auto":
        method = "fusion" if z > 1 else "2d"
    if method != "2d" and z < 2:
        raise InputError(f"method={method}: needs a stack of several slices, got a single 2D image")
    kw = dict(prob_thresh=prob_thresh, nms_thresh=nms_thresh, tile=tuple(params.get("tile", (256, 256))),
              context=int(params.get("context", 64)), batch_size=int(params.get("batch_size", 8)), progress=progress,
              bf16=resolve_bf16(params.get("bf16", "auto"), next(net.parameters()).device))
    t0 = time.perf_counter()
    if method in ("2d", "linking"):
        _, labels = predict_view(net, images, "xy", **kw)
        if method == "linking":
            lk = dict(params.get("linking") or {})
            labels = link_slices(labels, max_distance=float(lk.get("max_distance", 10.0)),
                                 min_slices=int(lk.get("min_slices", 1)), progress=progress)
    else:
        fu = dict(params.get("fusion") or {})
        probs, masks = [], []
        for view in ("xy", "xz", "yz"):
            p, lbl = predict_view(net, images, view, **kw)
            probs.append(p)
            masks.append(lbl > 0)
        seed = fu.get("seed_thresh")
        labels = fuse_views(probs, masks, fg_vote=float(fu.get("fg_vote", 0.5)),
                            seed_thresh=float(prob_thresh if seed is None else seed), h=float(fu.get("h", 0.1)),
                            sigma=float(fu.get("sigma", 1.0)), min_size=int(fu.get("min_size", 20)))
    return labels, {"method": method, "seconds": time.perf_counter() - t0}
