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
(:meth:`seglearn.segment.api.Segmenter.iter_proba`). With ``w = 1`` nothing is stored.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.pretrain import forest_pack

log = logging.getLogger("seglearn")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pretrain" / "finetune.yaml"
KEYS = ("blend", "blend_weights", "blend_forest", "blend_trees", "blend_tol")
#: forest settings that are not RandomForestClassifier arguments nor the feature spec
_NOT_FOREST = ("impl", "features", "engine", "max_chunk_mb", "voxel_size_nm", "n_jobs", "seed", "max_samples")


def defaults() -> dict:
    """The blend settings of ``configs/pretrain/finetune.yaml`` (their one home)."""
    import yaml

    with open(CONFIG) as f:
        cfg = yaml.safe_load(f)
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

    path = ROOT / "configs" / "method" / f"{name}.yaml"
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
    return {"features": spec, "params": params, "max_chunk_mb": float(cfg.get("max_chunk_mb", 1024.0))}


def _fit(x: np.ndarray, y: np.ndarray, config: Mapping, *, seed: int, threads: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(**config["params"], n_jobs=max(int(threads), 1), random_state=seed).fit(x, y)


def fit_forest(raw: np.ndarray, detectors: Sequence[str], labels: np.ndarray, config: Mapping, *, voxel_size_nm=None,
               seed: int = 0, threads: int = 1):
    """A ``RandomForestClassifier`` fitted on the features (:func:`forest_config`) of the labelled voxels."""
    from seglearn.features.stack import FeatureStack, training_samples

    stack = FeatureStack(raw, detectors, config["features"], voxel_size_nm)
    x, y = training_samples(stack, labels, max_chunk_mb=config["max_chunk_mb"])
    return _fit(x, y, config, seed=seed, threads=threads)


def z_halo(spec: Mapping, voxel_size_nm=None) -> int:
    """Slices of context the features of ``spec`` need on each side of a block (exact results)."""
    from seglearn.features import ilastik as il
    from seglearn.features import zevolution as zev
    from seglearn.features.stack import _anisotropy

    h = 0
    if spec.get("ilastik"):
        s = spec["ilastik"]
        h = il.halo(s.get("sigmas", il.SIGMAS), s.get("features", il.FEATURES), int(s.get("dims", 3)),
                    _anisotropy(voxel_size_nm))
    if spec.get("zevolution"):
        s = spec["zevolution"]
        h = max(h, zev.halo(s.get("offsets", zev.OFFSETS), s.get("windows", zev.WINDOWS), s.get("max_settle", 16),
                            s.get("settle_window", 2)))
    return int(h)


class Blend:
    """A packed forest, its feature spec and the network's weight ``w``.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        :func:`seglearn.pretrain.forest_pack.pack` output (checked here).
    meta : mapping
        ``weight``, ``features`` (spec), ``detectors``, ``n_features``, ``n_classes``, ``voxel_size_nm``,
        ``max_chunk_mb``.
    """

    def __init__(self, arrays: Mapping, meta: Mapping, *, threads: int = 0, where: str = "checkpoint"):
        self.meta = dict(meta)
        self.weight = float(meta["weight"])
        if not 0.0 <= self.weight < 1.0:
            raise InputError(f"{where}: meta blend.weight = {self.weight}: expected a number in [0, 1)")
        self.detectors = list(meta["detectors"])
        self.spec = dict(meta["features"])
        self.arrays = forest_pack.check(arrays, int(meta["n_features"]), int(meta["n_classes"]), where)
        self.halo = z_halo(self.spec, meta.get("voxel_size_nm"))
        self.threads = int(threads) or _cpus()

    def forest_proba(self, read: Callable[[int, int], np.ndarray], n: int, z0: int, z1: int) -> np.ndarray:
        """Forest probabilities ``(K, z1 - z0, Y, X)`` of slices ``[z0, z1)`` of an ``n``-slice volume.

        ``read(a, b)`` returns the raw detectors ``(C, b - a, Y, X)`` in :attr:`detectors` order; the
        block is read with :attr:`halo` slices on each side, so the result equals the same slices of
        the whole volume's.
        """
        from seglearn.features.stack import FeatureStack

        a, b = max(0, z0 - self.halo), min(n, z1 + self.halo)
        stack = FeatureStack(np.asarray(read(a, b)), self.detectors, self.spec, self.meta.get("voxel_size_nm"))
        if stack.n_features != int(self.meta["n_features"]):
            raise InputError(f"blend forest: {stack.n_features} features, the forest was fitted on "
                             f"{self.meta['n_features']}")
        step = stack.chunk_slices(float(self.meta.get("max_chunk_mb", 1024.0)))
        k = int(self.meta["n_classes"])
        out = np.empty((k, z1 - z0, *stack.shape[1:]), np.float32)
        for s in range(z0, z1, step):
            e = min(s + step, z1)
            p = forest_pack.proba(self.arrays, stack.compute_samples(s - a, e - a), threads=self.threads)
            out[:, s - z0:e - z0] = p.T.reshape(k, e - s, *stack.shape[1:])
        return out

    def apply(self, p_net: np.ndarray, p_forest: np.ndarray) -> np.ndarray:
        """``w * p_net + (1 - w) * p_forest`` (same shapes, float32)."""
        return (self.weight * p_net + (1.0 - self.weight) * p_forest).astype(np.float32)

    def to_checkpoint(self) -> tuple[dict, dict]:
        """``(tensors, meta)`` for the checkpoint's top-level ``blend`` entry and ``meta["blend"]``."""
        import torch

        return {k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()}, dict(self.meta)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def from_checkpoint(ck: Mapping, *, where: str = "checkpoint") -> Blend | None:
    """The :class:`Blend` a loaded checkpoint carries, or None (no forest stored: the network alone).

    Raises
    ------
    InputError
        ``meta["blend"]`` or the ``blend`` tensors are malformed or disagree.
    """
    meta = (ck.get("meta") or {}).get("blend")
    tensors = ck.get("blend")
    if meta is None and tensors is None:
        return None
    w = meta.get("weight") if isinstance(meta, dict) else None
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
        raise InputError(f"{where}: checkpoint meta blend.weight = {str(w)[:40]}: expected a number in [0, 1]")
    if w == 1.0:
        return None
    if not isinstance(tensors, dict) or not all(hasattr(v, "numpy") for v in tensors.values()):
        raise InputError(f"{where}: meta blend.weight = {w} but the checkpoint holds no blend forest tensors")
    try:
        return Blend({k: v.numpy() for k, v in tensors.items()}, meta, where=where)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: checkpoint meta blend is malformed ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:80] if str(exc) else ''})") from exc


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
def _net_proba(ckpt, raw: np.ndarray, detectors: Sequence[str], zs: Sequence[int]) -> np.ndarray:
    """The network's probabilities ``(K, len(zs), Y, X)`` on whole slices (one forward pass per slice)."""
    import torch

    from seglearn.ckpt import load_checkpoint
    from seglearn.pretrain.rules import predict_slices
    from seglearn.segment.api import segmenter_from_checkpoint

    seg = segmenter_from_checkpoint(load_checkpoint(ckpt, kind="unet"), device="cpu")
    halo = int(seg.meta["net"].get("context", 0)) if seg.mode == "2.5d" else 0
    logits = predict_slices(seg.net, seg.prepare(raw), zs, halo, bf16=seg.bf16)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy().transpose(1, 0, 2, 3)


def attach(ckpt: str | Path, raw: np.ndarray, detectors: Sequence[str], train: np.ndarray, *, fit_labels: np.ndarray,
           val_labels: np.ndarray, judge_ckpt: str | Path, settings: Mapping, voxel_size_nm=None) -> dict | None:
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

    Returns
    -------
    dict or None
        What was chosen and why (for ``finetune_summary.json``); None with ``blend: off``.
    """
    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.features.stack import FeatureStack, training_samples

    s = settings
    if check_mode(s["blend"]) == "off":
        return None
    t0 = time.perf_counter()
    threads, seed = int(s.get("threads") or 0) or _cpus(), int(s.get("seed", 0))
    cfg = forest_config(str(s["blend_forest"]), detectors, s.get("blend_trees"))
    ck = load_checkpoint(ckpt, kind="unet")
    k = len(ck["meta"]["classes"])
    val_z = [int(z) for z in np.unique(np.nonzero(val_labels)[0])]
    stack = FeatureStack(raw, detectors, cfg["features"], voxel_size_nm)
    x_all, y_all = training_samples(stack, train, max_chunk_mb=cfg["max_chunk_mb"])  # C order of train > 0
    in_fit = fit_labels[train > 0] > 0
    judge = _fit(x_all[in_fit], y_all[in_fit], cfg, seed=seed, threads=threads)
    packed = forest_pack.pack(judge, k)
    p_forest = np.zeros((k, len(val_z), *raw.shape[2:]), np.float32)
    if np.all(train[val_labels > 0] > 0):  # held-out scribbles: their features are computed already
        p_forest[:, val_labels[val_z] > 0] = forest_pack.proba(packed, x_all[val_labels[train > 0] > 0],
                                                              threads=threads).T
    else:  # dense validation labels: their slices' features
        for i, z in enumerate(val_z):
            p_forest[:, i] = forest_pack.proba(packed, stack.compute_samples(z, z + 1), threads=threads).T.reshape(
                k, *raw.shape[2:])
    p_net = _net_proba(judge_ckpt, raw, detectors, val_z)
    choice = choose_weight(p_net, p_forest, val_labels[val_z], s["blend_weights"], tol=float(s["blend_tol"]))
    w = choice["weight"]
    record = {"weight": w, "forest": str(s["blend_forest"]), "judged_on": f"{choice['voxels']} labelled voxels on "
              f"slices {val_z} that neither the network ({Path(judge_ckpt).parent.name}) nor the judging forest saw",
              "scores": choice["scores"]}
    meta = copy.deepcopy(ck["meta"])
    tensors = None
    if w < 1.0:
        final = judge if in_fit.all() else _fit(x_all, y_all, cfg, seed=seed, threads=threads)
        arrays = forest_pack.pack(final, k)
        bl = Blend(arrays, {"weight": w, "features": cfg["features"], "detectors": list(detectors),
                            "n_features": int(final.n_features_in_), "n_classes": k,
                            "voxel_size_nm": None if voxel_size_nm is None else [float(v) for v in voxel_size_nm],
                            "max_chunk_mb": cfg["max_chunk_mb"], "trees": len(final.estimators_)})
        tensors, meta["blend"] = bl.to_checkpoint()
        record.update(trees=len(final.estimators_), nodes=int(len(arrays["feature"])),
                      bytes=forest_pack.nbytes(arrays))
    else:
        meta["blend"] = {"weight": 1.0}
    record["seconds"] = round(time.perf_counter() - t0, 1)
    meta["blend"]["evidence"] = record
    save_checkpoint(ckpt, kind="unet", state_dict=ck["state_dict"], meta=meta, blend=tensors, overwrite=True)
    log.info("blend: network weight %.2f against the %s forest (judged on %d voxels; %s), %.0f s", w,
             s["blend_forest"], choice["voxels"], ", ".join(f"w={c['w']:g}: {c['error']:.2f} % / {c['logloss']:.3f}"
                                                          for c in choice["scores"]), record["seconds"])
    return record
