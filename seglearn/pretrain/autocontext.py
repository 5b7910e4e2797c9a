"""Auto-context: the target's own forest probabilities as extra input channels of the fine-tuned network.

``finetune.autocontext: on`` (off by default; docs/bench_pretrain.md, "Auto-context"). The tailored forest
(``blend_forest``, the blend's) is fitted on the dataset's scribbles; its class probabilities become
``K`` extra input channels of the network, so the network refines what the target's own forest sees.
The base model is not pretrained with them: the first convolution gets ``K`` more input channels whose
weights start at zero (:func:`widen`), so step 0 is exactly the base model.

No leak on the scribbled slices: the training and validation patches are cut around the scribbles, and
there a forest fitted on those very voxels is nearly always right. The scribbled slices are split into
``autocontext_folds`` folds (every ``folds``-th slice); the channels of a scribbled slice and of its
``halo`` neighbours (the 2.5D context) come from a forest fitted **without that fold's slices**
(out-of-fold). Everywhere else (prediction) they come from the forest fitted on all scribbles, which the
checkpoint carries packed (top-level ``blend`` tensors, described by ``meta["autocontext"]``;
:func:`seglearn.segment.blend.context_from_checkpoint`), so ``predict.py ckpt=...`` recomputes them.
The synthetic phantom patches of each batch get uninformative channels (``1 / K``), and a share
``autocontext_dropout`` of the user's patches too, so the image pathway keeps being trained. The new weights
learn ``autocontext_lr`` times faster than the rest (:class:`seglearn.pretrain.ft_lit.FinetuneModule`).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Mapping, Sequence

import numpy as np

from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.errors import InputError
from seglearn.features.stack import FeatureStack, training_samples
from seglearn.pretrain.blend import _cpus, _fit, _spec, forest_config, pack
from seglearn.segment import forest_pack
from seglearn.segment.adapt import update_statistics

log = logging.getLogger("seglearn")

#: the settings of ``configs/finetune/default.yaml`` this module reads (checked by :func:`check_settings`)
KEYS = ("autocontext", "autocontext_folds", "autocontext_dropout", "autocontext_lr")


def check_mode(mode) -> str:
    """``on`` or ``off`` (booleans as YAML reads ``on`` / ``off``)."""
    m = {True: "on", False: "off"}.get(mode, mode)
    if m not in ("on", "off"):
        raise InputError(f"finetune.autocontext={mode!r}: expected on or off")
    return str(m)


def check_settings(s: Mapping) -> str:
    """The mode, after checking the ``autocontext*`` settings (one-line errors)."""
    mode = check_mode(s["autocontext"])
    folds, drop = s["autocontext_folds"], s["autocontext_dropout"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise InputError(f"finetune.autocontext_folds={folds!r}: expected an integer >= 2")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0.0 <= float(drop) < 1.0:
        raise InputError(f"finetune.autocontext_dropout={drop!r}: expected a number in [0, 1)")
    lr = s["autocontext_lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not float(lr) > 0:
        raise InputError(f"finetune.autocontext_lr={lr!r}: expected a number > 0")
    if mode == "on" and bool(s["freeze_encoder"]):
        raise InputError("finetune.autocontext=on does not combine with finetune.freeze_encoder=true (the forest "
                         "channels' first-layer weights would stay 0); set one of them off")
    if mode == "on" and str({True: "auto", False: "off"}.get(s["selftrain"], s["selftrain"])) != "off":
        raise InputError("finetune.autocontext=on does not combine with finetune.selftrain=auto; set one of them off")
    return mode


def fold_slices(train: np.ndarray, folds: int) -> list[list[int]]:
    """The scribbled slices of ``train (Z, Y, X)`` in ``min(folds, n)`` folds: every ``folds``-th slice."""
    zs = [int(z) for z in np.unique(np.nonzero(train)[0])]
    n = min(int(folds), len(zs))
    return [zs[i::n] for i in range(n)]


class Context:
    """The forest channels of one dataset: computed per slice on demand, cached in :attr:`probs`.

    Attributes
    ----------
    probs : (K, Z, Y, X) float32 ndarray
        The channels; ``1 / K`` on slices not computed yet.
    arrays, meta
        The forest fitted on all scribbles, packed (:func:`seglearn.pretrain.blend.pack`), and its
        ``meta["autocontext"]`` entry.
    oof : dict of int to int
        Slice -> fold whose out-of-fold forest gives its channels (scribbled slices and their neighbours).
    """

    def __init__(self, stack, k: int, arrays: dict, meta: dict, fold_packs: list, oof: dict, threads: int):
        self.stack, self.k, self.arrays, self.meta = stack, int(k), arrays, meta
        self.fold_packs, self.oof, self.threads = fold_packs, oof, int(threads)
        self.probs = np.full((self.k, *stack.shape), 1.0 / self.k, np.float32)
        self.done = np.zeros(stack.shape[0], bool)

    @property
    def channels(self) -> list[str]:
        return list(self.meta["channels"])

    def ensure(self, zs: Sequence[int]) -> np.ndarray:
        """Compute the channels of the slices ``zs`` not computed yet; returns :attr:`probs`."""
        for z in sorted({int(z) for z in zs if 0 <= int(z) < len(self.done)}):
            if self.done[z]:
                continue
            packed = self.fold_packs[self.oof[z]] if z in self.oof else self.arrays
            p = forest_pack.proba(packed, self.stack.compute_samples(z, z + 1), threads=self.threads)
            self.probs[:, z] = p.T.reshape(self.k, *self.stack.shape[1:])
            self.done[z] = True
        return self.probs

    def tensors(self) -> dict:
        """The packed forest as checkpoint tensors (top-level ``blend`` entry)."""
        import torch

        return {k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()}


def fit_context(raw: np.ndarray, detectors: Sequence[str], train: np.ndarray, k: int, s: Mapping, *, halo: int,
                voxel_size_nm=None) -> Context:
    """Fit the forest on all scribbles and one per fold without that fold's slices; compute the channels of
    the scribbled slices and their ``halo`` neighbours (out-of-fold).

    Parameters
    ----------
    raw : (C, Z, Y, X) ndarray
        The detectors on the base model's grey scale (what the blend's forest reads).
    train : (Z, Y, X) uint8
        All scribbles ``1..k``.
    s : mapping
        Fine-tuning settings (``blend_forest``, ``blend_trees``, ``autocontext_folds``, ``seed``, ``threads``).
    """
    n_scribbled = len(np.unique(np.nonzero(train)[0]))
    if n_scribbled < 2:
        raise InputError(f"finetune.autocontext=on needs scribbles on at least 2 slices (out-of-fold forests), "
                         f"got {n_scribbled}; scribble another slice or set finetune.autocontext=off")
    t0 = time.perf_counter()
    threads, seed = int(s["threads"] or 0) or _cpus(), int(s["seed"])
    cfg = forest_config(str(s["blend_forest"]), detectors, s.get("blend_trees"))
    stack = FeatureStack(raw, detectors, cfg["features"], voxel_size_nm)
    x_all, y_all = training_samples(stack, train, max_chunk_mb=cfg["max_chunk_mb"])  # C order of train > 0
    z_row = np.nonzero(train)[0]
    full = _fit(x_all, y_all, cfg, seed=seed, threads=threads)  # the blend's final forest, the same fit
    folds = fold_slices(train, int(s["autocontext_folds"]))
    packs, oof = [], {}
    scribbled = sorted(z for f in folds for z in f)
    for i, f in enumerate(folds):
        keep = ~np.isin(z_row, f)
        packs.append(pack(_fit(x_all[keep], y_all[keep], cfg, seed=seed, threads=threads), k))
    n_z = train.shape[0]
    for z in range(n_z):  # the nearest scribbled slice within halo decides the fold
        near = [(abs(z - zs), zs) for zs in scribbled if abs(z - zs) <= halo]
        if near:
            zs = min(near)[1]
            oof[z] = next(i for i, f in enumerate(folds) if zs in f)
    arrays = pack(full, k)
    meta = {**_spec(full, cfg, detectors, int(k), voxel_size_nm), "forest": str(s["blend_forest"]), "folds": folds,
            "channels": [f"forest_p{c + 1}" for c in range(k)]}
    ctx = Context(stack, k, arrays, meta, packs, oof, threads)
    ctx.ensure(sorted(oof))
    log.info("auto-context: forest on %d scribbled voxels, %d out-of-fold forests over slices %s, channels of %d "
             "slices in %.0f s", len(y_all), len(folds), folds, len(oof), time.perf_counter() - t0)
    return ctx


def widen(net, extra: int) -> None:
    """Give ``net`` (a :class:`~seglearn.segment.net.SegNet`) ``extra`` more input channels per slice, their
    first-convolution weights zero: its output is unchanged whatever those channels hold."""
    import torch

    conv = net.unet.down[0].body[0] if net.unet.depth else net.unet.bottom.body[0]
    w = 2 * net.k + 1 if net.mode != "3d" else 1
    old = conv.weight.data
    new = torch.zeros(old.shape[0], old.shape[1] + extra * w, *old.shape[2:], dtype=old.dtype)
    new[:, :old.shape[1]] = old  # channel index c * w + j (net.py's unfold): the new channels come last
    conv.weight = torch.nn.Parameter(new)
    conv.in_channels = new.shape[1]


def uninformative(x: np.ndarray, k: int) -> np.ndarray:
    """A patch ``(C, Z, P, P)`` with ``k`` channels ``1 / k`` appended (what the forest says knowing nothing)."""
    return np.concatenate([x, np.full((k, *x.shape[1:]), 1.0 / k, np.float32)]).astype(np.float32, copy=False)


def adapt_bn_inputs(ckpt, x: np.ndarray, centres: Sequence[int], *, alpha: float, n_batches: int = 100,
                    batch_size: int = 8, patch: int = 80, seed: int = 0) -> dict:
    """``adapt_bn`` of an auto-context checkpoint on prepared inputs ``x (C + K, Z, Y, X)``: patches centred on
    ``centres`` (the slices whose channels are computed); rewrites ``ckpt`` keeping its forest tensors."""
    from seglearn.segment.net import build_net

    t0 = time.perf_counter()
    ck = load_checkpoint(ckpt, kind="unet")
    net = build_net(ck["meta"]["net"])
    net.load_state_dict({k[4:] if k.startswith("net.") else k: v for k, v in ck["state_dict"].items()})
    rng = np.random.default_rng(seed)
    _, z_n, y_n, x_n = x.shape
    py, px, h = min(patch, y_n), min(patch, x_n), int(net.halo)

    def one():
        z = int(centres[int(rng.integers(len(centres)))])
        oy, ox = int(rng.integers(y_n - py + 1)), int(rng.integers(x_n - px + 1))
        idx = np.clip(np.arange(z - h, z + h + 1), 0, z_n - 1)
        return x[:, idx, oy:oy + py, ox:ox + px]

    state, shift = update_statistics(net, (one() for _ in itertools.count()), alpha=alpha, n_batches=n_batches,
                                     batch_size=batch_size)
    info = {"alpha": alpha, "patches": n_batches * batch_size, "patch": py,
            "shift": shift, "seconds": round(time.perf_counter() - t0, 1),
            "centres": "the slices with forest channels (scribbled slices and their neighbours)"}
    meta = ck["meta"]
    meta.setdefault("finetune", {})["adapt_bn"] = info
    save_checkpoint(ckpt, kind="unet", state_dict=state, meta=meta, blend=ck.get("blend"), overwrite=True)
    log.info("BatchNorm statistics moved %.0f %% of the way to the dataset's (%d patches, auto-context inputs) in "
             "%.0f s", 100 * alpha, info["patches"], info["seconds"])
    return info


def store(ckpt, ctx: Context) -> None:
    """Put the context forest into ``ckpt`` (rewritten): ``meta["autocontext"]`` and the ``blend`` tensors.

    A blend forest already stored there (weight < 1) is the same fit; anything else is refused."""
    ck = load_checkpoint(ckpt, kind="unet", validate=False)
    old = ck.get("blend")
    if old is not None and not all(np.array_equal(old[k].numpy(), np.asarray(v)) for k, v in ctx.arrays.items()):
        raise InputError(f"{ckpt}: its blend forest differs from the auto-context forest")
    meta = dict(ck["meta"])
    meta["autocontext"] = dict(ctx.meta)
    save_checkpoint(ckpt, kind="unet", state_dict=ck["state_dict"], meta=meta, blend=ctx.tensors(), overwrite=True)
