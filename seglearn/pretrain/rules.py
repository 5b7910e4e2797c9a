"""The numeric rules of fine-tuning, as small functions apart from its loop (:mod:`seglearn.pretrain.finetune`).

Which detectors of a dataset feed which inputs of a base model (:func:`select_detectors`), the dataset on
the model's grey scale (:func:`scaled_inputs`), per-class medians of scribbled voxels (:func:`class_medians`),
the split of scribbles into fitting and held-out tiles (:func:`split_scribbles`), predictions of a few
slices (:func:`predict_slices`), the mapping of a base model's classes onto the dataset's
(:func:`class_map`, :func:`probe_head`, :func:`resolve_classes`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.intensity import apply_map, fit_array
from seglearn.pretrain.stream import augment_patch


def select_detectors(meta: Mapping, detectors: Sequence[str], *, detector: str | None = None,
                     where: str = "dataset") -> tuple[list[int], list[str]]:
    """Which dataset channels feed the base model, and the names the fine-tuned model will record.

    Returns
    -------
    index : list of int
        Indices into ``detectors``, in the base model's channel order.
    names : list of str
        Detector names for the fine-tuned checkpoint.

    Raises
    ------
    InputError
        The dataset lacks a detector a multi-detector base model needs.
    """
    base = list(meta["detectors"])
    detectors = list(detectors)
    if detector is not None and detector not in detectors:
        raise InputError(f"{where}: detector={detector!r} is not among its detectors {detectors}")
    if len(base) == 1:
        pick = detector if detector is not None else (base[0] if base[0] in detectors else detectors[0])
        return [detectors.index(pick)], [pick]
    missing = [d for d in base if d not in detectors]
    if missing:
        raise InputError(f"{where}: the base model needs detectors {base} (+ {meta.get('derived', [])}), the dataset "
                         f"has {detectors} (missing {missing}); use the single-detector base model "
                         f"checkpoints/fibsem_base_1det.ckpt, or train from scratch")
    return [detectors.index(d) for d in base], base


def scaled_inputs(ck: Mapping, images: np.ndarray, detectors: Sequence[str], *, detector: str | None = None,
                  name: str = "dataset") -> tuple[np.ndarray, list[str], dict]:
    """The dataset's detectors a base model reads, in its order, on its grey scale.

    The scale is decided once, by :func:`seglearn.io.intensity.fit_to_model` (uint8 and 0..255 data as
    they are, 0..1 floats times 255, anything else by robust percentiles onto the model's ranges),
    the same rule ``predict.py`` applies to the volumes it is given.

    Returns
    -------
    raw : (C', Z, Y, X) ndarray
        ``images`` of the selected detectors, float32 unless read as they are.
    names : list of str
        Detector names for the fine-tuned checkpoint (:func:`select_detectors`).
    record : dict
        The decision (dtype, statistics, map), for ``finetune_summary.json``.
    """
    idx, names = select_detectors(ck["meta"], detectors, detector=detector, where=name)
    raw = np.asarray(images)[idx]
    scaled, record = fit_array(dict(ck), raw, list(ck["meta"]["detectors"]), where=name)
    return apply_map(raw, scaled["meta"]["normalisation"].get("input_map")), names, record


def class_medians(x: np.ndarray, labels: np.ndarray, n_classes: int, *, min_voxels: int = 20) -> np.ndarray:
    """Median grey value (0..255 on the base model's scale) of each class's scribbles per detector.

    Parameters
    ----------
    x : (C, Z, Y, X) float
        Detector channels normalised to [0, 1] (the base model's 8-bit scale / 255).
    labels : (Z, Y, X) int
        Scribbles ``1..n_classes``.

    Returns
    -------
    (C, n_classes) float
        NaN for a class with fewer than ``min_voxels`` scribbled voxels.
    """
    out = np.full((x.shape[0], n_classes), np.nan)
    for k in range(n_classes):
        sel = labels == k + 1
        if sel.sum() >= min_voxels:
            out[:, k] = [float(np.median(x[c][sel])) * 255.0 for c in range(x.shape[0])]
    return out


def split_scribbles(train: np.ndarray, *, fraction: float, tile: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the scribbles of a random share of in-plane tiles (every class keeps some of both).

    Returns
    -------
    fit, val : (Z, Y, X) uint8
    """
    rng = np.random.default_rng(seed)
    z, y, x = train.shape
    ty, tx = -(-y // tile), -(-x // tile)
    for _ in range(20):
        pick = rng.random((z, ty, tx)) < fraction
        held = np.repeat(np.repeat(pick, tile, 1), tile, 2)[:, :y, :x]
        fit = np.where(held, 0, train).astype(np.uint8)
        val = np.where(held, train, 0).astype(np.uint8)
        classes = np.unique(train[train > 0])
        if all((fit == c).any() and (val == c).any() for c in classes):
            return fit, val
    # fall back to a voxel-wise split
    held = rng.random(train.shape) < fraction
    return np.where(held, 0, train).astype(np.uint8), np.where(held, train, 0).astype(np.uint8)


# ----------------------------------------------------------------------------------- network helpers
def predict_slices(net, x: np.ndarray, zs: Sequence[int], halo: int, *, bf16: bool = False) -> np.ndarray:
    """Logits of whole slices: ``x (C, Z, Y, X)`` normalised -> ``(len(zs), K, Y, X)`` float32 (on the net's device)."""
    import torch

    a = 2 ** net.unet.depth
    _, z_n, y, xx = x.shape
    py, px = -(-y // a) * a - y, -(-xx // a) * a - xx
    dev = next(net.parameters()).device  # the network's device (the CPU, or the GPU it is trained on)
    out = []
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for z in zs:
            idx = np.clip(np.arange(z - halo, z + halo + 1), 0, z_n - 1)
            win = np.pad(x[:, idx], ((0, 0), (0, 0), (0, py), (0, px)), mode="reflect" if min(y, xx) > max(py, px) else "edge")
            win = torch.from_numpy(np.ascontiguousarray(win[None])).to(dev)
            out.append(net(win)[0, :, 0, :y, :xx].float().cpu().numpy())
    return np.stack(out)


def class_map(net, x: np.ndarray, labels: np.ndarray, n_classes: int, halo: int) -> list[int]:
    """For each dataset class ``1..K``: the base class (0-based) its scribbles look most like.

    The mean zero-shot probability of every base class under each dataset class's scribbles is
    matched one-to-one (Hungarian assignment on the log-probabilities) while ``K`` is at most the
    number of base classes, so two dataset classes never start as the same base class.
    """
    import torch
    from scipy.optimize import linear_sum_assignment

    zs = [int(z) for z in np.unique(np.nonzero(labels)[0])]
    prob = torch.softmax(torch.from_numpy(predict_slices(net, x, zs, halo)), dim=1).numpy()
    lab = labels[zs]
    k_base = prob.shape[1]
    mean = np.full((n_classes, k_base), 1.0 / k_base)
    for c in range(1, n_classes + 1):
        sel = lab == c
        if sel.any():
            mean[c - 1] = prob.transpose(1, 0, 2, 3)[:, sel].mean(axis=1)
    cost = -np.log(np.clip(mean, 1e-6, None))
    if n_classes <= k_base:
        rows, cols = linear_sum_assignment(cost)
        out = [0] * n_classes
        for r, c in zip(rows, cols):
            out[int(r)] = int(c)
        return out
    return [int(v) for v in cost.argmin(axis=1)]


def probe_head(net, x: np.ndarray, labels: np.ndarray, n_classes: int, halo: int, *, max_voxels: int = 20000,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A new head fitted on the base model's frozen features under the scribbles (a linear probe).

    Returns
    -------
    weight : (K, F) float32
    bias : (K,) float32
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    feats: dict = {}
    hook = net.unet.head.register_forward_hook(lambda m, inp, out: feats.__setitem__("x", inp[0].detach()))
    zs = [int(z) for z in np.unique(np.nonzero(labels)[0])]
    rows, ys = [], []
    try:
        for z in zs:
            predict_slices(net, x, [z], halo)
            f = feats["x"].float().numpy()[0]  # (F, Y', X') of the padded slice
            lab = labels[z]
            sel = np.nonzero(lab)
            rows.append(f[:, sel[0], sel[1]].T)
            ys.append(lab[sel])
    finally:
        hook.remove()
    xf, yf = np.concatenate(rows), np.concatenate(ys)
    if len(yf) > max_voxels:
        pick = np.random.default_rng(seed).choice(len(yf), max_voxels, replace=False)
        xf, yf = xf[pick], yf[pick]
    clf = LogisticRegression(C=1.0, max_iter=300).fit(xf, yf)
    w = np.zeros((n_classes, xf.shape[1]), np.float32)
    b = np.zeros(n_classes, np.float32)
    present = [int(c) - 1 for c in clf.classes_]
    if len(present) == 2 and clf.coef_.shape[0] == 1:
        w[present[1]], b[present[1]] = clf.coef_[0] / 2, clf.intercept_[0] / 2
        w[present[0]], b[present[0]] = -clf.coef_[0] / 2, -clf.intercept_[0] / 2
    else:
        w[present], b[present] = clf.coef_, clf.intercept_
    for c in set(range(n_classes)) - set(present):
        b[c] = -10.0  # a class without scribbles starts unlikely
    return w, b


def _user_patch(x: np.ndarray, labels: np.ndarray, coords: np.ndarray, p: int, halo: int, rng) -> tuple:
    _, z_n, y, xx = x.shape
    z, cy, cx = coords[int(rng.integers(len(coords)))]
    py, px = min(p, y), min(p, xx)
    oy = int(np.clip(cy - py // 2 + rng.integers(-py // 4, py // 4 + 1), 0, y - py))
    ox = int(np.clip(cx - px // 2 + rng.integers(-px // 4, px // 4 + 1), 0, xx - px))
    idx = np.clip(np.arange(z - halo, z + halo + 1), 0, z_n - 1)
    xp = x[:, idx, oy:oy + py, ox:ox + px]
    yp = labels[z:z + 1, oy:oy + py, ox:ox + px]
    if (py, px) != (p, p):  # small images: pad to the patch size, padding unlabelled
        xp = np.pad(xp, ((0, 0), (0, 0), (0, p - py), (0, p - px)), mode="edge")
        yp = np.pad(yp, ((0, 0), (0, p - py), (0, p - px)))
    return augment_patch(xp, yp, rng)


#: fine-tuning runs averaged by ``runs: auto`` when the base model's head is kept
AUTO_RUNS = 3


def resolve_runs(setting, same_head: bool) -> int:
    """The number of fine-tuning runs averaged into one model: ``runs: auto`` = :data:`AUTO_RUNS` when the base
    model's head is kept, 1 for a new head; else the number given."""
    if str(setting) == "auto":
        return AUTO_RUNS if same_head else 1
    return int(setting)


def resolve_classes(base_classes: Sequence[str], train: np.ndarray, test: np.ndarray | None,
                    classes: Sequence[str] | None) -> list[str]:
    """The dataset's class names: ``classes``, else the base model's when the labels use as many
    ids, else ``class1..classK``. Equal to ``base_classes`` exactly when the base head is kept."""
    if classes is None:
        k = int(max(np.max(train), 0 if test is None else np.asarray(test).max()))
        classes = list(base_classes) if k == len(base_classes) else [f"class{i + 1}" for i in range(max(k, 2))]
    return list(classes)


# ----------------------------------------------------------------------------------- main
