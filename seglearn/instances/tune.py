"""Fusion settings tuned on a held-out volume (issue 29).

``python train.py model=stardist data.root=TRAIN model.tune_data=HELD_OUT`` runs, after training,
the network over a second labelled volume (neither trained on nor validated on) and keeps the view
fusion settings (``seed_thresh``, ``h``, ``sigma``, ``foreground`` with ``fg_vote`` / ``fg_prob``) that
score best there: F1 at IoU 0.75 first, then F1 at IoU 0.5, then the mean IoU of the matched
particles. The candidates are the product of ``fusion_grid`` in ``configs/model/stardist.yaml``; the
winner goes into the checkpoint's ``predict.fusion``, so ``predict.py`` uses it by default.
"""

from __future__ import annotations

import itertools
import logging
from typing import Mapping

import numpy as np

from seglearn.data import load_dataset
from seglearn.errors import InputError
from seglearn.instances.anisotropy import from_isotropic
from seglearn.instances.metrics import instance_scores
from seglearn.instances.pipeline import fuse_settings, predict_settings, prepare_images, view_outputs

log = logging.getLogger("seglearn")

#: keys that matter for one foreground kind only (the other kind's candidates keep their first value)
ONLY_FOR = {"fg_vote": "polygons", "fg_prob": "probability"}


def fusion_candidates(grid: Mapping[str, list], base: Mapping) -> list[dict]:
    """The distinct fusion settings of a grid: ``base`` updated by every combination of ``grid``'s lists.

    Parameters
    ----------
    grid : mapping of str to list
        Keys of the ``fusion`` settings (``seed_thresh``, ``h``, ``sigma``, ``foreground``, ``fg_vote``,
        ``fg_prob``, ``min_size``) and the values to try.
    base : mapping
        The other fusion settings.

    Returns
    -------
    list of dict
        Without repeats: ``fg_vote`` is varied only with ``foreground: polygons``, ``fg_prob`` only with
        ``probability``.
    """
    unknown = sorted(set(grid) - set(base))
    if unknown:
        raise InputError(f"model.fusion_grid: unknown fusion setting {unknown[0]!r}; expected some of {sorted(base)}")
    keys = list(grid)
    seen, out = set(), []
    for values in itertools.product(*(list(grid[k]) for k in keys)):
        cand = {**dict(base), **dict(zip(keys, values))}
        for k, kind in ONLY_FOR.items():
            if k in grid and cand.get("foreground") != kind:
                cand[k] = list(grid[k])[0]
        key = tuple(sorted((k, str(v)) for k, v in cand.items()))
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out


def _score(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """(F1 at IoU 0.75, F1 at IoU 0.5, mean matched IoU at 0.5)."""
    s = instance_scores(true, pred, thresholds=(0.5, 0.75))
    return s["0.75"]["f1"], s["0.5"]["f1"], s["0.5"]["mean_matched_score"]


def tune_fusion(net, meta: Mapping, root, grid: Mapping[str, list], *, progress: bool = False) -> dict:
    """The fusion settings of ``grid`` that score best on the held-out dataset ``root``.

    Parameters
    ----------
    net : StarDistNet
        Trained, in eval mode.
    meta : mapping
        The checkpoint's ``meta`` (``net``, ``normalisation``, ``thresholds``, ``predict``).
    root : str or Path
        Dataset with ``labels/instances.tif`` and the checkpoint's detectors.
    grid : mapping of str to list
        Candidate values (:func:`fusion_candidates`).

    Returns
    -------
    dict
        ``fusion`` (the best settings), ``f1_0.75``, ``f1_0.5``, ``mean_iou`` there, ``dataset`` and
        ``table`` (every candidate with its three figures).
    """
    ds = load_dataset(root, labels=("instances",), require=("instances",))
    if ds.shape[0] < 2:
        raise InputError(f"model.tune_data={root}: fusion needs a 3D volume, got a single slice")
    want = list(meta.get("channels") or ds.detectors)
    if not set(want) <= set(ds.detectors):
        raise InputError(f"model.tune_data={root}: the model was trained on detectors {want}, the dataset has {ds.detectors}")
    x = prepare_images(np.stack([ds.channel(d) for d in want]), meta, where=str(root))
    params = predict_settings(meta.get("predict"))
    prob_t, nms_t = float(meta["thresholds"]["prob"]), float(meta["thresholds"]["nms"])
    probs, labels = view_outputs(net, x, prob_thresh=prob_t, nms_thresh=nms_t, params=params,
                                 voxel_size_nm=ds.voxel_size_nm, progress=progress, back=False)
    scale = labels[0].size / ds.instances.size
    table = []
    for cand in fusion_candidates(grid, params["fusion"]):
        pred = from_isotropic(fuse_settings(probs, labels, cand, prob_t, scale), ds.instances.shape)
        table.append((_score(ds.instances, pred), cand))
    (f75, f50, iou), best = max(table, key=lambda r: r[0])
    log.info("particles: fusion tuned on %s over %d candidates: %s (F1 at IoU 0.75 %.3f, at 0.5 %.3f)", root,
             len(table), {k: best[k] for k in grid}, f75, f50)
    return {"fusion": best, "f1_0.75": f75, "f1_0.5": f50, "mean_iou": iou, "dataset": str(root),
            "table": [{**{k: c[k] for k in grid}, "f1_0.75": s[0], "f1_0.5": s[1], "mean_iou": s[2]} for s, c in table]}
