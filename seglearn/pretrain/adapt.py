"""Moving a fine-tuned model's BatchNorm statistics towards the dataset it will segment.

Fine-tuning with the base head kept trains on batches that are half synthetic phantom patches and
half the user's patches, so the running BatchNorm statistics it ends with describe that mixture,
not the user's volume. :func:`adapt_bn` recomputes the statistics on random patches of the user's
own volume (images only: no label is read) and moves the stored ones part of the way there:
``running = alpha * dataset + (1 - alpha) * stored`` for every mean and variance. This is AdaBN
(Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"), partial as in
Schneider et al. 2020 ("Improving robustness against common corruptions by covariate shift
adaptation"), which mixes the source and target statistics.

The default ``alpha`` is 0.5 (docs/bench_pretrain.md, "BatchNorm statistics adapted to the
dataset"). A model fine-tuned with frozen statistics (``freeze_bn``, the default with a new head)
is left alone: its weights were fitted under the base model's statistics.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

#: share of the way from the stored statistics to the dataset's (``adapt_bn: auto``)
AUTO_ALPHA = 0.5


def resolve_alpha(setting, frozen: bool) -> float:
    """``alpha`` of an ``adapt_bn`` setting: ``auto`` (:data:`AUTO_ALPHA`, 0 when the BatchNorm
    statistics were frozen during fine-tuning), ``off`` / ``false`` (0) or a number in ``[0, 1]``."""
    if setting is None or setting is False or str(setting).lower() in ("off", "false", "none"):
        return 0.0
    if str(setting).lower() == "auto":
        return 0.0 if frozen else AUTO_ALPHA
    try:
        a = float(setting)
    except (TypeError, ValueError):
        raise InputError(f"finetune adapt_bn={setting!r}: expected auto, off or a number in [0, 1]") from None
    if not 0.0 <= a <= 1.0:
        raise InputError(f"finetune adapt_bn={setting!r}: expected auto, off or a number in [0, 1]")
    return a


def sample_patches(seg, images: np.ndarray, detectors: Sequence[str], *, n: int, patch: int,
                   seed: int = 0) -> Iterator[np.ndarray]:
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

    Yields
    ------
    (C', 2h + 1, py, px) float32 ndarray
        ``C'`` the model's channels, ``h`` its slice context.
    """
    order = seg.channel_order(detectors)
    _, z_n, y_n, x_n = images.shape
    py, px = min(patch, y_n), min(patch, x_n)
    h = int(seg.net.halo)
    margin = int(math.ceil(4 * max([0.0, *(seg.smooth or [])])))  # the in-plane smoothing's reach
    rng = np.random.default_rng(seed)
    for _ in range(n):
        z = int(rng.integers(z_n))
        y0, x0 = int(rng.integers(y_n - py + 1)), int(rng.integers(x_n - px + 1))
        a, b = max(0, y0 - margin), min(y_n, y0 + py + margin)
        c, d = max(0, x0 - margin), min(x_n, x0 + px + margin)
        zi = np.clip(np.arange(z - h, z + h + 1), 0, z_n - 1)
        raw = np.stack([np.asarray(images[i])[zi, a:b, c:d] for i in order])
        x = seg.prepare(raw)[:, :, y0 - a:y0 - a + py, x0 - c:x0 - c + px]
        yield np.ascontiguousarray(x, dtype=np.float32)


def adapt_bn(ckpt: str | Path, images: np.ndarray, detectors: Sequence[str], *, alpha: float = AUTO_ALPHA,
             n_batches: int = 100, batch_size: int = 8, patch: int = 80, seed: int = 0) -> dict:
    """Move the BatchNorm statistics of the U-Net checkpoint ``ckpt`` towards ``images``; rewrites it.

    Parameters
    ----------
    ckpt : path-like
        A ``kind: unet`` checkpoint (2D / 2.5D), rewritten atomically; ``meta.finetune.adapt_bn``
        records what was done.
    images : (C, Z, Y, X) ndarray
        The dataset's raw images (as given to fine-tuning: preprocessing already applied).
    detectors : sequence of str
        Names of the channels of ``images``.
    alpha : float
        0 leaves the statistics as they are, 1 replaces them by the dataset's.
    n_batches, batch_size, patch : int
        The dataset's statistics are averaged over ``n_batches`` batches of ``batch_size`` random
        patches of ``patch`` px (the network in training mode, no gradient).

    Returns
    -------
    dict
        ``alpha``, ``patches``, ``patch``, ``seconds`` and ``shift`` (mean over the BatchNorm
        layers of ``|dataset mean - stored mean| / sqrt(stored var)``, before the update).
    """
    import torch
    from torch.optim.swa_utils import update_bn

    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.segment.api import load_segmenter
    from seglearn.segment.net import build_net

    t0 = time.perf_counter()
    ck = load_checkpoint(ckpt, kind="unet")
    meta = ck["meta"]
    if meta["net"].get("mode") == "3d":
        raise InputError(f"{ckpt}: adapt_bn supports 2d / 2.5d models, this one is 3d")
    seg = load_segmenter(ckpt, device="cpu", bf16=False)
    net = build_net(meta["net"])
    net.load_state_dict(ck["state_dict"])
    stored = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    patches = sample_patches(seg, images, detectors, n=n_batches * batch_size, patch=patch, seed=seed)
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
    info = {"alpha": alpha, "patches": n_batches * batch_size, "patch": min(patch, images.shape[-1]),
            "shift": round(float(np.mean(shifts)), 4) if shifts else 0.0,
            "seconds": round(time.perf_counter() - t0, 1)}
    meta.setdefault("finetune", {})["adapt_bn"] = info
    save_checkpoint(ckpt, kind="unet", state_dict=state, meta=meta, overwrite=True)
    log.info("BatchNorm statistics moved %.0f %% of the way to the dataset's (%d patches of %d px; mean shift "
             "%.3f std) in %.0f s", 100 * alpha, info["patches"], info["patch"], info["shift"], info["seconds"])
    return info
