"""Fine-tuning on Lightning: the mixed user / synthetic batches, the loss, and the validation that keeps the best.

The same ``lightning.Trainer`` as U-Net training and pretraining runs it (``trainer=`` config group,
:func:`seglearn.pretrain.lit.trainer_kwargs`), so ``python train.py init=BASE.ckpt trainer=ddp`` fine-tunes
on all GPUs or on CPU processes over gloo: each process draws its own patches (seeds offset by the rank),
validation and the kept weights are rank 0's and its decisions (stop, keep) are broadcast.

- :class:`MixedBatches`: each batch is ``n_user`` patches around the user's scribbles and ``n_syn``
  densely labelled synthetic patches, in one forward pass (shared BatchNorm statistics).
- :class:`FinetuneModule`: cross-entropy on the scribbles, a KL term keeping the unlabelled voxels close
  to the base model (``distill``, same head only), cross-entropy on the synthetic patches (through the base
  model's old head when the head is new); frozen encoder / BatchNorm statistics stay in eval mode.
- :class:`KeepBest`: validation at step 0 (the base model zero-shot), every ``val_every`` steps and at the
  end; the best weights are kept; patience, the wall-clock budget and the caller's ``on_step`` stop it.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Callable

import lightning as L
import numpy as np
import torch

from seglearn.metrics import score
from seglearn.pretrain.autocontext import uninformative
from seglearn.pretrain.rules import _user_patch, predict_slices
from seglearn.pretrain.selftrain import decode, encode

log = logging.getLogger("seglearn")

BN_TYPES = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


class MixedBatches(torch.utils.data.IterableDataset):
    """Endless batches ``(x (B, C, 2h+1, P, P) float32, y_user (n_user, 1, P, P) int64 -1..K-1, y_syn (n_syn, 1, P, P))``.

    ``y_user`` is -1 where unlabelled. The user's patches come from ``np.random.default_rng(seed)``, the
    synthetic ones from ``make_stream(seed + 1)`` (rank ``r`` adds ``7919 * r`` to both).

    With pseudo-labels (``setup.extra["pseudo"] = (labels, weights, share)``, self-training's second round,
    :mod:`seglearn.pretrain.selftrain`) a share ``share`` of the user's patches is centred on pseudo-labelled
    voxels, ``y_user`` holds scribbles and pseudo-labels (scribbles win) and a fourth item
    ``w_user (n_user, 1, P, P) float32`` their weights (scribbles 1, 0 where unlabelled).

    With auto-context (``setup.extra["context"]``, :mod:`seglearn.pretrain.autocontext`) the synthetic patches get
    uninformative forest channels (``1 / K``), and so does a share ``setup.extra["context_dropout"]`` of the user's.
    """

    def __init__(self, setup, seed: int):
        super().__init__()
        self.setup, self.seed = setup, int(seed)

    def __iter__(self):
        st = self.setup
        rng = np.random.default_rng(self.seed)
        stream = iter(st.make_stream(self.seed + 1)) if st.make_stream is not None and st.n_syn > 0 else None
        coords = np.argwhere(st.fit_labels > 0)
        ctx = st.extra.get("context")
        drop = float(st.extra["context_dropout"]) if ctx is not None else None
        pseudo = st.extra.get("pseudo")
        if pseudo is not None:
            labels, share = encode(st.fit_labels, pseudo[0], pseudo[1]), pseudo[2]
            top = float(max(1.0, pseudo[1].max()))
            p_coords = np.argwhere(pseudo[0] > 0)
            share = share if len(p_coords) else 0.0
        while True:
            if pseudo is None:
                ub = [_user_patch(st.x, st.fit_labels, coords, st.patch, st.halo, rng) for _ in range(st.n_user)]
            else:
                ub = [_user_patch(st.x, labels, p_coords if rng.random() < share else coords, st.patch, st.halo, rng)
                      for _ in range(st.n_user)]
                ub = [(b[0], *decode(b[1], top)) for b in ub]
            sb = [next(stream) for _ in range(st.n_syn)] if stream is not None else []
            if ctx is not None:  # auto-context: the phantoms (and a share of the user's patches) without a forest
                sb = [(uninformative(b[0], ctx.k), *b[1:]) for b in sb]
                ub = [(uninformative(b[0][:-ctx.k], ctx.k), *b[1:]) if drop > 0 and rng.random() < drop else b
                      for b in ub]
            xb = torch.from_numpy(np.stack([b[0] for b in ub + sb]))
            yu = torch.from_numpy(np.stack([b[1] for b in ub]).astype(np.int64)) - 1
            ys = torch.from_numpy(np.stack([b[1] for b in sb])) - 1 if sb else torch.zeros(0, dtype=torch.int64)
            if pseudo is None:
                yield xb, yu, ys
            else:
                yield xb, yu, ys, torch.from_numpy(np.stack([b[2] for b in ub]))


class MixedData(L.LightningDataModule):
    """:class:`MixedBatches` of a :class:`~seglearn.pretrain.ft_setup.Setup` (already batched; no workers)."""

    def __init__(self, setup, seed: int):
        super().__init__()
        self.setup_, self.seed = setup, int(seed)

    def train_dataloader(self):
        rank = self.trainer.global_rank if self.trainer is not None else 0
        return torch.utils.data.DataLoader(MixedBatches(self.setup_, self.seed + 7919 * rank), batch_size=None)


class FinetuneModule(L.LightningModule):
    """The fine-tuning loss on mixed batches; AdamW on the trainable weights (network + auxiliary head).

    Parameters
    ----------
    setup : :class:`~seglearn.pretrain.ft_setup.Setup`
    lr, weight_decay : float
    distill : float
        Weight of the KL term to the base model on the user's unlabelled voxels (0 = off).
    synth_weight : float
    freeze_encoder : bool
    """

    def __init__(self, setup, *, lr: float, weight_decay: float, distill: float, synth_weight: float,
                 freeze_encoder: bool):
        super().__init__()
        self.net = setup.net
        # the base model's old head, trained on the synthetic patches (a new head only; unused without them)
        self.aux = setup.aux if setup.n_syn > 0 else None
        self.n_user, self.freeze_bn = setup.n_user, bool(setup.freeze_bn)
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.distill, self.synth_weight = float(distill), float(synth_weight)
        # not submodules: DDP must not see the teacher, the hook's output nor the frozen list
        self._aux: dict = {"teacher": setup.base_net, "feats": {}, "frozen": []}
        ctx = setup.extra.get("context")
        if ctx is not None:  # auto-context: (first convolution, first forest column, lr multiplier)
            conv = self.net.unet.down[0].body[0] if self.net.unet.depth else self.net.unet.bottom.body[0]
            w = 2 * self.net.k + 1 if self.net.mode != "3d" else 1
            self._aux["ctx"] = (conv, conv.weight.shape[1] - ctx.k * w, float(setup.extra["context_lr"]))
        self.net.unet.head.register_forward_hook(lambda m, inp, out: self._aux["feats"].__setitem__("x", inp[0]))
        if freeze_encoder:
            self._aux["frozen"] = [*self.net.unet.down, self.net.unet.bottom]
            for m in self._aux["frozen"]:
                for p in m.parameters():
                    p.requires_grad_(False)

    def train_mode(self) -> None:
        """Training mode, except the frozen encoder and (``freeze_bn``) the BatchNorm statistics."""
        self.net.train()
        for m in self._aux["frozen"]:
            m.eval()
        if self.freeze_bn:
            for m in self.net.modules():
                if isinstance(m, BN_TYPES):
                    m.eval()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """The optimizer's step; with auto-context its change of the forest channels' first-layer weights is
        multiplied by ``setup.extra["context_lr"]`` (they start at 0 and AdamW moves each weight by about ``lr``
        per step: at the fine-tuning rate they stay about 30x smaller than the image channels' after 300 steps)."""
        ctx = self._aux.get("ctx")
        before = None if ctx is None else ctx[0].weight.data[:, ctx[1]:].clone()
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if ctx is not None and ctx[2] != 1.0:
            w = ctx[0].weight.data[:, ctx[1]:]
            w.add_((ctx[2] - 1.0) * (w - before))

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        params += [] if self.aux is None else list(self.aux.parameters())
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def on_fit_start(self) -> None:
        self._aux["teacher"].to(self.device).eval()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.train_mode()

    def training_step(self, batch, batch_idx):
        xb, yu, ys = batch[:3]
        n = self.n_user
        logits = self.net(xb)
        if len(batch) > 3:  # self-training: scribbles and weighted pseudo-labels
            ce = torch.nn.functional.cross_entropy(logits[:n].float(), yu, ignore_index=-1, reduction="none")
            wu = batch[3]
            loss = (ce * wu).sum() / wu.sum().clamp_min(1e-6)
        else:
            loss = torch.nn.functional.cross_entropy(logits[:n].float(), yu, ignore_index=-1)
        if self.distill > 0:
            # learning without forgetting: on the user's unlabelled voxels stay close to the base model
            with torch.no_grad():
                teacher = self._aux["teacher"](xb[:n])
            log_t = torch.log_softmax(teacher.float(), 1)
            log_s = torch.log_softmax(logits[:n].float(), 1)
            kl = (log_t.exp() * (log_t - log_s)).sum(1)  # (n_user, Z', Y, X)
            free = (yu < 0).float()
            loss = loss + self.distill * (kl * free).sum() / free.sum().clamp_min(1.0)
        if ys.numel():
            if self.aux is None:
                ls = logits[n:].float()
            else:
                f = self._aux["feats"]["x"]  # (B * Z, F, Y, X) in 2d / 2.5d
                ls = self.aux(f).float()
                ls = ls.reshape(xb.shape[0], -1, ls.shape[1], *ls.shape[2:]).permute(0, 2, 1, 3, 4)[n:]
            loss = loss + self.synth_weight * torch.nn.functional.cross_entropy(ls, ys)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=xb.shape[0])
        return loss


class KeepBest(L.Callback):
    """Validation on rank 0 (step 0 = zero-shot), the best weights kept, and when to stop.

    Parameters
    ----------
    setup : :class:`~seglearn.pretrain.ft_setup.Setup`
    val_every, patience, max_steps : int
    budget_s : float
        Wall-clock budget counted from ``t0`` (the run's start, set-up included).
    t0 : float
        ``time.perf_counter()`` at the run's start.
    on_step : callable, optional
        ``on_step({"step", "max_steps", "loss"}) -> True`` stops after this step (rank 0's answer counts).
    bf16 : bool
        Validation under bfloat16 autocast.
    """

    def __init__(self, setup, *, val_every: int, patience: int, max_steps: int, budget_s: float, t0: float,
                 on_step: Callable[[dict], bool | None] | None = None, bf16: bool = False):
        self.setup, self.every, self.patience, self.max_steps = setup, int(val_every), int(patience), int(max_steps)
        self.budget_s, self.t0, self.on_step, self.bf16 = float(budget_s), float(t0), on_step, bool(bf16)
        self.best, self.best_step, self.best_state, self.bad = float("inf"), 0, None, 0
        self.zero_shot, self.history, self.stopped, self.steps = None, [], False, 0

    def validate(self, module) -> float:
        """Awe (%) of the network on the validation slices (rank 0); training mode restored."""
        st = self.setup
        module.net.eval()
        logits = predict_slices(module.net, st.x, st.val_z, st.halo, bf16=self.bf16)
        pred = (logits.argmax(1) + 1).astype(np.uint8)
        module.train_mode()
        return float(score(pred, st.val_labels[st.val_z], len(st.classes))["awe"])

    def on_train_start(self, trainer, module) -> None:
        if not trainer.is_global_zero:
            return
        self.zero_shot = self.best = self.validate(module)
        self.best_state = copy.deepcopy(module.net.state_dict())
        self.history = [{"step": 0, "val_awe": round(self.zero_shot, 3)}]
        log.info("zero-shot validation awe %.2f %% (the base model, step 0)", self.zero_shot)

    def _check(self, step: int, loss: float, module) -> bool:
        """Rank 0: the caller's hook, the validation of this step and the stop decision."""
        stopped = bool(self.on_step is not None and self.on_step({"step": step, "max_steps": self.max_steps,
                                                                   "loss": loss}))
        if stopped:
            self.stopped = True
            log.info("fine-tuning stopped at step %d by the caller", step)
        stop = stopped
        if step % self.every == 0 or step == self.max_steps or (stopped and step % self.every):
            awe = self.validate(module)
            self.history.append({"step": step, "val_awe": round(awe, 3), "loss": round(loss, 4)})
            log.info("step %d (%.0f s): loss %.4f, validation awe %.2f %%", step, time.perf_counter() - self.t0,
                     loss, awe)
            if awe < self.best - 1e-6:
                self.best, self.best_step, self.best_state, self.bad = awe, step, copy.deepcopy(module.net.state_dict()), 0
            else:
                self.bad += 1
                if self.patience and self.bad >= self.patience:
                    log.info("early stopping at step %d (best %.2f %% at step %d)", step, self.best, self.best_step)
                    stop = True
        return stop or time.perf_counter() - self.t0 >= self.budget_s

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        self.steps = step
        stop = False
        if trainer.is_global_zero:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            stop = self._check(step, float(loss.detach()), module)
        if trainer.world_size > 1:  # rank 0's decisions, on every process
            stop, self.stopped = trainer.strategy.broadcast((bool(stop), bool(self.stopped)), src=0)
        if stop:
            trainer.should_stop = True
