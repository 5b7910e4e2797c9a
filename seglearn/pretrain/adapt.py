"""Adapting a model to the volume it will segment, from the volume's images alone.

- After fine-tuning: :func:`adapt_bn` moves the BatchNorm statistics towards the dataset's.
- Before zero-shot prediction (``predict.py adapt=auto``): :func:`adapt_to_volume` also chooses the
  in-plane smoothing of noisy data, with the fine-tuning noise rule and no labels.

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
from pathlib import Path
from typing import Sequence

import numpy as np

from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.errors import InputError
from seglearn.pretrain.noise import choose_smoothing, describe, reference_noise, relative_noise_unlabelled
from seglearn.segment import adapt as segment_adapt
from seglearn.segment.adapt import (  # noqa: F401  (the inference side, re-exported for fine-tuning)
    AUTO_ALPHA,
    adapt_statistics,
    parse_predict_adapt,
    read_slabs,
    resolve_predict_alpha,
    sample_patches,
)

log = logging.getLogger("seglearn")



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
    ck = load_checkpoint(ckpt, kind="unet")
    if ck["meta"]["net"].get("mode") == "3d":
        raise InputError(f"{ckpt}: adapt_bn supports 2d / 2.5d models, this one is 3d")
    new, info = adapt_statistics(ck, images, detectors, alpha=alpha, n_batches=n_batches, batch_size=batch_size,
                                 patch=patch, seed=seed)
    state, meta = new["state_dict"], ck["meta"]
    meta.setdefault("finetune", {})["adapt_bn"] = info
    save_checkpoint(ckpt, kind="unet", state_dict=state, meta=meta, overwrite=True)
    log.info("BatchNorm statistics moved %.0f %% of the way to the dataset's (%d patches of %d px; mean shift "
             "%.3f std) in %.0f s", 100 * alpha, info["patches"], info["patch"], info["shift"], info["seconds"])
    return info


def zero_shot_noise_rule(images: np.ndarray, meta: dict) -> tuple[list[float], dict]:
    """The fine-tuning noise rule without labels, for :func:`seglearn.segment.adapt.adapt_to_volume`.

    Multi-Otsu classes stand in for scribbles (:func:`~seglearn.pretrain.noise.relative_noise_unlabelled`):
    a detector noisier than 90 % of the base model's phantoms is smoothed in-plane down to their median.

    Parameters
    ----------
    images : (C, z, Y, X) ndarray
        Raw slices of the volume, channels as the model's detectors.
    meta : dict
        The base model's metadata (``detectors``, ``classes``, ``pretrain``).

    Returns
    -------
    sigma : list of float
        In-plane Gaussian sigma per detector (px), 0 = none.
    record : dict
        The measurement (:func:`~seglearn.pretrain.noise.describe`).
    """
    k = len(meta["classes"])
    rel = relative_noise_unlabelled(images, classes=k)
    ref = reference_noise(meta["detectors"], meta["pretrain"], labelled=False, classes=k)
    return choose_smoothing(rel, ref), describe(rel, ref)


def adapt_to_volume(ck: dict, read_raw, shape: Sequence[int], detectors: Sequence[str], setting="auto", *,
                    where: str = "checkpoint", seed: int = 0, fit_scale: bool = True) -> tuple[dict, dict | None]:
    """:func:`seglearn.segment.adapt.adapt_to_volume` with the pretraining noise rule (:func:`zero_shot_noise_rule`)."""
    return segment_adapt.adapt_to_volume(ck, read_raw, shape, detectors, setting, where=where, seed=seed,
                                         fit_scale=fit_scale, noise_rule=zero_shot_noise_rule)
