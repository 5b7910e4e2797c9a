"""The Lightning module that trains :class:`~seglearn.instances.model.StarDistNet`."""

from __future__ import annotations

import copy
import logging
import math
import time

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seglearn.instances.loss import stardist_loss
from seglearn.precision import autocast, resolve_bf16, to_channels_last

log = logging.getLogger("seglearn")


class _Patches(Dataset):
    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return tuple(torch.from_numpy(a) for a in self.sampler.sample())


class _Fixed(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in self.items[i])


class StarDistModule(L.LightningModule):
    """Trains the network on random view patches; keeps the weights of the best validation loss.

    Parameters
    ----------
    net : StarDistNet
    sampler : PatchSampler
        Draws ``(image (C, H, W), prob (1, h, w), dist (R, h, w))`` training patches.
    val_data : list of such tuples
        Whole validation slices.
    bf16 : bool or "auto"
        Run the network under bfloat16 autocast (``auto``: where the device supports it natively,
        :mod:`seglearn.precision`); the loss is always computed in float32.
    channels_last : bool
        Keep weights and inputs in channels-last memory format (faster convolutions with bf16).
    """

    def __init__(self, net, *, sampler, val_data, lr=3e-4, batch_size=8, steps_per_epoch=25, epochs=40,
                 dist_weight=0.2, background_reg=1e-4, max_seconds=None, bf16="auto", channels_last=True):
        super().__init__()
        self.bf16_setting, self.channels_last = bf16, bool(channels_last)
        self.use_bf16 = False  # resolved on the training device in on_fit_start
        if self.channels_last:
            net = to_channels_last(net)
        self.max_seconds = max_seconds
        self.net = net
        self.sampler, self.val_data = sampler, val_data
        self.lr, self.batch_size, self.steps, self.epochs = lr, batch_size, steps_per_epoch, epochs
        self.dist_weight, self.background_reg = dist_weight, background_reg
        self.best_loss = float("inf")
        self.best_state = copy.deepcopy(net.state_dict())
        self.history: list[dict] = []
        self._train_losses: list[float] = []
        self._val_losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def on_fit_start(self):
        self.use_bf16 = resolve_bf16(self.bf16_setting, self.device)
        log.info("particles: training on %s, %s, %s", self.device, "bf16 autocast" if self.use_bf16 else "float32",
                 "channels-last" if self.channels_last else "contiguous")

    def _loss(self, batch):
        x, prob, dist = batch
        if self.channels_last:
            x = to_channels_last(x)
        with autocast(x.device, self.use_bf16):
            p, d = self.net(x)
        # the loss in float32 whatever the network ran in
        return stardist_loss(p.float(), d.float(), prob.float(), dist.float(), dist_weight=self.dist_weight,
                             background_reg=self.background_reg)

    def training_step(self, batch, batch_idx):
        out = self._loss(batch)
        self._train_losses.append(float(out["loss"].detach()))
        self.log("loss", out["loss"], prog_bar=True, on_step=True, on_epoch=False)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self._loss(batch)
        self._val_losses.append(float(out["loss"]) * len(batch[0]))

    def on_validation_epoch_end(self):
        n = len(self.val_data)
        val = float(np.sum(self._val_losses) / max(n, 1))
        self._val_losses = []
        tr = float(np.mean(self._train_losses)) if self._train_losses else float("nan")
        self._train_losses = []
        self.history.append({"epoch": int(self.current_epoch), "train_loss": tr, "val_loss": val})
        self.log("val_loss", val, prog_bar=True)
        if val < self.best_loss:
            self.best_loss = val
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        log.info("epoch %d: train loss %.4f, val loss %.4f", self.current_epoch, tr, val)

    def train_dataloader(self):
        return DataLoader(_Patches(self.sampler, self.steps * self.batch_size), batch_size=self.batch_size,
                          num_workers=0)

    def val_dataloader(self):
        return DataLoader(_Fixed(self.val_data), batch_size=self.batch_size, num_workers=0)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        total = max(self.steps * self.epochs, 1)
        t0 = time.monotonic()

        def factor(step: int) -> float:
            # cosine decay over whichever ends first: the planned steps or the time budget
            done = min(1.0, max(step / total, (time.monotonic() - t0) / self.max_seconds if self.max_seconds else 0.0))
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
