"""The last steps of fine-tuning, on the model that is written: BatchNorm statistics, forest blend, temperature.

Order (:func:`finish`): the network is final (one run, or the soup of several) -> ``adapt_bn`` moves its
BatchNorm statistics towards the dataset's -> the forest blend is fitted and its weight ``w`` judged ->
the softmax temperature ``T`` is fitted last, on the final network and on the probabilities the
:class:`~seglearn.segment.api.Segmenter` returns: ``w * softmax(logits / T) + (1 - w) * P_forest``
(the Segmenter divides the network's logits by ``T`` and then blends). ``T`` is fitted on the
validation labels (held-out scribbles, or ``labels/test.tif``) with the judging forest's probabilities
(fitted without them), so neither member has seen the labels ``T`` is fitted on, except that in a
soup of several runs the runs after the first trained on part of the first run's held-out scribbles.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.pretrain.adapt import adapt_bn, resolve_alpha
from seglearn.pretrain.autocontext import adapt_bn_inputs
from seglearn.pretrain.blend import attach as attach_blend
from seglearn.pretrain.rules import predict_slices
from seglearn.segment.api import segmenter_from_checkpoint
from seglearn.segment.calibrate import T_BOUNDS, expected_calibration_error, fit_temperature, softmax, temperature_bounds

log = logging.getLogger("seglearn")


def adapt(ckpt: Path, raw: np.ndarray, names: Sequence[str], s: Mapping, *, frozen: bool) -> dict | None:
    """``adapt_bn`` of the settings ``s`` applied to the written checkpoint (None when off)."""
    alpha = resolve_alpha(s["adapt_bn"], frozen)
    if alpha <= 0:
        return None
    return adapt_bn(ckpt, raw, names, alpha=alpha, patch=int(s["patch"]), seed=int(s["seed"]))


def _blend_nll(z: np.ndarray, y: np.ndarray, t: float, w: float, pf: np.ndarray) -> float:
    p = w * softmax(z / t, axis=1) + (1.0 - w) * pf
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def blend_temperature(logits: np.ndarray, labels: np.ndarray, *, weight: float = 1.0,
                      p_forest: np.ndarray | None = None, bounds=T_BOUNDS, max_voxels: int = 200_000,
                      seed: int = 0) -> float:
    """``T`` minimising the NLL of ``weight * softmax(logits / T) + (1 - weight) * p_forest`` on the labelled voxels.

    Parameters
    ----------
    logits : (N, K, Y, X) ndarray
        The network's logits on ``N`` slices.
    labels : (N, Y, X) ndarray
        Ids ``1..K``; 0 = unlabelled.
    weight : float
        The blend's network weight ``w`` (1 = the network alone: :func:`seglearn.segment.calibrate.fit_temperature`).
    p_forest : (N, K, Y, X) ndarray, optional
        The forest's probabilities (needed when ``weight < 1``).
    bounds : (float, float)
        The search interval of ``T`` (:func:`seglearn.segment.calibrate.temperature_bounds`).
    """
    if weight >= 1.0 or p_forest is None:
        return fit_temperature(logits, labels, axis=1, probs=False, bounds=bounds, max_voxels=max_voxels, seed=seed)
    m = np.asarray(labels) > 0
    if m.sum() < 10:
        return 1.0
    z = np.moveaxis(np.asarray(logits, np.float64), 1, -1)[m]
    pf = np.moveaxis(np.asarray(p_forest, np.float64), 1, -1)[m]
    y = np.asarray(labels)[m].astype(np.int64) - 1
    if len(y) > max_voxels:
        pick = np.random.default_rng(seed).choice(len(y), max_voxels, replace=False)
        z, pf, y = z[pick], pf[pick], y[pick]
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(lambda a: _blend_nll(z, y, float(np.exp(a)), float(weight), pf), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.clip(np.exp(res.x), *bounds))


def calibrate(ckpt: Path, raw: np.ndarray, val_labels: np.ndarray, source: str, *, scribbles: bool,
              p_forest: np.ndarray | None = None, seed: int = 0, x: np.ndarray | None = None) -> dict:
    """Fit ``T`` on the final checkpoint ``ckpt`` (network as the Segmenter prepares it, blend as stored) and
    write it to ``meta["calibration"]`` (rewritten atomically); returns that record.

    ``p_forest``: the judging forest's ``(K, len(val_z), Y, X)`` probabilities on the validation slices
    (:func:`seglearn.pretrain.blend.attach`'s ``keep``), needed when the checkpoint blends a forest.
    ``x``: the network's prepared inputs (auto-context), else prepared from ``raw``. ``scribbles``: whether
    ``val_labels`` are held-out scribbles (``T`` then kept >= 1, :func:`seglearn.segment.calibrate.temperature_bounds`)
    rather than the dense test labels; ``source`` describes them in the record.
    """
    ck = load_checkpoint(ckpt, kind="unet")
    seg = segmenter_from_checkpoint(ck, device="cpu")
    halo = int(seg.meta["net"].get("context", 0)) if seg.mode == "2.5d" else 0
    val_z = [int(z) for z in np.unique(np.nonzero(val_labels)[0])]
    logits = predict_slices(seg.net, seg.prepare(raw) if x is None else x, val_z, halo, bf16=seg.bf16)  # (n, K, Y, X)
    lab = val_labels[val_z]
    w = float((ck["meta"].get("blend") or {}).get("weight", 1.0)) if ck.get("blend") is not None else 1.0
    pf = None if w >= 1.0 or p_forest is None else np.asarray(p_forest).transpose(1, 0, 2, 3)
    if w < 1.0 and pf is None:
        w = 1.0  # no judging forest at hand: the network's own temperature
    t = blend_temperature(logits, lab, weight=w, p_forest=pf, bounds=temperature_bounds(scribbles), seed=seed)

    def final(temp: float) -> np.ndarray:
        p = softmax(logits.astype(np.float64) / temp, axis=1)
        return p if pf is None else w * p + (1.0 - w) * pf

    rec = {"temperature": round(t, 4), "ece_before": round(expected_calibration_error(final(1.0), lab, axis=1), 5),
           "ece_after": round(expected_calibration_error(final(t), lab, axis=1), 5), "n_voxels": int((lab > 0).sum()),
           "source": source, "fitted_on": "the final model" + (f" blended with the forest (w={w:g})" if pf is not None
                                                               else " (network alone)")}
    meta = dict(ck["meta"])
    meta["calibration"] = rec
    save_checkpoint(ckpt, kind="unet", state_dict=ck["state_dict"], meta=meta, blend=ck.get("blend"), overwrite=True)
    log.info("temperature %.3f fitted on the final model (%s; ECE %.4f -> %.4f on %d voxels)", t, rec["fitted_on"],
             rec["ece_before"], rec["ece_after"], rec["n_voxels"])
    return rec


def finish(ckpt: Path, raw: np.ndarray, names: Sequence[str], s: Mapping, *, train: np.ndarray, fit_labels: np.ndarray,
           val_labels: np.ndarray, val_source: str, scribbles: bool, judge_ckpt: Path, frozen: bool, stopped: bool,
           voxel_size_nm=None, context=None) -> dict:
    """``adapt_bn``, then the blend (judged by ``judge_ckpt`` on ``val_labels``; not after a stop by the
    caller), then the temperature, all applied to the final checkpoint ``ckpt``.

    ``context``: ``(x, centres)`` with auto-context (:mod:`seglearn.pretrain.autocontext`): the networks'
    prepared inputs (out-of-fold forest channels on the scribbled slices) and the slices ``adapt_bn`` samples.

    Returns
    -------
    dict
        ``adapt_bn``, ``blend`` (records or None) and ``calibration``.
    """
    x = None if context is None else context[0]
    if context is None:
        adapted = adapt(ckpt, raw, names, s, frozen=frozen)
    else:
        alpha = resolve_alpha(s["adapt_bn"], frozen)
        adapted = None if alpha <= 0 else adapt_bn_inputs(ckpt, x, context[1], alpha=alpha, patch=int(s["patch"]),
                                                          seed=int(s["seed"]))
    keep: dict = {}
    blended = None if stopped else attach_blend(ckpt, raw, names, train, fit_labels=fit_labels, val_labels=val_labels,
                                                judge_ckpt=judge_ckpt, settings=s, voxel_size_nm=voxel_size_nm,
                                                keep=keep, x=x)
    cal = calibrate(ckpt, raw, val_labels, val_source, scribbles=scribbles, p_forest=keep.get("p_forest"),
                    seed=int(s["seed"]), x=x)
    return {"adapt_bn": adapted, "blend": blended, "calibration": cal}
