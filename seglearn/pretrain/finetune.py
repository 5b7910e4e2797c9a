"""Adaptation of a pretrained base model to a dataset's scribbles.

``python train.py data.root=DATASET init=checkpoints/fibsem_base.ckpt [+finetune.KEY=VALUE]``
lands in :func:`train`. What keeps pretraining from being forgotten when the scribbles lie inside
regions (no boundary, no thin carbon-binder ever labelled):

- every batch mixes the user's labelled patches with densely labelled synthetic patches from the
  randomised phantom stream (``synth_fraction``), in one forward pass (shared BatchNorm stats);
- a lower learning rate than pretraining, optionally a frozen encoder;
- validation on ``labels/test.tif`` when present, else on held-out scribbles (tiles of the
  labelled slices), *starting at step 0*: the kept weights are the best seen, so on the validation
  data the fine-tuned model is never worse than the base model zero-shot; early stopping on it.

Rules (documented in ``docs/pretrain.md``):

- **Detectors.** A base model needs its detectors (``fibsem_base``: SE2 and InLens, plus the
  SE2-InLens difference). A dataset with fewer detectors is refused with a message naming the
  single-detector base model; ``fibsem_base_1det`` takes any one detector (``detector=`` picks
  which when the dataset has several; default the first) and the fine-tuned checkpoint records
  that detector's name.
- **Classes.** When the dataset has the base model's three classes (pore, carbon_binder,
  active_material) the head is kept. Otherwise (e.g. 2 classes) a new head is made, fitted as a
  linear probe (logistic regression) on the base model's frozen features under the scribbles
  (``class_map`` records which base class each dataset class resembles), and the old 3-class head
  stays as an auxiliary head trained on the synthetic batches.
- **Grey levels.** Base models read 8-bit grey values on a fixed scale; other data (0..1 floats,
  16-bit, signed) are mapped onto it by :func:`scaled_inputs` (:mod:`seglearn.io.intensity`, the
  rule ``predict.py`` applies too); the decision goes to ``finetune_summary.json``.
- **Noise.** A detector noisier (relative to its class contrast under the scribbles) than 90 % of
  the base model's phantoms is smoothed in-plane down to their median noise
  (:mod:`seglearn.pretrain.noise`, ``denoise: auto``); the smoothing is stored in the checkpoint
  and applied before every prediction.
- **BatchNorm statistics.** With the base head kept, the running statistics end up describing
  batches half synthetic; afterwards they are moved halfway to the dataset's own
  (:mod:`seglearn.pretrain.adapt`, ``adapt_bn: auto``). With a new head they stay frozen at the
  base model's (``freeze_bn: auto``) and are not moved.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from seglearn.errors import InputError, OutputExistsError, SeglearnError
from seglearn.pretrain.blend import defaults as blend_defaults
from seglearn.precision import precision_record, resolve_bf16
from seglearn.pretrain.rules import (
    _user_patch,
    class_map,
    class_medians,
    predict_slices,
    probe_head,
    resolve_classes,
    scaled_inputs,
    split_scribbles,
)

log = logging.getLogger("seglearn")

DEFAULTS: dict[str, Any] = {
    "max_steps": 300, "max_minutes": 8.0, "lr": 3e-4, "weight_decay": 1e-4, "batch_size": 8,
    "synth_fraction": 0.5, "synth_weight": 1.0, "freeze_encoder": False, "val_every": 25, "patience": 6,
    "patch": 80, "detector": None, "val_fraction": 0.25, "val_tile": 32, "seed": 0, "threads": 0, "bf16": "auto",
    "phantom_shape": [20, 80, 80], "cache": 4, "reuse": 64, "keep_best": True, "match": 0.0, "distill": 1.0,
    "match_geometry": False, "ranges": None, "runs": "auto", "denoise": "auto",
    "freeze_bn": "auto", "adapt_bn": "auto",
}
DEFAULTS.update(blend_defaults())  # the blend settings' one home is configs/pretrain/finetune.yaml
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "finetune.yaml"


def settings_from(overrides: Mapping | None) -> dict:
    """:data:`DEFAULTS` updated by ``overrides`` (unknown keys refused)."""
    from seglearn.config import merge_settings

    return merge_settings(DEFAULTS, overrides, "finetune")


# ----------------------------------------------------------------------------------- rules
AUTO_RUNS = 3


def _adapt(ckpt: Path, images: np.ndarray, detectors: Sequence[str], s: Mapping, *, frozen: bool) -> dict | None:
    """``adapt_bn`` of the settings ``s`` applied to the written checkpoint (None when off)."""
    from seglearn.pretrain.adapt import adapt_bn, resolve_alpha

    alpha = resolve_alpha(s["adapt_bn"], frozen)
    if alpha <= 0:
        return None
    return adapt_bn(ckpt, images, detectors, alpha=alpha, patch=int(s["patch"]), seed=int(s["seed"]))


def _judge_split(train: np.ndarray, test: np.ndarray | None, s: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The scribbles the first run trained on and the labels it validated on (as :func:`finetune` splits)."""
    train = np.asarray(train).astype(np.uint8)
    if test is not None and (np.asarray(test) > 0).any():
        return train, np.asarray(test).astype(np.uint8)
    return split_scribbles(train, fraction=float(s["val_fraction"]), tile=int(s["val_tile"]), seed=int(s["seed"]))


def finetune_runs(init: str | Path, images: np.ndarray, detectors: Sequence[str], train: np.ndarray,
                  out_dir: str | Path, *, settings: Mapping, overwrite: bool = False, **kwargs) -> dict:
    """``settings["runs"]`` fine-tunings (seeds ``seed, seed + 1, ...``: each its own held-out
    scribbles, patches and synthetic stream), averaged into ``out_dir/best.ckpt``.

    The runs share the wall-clock budget (``max_minutes / runs`` each) and are kept in
    ``out_dir/runs/run<i>``; the average is a "soup" of models fine-tuned from the same base
    (:func:`seglearn.pretrain.soup.average_checkpoints`), one network at prediction time.
    Arguments as :func:`finetune`; returns its keys, with ``steps`` summed, ``best_step`` a list,
    ``val_awe_zero_shot`` and ``best_val_awe`` means over the runs, and ``runs`` each run's result.
    """
    from seglearn.pretrain.blend import attach as attach_blend
    from seglearn.pretrain.soup import average_checkpoints

    s = settings_from(settings)
    n = int(s["runs"])
    out_dir = Path(out_dir)
    if (out_dir / "best.ckpt").exists() and not overwrite:
        raise OutputExistsError(f"{out_dir}: already holds best.ckpt; pass overwrite=true to replace it")
    t0 = time.perf_counter()
    results = []
    on_step = kwargs.pop("on_step", None)
    for i in range(n):
        log.info("fine-tuning run %d of %d (seed %d)", i + 1, n, int(s["seed"]) + i)
        run = {**s, "runs": 1, "seed": int(s["seed"]) + i, "max_minutes": float(s["max_minutes"]) / n,
               "adapt_bn": "off", "blend": "off"}  # the average is adapted and blended once, below
        hook = None if on_step is None else (lambda info, i=i: on_step({**info, "run": i, "runs": n}))
        results.append(finetune(init, images, detectors, train, out_dir / "runs" / f"run{i}", settings=run,
                                overwrite=True, on_step=hook, **kwargs))
        if results[-1].get("stopped"):  # stopped by on_step: average the runs done so far
            break
    if len(results) > 1:
        ck = average_checkpoints([r["best_ckpt"] for r in results], out_dir / "best.ckpt", overwrite=True,
                                 section="finetune")
    else:  # stopped during the first run: its best weights are the model
        import shutil

        from seglearn.io.atomic import atomic_path

        ck = out_dir / "best.ckpt"
        with atomic_path(ck, overwrite=True) as tmp:
            shutil.copyfile(results[0]["best_ckpt"], tmp)
    from seglearn.ckpt import load_checkpoint

    raw, names, _ = scaled_inputs(load_checkpoint(init, kind="unet"), images, detectors, detector=s["detector"],
                                  name=str(kwargs.get("name", "dataset")))
    adapted = _adapt(ck, raw, names, s, frozen=bool(results[0]["freeze_bn"]))
    blended = None
    if not results[-1].get("stopped"):  # judged by the first run's network on the scribbles it held out
        fit, val = _judge_split(train, kwargs.get("test"), s)
        blended = attach_blend(ck, raw, names, np.asarray(train).astype(np.uint8), fit_labels=fit, val_labels=val,
                               judge_ckpt=results[0]["best_ckpt"], settings=s,
                               voxel_size_nm=kwargs.get("voxel_size_nm"))
    keep = ("steps", "best_step", "best_val_awe", "val_awe_zero_shot", "seconds")
    result = {"best_ckpt": str(ck), "val_source": results[0]["val_source"],
              "val_awe_zero_shot": round(float(np.mean([r["val_awe_zero_shot"] for r in results])), 3),
              "best_val_awe": round(float(np.mean([r["best_val_awe"] for r in results])), 3),
              "best_step": [r["best_step"] for r in results], "steps": int(sum(r["steps"] for r in results)),
              "seconds": round(time.perf_counter() - t0, 1), "class_map": results[0]["class_map"],
              "denoise": results[0]["denoise"], "freeze_bn": results[0]["freeze_bn"], "adapt_bn": adapted,
              "runs": [{k: r[k] for k in keep} for r in results], "stopped": bool(results[-1].get("stopped")),
              "intensity": results[0]["intensity"], "blend": blended}
    (out_dir / "finetune_summary.json").write_text(json.dumps(result, indent=2))
    log.info("averaged %d fine-tuned runs in %.0f s (best steps %s): wrote %s", n, result["seconds"],
             result["best_step"], ck)
    return result


def finetune(init: str | Path, images: np.ndarray, detectors: Sequence[str], train: np.ndarray, out_dir: str | Path, *,
             classes: Sequence[str] | None = None, voxel_size_nm: Sequence[float] | None = None,
             test: np.ndarray | None = None, settings: Mapping | None = None, overwrite: bool = False,
             name: str = "arrays", preprocess: Mapping | None = None,
             on_step: Callable[[dict], bool | None] | None = None) -> dict:
    """Fine-tune a base model on sparse labels; writes ``out_dir/best.ckpt`` (``kind="unet"``).

    Parameters
    ----------
    init : path-like
        A base checkpoint (``checkpoints/fibsem_base*.ckpt``) or any U-Net checkpoint.
    images : (C, Z, Y, X) ndarray
        Raw detector images.
    detectors : sequence of str
        Names of the channels of ``images``.
    train : (Z, Y, X) int ndarray
        Scribbles, 0 = unlabelled, ``1..K``.
    out_dir : path-like
    classes : sequence of str, optional
        Names of ``1..K`` (default: the base model's when K matches, else ``class1..``).
    test : (Z, Y, X) int ndarray, optional
        Dense validation labels (a test slice); else scribbles are held out.
    settings : mapping, optional
        Keys of :data:`DEFAULTS`.
    preprocess : mapping, optional
        The checkpoint entry of the preprocessing already applied to ``images`` and the labels
        (:func:`seglearn.preprocess.stage.preprocess_loaded`); ``predict.py`` re-applies it.
    on_step : callable, optional
        Called after every step with ``{"step", "max_steps", "loss"}`` (+ ``"run", "runs"`` when
        several runs are averaged); returning True stops training there (the best weights so far
        are kept and written, ``stopped`` is True in the result). The napari widget's progress bar
        and Cancel button.

    Returns
    -------
    dict
        ``best_ckpt``, ``val_awe_zero_shot``, ``best_val_awe``, ``best_step``, ``steps``, ``seconds``,
        ``class_map``, ``val_source``, ``stopped``.
    """
    import copy

    import torch

    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.segment.calibrate import calibration_record

    s = settings_from(settings)
    from seglearn.pretrain.blend import check_mode

    check_mode(s["blend"])  # a bad setting fails before the training
    ck = load_checkpoint(init, kind="unet")
    base_meta = ck["meta"]
    if s["runs"] == "auto":  # several runs averaged only where the base model's head is kept
        base_classes = list(base_meta["classes"])
        s["runs"] = AUTO_RUNS if resolve_classes(base_classes, np.asarray(train), test, classes) == base_classes else 1
    if int(s["runs"]) > 1:
        return finetune_runs(init, images, detectors, train, out_dir, classes=classes, voxel_size_nm=voxel_size_nm,
                             test=test, settings=s, overwrite=overwrite, name=name, preprocess=preprocess,
                             on_step=on_step)

    from seglearn.metrics import score
    from seglearn.pretrain.blend import attach as attach_blend
    from seglearn.pretrain.noise import resolve_smoothing
    from seglearn.pretrain.stream import PhantomPatchStream
    from seglearn.pretrain.train import make_randomiser
    from seglearn.segment.channels import apply_normalisation, compute_channels
    from seglearn.segment.net import build_net

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if (out_dir / "best.ckpt").exists() and not overwrite:
        raise OutputExistsError(f"{out_dir}: already holds best.ckpt; pass overwrite=true to replace it")
    if int(s["threads"] or 0) > 0:
        torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(int(s["seed"]))
    rng = np.random.default_rng(int(s["seed"]))
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    train = np.asarray(train).astype(np.uint8)
    if images.ndim != 4 or images.shape[0] != len(detectors) or images.shape[1:] != train.shape:
        raise InputError(f"finetune: images {images.shape}, labels {train.shape} and detectors {list(detectors)} "
                         f"do not agree; expected (C, Z, Y, X) and (Z, Y, X)")
    if not (train > 0).any():
        raise InputError(f"{name}: the training labels hold no scribble (all 0)")
    base_classes = list(base_meta["classes"])
    classes = resolve_classes(base_classes, train, test, classes)
    k_user = len(classes)
    same_head = classes == base_classes

    # channels on the base model's scale
    raw, names, intensity = scaled_inputs(ck, images, detectors, detector=s["detector"], name=name)
    base_dets, derived = list(base_meta["detectors"]), list(base_meta.get("derived", []))
    ranges = [[float(v) for v in r] for r in base_meta["normalisation"]["ranges"]]
    smooth, noise_info = resolve_smoothing(s["denoise"], base_meta, raw, train)
    if any(v > 0 for v in smooth):
        log.info("%s: smoothing the detectors %s in-plane with sigma %s px (%s)", name, base_dets, smooth,
                 ", ".join(f"{k} {v}" for k, v in noise_info.items() if k != "sigma"))
    x = apply_normalisation(compute_channels(raw, base_dets, derived, smooth), ranges)
    net_cfg = dict(base_meta["net"])
    halo = int(net_cfg.get("context", 0)) if net_cfg.get("mode") == "2.5d" else 0
    if net_cfg.get("mode") == "3d":
        raise InputError(f"{init}: fine-tuning supports 2d / 2.5d base models, this one is 3d")
    base_net = build_net(net_cfg)
    base_net.load_state_dict({k[4:] if k.startswith("net.") else k: v for k, v in ck["state_dict"].items()})
    base_net.eval()

    # validation data
    if test is not None and (np.asarray(test) > 0).any():
        fit_labels, val_labels, val_source = train, np.asarray(test).astype(np.uint8), "test"
    else:
        fit_labels, val_labels = split_scribbles(train, fraction=float(s["val_fraction"]), tile=int(s["val_tile"]),
                                                 seed=int(s["seed"]))
        val_source = "held-out scribbles"
    val_z = [int(z) for z in np.unique(np.nonzero(val_labels)[0])]

    # the network: same head, or a new head initialised from the class map (+ the old head as auxiliary)
    cmap = list(range(k_user)) if same_head else class_map(base_net, x, fit_labels, k_user, halo)
    net = build_net({**net_cfg, "n_classes": k_user})
    state = base_net.state_dict()
    if same_head:
        net.load_state_dict(state)
        aux = None
    else:
        hw = state["unet.head.weight"]
        pw, pb = probe_head(base_net, x, fit_labels, k_user, halo, seed=int(s["seed"]))
        body = {k: v for k, v in state.items() if not k.startswith("unet.head.")}
        body["unet.head.weight"] = torch.from_numpy(pw).reshape(k_user, *hw.shape[1:]).to(hw.dtype)
        body["unet.head.bias"] = torch.from_numpy(pb).to(hw.dtype)
        net.load_state_dict(body)
        aux = copy.deepcopy(base_net.unet.head)
    feats = {}
    net.unet.head.register_forward_hook(lambda m, inp, out: feats.__setitem__("x", inp[0]))
    frozen = []
    if s["freeze_encoder"]:
        frozen = [*net.unet.down, net.unet.bottom]
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad] + ([] if aux is None else list(aux.parameters()))
    opt = torch.optim.AdamW(params, lr=float(s["lr"]), weight_decay=float(s["weight_decay"]))

    # synthetic stream with the base model's detectors (the ranges it was pretrained on)
    n_syn = int(round(float(s["synth_fraction"]) * int(s["batch_size"])))
    n_user = max(1, int(s["batch_size"]) - n_syn)
    patch = int(s["patch"])
    stream = None
    if n_syn > 0:
        pre = dict(base_meta.get("pretrain") or {})
        syn_ranges = {**dict(pre.get("ranges") or {}), **dict(s.get("ranges") or {})}
        if s.get("match_geometry") and voxel_size_nm is not None:
            # the dataset's voxel size is known: draw phantoms at it (in-plane size and anisotropy)
            vz, vy, vx = (float(v) for v in voxel_size_nm)
            xy = 0.5 * (vy + vx)
            syn_ranges.update(voxel_xy_nm=[xy, xy], anisotropy=[vz / xy, vz / xy])
        rnd = make_randomiser({"detectors": base_dets, "ranges": syn_ranges, "sources": None,
                               "p_real": pre.get("p_real", 0.3), "p_flat": pre.get("p_flat", 0.15),
                               "p_family_b": pre.get("p_family_b", 0.0),
                               "phantom_shape": s["phantom_shape"]})
        target = class_medians(x[:len(base_dets)], fit_labels, len(base_classes)) if same_head else None
        stream = iter(PhantomPatchStream(rnd, derived=derived, patch=min(patch, *rnd.shape[1:]), halo=halo,
                                         cache=int(s["cache"]), reuse=int(s["reuse"]), seed=int(s["seed"]) + 1,
                                         match=target, p_match=float(s["match"])))
        patch = min(patch, *rnd.shape[1:])
    coords = np.argwhere(fit_labels > 0)
    bf16 = resolve_bf16(s["bf16"], "cpu")  # auto: only where the CPU runs bf16 natively

    bn_types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    # a new head (other classes, other imaging): batches half synthetic FIB-SEM, half the user's data give
    # BatchNorm statistics that fit neither, and validation swung between 2 and 47 % on the micrograph
    freeze_bn = (not same_head) if str(s["freeze_bn"]) == "auto" else bool(s["freeze_bn"])

    def train_mode() -> None:
        """Training mode, except the frozen encoder and (``freeze_bn``) the BatchNorm statistics."""
        net.train()
        for m in frozen:
            m.eval()
        if freeze_bn:
            for m in net.modules():
                if isinstance(m, bn_types):
                    m.eval()

    def validate() -> float:
        net.eval()
        logits = predict_slices(net, x, val_z, halo, bf16=bf16)
        pred = (logits.argmax(1) + 1).astype(np.uint8)
        train_mode()
        return float(score(pred, val_labels[val_z], k_user)["awe"])

    budget = float(s["max_minutes"]) * 60.0
    distill = float(s["distill"]) if same_head else 0.0
    max_steps, every, patience = int(s["max_steps"]), int(s["val_every"]), int(s["patience"])
    zero_shot = validate()
    best, best_step, best_state, bad = zero_shot, 0, copy.deepcopy(net.state_dict()), 0
    history = [{"step": 0, "val_awe": round(zero_shot, 3)}]
    log.info("fine-tuning %s on %s (%d classes, %s, val on %s): zero-shot validation awe %.2f %%", init, name, k_user,
             "same head" if same_head else f"new head (linear probe; resembles base classes {cmap})", val_source, zero_shot)
    train_mode()
    step, stopped = 0, False
    while step < max_steps and time.perf_counter() - t0 < budget and not stopped:
        ub = [_user_patch(x, fit_labels, coords, patch, halo, rng) for _ in range(n_user)]
        sb = [next(stream) for _ in range(n_syn)] if stream is not None else []
        xb = torch.from_numpy(np.stack([b[0] for b in ub + sb]))
        yu = torch.from_numpy(np.stack([b[1] for b in ub]).astype(np.int64)) - 1  # -1 = unlabelled
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(xb)
        loss = torch.nn.functional.cross_entropy(logits[:n_user].float(), yu, ignore_index=-1)
        if distill > 0:
            # learning without forgetting: on the user's unlabelled voxels stay close to the base model
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                teacher = base_net(xb[:n_user])
            log_t = torch.log_softmax(teacher.float(), 1)
            log_s = torch.log_softmax(logits[:n_user].float(), 1)
            kl = (log_t.exp() * (log_t - log_s)).sum(1)  # (n_user, Z', Y, X)
            free = (yu < 0).float()
            loss = loss + distill * (kl * free).sum() / free.sum().clamp_min(1.0)
        if sb:
            ys = torch.from_numpy(np.stack([b[1] for b in sb])) - 1
            if aux is None:
                ls = logits[n_user:].float()
            else:
                f = feats["x"]  # (B * Z, F, Y, X) in 2d / 2.5d
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    ls = aux(f).float()
                ls = ls.reshape(len(ub) + len(sb), -1, ls.shape[1], *ls.shape[2:]).permute(0, 2, 1, 3, 4)[n_user:]
            loss = loss + float(s["synth_weight"]) * torch.nn.functional.cross_entropy(ls, ys)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        stopped = bool(on_step is not None and on_step({"step": step, "max_steps": max_steps,
                                                        "loss": float(loss.detach())}))
        if stopped:
            log.info("fine-tuning stopped at step %d by the caller", step)
        if step % every == 0 or step == max_steps or (stopped and step % every):
            awe = validate()
            history.append({"step": step, "val_awe": round(awe, 3), "loss": round(float(loss.detach()), 4)})
            log.info("step %d (%.0f s): loss %.4f, validation awe %.2f %%", step, time.perf_counter() - t0,
                     float(loss.detach()), awe)
            if awe < best - 1e-6:
                best, best_step, best_state, bad = awe, step, copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
                if patience and bad >= patience:
                    log.info("early stopping at step %d (best %.2f %% at step %d)", step, best, best_step)
                    break
    if step == 0:  # the "fine-tuned" model would be the base model: no false success (issue 25)
        raise SeglearnError(f"{out_dir}: fine-tuning ran 0 steps; nothing was saved (max_minutes "
                            f"{s['max_minutes']} used up before the first step? check max_minutes and max_steps)")
    if s["keep_best"]:
        net.load_state_dict(best_state)
    else:  # naive fine-tuning (for comparison): the last weights, whatever the validation says
        best, best_step = history[-1]["val_awe"], step
    seconds = time.perf_counter() - t0
    meta = copy.deepcopy(dict(base_meta))
    meta["net"] = {**net_cfg, "n_classes": k_user}
    meta["detectors"] = list(names)
    meta["derived"] = [f"{names[base_dets.index(a)]}-{names[base_dets.index(b)]}" for a, b in
                       (d.split("-") for d in derived)]
    meta["channels"] = meta["detectors"] + meta["derived"]
    meta["normalisation"] = {"method": base_meta["normalisation"].get("method", "fixed"),
                             "percentiles": base_meta["normalisation"].get("percentiles"), "ranges": ranges}
    if any(v > 0 for v in smooth):
        meta["normalisation"]["smooth"] = [float(v) for v in smooth]
    meta["classes"] = classes
    if voxel_size_nm is not None:
        meta["voxel_size_nm"] = [float(v) for v in voxel_size_nm]
    result = {"best_ckpt": str(out_dir / "best.ckpt"), "val_source": val_source, "val_awe_zero_shot": round(zero_shot, 3),
              "best_val_awe": round(best, 3), "best_step": best_step, "steps": step, "seconds": round(seconds, 1),
              "class_map": None if same_head else [base_classes[c] for c in cmap], "history": history,
              "denoise": noise_info, "freeze_bn": freeze_bn, "precision": precision_record("cpu", bf16),
              "stopped": stopped, "intensity": intensity}
    meta["train"] = {"dataset": name, "seed": int(s["seed"]), "val_source": val_source,
                     "val": {"awe": round(best, 3)}, "global_step": step}
    meta["finetune"] = {"init": str(init), "settings": {k: v for k, v in s.items()}, **{k: v for k, v in result.items()
                                                                                          if k != "best_ckpt"}}
    meta["preprocess"] = dict(preprocess) if preprocess else None
    net.eval()  # temperature fitted on the held-out labels, applied by the Segmenter (seglearn/segment/calibrate.py)
    meta["calibration"] = calibration_record(predict_slices(net, x, val_z, halo, bf16=bf16), val_labels[val_z], axis=1,
                                             source=val_source)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "best.ckpt", kind="unet", state_dict=net.state_dict(), meta=meta, overwrite=True)
    result["adapt_bn"] = _adapt(out_dir / "best.ckpt", raw, names, s, frozen=freeze_bn)
    result["blend"] = None if stopped else attach_blend(
        out_dir / "best.ckpt", raw, names, train, fit_labels=fit_labels, val_labels=val_labels,
        judge_ckpt=out_dir / "best.ckpt", settings=s, voxel_size_nm=voxel_size_nm)
    (out_dir / "finetune_summary.json").write_text(json.dumps(result, indent=2))
    log.info("fine-tuned in %.0f s (%d steps): validation awe %.2f %% (zero-shot %.2f %%, best at step %d); wrote %s",
             seconds, step, best, zero_shot, best_step, out_dir / "best.ckpt")
    return result


def train(cfg) -> dict:
    """Entry point of ``train.py data.root=DATASET init=BASE.ckpt`` (settings: ``configs/pretrain/finetune.yaml``,
    overridden by ``+finetune.KEY=VALUE``)."""
    from omegaconf import OmegaConf

    from seglearn.cli import setup_logging
    from seglearn.config import resolve_seed
    from seglearn.data import load_dataset
    from seglearn.preprocess.stage import preprocess_loaded, stage_config

    setup_logging()
    root = cfg.data.get("root")
    if not root:
        raise InputError("data.root is not set: give the dataset folder to fine-tune on, e.g. "
                         "python train.py data.root=DATASET init=checkpoints/fibsem_base.ckpt")
    s = dict(OmegaConf.to_container(OmegaConf.load(CONFIG), resolve=True)) if CONFIG.exists() else {}
    if cfg.get("finetune") is not None:
        s.update(OmegaConf.to_container(cfg.finetune, resolve=True))
    s["seed"] = resolve_seed(cfg, "finetune", int(s.get("seed", 0)))
    ds = load_dataset(root, labels=("train", "test"), require=("train",))
    pre_steps, frame = stage_config(cfg)
    entry = None
    if pre_steps:  # the same stage as training from scratch; predict.py re-applies it from the checkpoint
        ds, entry = preprocess_loaded(ds, pre_steps, labels_frame=frame)
    dets = list(cfg.data.get("detectors") or ds.detectors)
    images = ds.images[[ds.detectors.index(d) for d in dets]] if dets != list(ds.detectors) else ds.images
    out_dir = Path(str(cfg.out_dir))
    if str(cfg.out_dir) == "runs/unet":
        out_dir = Path("runs/finetune")
    result = finetune(str(cfg.init), images, dets, ds.train, out_dir, classes=ds.classes,
                      voxel_size_nm=ds.voxel_size_nm, test=ds.test, settings=s,
                      overwrite=bool(cfg.get("overwrite", False)), name=str(root), preprocess=entry)
    if not int(result.get("steps") or 0) or not Path(result["best_ckpt"]).is_file():
        raise SeglearnError(f"{out_dir}: fine-tuning ran {result.get('steps', 0)} steps but wrote no "
                            f"{Path(result['best_ckpt']).name}")
    return result
