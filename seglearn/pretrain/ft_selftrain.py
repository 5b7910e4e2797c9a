"""Self-training's pseudo-labels from a finished first fine-tuning round (``finetune.selftrain: auto``).

The first round's final network (BatchNorm statistics adapted) and a forest fitted on the same fitting
scribbles (the blend's forest config, *not* on the held-out validation scribbles) predict
``selftrain_slices`` slices spread over the volume away from every scribbled slice; where they agree with
confidence the voxels become pseudo-labels (:func:`seglearn.pretrain.selftrain.choose_pseudo_labels`) for
the second round, which :mod:`seglearn.pretrain.finetune` runs with the same Lightning loop
(:class:`~seglearn.pretrain.ft_lit.MixedBatches` with pseudo-labels).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from seglearn.ckpt import load_checkpoint
from seglearn.errors import InputError
from seglearn.features.stack import FeatureStack
from seglearn.pretrain.ft_final import finish
from seglearn.pretrain.blend import _cpus, _net_proba, fit_forest, forest_config
from seglearn.pretrain.selftrain import choose_pseudo_labels, pseudo_slices

log = logging.getLogger("seglearn")


def check_mode(mode) -> str:
    """``auto`` or ``off`` (booleans as YAML reads ``on`` / ``off``)."""
    m = {True: "auto", False: "off"}.get(mode, mode)
    if m not in ("auto", "off"):
        raise InputError(f"finetune.selftrain={mode!r}: expected auto or off")
    return str(m)


def forest_proba(raw: np.ndarray, names, fit_labels: np.ndarray, zs, s: Mapping, *, voxel_size_nm=None) -> np.ndarray:
    """Class probabilities ``(K, len(zs), Y, X)`` of the blend's forest fitted on ``fit_labels`` (``1..K``)."""
    threads, seed = int(s["threads"] or 0) or _cpus(), int(s["seed"])
    cfg = forest_config(str(s["blend_forest"]), names, s.get("blend_trees"))
    clf = fit_forest(raw, names, fit_labels, cfg, voxel_size_nm=voxel_size_nm, seed=seed, threads=threads)
    k = int(fit_labels.max())
    stack = FeatureStack(raw, names, cfg["features"], voxel_size_nm)
    out = np.zeros((k, len(zs), *raw.shape[2:]), np.float32)
    cols = np.asarray(clf.classes_, np.int64) - 1
    for i, z in enumerate(zs):
        p = clf.predict_proba(stack.compute_samples(z, z + 1))  # (Y * X, classes present)
        out[cols, i] = p.T.reshape(len(cols), *raw.shape[2:])
    return out


def pseudo_labels(ckpt: str | Path, setup, s: Mapping, *, voxel_size_nm=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pseudo-labels of the finished checkpoint ``ckpt`` and the forest, on slices away from the scribbles.

    Parameters
    ----------
    ckpt : path-like
        The first round's final checkpoint (its network is used, not its stored blend).
    setup : :class:`~seglearn.pretrain.ft_setup.Setup`
        The first round's set-up (``raw``, ``names``, ``fit_labels``, ``extra["train"]``).
    s : mapping
        Fine-tuning settings (``selftrain_*``, ``blend_forest``, ``blend_trees``, ``seed``, ``threads``).

    Returns
    -------
    labels : (Z, Y, X) uint8
        Pseudo-labels ``1..K`` (0 = none; never on a scribbled slice, nor within ``setup.halo`` slices of a
        validation slice).
    weights : (Z, Y, X) float32
    record : dict
        Slices, per-class counts and seconds (for ``finetune_summary.json``).
    """
    t0 = time.perf_counter()
    train = np.asarray(setup.extra["train"])
    n_z = train.shape[0]
    scribbled = [int(z) for z in np.unique(np.nonzero(train)[0])]
    # never on a validation slice nor within the network's slice context of one: with labels/test.tif the dense
    # test slice scores the result, so training on its image (even with pseudo-labels) would score the method
    # on a slice it has fitted
    near_val = [z + d for z in setup.val_z for d in range(-setup.halo, setup.halo + 1)]
    zs = pseudo_slices(n_z, int(s["selftrain_slices"]), exclude=scribbled + near_val)
    labels = np.zeros(train.shape, np.uint8)
    weights = np.zeros(train.shape, np.float32)
    if not zs:
        return labels, weights, {"slices": [], "kept": [], "seconds": 0.0}
    p_net = _net_proba(ckpt, setup.raw, setup.names, zs)
    k = p_net.shape[0]
    if int(setup.fit_labels.max()) < k:  # a class without fitting scribbles: the forest cannot name it
        p_f = forest_proba(setup.raw, setup.names, setup.fit_labels, zs, s, voxel_size_nm=voxel_size_nm)
        p_forest = np.zeros_like(p_net)
        p_forest[:p_f.shape[0]] = p_f
    else:
        p_forest = forest_proba(setup.raw, setup.names, setup.fit_labels, zs, s, voxel_size_nm=voxel_size_nm)
    lab, w, rec = choose_pseudo_labels(p_net, p_forest, train[zs], threshold=float(s["selftrain_threshold"]),
                                       ratio=float(s["selftrain_ratio"]), boundary_px=int(s["selftrain_boundary_px"]),
                                       boundary_weight=float(s["selftrain_boundary_weight"]),
                                       weight=float(s["selftrain_weight"]), seed=int(s["seed"]))
    labels[zs], weights[zs] = lab, w
    rec.update(slices=zs, seconds=round(time.perf_counter() - t0, 1))
    log.info("self-training: %d pseudo-labelled voxels on %d slices (per class %s; %d near agreed boundaries; "
             "net and forest agree on %.1f %%), %.0f s", int((labels > 0).sum()), len(zs), rec["kept"],
             rec["near_boundary"], 100 * rec["agree"], rec["seconds"])
    return labels, weights, rec


def second_round(fit_run: Callable, ck: dict, init, images, detectors, train, out_dir: Path, s: Mapping, setup,
                 t0: float, source: str, args: Mapping) -> dict:
    """Self-training's second round on ``out_dir/best.ckpt`` (the finished first round): pseudo-labels, one run
    of ``fit_run`` (:func:`seglearn.pretrain.finetune.fit_run`) in ``out_dir/selftrain`` from the first round's
    weights, then finished again into ``out_dir/best.ckpt`` (with ``selftrain_keep: best``, kept as it was when
    the second round's best is its step 0). ``t0``: the fine-tuning's start (``max_minutes`` counts from it).
    Returns the summary keys it changes."""
    ckpt = out_dir / "best.ckpt"
    first = out_dir / "selftrain" / "round1.ckpt"
    first.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ckpt, first)
    labels, weights, rec = pseudo_labels(ckpt, setup, s, voxel_size_nm=args["voxel_size_nm"])
    out = {"mode": "auto", "pseudo": rec, "round1": str(first)}
    if not (labels > 0).any():
        log.info("self-training: no pseudo-label chosen; the first round's model stays")
        return {"selftrain": {**out, "kept": "round 1 (no pseudo-label)"}}
    left = float(s["max_minutes"]) * 60.0 - (time.perf_counter() - t0)
    floor = 0.25 * float(s["selftrain_share"]) * float(s["max_minutes"]) * 60.0
    last = str(s["selftrain_keep"]) == "last"
    s2 = {**s, "runs": 1, "max_minutes": max(left, floor) / 60.0, "distill": float(s["selftrain_distill"]),
          "keep_best": not last, "patience": 0 if last else s["patience"],
          "synth_fraction": float(s["selftrain_synth_fraction"])}
    start = load_checkpoint(ckpt, kind="unet")["state_dict"]
    hook = args.get("on_step")
    if hook is not None:  # the caller's progress hook sees the second round as such
        args = {**args, "on_step": lambda info: hook({**info, "round": 2})}
    res, st = fit_run(ck, init, images, detectors, train, out_dir / "selftrain", s2, start=start,
                      pseudo=(labels, weights, float(s["selftrain_patches"])), **args)
    out["round2"] = {k: res[k] for k in ("steps", "best_step", "best_val_awe", "val_awe_zero_shot", "seconds")}
    if res["best_step"] == 0 and not last:
        log.info("self-training: the held-out scribbles never preferred the second round; round 1's model stays")
        return {"selftrain": {**out, "kept": "round 1"}}
    shutil.copyfile(res["best_ckpt"], ckpt)
    done = finish(ckpt, st.raw, st.names, s, train=st.extra["train"], fit_labels=st.fit_labels,
                  val_labels=st.val_labels, val_source=source, scribbles=st.val_scribbles, judge_ckpt=Path(res["best_ckpt"]),
                  frozen=st.freeze_bn, stopped=False, voxel_size_nm=args["voxel_size_nm"])
    return {**done, "best_val_awe": res["best_val_awe"], "steps_round2": res["steps"],
            "selftrain": {**out, "kept": "round 2"}}
