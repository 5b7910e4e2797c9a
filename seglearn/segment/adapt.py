"""A model adapted to the volume it is about to predict, from the volume's images alone (``predict.py adapt=``).

The BatchNorm statistics are moved part of the way to the volume's (AdaBN, Li et al. 2016; partial as in
Schneider et al. 2020): :func:`adapt_statistics` on patches of slabs spread through the volume
(:func:`read_slabs`, :func:`sample_patches`). :func:`adapt_to_volume` does it for prediction, after
putting the grey values on the model's scale and, given a noise rule, choosing the in-plane smoothing of
noisy detectors. Fine-tuning uses the same statistics step on its dataset
(:func:`seglearn.pretrain.adapt.adapt_bn`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.intensity import fit_to_model
from seglearn.segment.api import segmenter_from_checkpoint

log = logging.getLogger("seglearn")

#: share of the way from the stored statistics to the dataset's (``adapt_bn: auto``, ``adapt=auto``)
AUTO_ALPHA = 0.5


def sample_patches(seg, images: np.ndarray, detectors: Sequence[str], *, n: int, patch: int,
                   seed: int = 0, centres: Sequence[int] | None = None,
                   context: Mapping[int, np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """``n`` prepared network inputs cut at random places of the raw volume, one at a time.

    Parameters
    ----------
    seg : seglearn.segment.api.Segmenter
        Gives the channel order, normalisation and smoothing of the model.
    images : (C, Z, Y, X) ndarray
        Raw detector images (a memory map is read patch by patch).
    detectors : sequence of str
        Names of the channels of ``images``.
    n, patch : int
        Number and in-plane size of the patches (``patch`` is clipped to the image).
    centres : sequence of int, optional
        The slices a patch may be centred on (default: any); used with slabs of ``2h + 1``
        slices read around each centre (:func:`read_slabs`).
    context : mapping of int to (K, 2h + 1, Y, X) ndarray, optional
        Auto-context models only (``seg.context``): the forest channels of the slab around each centre,
        computed on the whole volume (:func:`volume_context`). Default: computed here with ``images``
        taken as the whole volume, around ``centres`` or :data:`CONTEXT_SLABS` evenly spread slices
        (a forest's features on a patch-sized crop differ from the whole volume's near the crop's edges).

    Yields
    ------
    (C', 2h + 1, py, px) float32 ndarray
        ``C'`` the model's channels, ``h`` its slice context.
    """
    order = seg.channel_order(detectors)
    _, z_n, y_n, x_n = images.shape
    py, px = min(patch, y_n), min(patch, x_n)
    h = int(seg.net.halo)
    if seg.context is not None and context is None:
        zs = list(centres) if centres is not None else spread(z_n, CONTEXT_SLABS)
        context = volume_context(seg, lambda a, b: np.stack([np.asarray(images[i])[a:b] for i in order]), z_n, zs)
    if context is not None:
        centres = sorted(context)
    margin = int(math.ceil(4 * max([0.0, *(seg.smooth or [])])))  # the in-plane smoothing's reach
    rng = np.random.default_rng(seed)
    for _ in range(n):
        z = int(rng.integers(z_n)) if centres is None else int(centres[int(rng.integers(len(centres)))])
        y0, x0 = int(rng.integers(y_n - py + 1)), int(rng.integers(x_n - px + 1))
        a, b = max(0, y0 - margin), min(y_n, y0 + py + margin)
        c, d = max(0, x0 - margin), min(x_n, x0 + px + margin)
        zi = np.clip(np.arange(z - h, z + h + 1), 0, z_n - 1)
        raw = np.stack([np.asarray(images[i])[zi, a:b, c:d] for i in order])
        x = seg.prepare(raw, with_context=False)[:, :, y0 - a:y0 - a + py, x0 - c:x0 - c + px]
        if context is not None:
            x = np.concatenate([x, context[z][:, :, y0:y0 + py, x0:x0 + px]])
        yield np.ascontiguousarray(x, dtype=np.float32)


#: slabs whose auto-context forest channels are computed for the statistics when no centres are given
CONTEXT_SLABS = 8


def spread(n_z: int, m: int) -> list[int]:
    """Up to ``m`` slices spread evenly over ``0..n_z - 1`` (all of them when ``n_z <= m``)."""
    if n_z <= m:
        return list(range(n_z))
    return [int(z) for z in np.unique(np.linspace(0, n_z - 1, m + 2)[1:-1].round().astype(int))]


def volume_context(seg, read_raw: Callable[[int, int], np.ndarray], n_z: int, zs: Sequence[int],
                   index: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Auto-context's forest channels ``(K, 2h + 1, Y, X)`` of the slab around each slice ``zs`` of an
    ``n_z``-slice volume read through ``read_raw(z0, z1)`` (slices beyond the volume repeat its edge, as in
    prediction); keyed by ``index`` (default ``zs``)."""
    h = int(seg.net.halo)
    out = {}
    for key, z in zip(index if index is not None else zs, zs, strict=True):
        zi = np.clip(np.arange(int(z) - h, int(z) + h + 1), 0, n_z - 1)
        p = seg.context_proba(read_raw, n_z, int(zi[0]), int(zi[-1]) + 1)
        out[int(key)] = p[:, zi - zi[0]]
    return out


def slab_slices(shape: Sequence[int], halo: int, *, n: int = 16, max_bytes: float = 512e6, itemsize: int = 4,
                channels: int = 1) -> list[int]:
    """The middle slices of :func:`read_slabs`' slabs (same arguments): up to ``n`` evenly spread slices,
    fewer when their slabs would take more than ``max_bytes``, at least 2."""
    z_n, y_n, x_n = (int(v) for v in shape)
    fit = int(max_bytes // max(1, (2 * int(halo) + 1) * y_n * x_n * itemsize * channels))
    return spread(z_n, max(1, min(n, z_n, max(2, fit))))


def read_slabs(read_raw, shape: Sequence[int], halo: int, *, n: int = 16,
               max_bytes: float = 512e6, itemsize: int = 4, channels: int = 1) -> tuple[np.ndarray, list[int]]:
    """Slabs of ``2 * halo + 1`` slices around up to ``n`` evenly spread slices of a volume.

    The BatchNorm statistics of a volume too large for memory are taken on these slabs.

    Parameters
    ----------
    read_raw : callable
        ``read_raw(z0, z1)`` gives the raw ``(C, z1 - z0, Y, X)`` block.
    shape : (Z, Y, X)
    halo : int
        The model's slice context ``h``.
    n : int
        Most slabs; fewer when they would take more than ``max_bytes`` (at ``itemsize`` bytes
        per voxel and ``channels`` channels), at least 2.

    Returns
    -------
    slabs : (C, m * (2h + 1), Y, X) ndarray
        Slices beyond the volume repeat its first / last slice (as in prediction).
    centres : list of int
        Index of each slab's middle slice in ``slabs``.
    """
    z_n = int(shape[0])
    w = 2 * int(halo) + 1
    zs = slab_slices(shape, halo, n=n, max_bytes=max_bytes, itemsize=itemsize, channels=channels)
    parts = []
    for z in zs:
        a, b = max(0, z - halo), min(z_n, z + halo + 1)
        block = np.asarray(read_raw(int(a), int(b)))
        idx = np.clip(np.arange(z - halo, z + halo + 1), a, b - 1) - a
        parts.append(block[:, idx])
    return np.concatenate(parts, axis=1), [i * w + int(halo) for i in range(len(zs))]


def adapt_statistics(ck: dict, images: np.ndarray, detectors: Sequence[str], *, alpha: float = AUTO_ALPHA,
                     n_batches: int = 100, batch_size: int = 8, patch: int = 80, seed: int = 0,
                     centres: Sequence[int] | None = None,
                     context: Mapping[int, np.ndarray] | None = None) -> tuple[dict, dict]:
    """:func:`seglearn.pretrain.adapt.adapt_bn` on a loaded checkpoint, in memory (on the CPU, whatever device predicts: about
    10 s on one core for the default 800 patches).

    Parameters
    ----------
    ck : dict
        A loaded ``kind: unet`` checkpoint (:func:`seglearn.ckpt.load_checkpoint`); not modified.
    images, detectors, alpha, n_batches, batch_size, patch, seed
        As in :func:`seglearn.pretrain.adapt.adapt_bn`.
    centres : sequence of int, optional
        Slices the patches are centred on (:func:`sample_patches`).
    context : mapping, optional
        Auto-context models: the forest channels around each centre (:func:`sample_patches`).

    Returns
    -------
    ck : dict
        A new checkpoint dict (``state_dict`` with the moved statistics; ``meta`` shared with the input's
        except ``meta.finetune`` / ``meta.adapt`` set by the caller).
    info : dict
        ``alpha``, ``patches``, ``patch``, ``shift``, ``seconds`` (see :func:`seglearn.pretrain.adapt.adapt_bn`).
    """
    from seglearn.segment.net import build_net

    t0 = time.perf_counter()
    meta = ck["meta"]
    if meta["net"].get("mode") == "3d":
        raise InputError("adapt_bn supports 2d / 2.5d models; this checkpoint is 3d")
    seg = segmenter_from_checkpoint(ck, device="cpu", bf16=False)
    net = build_net(meta["net"])
    net.load_state_dict({k[4:] if k.startswith("net.") else k: v for k, v in ck["state_dict"].items()})
    patches = sample_patches(seg, images, detectors, n=n_batches * batch_size, patch=patch, seed=seed,
                             centres=centres, context=context)
    state, shift = update_statistics(net, patches, alpha=alpha, n_batches=n_batches, batch_size=batch_size)
    info = {"alpha": alpha, "patches": n_batches * batch_size, "patch": min(patch, images.shape[-1]),
            "shift": shift, "seconds": round(time.perf_counter() - t0, 1)}
    return {**ck, "state_dict": state}, info


def update_statistics(net, patches: Iterator[np.ndarray], *, alpha: float, n_batches: int,
                      batch_size: int) -> tuple[dict, float]:
    """Re-estimate ``net``'s BatchNorm statistics on ``n_batches`` batches of ``patches`` (each ``(C, D, Y, X)``)
    and blend them with the stored ones: ``alpha * new + (1 - alpha) * old``.

    Returns the blended state dict and the mean shift of the running means in stored standard deviations.
    """
    import torch
    from torch.optim.swa_utils import update_bn

    stored = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    # one batch in memory at a time (all 800 default patches of a 3-channel 2.5D model would be ~430 MB)
    batches = (torch.from_numpy(np.stack([next(patches) for _ in range(batch_size)])) for _ in range(n_batches))
    with torch.no_grad():
        update_bn(batches, net)
    state = net.state_dict()
    shifts = []
    for k, old in stored.items():
        if k.endswith("running_mean"):
            var = stored[k[:-len("running_mean")] + "running_var"]
            shifts.append(float(((state[k] - old).abs() / var.clamp_min(1e-5).sqrt()).mean()))
        state[k] = alpha * state[k] + (1.0 - alpha) * old
    return state, round(float(np.mean(shifts)), 4) if shifts else 0.0


def parse_predict_adapt(setting) -> str | float:
    """``predict.py adapt=`` checked without a model: ``"auto"`` or the share in ``[0, 1]``."""
    text = str(setting).lower()
    if setting is None or text == "auto":
        return "auto"
    if setting is False or text in ("off", "false", "none"):
        return 0.0
    if setting is True or text in ("on", "true"):
        return AUTO_ALPHA
    try:
        a = float(setting)
    except (TypeError, ValueError):
        a = -1.0
    if not 0.0 <= a <= 1.0:
        raise InputError(f"adapt={setting!r}: expected auto, off, on or a number in [0, 1]")
    return a


def resolve_predict_alpha(setting, meta: dict, where: str = "checkpoint") -> float:
    """``alpha`` of ``predict.py adapt=``; 0 = no adaptation.

    ``auto`` / None: :data:`AUTO_ALPHA` for a base model (``meta.pretrain`` and no ``meta.finetune``,
    2D / 2.5D), else 0 (a fine-tuned model was adapted to its dataset already). ``off`` / ``false``: 0.
    ``true`` / ``on``: :data:`AUTO_ALPHA`; a number in ``[0, 1]``: that share. Asking for it on a 3D
    model or on one fine-tuned with frozen BatchNorm statistics is an error.
    """
    a = parse_predict_adapt(setting)
    if a == "auto":
        base = bool(meta.get("pretrain")) and not meta.get("finetune")
        return AUTO_ALPHA if base and meta["net"].get("mode") != "3d" else 0.0
    if a > 0 and meta["net"].get("mode") == "3d":
        raise InputError(f"{where}: adapt supports 2d / 2.5d models, this one is 3d; use adapt=off")
    if a > 0 and (meta.get("finetune") or {}).get("freeze_bn"):
        raise InputError(f"{where}: its BatchNorm statistics were kept frozen in fine-tuning (a new head), so "
                         f"moving them breaks it; use adapt=off")
    return a


def adapt_to_volume(ck: dict, read_raw, shape: Sequence[int], detectors: Sequence[str], setting="auto", *,
                    where: str = "checkpoint", seed: int = 0, fit_scale: bool = True,
                    noise_rule: Callable[[np.ndarray, dict], tuple[list, dict]] | None = None) -> tuple[dict, dict | None]:
    """Adapt a model to the volume it is about to predict, without labels.

    With ``fit_scale`` (the default) the volume's grey values are first mapped onto the model's scale
    (:func:`seglearn.io.intensity.fit_to_model`, whatever ``setting``: 16-bit or 0..1 float values
    would saturate or starve the network); a caller that did so already passes ``fit_scale=False``.
    Then, for a base model (zero-shot prediction), two things are fitted on the volume's images:

    1. with ``noise_rule``, the in-plane smoothing of noisy detectors: ``noise_rule(images, meta)``
       gives ``(sigma per detector, record)`` for the central slices of the slabs (the pretraining noise
       rule, :func:`seglearn.pretrain.adapt.zero_shot_noise_rule`, which compares them with the base
       model's phantoms); only for a base model without smoothing of its own that records its
       pretraining ranges;
    2. the BatchNorm statistics, moved ``alpha`` of the way to the volume's
       (:func:`adapt_statistics` on 800 patches of 80 px from slabs around up to 16 slices).

    Parameters
    ----------
    ck : dict
        A loaded ``kind: unet`` checkpoint; not modified.
    read_raw : callable
        ``read_raw(z0, z1)`` gives the raw ``(C, z1 - z0, Y, X)`` block, channels as ``detectors``.
    shape : (Z, Y, X)
    detectors : sequence of str
    setting
        ``predict.py adapt=`` (:func:`resolve_predict_alpha`).
    where : str
        Names the checkpoint in errors.
    noise_rule : callable, optional
        See step 1; None leaves the smoothing alone.

    Returns
    -------
    ck : dict
        The adapted checkpoint (the input itself when nothing was done).
    info : dict or None
        ``intensity`` (when the grey values were mapped), ``alpha``, ``smooth`` (sigma per detector, px),
        the noise measurement, the BatchNorm ``shift`` and ``seconds``; None when nothing was done.
    """
    alpha = resolve_predict_alpha(setting, ck["meta"], where)
    info: dict = {}
    if fit_scale:
        ck, record = fit_to_model(ck, read_raw, shape, detectors, where=where)
        if record["map"] != "identity":
            info["intensity"] = record
    if alpha <= 0:
        return ck, (info or None)
    meta = ck["meta"]
    t0 = time.perf_counter()
    seg = segmenter_from_checkpoint(ck, device="cpu", bf16=False)
    halo = int(seg.net.halo)
    slabs, centres = read_slabs(read_raw, shape, halo, channels=len(detectors))
    context = None
    if seg.context is not None:  # auto-context: the forest channels of the same slabs, from the whole volume
        order = seg.channel_order(detectors)  # the forest reads the model's detectors in its own order
        context = volume_context(seg, lambda a, b: np.asarray(read_raw(a, b))[order], int(shape[0]),
                                 slab_slices(shape, halo, channels=len(detectors)), index=centres)
    meta = copy.deepcopy(meta)
    info.update(alpha=alpha, slabs=len(centres))
    own = (meta.get("normalisation") or {}).get("smooth")
    if noise_rule is not None and not meta.get("finetune") and meta.get("pretrain") and not any(own or []):
        sigma, info["denoise"] = noise_rule(slabs[:, centres], meta)
        if any(sigma):
            meta.setdefault("normalisation", {})["smooth"] = sigma
        info["smooth"] = sigma
    new, stats = adapt_statistics({**ck, "meta": meta}, slabs, detectors, alpha=alpha, seed=seed, centres=centres,
                                  context=context)
    info.update(patches=stats["patches"], patch=stats["patch"], shift=stats["shift"],
                seconds=round(time.perf_counter() - t0, 1))
    meta["adapt"] = info
    log.info("adapted %s to this volume without labels: in-plane smoothing %s px, BatchNorm statistics moved "
             "%.0f %% of the way (mean shift %.3f std), %.0f s (adapt=off turns it off)", where,
             info.get("smooth", own or "none"), 100 * alpha, info["shift"], info["seconds"])
    return new, info


def adapt_for_prediction(ck: dict, read_raw, shape: Sequence[int], detectors: Sequence[str], setting="auto", *,
                         where: str, ckpt_name: str, noise_rule=None) -> tuple[dict, dict | None, dict]:
    """What ``predict.py`` does before predicting: the checkpoint put on this volume's grey scale
    (:func:`seglearn.io.intensity.fit_to_model`, ``where`` names the input) and adapted to it
    (:func:`adapt_to_volume`, ``ckpt_name`` names the checkpoint).

    Returns
    -------
    ck : dict
        The checkpoint to predict with (the input itself when nothing changed).
    info : dict or None
        :func:`adapt_to_volume`'s record.
    intensity : dict
        The grey-scale record (``map`` ``identity`` when the values were used as they are).
    """
    ck, intensity = fit_to_model(ck, read_raw, shape, detectors, where=where)
    adapted, info = adapt_to_volume(ck, read_raw, shape, detectors, setting, where=ckpt_name, fit_scale=False,
                                    noise_rule=noise_rule)
    return adapted, info, intensity

