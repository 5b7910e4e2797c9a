"""What one fine-tuning run starts from: the inputs on the base model's scale, the validation split,
the networks (student, teacher, auxiliary head) and the synthetic stream (:func:`prepare`).

The numeric rules themselves (grey scale, scribble split, class mapping, linear probe) are the small
functions of :mod:`seglearn.pretrain.rules` and :mod:`seglearn.pretrain.noise`; this module only
puts them together for :mod:`seglearn.pretrain.finetune`. Nothing here trains.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from seglearn.data.layout import warn_missing_classes
from seglearn.errors import InputError
from seglearn.pretrain.autocontext import fit_context, widen
from seglearn.pretrain.noise import resolve_smoothing
from seglearn.pretrain.randomise import make_randomiser
from seglearn.pretrain.rules import class_map, class_medians, probe_head, resolve_classes, scaled_inputs, split_scribbles
from seglearn.pretrain.stream import PhantomPatchStream
from seglearn.segment.channels import apply_normalisation, compute_channels

log = logging.getLogger("seglearn")


@dataclass
class Setup:
    """Everything one fine-tuning run needs, built by :func:`prepare`.

    ``x`` is ``(C, Z, Y, X)`` float32, the channels as the base model reads them; ``raw`` the detectors
    on its 8-bit scale; ``fit_labels`` / ``val_labels`` ``(Z, Y, X)`` uint8 (0 = none).
    """

    ck: dict
    classes: list
    same_head: bool
    raw: np.ndarray
    names: list
    intensity: dict
    smooth: list
    noise_info: dict
    ranges: list
    x: np.ndarray
    halo: int
    net_cfg: dict
    fit_labels: np.ndarray
    val_labels: np.ndarray
    val_source: str
    base_net: Any
    net: Any
    aux: Any
    cmap: list
    freeze_bn: bool
    make_stream: Callable[[int], Any] | None
    patch: int
    n_user: int
    n_syn: int
    extra: dict = field(default_factory=dict)

    @property
    def val_z(self) -> list[int]:
        """The slices that hold validation labels."""
        return [int(z) for z in np.unique(np.nonzero(self.val_labels)[0])]

    @property
    def val_scribbles(self) -> bool:
        """Whether the validation labels are held-out scribbles (not the dense test labels)."""
        return self.val_source != TEST_SOURCE

    @property
    def base_meta(self) -> dict:
        return self.ck["meta"]


def check_inputs(images: np.ndarray, detectors: Sequence[str], train: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``images`` as ``(C, Z, Y, X)`` and ``train`` as uint8, checked against each other (one-line errors)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    train = np.asarray(train).astype(np.uint8)
    if images.ndim != 4 or images.shape[0] != len(detectors) or images.shape[1:] != train.shape:
        raise InputError(f"finetune: images {images.shape}, labels {train.shape} and detectors {list(detectors)} "
                         f"do not agree; expected (C, Z, Y, X) and (Z, Y, X)")
    if not (train > 0).any():
        raise InputError(f"{name}: the training labels hold no scribble (all 0)")
    return images, train


#: ``Setup.val_source`` when the validation labels are the dense ``labels/test.tif`` (else held-out scribbles)
TEST_SOURCE = "test"


def validation_split(train: np.ndarray, test: np.ndarray | None, s: Mapping) -> tuple[np.ndarray, np.ndarray, str]:
    """``(fit, val, source)``: the dense test labels when given, else held-out scribble tiles (seed ``s["seed"]``)."""
    train = np.asarray(train).astype(np.uint8)
    if test is not None and (np.asarray(test) > 0).any():
        return train, np.asarray(test).astype(np.uint8), TEST_SOURCE
    fit, val = split_scribbles(train, fraction=float(s["val_fraction"]), tile=int(s["val_tile"]), seed=int(s["seed"]))
    return fit, val, "held-out scribbles"


def build_nets(ck: dict, x: np.ndarray, fit_labels: np.ndarray, k_user: int, same_head: bool, halo: int, seed: int):
    """``(base_net, net, aux, cmap)``: the frozen teacher, the network to fine-tune (the base head, or a new
    head fitted as a linear probe) and, with a new head, the base model's head kept as an auxiliary head."""
    import torch

    from seglearn.segment.net import build_net  # deferred: torch

    net_cfg = dict(ck["meta"]["net"])
    base_net = build_net(net_cfg)
    base_net.load_state_dict({k[4:] if k.startswith("net.") else k: v for k, v in ck["state_dict"].items()})
    base_net.eval()
    cmap = list(range(k_user)) if same_head else class_map(base_net, x, fit_labels, k_user, halo)
    net = build_net({**net_cfg, "n_classes": k_user})
    state = base_net.state_dict()
    if same_head:
        net.load_state_dict(state)
        return base_net, net, None, cmap
    hw = state["unet.head.weight"]
    pw, pb = probe_head(base_net, x, fit_labels, k_user, halo, seed=seed)
    body = {k: v for k, v in state.items() if not k.startswith("unet.head.")}
    body["unet.head.weight"] = torch.from_numpy(pw).reshape(k_user, *hw.shape[1:]).to(hw.dtype)
    body["unet.head.bias"] = torch.from_numpy(pb).to(hw.dtype)
    net.load_state_dict(body)
    return base_net, net, copy.deepcopy(base_net.unet.head), cmap


def stream_factory(meta: Mapping, s: Mapping, x: np.ndarray, fit_labels: np.ndarray, same_head: bool, halo: int,
                   voxel_size_nm: Sequence[float] | None) -> tuple[Callable[[int], Any], int]:
    """``(make_stream, patch)``: ``make_stream(seed)`` draws the synthetic patches with the base model's
    detectors and pretraining ranges (``s["ranges"]`` overriding them; ``match_geometry``: at the dataset's
    voxel size; ``match``: contrast mapped onto the scribbles' class medians)."""
    pre = dict(meta.get("pretrain") or {})
    dets, derived = list(meta["detectors"]), list(meta.get("derived", []))
    syn_ranges = {**dict(pre.get("ranges") or {}), **dict(s.get("ranges") or {})}
    if s.get("match_geometry") and voxel_size_nm is not None:
        vz, vy, vx = (float(v) for v in voxel_size_nm)
        xy = 0.5 * (vy + vx)
        syn_ranges.update(voxel_xy_nm=[xy, xy], anisotropy=[vz / xy, vz / xy])
    settings = {"detectors": dets, "ranges": syn_ranges, "sources": None, "p_real": pre.get("p_real", 0.3),
                "p_flat": pre.get("p_flat", 0.15), "p_family_b": pre.get("p_family_b", 0.0),
                "phantom_shape": s["phantom_shape"]}
    patch = min(int(s["patch"]), *[int(v) for v in s["phantom_shape"]][1:])
    target = class_medians(x[:len(dets)], fit_labels, len(meta["classes"])) if same_head else None

    def make(seed: int) -> PhantomPatchStream:
        return PhantomPatchStream(make_randomiser(settings), derived=derived, patch=patch, halo=halo,
                                  cache=int(s["cache"]), reuse=int(s["reuse"]), seed=seed, match=target,
                                  p_match=float(s["match"]))

    return make, patch


def prepare(ck: dict, images: np.ndarray, detectors: Sequence[str], train: np.ndarray, s: Mapping, *,
            classes: Sequence[str] | None, test: np.ndarray | None, voxel_size_nm, name: str, init: str | Path,
            context: dict | None = None) -> Setup:
    """Inputs, validation split, networks and synthetic stream of one fine-tuning run (see :class:`Setup`).

    ``context``: auto-context (:mod:`seglearn.pretrain.autocontext`); a dict shared by the runs, whose
    ``"ctx"`` (the forest channels, fitted by the first run) is appended to ``x`` and whose networks get
    that many more input channels (zero weights). ``extra["context"]`` holds it then."""
    meta = ck["meta"]
    images, train = check_inputs(images, detectors, train, name)
    base_classes = list(meta["classes"])
    classes = resolve_classes(base_classes, train, test, classes)
    same_head = classes == base_classes
    raw, names, intensity = scaled_inputs(ck, images, detectors, detector=s["detector"], name=name)
    base_dets, derived = list(meta["detectors"]), list(meta.get("derived", []))
    ranges = [[float(v) for v in r] for r in meta["normalisation"]["ranges"]]
    smooth, noise_info = resolve_smoothing(s["denoise"], meta, raw, train)
    if any(v > 0 for v in smooth):
        log.info("%s: smoothing the detectors %s in-plane with sigma %s px (%s)", name, base_dets, smooth,
                 ", ".join(f"{k} {v}" for k, v in noise_info.items() if k != "sigma"))
    x = apply_normalisation(compute_channels(raw, base_dets, derived, smooth), ranges)
    net_cfg = dict(meta["net"])
    if net_cfg.get("mode") == "3d":
        raise InputError(f"{init}: fine-tuning supports 2d / 2.5d base models, this one is 3d")
    halo = int(net_cfg.get("context", 0)) if net_cfg.get("mode") == "2.5d" else 0
    fit_labels, val_labels, val_source = validation_split(train, test, s)
    warn_missing_classes(train, classes, f"{name}: the training labels", "the model cannot learn them")
    warn_missing_classes(val_labels, classes, f"{name}: the validation labels ({val_source})",
                         "the validation awe that picks the model does not see them")
    base_net, net, aux, cmap = build_nets(ck, x, fit_labels, len(classes), same_head, halo, int(s["seed"]))
    extra = {"train": train}
    if context is not None:
        if "ctx" not in context:  # the first run fits it (outside max_minutes, as the blend)
            t_ctx = time.perf_counter()
            context["ctx"] = fit_context(raw, names, train, len(classes), s, halo=halo, voxel_size_nm=voxel_size_nm)
            extra["context_seconds"] = time.perf_counter() - t_ctx
        ctx = extra["context"] = context["ctx"]
        extra["context_dropout"] = float(s["autocontext_dropout"])
        extra["context_lr"] = float(s["autocontext_lr"])
        # the validation slices (the dense test slice with labels/test.tif) get the forest's channels too (the
        # forest fitted on all scribbles, out-of-fold near scribbles): validation, blend and temperature see
        # the inputs prediction will see, not the uninformative 1 / K
        ctx.ensure([int(z) + d for z in np.unique(np.nonzero(val_labels)[0]) for d in range(-halo, halo + 1)])
        x = np.concatenate([x, ctx.probs])
        for m in (base_net, net):  # the teacher too: it sees the same batches
            widen(m, ctx.k)
        net_cfg = {**net_cfg, "in_channels": int(net_cfg["in_channels"]) + ctx.k}
    n_syn = int(round(float(s["synth_fraction"]) * int(s["batch_size"])))
    make_stream, patch = (None, int(s["patch"])) if n_syn <= 0 else \
        stream_factory(meta, s, x, fit_labels, same_head, halo, voxel_size_nm)
    # a new head (other classes, other imaging): batches half synthetic FIB-SEM, half the user's data give
    # BatchNorm statistics that fit neither, and validation swung between 2 and 47 % on the micrograph
    freeze_bn = (not same_head) if str(s["freeze_bn"]) == "auto" else bool(s["freeze_bn"])
    return Setup(ck=ck, classes=classes, same_head=same_head, raw=raw, names=list(names), intensity=intensity,
                 smooth=list(smooth), noise_info=noise_info, ranges=ranges, x=x, halo=halo, net_cfg=net_cfg,
                 fit_labels=fit_labels, val_labels=val_labels, val_source=val_source, base_net=base_net, net=net,
                 aux=aux, cmap=cmap, freeze_bn=freeze_bn, make_stream=make_stream, patch=patch,
                 n_user=max(1, int(s["batch_size"]) - n_syn), n_syn=n_syn, extra=extra)
