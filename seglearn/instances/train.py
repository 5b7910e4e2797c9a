"""``python train.py model=stardist data.root=DATASET out_dir=DIR``: train the particle model.

Targets come from ``labels/instances.tif``. Training patches are slices of all three views
(xy, xz, yz) of the volume minus a held-out slab of xy slices at the end of z, on which the
validation loss is tracked and the probability / NMS thresholds are chosen. The best weights (by
validation loss), the thresholds and everything prediction needs go into ``DIR/best.ckpt``
(:func:`seglearn.ckpt.save_checkpoint`, kind ``stardist``); figures into ``DIR/metrics.json``. With
``model.tune_data=DATASET`` (a second labelled volume), the view-fusion settings are then tuned there and
stored in the checkpoint (:mod:`seglearn.instances.tune`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from seglearn.ckpt import save_checkpoint
from seglearn.data import load_dataset
from seglearn.errors import InputError, OutputExistsError, SeglearnError
from seglearn.instances.anisotropy import iso_factors, to_isotropic
from seglearn.instances.metrics import instance_scores_2d
from seglearn.instances.postprocess import instances_2d, optimize_thresholds
from seglearn.instances.targets import VIEWS, fit_normalisation, normalise, relabel_slice, slice_targets, view_stack
from seglearn.instances.tiling import predict_tiles
from seglearn.instances.tune import tune_fusion
from seglearn.io.atomic import atomic_path
from seglearn.paths import load_config
from seglearn.precision import resolve_bf16

log = logging.getLogger("seglearn")


def _params(cfg) -> dict:
    """The ``model`` settings: ``configs/model/stardist.yaml`` (their one home) updated by ``cfg.model``."""
    from omegaconf import DictConfig, OmegaConf

    model = cfg.get("model", {}) if hasattr(cfg, "get") else {}
    if isinstance(model, DictConfig):
        model = OmegaConf.to_container(model, resolve=True)
    p = load_config("model/stardist.yaml")
    p.update({k: v for k, v in dict(model or {}).items() if v is not None})
    for k in ("grid", "patch_size"):
        p[k] = [int(v) for v in p[k]]
    bad = [v for v in p["views"] if v not in VIEWS]
    if bad or not p["views"]:
        raise InputError(f"model.views: expected a non-empty subset of {list(VIEWS)}, got {p['views']}")
    if any(g < 1 or g & (g - 1) for g in p["grid"]) or len(p["grid"]) != 2:
        raise InputError(f"model.grid: expected two powers of 2, got {p['grid']}")
    return p


def _get(cfg, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if node is None or not hasattr(node, "get"):
            return default
        node = node.get(part)
    return default if node is None else node


def ray_permutation(n_rays: int, op: str) -> np.ndarray:
    """Ray indices after flipping (``"flip_y"``, ``"flip_x"``) or transposing (``"transpose"``) an image.

    stardist's ray ``k`` points at angle ``2 pi k / n_rays`` with ``dx = cos``, ``dy = sin``; after
    the operation, ray ``k`` of the new image is ray ``perm[k]`` of the old one (each is its own
    inverse). Exact for ``flip_*`` when ``n_rays`` is even, for ``transpose`` when it is a multiple of 4.
    """
    k = np.arange(n_rays)
    shift = {"flip_y": 0, "flip_x": n_rays // 2, "transpose": n_rays // 4}[op]
    return (shift - k) % n_rays


class PatchSampler:
    """Random training patches (image, prob target, dist target) from view slices.

    The stardist targets of a whole slice are computed once (and cached up to ``cache_bytes``) and
    patches are cut from them, so an object cut by the patch border keeps its true distances (as
    it does when the whole slice is predicted), and a step costs no target computation. Flips
    and transposition move the targets with the image (ray indices permuted,
    :func:`ray_permutation`); a flip shifts the crop by one pixel so that the output grid stays on
    the pixels the targets were sampled at.

    Parameters
    ----------
    images : (C, Z, Y, X) float32
        Normalised training volume.
    instances : (Z, Y, X) int
    views : sequence of str
    patch_size : (py, px)
        Rounded up to the network divisor; slices smaller than a patch are zero-padded.
    cache_bytes : int
        Memory for cached slice targets (about ``4 * (n_rays + 1) * H * W / (gy * gx)`` bytes a slice).
    """

    def __init__(self, images, instances, *, views, patch_size, divisor, n_rays, grid, augment=True, seed=0,
                 cache_bytes: int = 2 * 1024**3):
        self.stacks = [(view_stack(images, v), view_stack(instances, v)) for v in views
                       if view_stack(instances, v).shape[0] > 0]
        self.weights = np.array([s[1].shape[0] for s in self.stacks], float)
        self.weights /= self.weights.sum()
        self.patch = (-(-patch_size[0] // divisor[0]) * divisor[0], -(-patch_size[1] // divisor[1]) * divisor[1])
        self.divisor = divisor
        self.n_rays, self.grid, self.augment = n_rays, tuple(grid), augment
        self.rng = np.random.default_rng(seed)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict = {}
        self._cached = 0
        self.flips = augment and n_rays % 2 == 0
        self.transpose = augment and n_rays % 4 == 0 and self.patch[0] == self.patch[1] and grid[0] == grid[1]

    def _padded_size(self, h: int, w: int) -> tuple[int, int]:
        # room for the patch plus the one-pixel shift of a flipped crop, on the grid
        gy, gx = self.grid
        return (-(-max(h, self.patch[0] + gy) // gy) * gy, -(-max(w, self.patch[1] + gx) // gx) * gx)

    def _targets(self, v: int, s: int):
        key = (v, s)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        lbl = self.stacks[v][1][s]
        hp, wp = self._padded_size(*lbl.shape)
        lbl = np.pad(lbl, ((0, hp - lbl.shape[0]), (0, wp - lbl.shape[1])))
        out = slice_targets(np.ascontiguousarray(lbl), n_rays=self.n_rays, grid=self.grid)
        nbytes = out[0].nbytes + out[1].nbytes
        while self._cache and self._cached + nbytes > self.cache_bytes:  # oldest out first
            old = self._cache.pop(next(iter(self._cache)))
            self._cached -= old[0].nbytes + old[1].nbytes
        if nbytes <= self.cache_bytes:
            self._cache[key] = out
            self._cached += nbytes
        return out

    def sample(self):
        """One patch: ``image (C, py, px)``, ``prob (1, py/gy, px/gx)``, ``dist (R, py/gy, px/gx)``, float32."""
        rng = self.rng
        v = int(rng.choice(len(self.stacks), p=self.weights))
        img, lbl = self.stacks[v]
        s = int(rng.integers(0, lbl.shape[0]))
        prob, dist = self._targets(v, s)
        h, w = lbl.shape[1:]
        hp, wp = self._padded_size(h, w)
        ph, pw = self.patch
        gy, gx = self.grid
        flip_y = self.flips and rng.random() < 0.5
        flip_x = self.flips and rng.random() < 0.5
        # crop origin on the grid; a flipped axis starts one pixel later so that its last pixel is on the grid
        ky = int(rng.integers(0, (hp - ph - 1) // gy + 1))
        kx = int(rng.integers(0, (wp - pw - 1) // gx + 1))
        y0, x0 = ky * gy + int(flip_y), kx * gx + int(flip_x)
        x = img[:, s, y0:y0 + ph, x0:x0 + pw]
        if x.shape[1:] != (ph, pw):
            # zeros: "nothing here", consistent with label 0
            x = np.pad(x, ((0, 0), (0, ph - x.shape[1]), (0, pw - x.shape[2])))
        gys = slice(ky + int(flip_y), ky + int(flip_y) + ph // gy)
        gxs = slice(kx + int(flip_x), kx + int(flip_x) + pw // gx)
        p, d = prob[gys, gxs], dist[:, gys, gxs]
        if flip_y:
            x, p, d = x[:, ::-1], p[::-1], d[ray_permutation(self.n_rays, "flip_y"), ::-1]
        if flip_x:
            x, p, d = x[:, :, ::-1], p[:, ::-1], d[ray_permutation(self.n_rays, "flip_x"), :, ::-1]
        if self.transpose and rng.random() < 0.5:
            x, p, d = x.transpose(0, 2, 1), p.T, d[ray_permutation(self.n_rays, "transpose")].transpose(0, 2, 1)
        if self.augment:
            x = x * np.float32(rng.uniform(0.8, 1.2)) + np.float32(rng.uniform(-0.1, 0.1))
        return (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(p, dtype=np.float32)[None],
                np.ascontiguousarray(d, dtype=np.float32))


def _split(images: np.ndarray, instances: np.ndarray, val_fraction: float, divisor: int):
    """Hold out a slab of xy slices at the end of z (3D) or rows at the end of y (2D)."""
    z, h = instances.shape[0], instances.shape[1]
    if z >= 8:
        n = max(1, int(round(val_fraction * z)))
        return (images[:, :-n], instances[:-n]), (images[:, -n:], instances[-n:]), f"xy slices z >= {z - n}"
    n = int(round(val_fraction * h))
    n = -(-n // divisor) * divisor
    if h - n >= divisor and n >= divisor:
        return (images[:, :, :-n], instances[:, :-n]), (images[:, :, -n:], instances[:, -n:]), f"rows y >= {h - n}"
    log.warning("image too small to hold out validation data: validating on the training image")
    return (images, instances), (images, instances), "the training image (too small to split)"


def _load(cfg, p: dict):
    """Check the command's options (and ``model.tune_data``) and read the training volume.

    Returns
    -------
    ds : Dataset
        With ``instances``.
    root : str
    out_dir : Path
    seed : int
    """
    root = _get(cfg, "data.root")
    if root is None:
        raise InputError("data.root: missing; pass data.root=DATASET (a folder with labels/instances.tif)")
    out_dir = Path(str(_get(cfg, "out_dir", "runs/stardist")))
    seed = int(_get(cfg, "seed", 0))
    for key in ("ckpt_path", "init"):
        if _get(cfg, key) is not None:
            raise InputError(f"{key}={_get(cfg, key)}: resuming / fine-tuning is not supported for model=stardist; train from scratch")
    ckpt_path = out_dir / "best.ckpt"
    if ckpt_path.exists() and not bool(_get(cfg, "overwrite", False)):
        raise OutputExistsError(f"{ckpt_path}: output already exists; pass overwrite=true to replace it")
    tune = p.get("tune_data")
    if tune and not (Path(str(tune)) / "dataset.yaml").is_file():
        raise InputError(f"model.tune_data={tune}: not a dataset folder (no dataset.yaml); expected a labelled volume "
                         "with labels/instances.tif, not the training one")

    ds = load_dataset(root, labels=("instances",), require=("instances",))
    if not np.any(ds.instances):
        raise InputError(f"{Path(root) / 'labels' / 'instances.tif'}: holds no particle (all 0); label particles first")
    return ds, root, out_dir, seed


def _training_volume(ds, p: dict, seed: int):
    """Normalised images ``(C, Z, Y, X)`` float32 and instances ``(Z, Y, X)``, resampled to isotropic voxels
    when ``p["isotropic"]`` (issue 29); the normalisation ``lo`` / ``hi`` and whether it was resampled."""
    lo, hi = fit_normalisation(ds.images, p["percentiles"], seed=seed)
    images, instances = normalise(ds.images, lo, hi), ds.instances
    iso = bool(p["isotropic"]) and ds.shape[0] > 1
    if iso:  # anisotropic voxels: train on the volume resampled to the x voxel size (issue 29)

        factors = iso_factors(ds.voxel_size_nm)
        images, instances = to_isotropic(images, factors), to_isotropic(instances, factors, labels=True)
        log.info("particles: voxels %s nm resampled by %s to %s", list(ds.voxel_size_nm), factors,
                 "x".join(map(str, instances.shape)))
    return images, instances, lo, hi, iso


def _validation_slices(va_img: np.ndarray, va_lbl: np.ndarray, div, p: dict):
    """Whole xy validation slices padded to the network divisor.

    Returns
    -------
    va_x : (S, C, H', W') float32
    va_lbl2 : list of (H, W) int
        Their instances, relabelled per slice.
    va_data : list of (image, prob target, dist target)
    """
    va_lbl2 = [relabel_slice(s) for s in va_lbl]
    h, w = va_lbl.shape[1:]
    hp, wp = -(-h // div[0]) * div[0], -(-w // div[1]) * div[1]
    va_x = np.pad(np.moveaxis(va_img, 1, 0), ((0, 0), (0, 0), (0, hp - h), (0, wp - w)), mode="symmetric")
    va_t = [slice_targets(np.pad(s, ((0, hp - h), (0, wp - w))), n_rays=p["n_rays"], grid=p["grid"]) for s in va_lbl2]
    return va_x, va_lbl2, [(x, t[0][None], t[1]) for x, t in zip(va_x, va_t)]


def _fit(net, sampler, va_data, p: dict, cfg, out_dir: Path):
    """Train ``net`` on the Lightning Trainer and load its best weights (by validation loss); the module
    (history, best loss) and the trainer."""
    import lightning as L

    from seglearn.instances.lit import StarDistModule

    module = StarDistModule(net, sampler=sampler, val_data=va_data, lr=float(p["lr"]), batch_size=int(p["batch_size"]),
                            steps_per_epoch=int(p["steps_per_epoch"]), epochs=int(p["epochs"]),
                            dist_weight=float(p["dist_weight"]), background_reg=float(p["background_reg"]),
                            max_seconds=60.0 * float(p["max_minutes"]), bf16=p["bf16"],
                            channels_last=bool(p["channels_last"]))
    trainer = L.Trainer(max_epochs=int(p["epochs"]), accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                        max_time={"minutes": float(p["max_minutes"])}, enable_progress_bar=bool(_get(cfg, "progress", True)),
                        deterministic=False)
    trainer.fit(module)
    steps = int(trainer.global_step)
    if steps == 0 or not module.history:  # no best weights: the "best" would be the random initialisation
        why = "ran 0 steps" if steps == 0 else f"ran {steps} steps but validated none"
        raise SeglearnError(f"{out_dir}: particle training {why}; nothing was saved (check model.epochs, "
                            f"model.steps_per_epoch, model.max_minutes and labels/instances.tif)")
    net.load_state_dict(module.best_state)
    net.eval().cpu()
    return module, trainer


def _thresholds(net, va_x: np.ndarray, va_lbl2, p: dict):
    """Probability / NMS thresholds chosen on the validation slices, predicted as predict.py will (bf16 or
    not), and the 2D scores there."""
    h, w = va_lbl2[0].shape
    hp, wp = va_x.shape[2:]
    predict_bf16 = resolve_bf16(dict(p.get("predict") or {}).get("bf16", "auto"), "cpu")
    prob, dist = predict_tiles(net, va_x, tile=(256, 256), context=64, bf16=predict_bf16)
    thr = optimize_thresholds(list(prob), list(dist), [np.pad(s, ((0, hp - h), (0, wp - w))) for s in va_lbl2],
                              grid=p["grid"], prob_grid=p["prob_grid"], nms_grid=p["nms_grid"])
    preds = np.stack([instances_2d(pp, dd, (hp, wp), grid=p["grid"], prob_thresh=thr["prob_thresh"],
                                   nms_thresh=thr["nms_thresh"])[:h, :w] for pp, dd in zip(prob, dist)])
    return thr, instance_scores_2d(np.stack(va_lbl2), preds)


def _tune(net, meta: dict, p: dict) -> dict | None:
    """With ``model.tune_data``: the fusion settings tuned there (:mod:`seglearn.instances.tune`) written into
    ``meta["predict"]["fusion"]`` (and ``meta["tuned"]``); the tuning result, or None."""
    if not p.get("tune_data"):
        return None

    res = tune_fusion(net, meta, p["tune_data"], p["fusion_grid"])
    meta["predict"]["fusion"] = dict(res["fusion"])
    meta["tuned"] = {k: res[k] for k in ("dataset", "f1_0.75", "f1_0.5", "mean_iou")}
    return res


def train(cfg) -> dict:
    """Train the StarDist-style particle model; returns its metrics.

    Parameters
    ----------
    cfg : DictConfig
        ``data.root`` (dataset with ``labels/instances.tif``), ``out_dir``, ``seed``, ``overwrite``
        and the ``model`` group (``configs/model/stardist.yaml``).

    Returns
    -------
    dict
        ``checkpoint``, ``thresholds``, ``val_scores`` (2D matching at IoU 0.5 ... 0.9),
        ``history`` (losses per epoch), ``seconds``.
    """
    import lightning as L
    import torch

    from seglearn.instances.model import NET_KEYS, build_model

    t0 = time.perf_counter()
    p = _params(cfg)
    ds, root, out_dir, seed = _load(cfg, p)
    ckpt_path = out_dir / "best.ckpt"
    if p.get("threads"):
        # one thread: intra-op threads spin-wait on a loaded machine (18 s vs 2 s a step measured on 2 shared cores)
        torch.set_num_threads(int(p["threads"]))
    L.seed_everything(seed, workers=True, verbose=False)
    images, instances, lo, hi, iso = _training_volume(ds, p, seed)
    net = build_model(p, in_channels=images.shape[0])
    div = net.divisor
    views = p["views"] if ds.shape[0] > 1 else ["xy"]
    (tr_img, tr_lbl), (va_img, va_lbl), where = _split(images, instances, p["val_fraction"], div[0])
    log.info("particles: training on %s views of %s, validating on %s", views, "x".join(map(str, tr_lbl.shape)), where)
    sampler = PatchSampler(tr_img, tr_lbl, views=views, patch_size=p["patch_size"], divisor=div, n_rays=p["n_rays"],
                           grid=p["grid"], augment=bool(p["augment"]), seed=seed)
    va_x, va_lbl2, va_data = _validation_slices(va_img, va_lbl, div, p)
    module, trainer = _fit(net, sampler, va_data, p, cfg, out_dir)
    t_train = time.perf_counter() - t0
    thr, val_scores = _thresholds(net, va_x, va_lbl2, p)
    net_meta = {k: p[k] for k in NET_KEYS if p.get(k) is not None}
    meta = {
        "net": {**net_meta, "in_channels": int(images.shape[0])},
        "channels": list(ds.detectors),
        "normalisation": {"kind": "percentile", "percentiles": list(p["percentiles"]), "lo": lo, "hi": hi},
        "thresholds": {"prob": thr["prob_thresh"], "nms": thr["nms_thresh"], "val_mean_f1": thr["score"]},
        "voxel_size_nm": list(ds.voxel_size_nm),
        "views": list(views),
        "predict": {"threads": p.get("threads"), **dict(p.get("predict") or {}), "isotropic": iso},
        "train": {"dataset": str(root), "seed": seed, "epochs_run": int(trainer.current_epoch),
                  "best_val_loss": float(module.best_loss), "validation": where,
                  "steps": int(trainer.global_step), "bf16": bool(module.use_bf16), "seconds": round(t_train, 1)},
    }
    tuned = _tune(net, meta, p)
    save_checkpoint(ckpt_path, kind="stardist", state_dict=net.state_dict(), meta=meta, overwrite=True)
    if not ckpt_path.is_file():
        raise SeglearnError(f"{out_dir}: particle training ran {trainer.global_step} steps but wrote no {ckpt_path.name}")
    metrics = {"checkpoint": str(ckpt_path), "thresholds": meta["thresholds"], "val_scores": val_scores,
               "history": module.history, "tuned": tuned, "seconds": {"train": t_train, "total": time.perf_counter() - t0}}
    with atomic_path(out_dir / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    log.info("particles: wrote %s (validation F1 at IoU 0.5: %.3f, %.0f s)", ckpt_path, val_scores["0.5"]["f1"],
             metrics["seconds"]["total"])
    torch.set_grad_enabled(True)
    return metrics
