"""Pretraining on Lightning: the phantom stream as a DataModule, the base model as a LightningModule.

The same ``lightning.Trainer`` as U-Net training runs it (``trainer=`` config group: accelerator,
devices, strategy, precision), so ``python train.py experiment=pretrain_fibsem trainer=ddp`` pretrains
on all GPUs, or on CPU processes over gloo. Each process draws its own phantoms (the stream's seed
is offset by the global rank and the data-loader worker), so N processes see N times the phantoms
per step. Validation on the fixed held-out phantoms, the best / last checkpoints (ordinary
``kind="unet"`` files) and ``log.csv`` are written by rank 0 (:class:`PretrainCheckpoints`).

The learning rate follows :func:`lr_at`: warm-up, then a cosine over the step
or the wall-clock budget, whichever ends first. The elapsed time is rank 0's, broadcast, so every
process applies the same learning rate.
"""

from __future__ import annotations

import csv
import datetime
import logging
import time
from pathlib import Path
from typing import Callable, Mapping

import lightning as L
import numpy as np
import torch

from seglearn.paths import load_config
from seglearn.precision import trainer_device

log = logging.getLogger("seglearn")


def lr_at(lr: float, step: int, max_steps: int, time_frac: float, warmup: int = 50) -> float:
    """Learning rate: linear warm-up, then cosine decay to 2 % over the step or time budget."""
    frac = min(1.0, max(step / max(max_steps, 1), time_frac))
    return lr * min(1.0, (step + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * frac)))


class _Stream(torch.utils.data.IterableDataset):
    """The phantom patch stream of one process (rank) and data-loader worker."""

    def __init__(self, make: Callable[[int], object], seed: int):
        super().__init__()
        self.make, self.seed = make, int(seed)

    def __iter__(self):
        return iter(self.make(self.seed))


class PhantomStreamData(L.LightningDataModule):
    """Batches of randomised phantom patches ``(x (B, C, 2h+1, P, P) float32, y (B, 1, P, P) int64 0..K-1)``.

    Parameters
    ----------
    make_stream : callable
        ``make_stream(seed)`` -> a :class:`~seglearn.pretrain.stream.PhantomPatchStream` (built in the
        process that iterates it, so nothing large is pickled to data-loader workers).
    batch_size : int
    seed : int
        The stream of global rank ``r`` uses ``seed + 7919 * r`` (rank 0: ``seed``, as before).
    num_workers : int
    """

    def __init__(self, make_stream: Callable[[int], object], *, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.make_stream, self.batch_size = make_stream, int(batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)

    def train_dataloader(self):
        rank = self.trainer.global_rank if self.trainer is not None else 0
        ds = _Stream(self.make_stream, self.seed + 7919 * rank)
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers,
                                           collate_fn=_collate, persistent_workers=self.num_workers > 0)


def _collate(batch):
    x = torch.from_numpy(np.stack([b[0] for b in batch]))
    y = torch.from_numpy(np.stack([b[1] for b in batch])) - 1
    return x, y


class PretrainModule(L.LightningModule):
    """Cross-entropy on dense phantom labels; learning rate by step and wall-clock budget.

    Parameters
    ----------
    net : torch.nn.Module
        The base model's :class:`~seglearn.segment.net.SegNet` (warm-started by the caller if continuing).
    lr, weight_decay : float
        AdamW.
    max_steps : int
    budget_s : float
        Wall-clock budget in seconds (the cosine ends at whichever budget ends first).
    warmup : int
        Steps of linear warm-up.
    ema : float
        > 0: keep an exponential moving average of the weights (validated and saved instead).
    """

    def __init__(self, net, *, lr: float, weight_decay: float, max_steps: int, budget_s: float, warmup: int,
                 ema: float = 0.0):
        super().__init__()
        self.net = net
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.max_steps, self.budget_s, self.warmup = int(max_steps), float(budget_s), int(warmup)
        self.ema_decay = float(ema or 0.0)
        self._aux: dict = {"ema": None, "t0": None, "losses": []}  # not submodules: DDP must not see them

    @property
    def kept(self):
        """The weights that are validated and saved: the moving average, or the network itself."""
        return self._aux["ema"].module if self._aux["ema"] is not None else self.net

    def elapsed(self) -> float:
        """Seconds since the fit started, as rank 0 counts them (the same on every process)."""
        t = torch.tensor([time.perf_counter() - self._aux["t0"]], dtype=torch.float64)
        if self.trainer is not None and self.trainer.world_size > 1:
            t = self.trainer.strategy.broadcast(t, src=0)
        return float(t[0])

    def on_fit_start(self) -> None:
        self._aux["t0"] = time.perf_counter()
        if self.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self._aux["ema"] = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay),
                                             use_buffers=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        lr = lr_at(self.lr, self.global_step, self.max_steps, self.elapsed() / self.budget_s, self.warmup)
        for g in self.trainer.optimizers[0].param_groups:
            g["lr"] = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        self._aux["losses"].append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._aux["ema"] is not None:  # right after the step, before any batch-end hook validates
            self._aux["ema"].update_parameters(self.net)

    def take_losses(self) -> float:
        """Mean training loss since the last call (on this process)."""
        v = float(np.mean(self._aux["losses"])) if self._aux["losses"] else float("nan")
        self._aux["losses"] = []
        return v


class PretrainCheckpoints(L.Callback):
    """Every ``val_every`` steps and at the end: validate on rank 0, save best / last, append ``log.csv``.

    Parameters
    ----------
    out_dir : path-like
    val_every : int
    evaluate : callable
        ``evaluate(net) -> awe %`` on the fixed validation phantoms.
    save : callable
        ``save(name, net, extra)`` writes ``out_dir/name`` (a ``kind="unet"`` checkpoint).
    """

    def __init__(self, out_dir, *, val_every: int, evaluate: Callable, save: Callable):
        self.out_dir, self.val_every = Path(out_dir), int(val_every)
        self.evaluate, self.save = evaluate, save
        self.best, self.best_step, self.rows, self.last_step = float("inf"), 0, [], -1

    def _validate(self, trainer, module) -> None:
        step = int(trainer.global_step)
        if step == self.last_step or step == 0:
            return
        self.last_step = step
        elapsed = module.elapsed()
        if not trainer.is_global_zero:
            return
        awe = self.evaluate(module.kept)
        self.rows.append({"step": step, "seconds": round(elapsed, 1), "loss": round(module.take_losses(), 4),
                          "val_awe": round(awe, 3)})
        log.info("step %d (%.0f s): loss %.4f, validation awe %.2f %%", step, elapsed, self.rows[-1]["loss"], awe)
        extra = {"steps": step, "seconds": round(elapsed, 1), "val_awe": round(awe, 3), "ema": module.ema_decay}
        if awe < self.best:
            self.best, self.best_step = awe, step
            self.save("best.ckpt", module.kept, extra)
        self.save("last.ckpt", module.kept, extra)
        with open(self.out_dir / "log.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.val_every == 0:
            self._validate(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._validate(trainer, module)  # the last step, when it was not a validation step


def trainer_kwargs(trainer_cfg: Mapping | None, settings: Mapping, *, time_limit: bool = True) -> dict:
    """``lightning.Trainer`` arguments for pretraining and fine-tuning from the ``trainer`` config group.

    The step and time budgets come from the run's settings (``max_steps``, ``max_minutes``), not from
    the trainer group (whose defaults are U-Net training's); precision ``auto`` follows
    ``settings["bf16"]`` (:func:`seglearn.precision.trainer_device`, the rule of every Trainer).
    ``time_limit=False`` leaves the wall-clock budget to the caller (fine-tuning counts it from its
    own start, set-up included).
    """
    given = dict(trainer_cfg or {})
    given.setdefault("devices", 1)  # without a trainer group: one process (the group's own default is all devices)
    tr = {k: v for k, v in {**load_config("trainer/default.yaml"), **given}.items()
          if k not in ("max_steps", "max_time", "max_epochs")}
    tr = trainer_device(tr, settings["bf16"])
    tr.pop("deterministic", None)  # the phantom stream is seeded; deterministic kernels cost speed here
    tr.update(max_steps=int(settings["max_steps"]), max_epochs=-1, num_sanity_val_steps=0, limit_val_batches=0)
    if time_limit:
        tr["max_time"] = datetime.timedelta(seconds=float(settings["max_minutes"]) * 60.0)
    return tr
