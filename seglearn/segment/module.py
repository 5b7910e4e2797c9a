"""The LightningModule: masked cross-entropy (+ optional Dice) on sparse labels, IoU/awe validation."""

from __future__ import annotations

import functools
import logging
import math
from typing import Mapping, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from seglearn.ckpt import FORMAT, VERSION, _check_plain
from seglearn.errors import InputError
from seglearn.metrics import score
from seglearn.segment.infer import KIND, inference_kwargs, torch_net_fn
from seglearn.segment.net import build_net
from seglearn.segment.tiling import contiguous_runs, predict_slab

log = logging.getLogger("seglearn")


def masked_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss over labelled voxels only (``target == -1`` ignored), averaged over classes present."""
    k = logits.shape[1]
    mask = (target >= 0).unsqueeze(1).to(logits.dtype)
    probs = torch.softmax(logits.float(), dim=1) * mask
    onehot = F.one_hot(target.clamp(min=0), k).movedim(-1, 1).to(probs.dtype) * mask
    dims = tuple(d for d in range(probs.ndim) if d != 1)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return 1.0 - dice[present].mean() if present.any() else logits.sum() * 0.0


def class_weights(spec, counts: Sequence[float]) -> list[float] | None:
    """CE class weights: None, ``"balanced"`` (inverse frequency, mean 1) or an explicit list."""
    if spec is None or spec == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    if spec == "balanced":
        w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
        return (w / w[counts > 0].mean()).tolist()
    w = [float(v) for v in spec]
    if len(w) != len(counts):
        raise InputError(f"model.loss.class_weights has {len(w)} values, the dataset has {len(counts)} classes")
    return w


def warmup_cosine(step: int, *, total: int, warmup: float = 0.05, floor: float = 0.02) -> float:
    """Learning-rate factor: linear warm-up over ``warmup * total`` steps, then cosine decay to ``floor``."""
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def logits_fn(net, device, *, bf16: bool = False):
    """Like :func:`~seglearn.segment.infer.torch_net_fn`, but ``(B, C, Z, Y, X)`` -> the raw logits ``(B, K, z, Y, X)``
    float32 (for fitting the softmax temperature, :mod:`seglearn.segment.calibrate`)."""
    dtype = next(net.parameters()).dtype
    autocast = bool(bf16) and dtype != torch.bfloat16

    def fn(batch: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(batch)).to(device=device, dtype=dtype)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return net(t).float().cpu().numpy()

    return fn


def predict_validation(fn, meta: Mapping, net, dm):
    """Yield ``fn``'s output ``(K, z1 - z0, Y, X)`` tiled as in prediction and the labels ``(z1 - z0, Y, X)`` of
    each run ``z0:z1`` of ``dm``'s validation slices (``dm``: a prepared :class:`~.datamodule.SegDataModule`)."""
    kw = inference_kwargs(meta, net)
    n = dm.x.shape[1]
    context = max(kw["tile"][0] // 2, 1) if net.mode == "3d" else 0
    for z0, z1 in contiguous_runs(dm.val_z):
        out = predict_slab(fn, lambda a, b: dm.x[:, a:b], n, z0, z1, halo_z=net.halo, context_z=context, **kw)
        yield out, dm.val_labels[z0:z1]


def validation_logits(net, meta: Mapping, dm, device, *, bf16: bool = False, max_voxels: int = 2_000_000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(K, N)`` and labels ``(N,)`` (ids 1..K) of the ``N`` labelled validation voxels of ``dm``.

    With more than ``max_voxels`` labelled voxels (a dense test volume), a seeded random share of
    each run of slices is kept, so that ``N`` stays near ``max_voxels`` (memory: ``K * N`` floats).
    """
    keep = min(1.0, max_voxels / max(int(np.count_nonzero(dm.val_labels)), 1))
    rng = np.random.default_rng(seed)
    zs, ys = [], []
    for out, lab in predict_validation(logits_fn(net, device, bf16=bf16), meta, net, dm):
        idx = np.flatnonzero(lab > 0)
        if keep < 1.0:
            idx = np.sort(rng.choice(idx, int(round(keep * len(idx))), replace=False))
        zs.append(out.reshape(out.shape[0], -1)[:, idx])
        ys.append(lab.ravel()[idx])
    return np.concatenate(zs, axis=1), np.concatenate(ys)


class SegModule(L.LightningModule):
    """U-Net training on sparse labels.

    Parameters
    ----------
    meta : dict
        Checkpoint metadata (holds ``net``, channels, normalisation, classes, inference defaults).
    lr, weight_decay : float
        AdamW with a one-cycle schedule over ``max_steps``.
    max_steps : int
    dice : float
        Weight of the masked Dice loss added to the cross-entropy.
    weights : list of float, optional
        Cross-entropy class weights.
    """

    def __init__(self, meta: Mapping, *, lr: float = 2e-3, weight_decay: float = 1e-4, max_steps: int = 1000,
                 dice: float = 0.0, weights: Sequence[float] | None = None):
        super().__init__()
        self.meta = dict(meta)
        self.net = build_net(self.meta["net"])
        self.lr, self.weight_decay, self.max_steps = float(lr), float(weight_decay), int(max_steps)
        self.dice = float(dice)
        self.ce_weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        self.val_scores: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "train_set"):
            dm.train_set.set_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        if not bool((y >= 0).any()):
            loss = logits.sum() * 0.0
        else:
            w = None if self.ce_weights is None else self.ce_weights.to(logits.device)
            loss = F.cross_entropy(logits.float(), y, weight=w, ignore_index=-1)
            if self.dice > 0:
                loss = loss + self.dice * masked_dice_loss(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        dm = self.trainer.datamodule
        fn = torch_net_fn(self.net, self.device, bf16=self.device.type == "cuda")
        preds, truths = [], []
        for probs, lab in predict_validation(fn, self.meta, self.net, dm):
            preds.append(np.argmax(probs, axis=0).astype(np.uint8) + 1)
            truths.append(lab)
        names = list(self.meta["classes"])
        s = score(np.concatenate(preds), np.concatenate(truths), len(names), class_names=names)
        self.val_scores = {"awe": s["awe"], "miou": s["miou"], "iou": s["iou_by_class"], "step": int(self.global_step),
                           "source": dm.val_source}
        self.log("val/awe", s["awe"], prog_bar=True, sync_dist=True, batch_size=1)
        self.log("val/miou", s["miou"], sync_dist=True, batch_size=1)
        for name, v in s["iou_by_class"].items():
            self.log(f"val/iou_{name}", float("nan") if v is None else v, sync_dist=True, batch_size=1)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        # a plain function of the step (not OneCycleLR) so that resuming with a larger max_steps works
        sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(warmup_cosine, total=max(self.max_steps, 2)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export_meta(self) -> dict:
        """Checkpoint metadata with the latest validation scores."""
        meta = dict(self.meta)
        meta["train"] = {**dict(meta.get("train", {})), "global_step": int(self.global_step),
                         "epoch": int(self.current_epoch), "val": dict(self.val_scores)}
        return meta

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning checkpoints double as seglearn checkpoints (see seglearn.ckpt): plain data only
        meta = self.export_meta()
        _check_plain(meta)
        checkpoint.update({"format": FORMAT, "version": VERSION, "kind": KIND, "meta": meta})
