"""Never lose to the forest: blend a fine-tuned network with the tailored forest fitted on the same scribbles.

After fine-tuning (``finetune.blend: auto``, the default) the project's tailored random forest
(``configs/method/rf_tailored.yaml``, its features restricted to the detectors present) is fitted on
the same training scribbles, and the prediction becomes the per-voxel blend
``w * P_net + (1 - w) * P_forest`` with ``w`` from ``blend_weights``.

``w`` is chosen on labels **neither model saw**: the held-out scribbles of the first fine-tuning
run (whose network never trained on them) against a second forest fitted without them (or the
dense validation labels ``labels/test.tif`` when the dataset has them). Held-out scribbles sit
inside regions, where both models are nearly always right; the judge (:func:`choose_weight`)
therefore weighs every class equally (a rare class counts as much as the matrix) and breaks
near-ties by a proper score of the blended probabilities (the log-loss), which still separates
models that both classify the interior right.

The checkpoint carries the packed forest as plain tensors (top-level ``blend`` entry; no pickle)
and ``meta["blend"]`` (weight, feature spec, evidence); :class:`Blend` recomputes the forest's
probabilities block by block (with the features' z-halo) wherever the network predicts
(:meth:`seglearn.segment.api.Segmenter.iter_proba`; :mod:`seglearn.segment.blend`). With ``w = 1``
nothing is stored.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seglearn.baselines.forest_engine import pack_forest
from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.errors import InputError
from seglearn.features.stack import FeatureStack, training_samples
from seglearn.paths import config_file, load_config
from seglearn.pretrain.rules import predict_slices
from seglearn.segment import forest_pack
from seglearn.segment.api import segmenter_from_checkpoint
from seglearn.segment.blend import Blend, _cpus, from_checkpoint, z_halo  # noqa: F401  (the inference side)

log = logging.getLogger("seglearn")

CONFIG = config_file("finetune/default.yaml")
KEYS = ("blend", "blend_weights", "blend_forest", "blend_trees", "blend_tol")
#: forest settings that are not RandomForestClassifier arguments nor the feature spec
_NOT_FOREST = ("impl", "features", "engine", "max_chunk_mb", "voxel_size_nm", "n_jobs", "seed", "max_samples")


def defaults() -> dict:
    """The blend settings of ``configs/finetune/default.yaml`` (their one home)."""
    cfg = load_config("finetune/default.yaml")
    return {k: cfg[k] for k in KEYS}


def check_mode(mode) -> str:
    """``auto`` or ``off`` (booleans as YAML reads ``on`` / ``off``)."""
    m = {True: "auto", False: "off"}.get(mode, mode)
    if m not in ("auto", "off"):
        raise InputError(f"finetune.blend={mode!r}: expected auto or off")
    return str(m)


# ----------------------------------------------------------------------------------- the forest
def forest_config(name: str, detectors: Sequence[str], trees=None) -> dict:
    """The forest method config ``configs/method/NAME.yaml``, its feature inputs restricted to ``detectors``.

    Returns
    -------
    dict
        ``features`` (the spec), ``params`` (RandomForestClassifier arguments), ``max_chunk_mb``.
    """
    import yaml

    path = config_file(f"method/{name}.yaml")
    if not path.exists():
        raise InputError(f"finetune.blend_forest={name!r}: {path} does not exist")
    cfg = yaml.safe_load(path.read_text())
    if cfg.get("impl") != "random_forest":
        raise InputError(f"finetune.blend_forest={name!r}: {path} is not a random_forest method")

    def present(names):
        return [n for n in names if all(p in detectors for p in ([n] if n in detectors else n.split("-", 1)))]

    spec = copy.deepcopy(cfg["features"])
    spec["inputs"] = present(spec.get("inputs") or list(detectors))
    if spec.get("zevolution"):
        spec["zevolution"]["inputs"] = present(spec["zevolution"].get("inputs") or spec["inputs"])
    if not spec["inputs"]:
        raise InputError(f"finetune.blend_forest={name!r}: none of its inputs exist with detectors {list(detectors)}")
    params = {k: v for k, v in cfg.items() if k not in _NOT_FOREST}
    if trees is not None:
        params["n_estimators"] = int(trees)
    return {"features": spec, "params": params, "max_chunk_mb": float(cfg["max_chunk_mb"])}


def _fit(x: np.ndarray, y: np.ndarray, config: Mapping, *, seed: int, threads: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**config["params"], n_jobs=max(int(threads), 1), random_state=seed).fit(x, y)


def fit_forest(raw: np.ndarray, detectors: Sequence[str], labels: np.ndarray, config: Mapping, *, voxel_size_nm=None,
               seed: int = 0, threads: int = 1):
    """A ``RandomForestClassifier`` fitted on the features (:func:`forest_config`) of the labelled voxels."""
    stack = FeatureStack(raw, detectors, config["features"], voxel_size_nm)
    x, y = training_samples(stack, labels, max_chunk_mb=config["max_chunk_mb"])
    return _fit(x, y, config, seed=seed, threads=threads)


def pack(clf, n_classes: int) -> dict[str, np.ndarray]:
    """The trees of a fitted forest as arrays (:mod:`seglearn.segment.forest_pack`); ``leaf_value`` columns are the classes ``1..n_classes``.

    Returns
    -------
    dict of str to ndarray
        ``feature``, ``threshold``, ``left``, ``right``, ``leaf_row`` (nodes,), ``roots`` (trees,),
        ``leaf_value`` (leaves, n_classes) float32. A leaf loops onto itself (``left = right = node``).
    """
    p = pack_forest(clf)
    value = np.zeros((len(p.leaf_value), n_classes), np.float32)
    value[:, np.asarray(p.classes, np.int64) - 1] = p.leaf_value
    return {"feature": p.nodes["f"].astype(np.int32), "threshold": p.nodes["t"].astype(np.float32),
            "left": p.nodes["l"].astype(np.int32), "right": p.nodes["r"].astype(np.int32),
            "leaf_row": p.leaf_row.astype(np.int32), "roots": p.roots.astype(np.int32), "leaf_value": value}



# ----------------------------------------------------------------------------------- choosing w
def judge_weights(labels: np.ndarray) -> np.ndarray:
    """Weight of every scored voxel: the voxels of each present class sum to ``1 / n_present``.

    Parameters
    ----------
    labels : (Z, Y, X) int
        Scored labels ``1..K`` (0 = not scored).

    Returns
    -------
    (Z, Y, X) float64
        0 where ``labels`` is 0.
    """
    w = np.zeros(labels.shape, np.float64)
    present = [c for c in np.unique(labels) if c > 0]
    for c in present:
        sel = labels == c
        w[sel] = 1.0 / (sel.sum() * len(present))
    return w


def choose_weight(p_net: np.ndarray, p_forest: np.ndarray, labels: np.ndarray, weights: Sequence[float], *,
                  tol: float = 0.2) -> dict:
    """The network weight ``w`` of ``w * p_net + (1 - w) * p_forest`` that scores best on ``labels``.

    The score of a blend is its error with every class weighted the same (:func:`judge_weights`; a
    rare class counts as much as the matrix); blends within ``tol`` of the lowest error are
    told apart by their weighted log-loss (a proper score: it still separates two models that
    both classify every held-out voxel right), the lowest wins. ``tol`` is in percentage points.

    Parameters
    ----------
    p_net, p_forest : (K, Z, Y, X) float
        Class probabilities of the two models on the scored slices.
    labels : (Z, Y, X) int
        Labels ``1..K`` neither model was fitted on (0 = not scored).
    weights : sequence of float
        Candidate ``w`` in [0, 1].

    Returns
    -------
    dict
        ``weight`` (the choice), ``scores``: per candidate ``{"w", "error", "logloss"}`` (weighted,
        percent and nats), ``voxels`` scored.
    """
    if p_net.shape != p_forest.shape or p_net.shape[1:] != labels.shape:
        raise InputError(f"choose_weight: probabilities {p_net.shape} / {p_forest.shape} and labels {labels.shape} "
                         f"do not agree")
    if not (labels > 0).any():
        raise InputError("choose_weight: no scored voxel (labels all 0)")
    vw = judge_weights(labels)
    sel = labels > 0
    y = labels[sel].astype(np.int64) - 1
    pn = np.moveaxis(p_net, 0, -1)[sel].astype(np.float64)
    pf = np.moveaxis(p_forest, 0, -1)[sel].astype(np.float64)
    wv = vw[sel]
    scores = []
    for w in weights:
        p = float(w) * pn + (1.0 - float(w)) * pf
        wrong = p.argmax(1) != y
        nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-4, None))
        scores.append({"w": float(w), "error": round(float(100 * (wv * wrong).sum()), 4),
                       "logloss": round(float((wv * nll).sum()), 5)})
    best_err = min(s["error"] for s in scores)
    near = [s for s in scores if s["error"] <= best_err + tol]
    pick = min(near, key=lambda s: (s["logloss"], -s["w"]))
    return {"weight": pick["w"], "scores": scores, "voxels": int(sel.sum())}


# ----------------------------------------------------------------------------------- fine-tuning
def _net_proba(ckpt, raw: np.ndarray, detectors: Sequence[str], zs: Sequence[int], x: np.ndarray | None = None) -> np.ndarray:
    """The network's probabilities ``(K, len(zs), Y, X)`` on whole slices (one forward pass per slice);
    ``x``: its prepared inputs (auto-context: with the out-of-fold forest channels), else from ``raw``."""
    import torch

    seg = segmenter_from_checkpoint(load_checkpoint(ckpt, kind="unet"), device="cpu")
    halo = int(seg.meta["net"].get("context", 0)) if seg.mode == "2.5d" else 0
    logits = predict_slices(seg.net, seg.prepare(raw) if x is None else x, zs, halo, bf16=seg.bf16)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy().transpose(1, 0, 2, 3)


def _judge_proba(packed: dict, k: int, stack, x_all: np.ndarray, train: np.ndarray, val_labels: np.ndarray,
                 val_z: list[int], *, threads: int) -> np.ndarray:
    """The judging forest's probabilities ``(K, len(val_z), Y, X)`` on the validation slices ``val_z``.

    Held-out scribbles (all inside ``train``) reuse their features in ``x_all`` (rows in C order of
    ``train > 0``) and leave the other voxels 0; dense validation labels get their slices' features.
    """
    p_forest = np.zeros((k, len(val_z), *train.shape[1:]), np.float32)
    if np.all(train[val_labels > 0] > 0):
        p_forest[:, val_labels[val_z] > 0] = forest_pack.proba(packed, x_all[val_labels[train > 0] > 0],
                                                              threads=threads).T
    else:
        for i, z in enumerate(val_z):
            p_forest[:, i] = forest_pack.proba(packed, stack.compute_samples(z, z + 1), threads=threads).T.reshape(
                k, *train.shape[1:])
    return p_forest


def _stored_blend(arrays: dict, w: float, spec: Mapping, record: dict) -> tuple[dict, dict]:
    """``(tensors, meta["blend"])`` of the blend of weight ``w`` with the packed forest ``arrays`` described by
    ``spec`` (``features``, ``detectors``, ``n_features``, ``n_classes``, ``voxel_size_nm``, ``max_chunk_mb``,
    ``trees``); ``record`` gets its size."""
    bl = Blend(arrays, {"weight": w, **{k: spec[k] for k in SPEC_KEYS}})
    record.update(trees=int(spec["trees"]), nodes=int(len(arrays["feature"])), bytes=forest_pack.nbytes(arrays))
    return bl.to_checkpoint()


#: what describes a stored forest (``meta["blend"]`` and auto-context's ``meta["autocontext"]``)
SPEC_KEYS = ("features", "detectors", "n_features", "n_classes", "voxel_size_nm", "max_chunk_mb", "trees")


def _spec(final, cfg: Mapping, detectors: Sequence[str], k: int, voxel_size_nm) -> dict:
    """The :data:`SPEC_KEYS` of the fitted forest ``final``."""
    return {"features": cfg["features"], "detectors": list(detectors), "n_features": int(final.n_features_in_),
            "n_classes": k, "voxel_size_nm": None if voxel_size_nm is None else [float(v) for v in voxel_size_nm],
            "max_chunk_mb": cfg["max_chunk_mb"], "trees": len(final.estimators_)}


def attach(ckpt: str | Path, raw: np.ndarray, detectors: Sequence[str], train: np.ndarray, *, fit_labels: np.ndarray,
           val_labels: np.ndarray, judge_ckpt: str | Path, settings: Mapping, voxel_size_nm=None,
           keep: dict | None = None, x: np.ndarray | None = None) -> dict | None:
    """Fit the forest, choose ``w`` on labels neither model saw and store the blend in ``ckpt`` (rewritten).

    Parameters
    ----------
    ckpt : path-like
        The fine-tuned checkpoint that gets the blend.
    raw : (C, Z, Y, X) ndarray
        The dataset's detectors as the network reads them (:func:`seglearn.pretrain.rules.scaled_inputs`).
    train : (Z, Y, X) uint8
        All training scribbles: the stored forest is fitted on them.
    fit_labels, val_labels : (Z, Y, X) uint8
        The scribbles ``judge_ckpt`` was trained on and the labels it never saw (held-out scribbles
        or ``labels/test.tif``); the judging forest is fitted on ``fit_labels``.
    settings : mapping
        Fine-tuning settings (``blend*``, ``seed``, ``threads``).
    x : (C, Z, Y, X) ndarray, optional
        The networks' prepared inputs (auto-context: with the out-of-fold forest channels).
    keep : dict, optional
        Gets ``p_forest`` ``(K, len(val_z), Y, X)``: the judging forest's probabilities on the validation
        slices ``val_z`` (for the temperature fitted on the blend, :mod:`seglearn.pretrain.ft_final`).

    Returns
    -------
    dict or None
        What was chosen and why (for ``finetune_summary.json``); None with ``blend: off``.
    """
    s = settings
    if check_mode(s["blend"]) == "off":
        return None
    t0 = time.perf_counter()
    threads, seed = int(s["threads"] or 0) or _cpus(), int(s["seed"])
    cfg = forest_config(str(s["blend_forest"]), detectors, s.get("blend_trees"))
    ck = load_checkpoint(ckpt, kind="unet")
    k = len(ck["meta"]["classes"])
    val_z = [int(z) for z in np.unique(np.nonzero(val_labels)[0])]
    stack = FeatureStack(raw, detectors, cfg["features"], voxel_size_nm)
    x_all, y_all = training_samples(stack, train, max_chunk_mb=cfg["max_chunk_mb"])  # C order of train > 0
    in_fit = fit_labels[train > 0] > 0
    judge = _fit(x_all[in_fit], y_all[in_fit], cfg, seed=seed, threads=threads)
    p_forest = _judge_proba(pack(judge, k), k, stack, x_all, train, val_labels, val_z, threads=threads)
    p_net = _net_proba(judge_ckpt, raw, detectors, val_z, x=x)
    choice = choose_weight(p_net, p_forest, val_labels[val_z], s["blend_weights"], tol=float(s["blend_tol"]))
    w = choice["weight"]
    if keep is not None:
        keep.update(p_forest=p_forest, val_z=val_z)
    record = {"weight": w, "forest": str(s["blend_forest"]), "judged_on": f"{choice['voxels']} labelled voxels on "
              f"slices {val_z} that neither the network ({Path(judge_ckpt).parent.name}) nor the judging forest saw",
              "scores": choice["scores"]}
    meta = copy.deepcopy(ck["meta"])
    context = ck["meta"].get("autocontext")
    tensors = ck.get("blend") if context else None  # auto-context: the forest on all scribbles, the same fit
    if w < 1.0 and tensors is not None:  # reused, not fitted again (the network reads its channels)
        tensors, meta["blend"] = _stored_blend({n: v.numpy() for n, v in tensors.items()}, w, context, record)
    elif w < 1.0:
        final = judge if in_fit.all() else _fit(x_all, y_all, cfg, seed=seed, threads=threads)
        tensors, meta["blend"] = _stored_blend(pack(final, k), w, _spec(final, cfg, detectors, k, voxel_size_nm),
                                               record)
    else:
        meta["blend"] = {"weight": 1.0}
    record["seconds"] = round(time.perf_counter() - t0, 1)
    meta["blend"]["evidence"] = record
    save_checkpoint(ckpt, kind="unet", state_dict=ck["state_dict"], meta=meta, blend=tensors, overwrite=True)
    log.info("blend: network weight %.2f against the %s forest (judged on %d voxels; %s), %.0f s", w,
             s["blend_forest"], choice["voxels"], ", ".join(f"w={c['w']:g}: {c['error']:.2f} % / {c['logloss']:.3f}"
                                                          for c in choice["scores"]), record["seconds"])
    return record
