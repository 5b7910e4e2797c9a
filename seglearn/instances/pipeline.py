"""From a trained particle checkpoint and an image to instances: 2D, linking or view fusion."""

from __future__ import annotations

import logging
import time
from typing import Mapping

import numpy as np

from seglearn.errors import InputError
from seglearn.instances.anisotropy import from_isotropic, iso_factors, to_isotropic
from seglearn.instances.fusion import fuse_views
from seglearn.instances.linking import link_slices
from seglearn.instances.targets import fit_normalisation, normalise
from seglearn.instances.volume import predict_view
from seglearn.paths import load_config
from seglearn.precision import resolve_bf16

log = logging.getLogger("seglearn")

METHODS = ("auto", "fusion", "linking", "2d")


def predict_settings(stored: Mapping | None = None, options: Mapping | None = None) -> dict:
    """Particle prediction settings: the ``predict`` section of ``configs/model/stardist.yaml`` (their one
    home) updated by ``stored`` (a checkpoint's ``meta['predict']``: every value taken, ``None`` included),
    then by ``options`` (predict.py's ``instances`` group: ``None`` = keep). ``fusion`` / ``linking`` are
    merged key by key.
    """
    import copy

    out = copy.deepcopy(load_config("model/stardist.yaml")["predict"])
    for layer, keep_none in ((stored, True), (options, False)):
        for k, v in dict(layer or {}).items():
            if isinstance(v, Mapping) and isinstance(out.get(k), dict):
                out[k] = {**out[k], **{str(kk): vv for kk, vv in v.items() if keep_none or vv is not None}}
            elif keep_none or v is not None:
                out[k] = v
    return out


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

        lo, hi = fit_normalisation(images, norm.get("percentiles", (1.0, 99.8)))
        return normalise(images, lo, hi)
    return normalise(images, norm["lo"], norm["hi"])


def model_grid(images: np.ndarray, params: Mapping, voxel_size_nm=None) -> np.ndarray:
    """``images`` ``(C, Z, Y, X)`` on the grid the network sees: resampled to the x voxel size when
    ``params["isotropic"]`` (a checkpoint trained so, issue 29) and the voxel size is known, else as they are
    (checkpoints from before issue 29 have no ``isotropic``: they were trained on the voxels as they are)."""
    factors = iso_factors(voxel_size_nm) if params.get("isotropic") and images.shape[1] > 1 else (1.0, 1.0, 1.0)
    return to_isotropic(images, factors)


def view_outputs(net, images: np.ndarray, *, prob_thresh: float, nms_thresh: float, params: Mapping | None = None,
                 views=("xy", "xz", "yz"), voxel_size_nm=None, progress: bool = True,
                 back: bool = True) -> tuple[list, list]:
    """The network's probability map and 2D instances in every slice of each view.

    Parameters
    ----------
    net : StarDistNet
    images : (C, Z, Y, X) float32
        Normalised.
    params : mapping
        ``tile``, ``context``, ``batch_size``, ``bf16`` (see :func:`segment_particles`).
    views : sequence of {"xy", "xz", "yz"}
    voxel_size_nm : (z, y, x), optional
        With ``params["isotropic"]`` (a checkpoint trained so), the network sees the volume
        resampled to the x voxel size (:mod:`seglearn.instances.anisotropy`).
    back : bool
        Outputs on the input grid; ``False``: on the resampled grid (for fusing there).

    Returns
    -------
    probs : list of (Z, Y, X) float32
    labels : list of (Z, Y, X) int32
        2D ids per slice of the view.
    """
    params = dict(params or {})
    kw = dict(prob_thresh=prob_thresh, nms_thresh=nms_thresh, tile=tuple(params.get("tile", (256, 256))),
              context=int(params.get("context", 64)), batch_size=int(params.get("batch_size", 8)), progress=progress,
              bf16=resolve_bf16(params.get("bf16", "auto"), next(net.parameters()).device))
    x = model_grid(images, params, voxel_size_nm)
    probs, labels = [], []
    for view in views:
        p, lbl = predict_view(net, x, view, **kw)
        probs.append(from_isotropic(p, images.shape[1:]) if back else p)
        labels.append(from_isotropic(lbl, images.shape[1:]) if back else lbl)
    return probs, labels


def fuse_settings(probs, labels, fu: Mapping, prob_thresh: float, scale: float = 1.0) -> np.ndarray:
    """:func:`~seglearn.instances.fusion.fuse_views` of per-view outputs with the ``fusion`` settings.

    Parameters
    ----------
    probs, labels : lists of (Z, Y, X) arrays
        Per-view probabilities and 2D instances (:func:`view_outputs`).
    fu : mapping
        ``foreground`` (polygons | probability), ``fg_vote``, ``fg_prob``, ``seed_thresh`` (None: the
        probability threshold), ``h``, ``sigma``, ``min_size`` (voxels of the input grid).
    scale : float
        Voxels of this grid per input voxel (``min_size`` is scaled by it).
    """
    seed = fu.get("seed_thresh")
    poly = fu.get("foreground", "polygons") == "polygons"
    if not poly and fu.get("foreground") != "probability":
        raise InputError(f"fusion.foreground={fu.get('foreground')!r}: expected 'polygons' or 'probability'")
    return fuse_views(probs, [lbl > 0 for lbl in labels] if poly else None, fg_vote=float(fu["fg_vote"]),
                      fg_prob=float(fu.get("fg_prob") or 0.0), seed_thresh=float(prob_thresh if seed is None else seed),
                      h=float(fu["h"]), sigma=float(fu["sigma"]), min_size=int(round(int(fu["min_size"]) * scale)))


def segment_particles(net, images: np.ndarray, *, method: str = "auto", prob_thresh: float = 0.5,
                      nms_thresh: float = 0.4, params: Mapping | None = None, progress: bool = True,
                      voxel_size_nm=None) -> tuple[np.ndarray, dict]:
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
        ``linking`` options; missing ones from ``configs/model/stardist.yaml`` ``predict``
        (:func:`predict_settings`); ``isotropic`` (stored by training) resamples anisotropic voxels.
    voxel_size_nm : (z, y, x), optional
        The input's voxel size (for ``isotropic``; without it the voxels are taken as they are).

    Returns
    -------
    labels : (Z, Y, X) uint32 (int32 ids per slice for ``2d``)
    info : dict
        ``method``, ``seconds``.
    """
    params = predict_settings(params)
    if method not in METHODS:
        raise InputError(f"method={method!r}: expected one of {list(METHODS)}")
    z = images.shape[1]
    if method == "auto":
        method = "fusion" if z > 1 else "2d"
    if method != "2d" and z < 2:
        raise InputError(f"method={method}: needs a stack of several slices, got a single 2D image")
    kw = dict(prob_thresh=prob_thresh, nms_thresh=nms_thresh, params=params, voxel_size_nm=voxel_size_nm,
              progress=progress)
    t0 = time.perf_counter()
    if method in ("2d", "linking"):
        labels = view_outputs(net, images, views=("xy",), **kw)[1][0]
        if method == "linking":
            lk = params["linking"]
            labels = link_slices(labels, max_distance=float(lk["max_distance"]), min_slices=int(lk["min_slices"]),
                                 progress=progress)
    else:
        # fused on the grid the network saw (isotropic voxels for an isotropic checkpoint), then brought back
        probs, labels = view_outputs(net, images, back=False, **kw)
        scale = labels[0].size / images[0].size
        labels = from_isotropic(fuse_settings(probs, labels, params["fusion"], prob_thresh, scale), images.shape[1:])
    return labels, {"method": method, "seconds": time.perf_counter() - t0}
