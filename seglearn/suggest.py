"""Suggested labelling: where a new label would help the model most.

Every voxel gets an acquisition score from three maps, all ``(Z, Y, X)`` in [0, 1]:

- ``U``: the model's uncertainty, the normalised entropy of its class probabilities;
- ``D``: disagreement with the random forest trained on the same labels (1 where they differ);
- ``F``: the distance factor ``1 - exp(-dist / distance_nm)``, ``dist`` the physical distance to
  the nearest labelled voxel (0 on the labels themselves, so labelled places are never suggested).

``score = (u U + d D) / (u + d) * F ** w`` with the weights of ``configs/suggest.yaml``. Slices are
ranked by their best ``region``-sized window (its mean score); suggested slices lie ``min_gap``
apart. Pure numpy / scipy; used by the napari widget and by

``python -m seglearn.suggest ckpt=C input=DATASET [output=OUT] [top=10]``

which writes ``OUT/suggestions.json`` and ``OUT/suggestions.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seglearn.baselines.registry import accepts, fit_method, get_method, predict_method
from seglearn.ckpt import load_checkpoint
from seglearn.data import load_dataset
from seglearn.errors import InputError, OutputExistsError
from seglearn.io import atomic_path
from seglearn.log import command, setup_logging
from seglearn import paths
from seglearn.paths import compose
from seglearn.segment.api import segmenter_from_checkpoint

log = logging.getLogger("seglearn")
COLUMNS = ("rank", "z", "y0", "y1", "x0", "x1", "score", "uncertainty", "disagreement", "distance_factor")


def normalised_entropy(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """Entropy of class probabilities divided by ``log K``: 0 = certain, 1 = uniform.

    Parameters
    ----------
    probs : (K, Z, Y, X) float ndarray
        Probabilities summing to 1 along ``axis``.

    Returns
    -------
    (Z, Y, X) float32 ndarray
    """
    p = np.clip(np.asarray(probs, dtype=np.float32), 1e-7, 1.0)
    k = p.shape[axis]
    if k < 2:
        raise InputError(f"probabilities: need at least 2 classes along axis {axis}, got shape {p.shape}")
    return np.clip(-(p * np.log(p)).sum(axis=axis) / np.log(k), 0.0, 1.0).astype(np.float32)


def distance_factor(train: np.ndarray | None, shape: Sequence[int], voxel_size_nm: Sequence[float],
                    distance_nm: float) -> np.ndarray:
    """``1 - exp(-dist / distance_nm)`` with ``dist`` the distance (nm) to the nearest label; ones without labels.

    Returns
    -------
    (Z, Y, X) float32 ndarray
    """
    from scipy.ndimage import distance_transform_edt

    if train is None or not np.any(train):
        return np.ones(tuple(shape), np.float32)
    dist = distance_transform_edt(np.asarray(train) == 0, sampling=[float(v) for v in voxel_size_nm])
    return (1.0 - np.exp(-dist / max(float(distance_nm), 1e-6))).astype(np.float32)


def acquisition_weights(weights: Mapping | None) -> dict:
    """``configs/suggest.yaml`` ``weights`` updated by ``weights`` (``uncertainty``, ``disagreement``, ``distance``)."""
    return {**paths.load_config("suggest.yaml")["weights"], **dict(weights or {})}


def acquisition(uncertainty: np.ndarray, disagreement: np.ndarray | None = None, factor: np.ndarray | None = None,
                weights: Mapping | None = None) -> np.ndarray:
    """The acquisition score ``(u U + d D) / (u + d) * F ** w`` (see the module doc), ``(Z, Y, X)`` float32."""
    w = acquisition_weights(weights)
    wu = float(w["uncertainty"])
    wd = float(w["disagreement"]) if disagreement is not None else 0.0
    if wu < 0 or wd < 0 or wu + wd <= 0:
        raise InputError(f"weights: uncertainty and disagreement must be >= 0 and not both 0, got {dict(w)}")
    s = wu * np.asarray(uncertainty, np.float32)
    if wd > 0:
        s = s + wd * np.asarray(disagreement, np.float32)
    s /= wu + wd
    if factor is not None and float(w["distance"]) > 0:
        s *= np.asarray(factor, np.float32) ** float(w["distance"])
    return s.astype(np.float32, copy=False)


def rank_regions(score: np.ndarray, *, region: Sequence[int] = (64, 64), top: int = 10, min_gap: int = 1,
                 stride: int = 1, maps: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """The ``top`` slices by their best ``region`` window, at least ``min_gap`` slices apart.

    Parameters
    ----------
    score : (Z, Y, X) float ndarray
    region : (ry, rx)
        Window size, clipped to the slice.
    maps : mapping of name to (Z, Y, X) ndarray, optional
        Maps averaged over each suggested window too (``uncertainty``, ``disagreement``, ...).

    Returns
    -------
    list of dict
        ``rank, z, y0, y1, x0, x1, score`` (+ the window means of ``maps``), best first.
    """
    from scipy.ndimage import uniform_filter

    score = np.asarray(score, np.float32)
    if score.ndim != 3:
        raise InputError(f"score: expected (Z, Y, X), got shape {score.shape}")
    z_n, y_n, x_n = score.shape
    ry, rx = min(int(region[0]), y_n), min(int(region[1]), x_n)
    zs = np.arange(0, z_n, max(int(stride), 1))
    best = []
    for z in zs:
        m = uniform_filter(score[z], size=(ry, rx), mode="constant")
        # centres whose window lies inside the slice
        cy0, cx0 = ry // 2, rx // 2
        inner = m[cy0:y_n - (ry - 1 - cy0), cx0:x_n - (rx - 1 - cx0)]
        iy, ix = np.unravel_index(int(np.argmax(inner)), inner.shape)
        best.append((float(inner[iy, ix]), int(z), int(iy), int(ix)))
    best.sort(key=lambda t: -t[0])
    out: list[dict] = []
    for s, z, y0, x0 in best:
        if len(out) >= int(top):
            break
        if any(abs(z - r["z"]) < int(min_gap) for r in out):
            continue
        rec = {"rank": len(out) + 1, "z": z, "y0": y0, "y1": y0 + ry, "x0": x0, "x1": x0 + rx, "score": round(s, 5)}
        for name, vol in (maps or {}).items():
            rec[name] = round(float(np.mean(vol[z, y0:y0 + ry, x0:x0 + rx])), 5)
        out.append(rec)
    return out


def suggest(probs: np.ndarray, train: np.ndarray | None, *, voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
            forest_labels: np.ndarray | None = None, settings: Mapping | None = None) -> tuple[list[dict], dict]:
    """Ranked suggestions from the model's probabilities (and the forest's labels).

    Parameters
    ----------
    probs : (K, Z, Y, X) float ndarray
        The model's class probabilities.
    train : (Z, Y, X) int ndarray or None
        The labels so far (0 = unlabelled).
    forest_labels : (Z, Y, X) int ndarray, optional
        The forest's labels ``1..K`` (no disagreement term without them).
    settings : mapping
        ``top``, ``region``, ``min_gap``, ``stride``, ``distance_nm``, ``weights`` (``configs/suggest.yaml``).

    Returns
    -------
    suggestions : list of dict
        See :func:`rank_regions`; columns :data:`COLUMNS`.
    maps : dict of (Z, Y, X) float32
        ``score``, ``uncertainty``, ``distance_factor`` and (with a forest) ``disagreement``.
    """
    s = {**paths.load_config("suggest.yaml"), **dict(settings or {})}
    probs = np.asarray(probs)
    if probs.ndim != 4:
        raise InputError(f"probabilities: expected (K, Z, Y, X), got shape {probs.shape}")
    shape = probs.shape[1:]
    if train is not None and np.shape(train) != shape:
        raise InputError(f"labels of shape {np.shape(train)} do not fit the probabilities' {shape}")
    maps = {"uncertainty": normalised_entropy(probs)}
    if forest_labels is not None and float(acquisition_weights(s["weights"])["disagreement"]) > 0:
        model_labels = np.argmax(probs, axis=0) + 1
        maps["disagreement"] = (model_labels != np.asarray(forest_labels)).astype(np.float32)
    maps["distance_factor"] = distance_factor(train, shape, voxel_size_nm, float(s["distance_nm"]))
    score = acquisition(maps["uncertainty"], maps.get("disagreement"), maps["distance_factor"], s["weights"])
    ranked = rank_regions(score, region=s["region"], top=int(s["top"]),
                          min_gap=int(s["min_gap"]), stride=int(s["stride"]), maps=maps)
    maps["score"] = score
    return ranked, maps


def load_config(overrides: Sequence[str] = ()) -> dict:
    """``configs/suggest.yaml`` with its forest method resolved, as ``python -m seglearn.suggest`` sees it."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(compose("suggest", overrides), resolve=True)


def forest_labels(cfg_forest: Mapping, ds, train: np.ndarray) -> np.ndarray:
    """The random forest of ``configs/method/<name>.yaml`` fitted on ``train`` and predicted on ``ds``."""
    params = {k: v for k, v in dict(cfg_forest).items() if k not in ("impl", "label")}
    impl = str(dict(cfg_forest)["impl"])
    if accepts(get_method(impl)[0], "voxel_size_nm") and params.get("voxel_size_nm") is None:
        params["voxel_size_nm"] = list(ds.voxel_size_nm)
    model = fit_method(impl, ds.images, ds.detectors, train, **params)
    return predict_method(impl, model, ds.images, ds.detectors)


def write_suggestions(out: Path, ranked: list[dict], info: Mapping, *, overwrite: bool = False) -> None:
    """``out/suggestions.json`` (``info`` + ``suggestions``) and ``out/suggestions.csv`` (one row each)."""
    cols = [c for c in COLUMNS if not ranked or c in ranked[0]]
    with atomic_path(out / "suggestions.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps({**info, "suggestions": ranked}, indent=2))
    with atomic_path(out / "suggestions.csv", overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(ranked)


def run(cfg) -> dict:
    """``python -m seglearn.suggest``: predict, fit the forest, rank, write (``configs/suggest.yaml``)."""
    from omegaconf import OmegaConf

    setup_logging()
    c = OmegaConf.to_container(cfg, resolve=True)
    ds = load_dataset(c["input"], labels=("train",))
    out = Path(c["output"] or Path("outputs") / f"suggest_{Path(str(c['input'])).name}")
    for f in ("suggestions.json", "suggestions.csv"):
        if (out / f).exists() and not c["overwrite"]:
            raise OutputExistsError(f"{out / f}: exists; pass overwrite=true to replace it")
    ckpt = load_checkpoint(c["ckpt"], kind="unet")
    if ckpt["meta"].get("preprocess"):
        raise InputError(f"{c['ckpt']}: trained with a preprocessing stage, which suggest does not re-apply; "
                         f"preprocess the dataset first (python preprocess.py) and train on it without the stage")
    seg = segmenter_from_checkpoint(ckpt, device=c["device"], bf16=c["bf16"])
    probs = seg.predict_proba(ds.images, ds.detectors, block_slices=32)
    train = ds.train if ds.train is not None else np.zeros(ds.shape, np.uint8)
    forest = None
    if float(c["weights"]["disagreement"]) > 0 and np.any(train):
        forest = forest_labels(c["forest"], ds, train)
    ranked, _ = suggest(probs, train, voxel_size_nm=ds.voxel_size_nm, forest_labels=forest, settings=c)
    info = {"ckpt": str(c["ckpt"]), "input": str(c["input"]), "shape": list(ds.shape),
            "labelled_voxels": int(np.count_nonzero(train)), "forest": forest is not None,
            "settings": {k: c[k] for k in ("top", "region", "min_gap", "stride", "distance_nm", "weights")}}
    write_suggestions(out, ranked, info, overwrite=bool(c["overwrite"]))
    for r in ranked[:3]:
        log.info("suggest: slice z=%d, region y %d:%d x %d:%d (score %.3f)", r["z"], r["y0"], r["y1"], r["x0"],
                 r["x1"], r["score"])
    log.info("wrote %s/suggestions.json and suggestions.csv (%d suggestions)", out, len(ranked))
    return {"output": str(out), "suggestions": ranked}


def main() -> None:
    """``python -m seglearn.suggest`` / ``seglearn-suggest``: :func:`run` on ``configs/suggest.yaml`` + overrides."""

    command("suggest")(run)()


if __name__ == "__main__":
    main()
