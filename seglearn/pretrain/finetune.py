"""Adaptation of a pretrained base model to a dataset's scribbles.

``python train.py data.root=DATASET init=BASE.ckpt [finetune.KEY=VALUE] [trainer=ddp]`` lands in
:func:`train`; the settings are the ``finetune`` config group (``configs/finetune/default.yaml``, their
one home). What keeps pretraining from being forgotten when the scribbles lie inside regions (no
boundary, no thin carbon-binder ever labelled):

- every batch mixes the user's labelled patches with densely labelled synthetic patches from the
  randomised phantom stream (``synth_fraction``), in one forward pass (shared BatchNorm stats);
- a lower learning rate than pretraining, optionally a frozen encoder;
- validation on ``labels/test.tif`` when present, else on held-out scribbles (tiles of the
  labelled slices), *starting at step 0*: the kept weights are the best seen, so on the validation
  data the fine-tuned model is never worse than the base model zero-shot; early stopping on it.

The training runs on the Lightning Trainer of U-Net training and pretraining (:mod:`seglearn.pretrain.ft_lit`;
``trainer=ddp`` for several GPUs or CPU processes); what it starts from is built by
:mod:`seglearn.pretrain.ft_setup`; the model written is finished by :mod:`seglearn.pretrain.ft_final`
(BatchNorm statistics, forest blend, then the temperature on the final model).

Rules (documented in ``docs/pretrain.md``; the numeric ones in :mod:`seglearn.pretrain.rules`):

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
  16-bit, signed) are mapped onto it by :func:`~seglearn.pretrain.rules.scaled_inputs`; the decision
  goes to ``finetune_summary.json``.
- **Noise.** A detector noisier (relative to its class contrast under the scribbles) than 90 % of
  the base model's phantoms is smoothed in-plane down to their median noise
  (:mod:`seglearn.pretrain.noise`, ``denoise: auto``); the smoothing is stored in the checkpoint
  and applied before every prediction.
- **BatchNorm statistics.** With the base head kept, the running statistics end up describing
  batches half synthetic; afterwards they are moved halfway to the dataset's own
  (:mod:`seglearn.pretrain.adapt`, ``adapt_bn: auto``). With a new head they stay frozen at the
  base model's (``freeze_bn: auto``) and are not moved.
- **Runs.** ``runs: auto`` averages 3 runs (seeds ``seed, seed + 1, ...``, each its own held-out scribbles,
  patches and synthetic stream, sharing ``max_minutes``) into one network (a "soup") when the base head
  is kept; 1 run for a new head.
- **Self-training** (``selftrain: auto``; off by default). The first round (the runs above, finished) gets
  ``1 - selftrain_share`` of ``max_minutes``; where its network and the forest agree with confidence on
  slices nobody scribbled, the voxels become weighted pseudo-labels (:mod:`seglearn.pretrain.ft_selftrain`,
  :mod:`seglearn.pretrain.selftrain`), and a second round of the same loop starts from the first round's
  model with them in the user's batches (``selftrain_synth_fraction`` of each batch synthetic,
  ``selftrain_distill`` towards the first round's model), in what is left of ``max_minutes``; its last
  weights (``selftrain_keep: last``) are finished (BatchNorm, blend judged again, temperature).
  With ``selftrain_keep: best`` the held-out scribbles pick its best step, and step 0 keeps the first round.
- **Auto-context** (``autocontext: on``; off by default): the forest's class probabilities (out-of-fold on the
  scribbled slices) are extra input channels, their first-layer weights starting at zero
  (:mod:`seglearn.pretrain.autocontext`); the checkpoint carries the forest.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.config import merge_settings, resolve_seed, to_plain
from seglearn.data import load_dataset
from seglearn.errors import InputError, OutputExistsError, SeglearnError
from seglearn.log import setup_logging
from seglearn.paths import config_file, load_config
from seglearn.precision import precision_record
from seglearn.preprocess.stage import preprocess_loaded, stage_config
from seglearn.pretrain.autocontext import check_settings as check_autocontext
from seglearn.pretrain.autocontext import store as store_context
from seglearn.pretrain.blend import check_mode
from seglearn.pretrain.ft_final import finish
from seglearn.pretrain.ft_selftrain import check_mode as check_selftrain
from seglearn.pretrain.ft_selftrain import second_round
from seglearn.pretrain.ft_setup import Setup, prepare
from seglearn.pretrain.rules import resolve_classes, resolve_runs
from seglearn.pretrain.soup import soup_of_runs

log = logging.getLogger("seglearn")

#: the settings' one home: the ``finetune`` config group of ``train.yaml``
CONFIG = config_file("finetune/default.yaml")


def settings_from(overrides: Mapping | None) -> dict:
    """``configs/finetune/default.yaml`` updated by ``overrides`` (unknown keys refused); ``seed: null`` = 0."""
    s = merge_settings(load_config("finetune/default.yaml"), overrides, "finetune")
    s["seed"] = int(s["seed"] or 0)
    return s


def finetune(init: str | Path, images: np.ndarray, detectors: Sequence[str], train: np.ndarray, out_dir: str | Path, *,
             classes: Sequence[str] | None = None, voxel_size_nm: Sequence[float] | None = None,
             test: np.ndarray | None = None, settings: Mapping | None = None, overwrite: bool = False,
             name: str = "arrays", preprocess: Mapping | None = None,
             on_step: Callable[[dict], bool | None] | None = None, trainer_cfg: Mapping | None = None) -> dict:
    """Fine-tune a base model on sparse labels; writes ``out_dir/best.ckpt`` (``kind="unet"``) and
    ``out_dir/finetune_summary.json``.

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
        With several runs, each run's checkpoint goes to ``out_dir/runs/run<i>``.
    classes : sequence of str, optional
        Names of ``1..K`` (default: the base model's when K matches, else ``class1..``).
    test : (Z, Y, X) int ndarray, optional
        Dense validation labels (a test slice); else scribbles are held out.
    settings : mapping, optional
        Keys of ``configs/finetune/default.yaml``.
    preprocess : mapping, optional
        The checkpoint entry of the preprocessing already applied to ``images`` and the labels
        (:func:`seglearn.preprocess.stage.preprocess_loaded`); ``predict.py`` re-applies it.
    on_step : callable, optional
        Called after every step with ``{"step", "max_steps", "loss"}`` (+ ``"run", "runs"`` when
        several runs are averaged); returning True stops training there (the best weights so far
        are kept and written, ``stopped`` is True in the result). The napari widget's progress bar
        and Cancel button.
    trainer_cfg : mapping, optional
        The ``trainer`` config group (``lightning.Trainer`` arguments: accelerator, devices, strategy,
        precision); default one process on the best device. The budgets are the settings' own.

    Returns
    -------
    dict
        ``best_ckpt``, ``val_awe_zero_shot``, ``best_val_awe``, ``best_step``, ``steps``, ``seconds``,
        ``class_map``, ``val_source``, ``stopped``, ``adapt_bn``, ``blend``, ``calibration``; with several
        runs ``best_step`` is a list, ``steps`` a sum, the awes means and ``runs`` each run's result.
        On the other processes of a multi-process run: ``{"rank": r}``.
    """
    s = settings_from(settings)
    check_mode(s["blend"])  # a bad setting fails before the training
    selftrain = check_selftrain(s["selftrain"])
    autocontext = check_autocontext(s)
    out_dir = Path(out_dir)
    if (out_dir / "best.ckpt").exists() and not overwrite:
        raise OutputExistsError(f"{out_dir}: already holds best.ckpt; pass overwrite=true to replace it")
    ck = load_checkpoint(init, kind="unet")
    base_classes = list(ck["meta"]["classes"])
    same_head = resolve_classes(base_classes, np.asarray(train), test, classes) == base_classes
    n = s["runs"] = resolve_runs(s["runs"], same_head)
    t0 = time.perf_counter()
    kw = dict(classes=classes, test=test, voxel_size_nm=voxel_size_nm, name=name, preprocess=preprocess,
              trainer_cfg=trainer_cfg, context={} if autocontext == "on" else None)
    results, setup = _fit_runs(ck, init, images, detectors, train, out_dir, s, selftrain, on_step=on_step, kw=kw)
    if "rank" in results[0]:
        return results[0]
    ckpt = out_dir / "best.ckpt"
    result, source = _soup_and_finish(results, setup, ckpt, s, n, voxel_size_nm)
    stopped = bool(result.get("stopped"))
    if selftrain == "auto" and not stopped and int(result["precision"].get("processes", 1)) == 1:
        result.update(second_round(fit_run, ck, init, images, detectors, train, out_dir, s, setup, t0, source,
                                   {**kw, "on_step": on_step}))
    else:
        result["selftrain"] = {"mode": selftrain} if selftrain == "off" else \
            {"mode": selftrain, "skipped": "stopped by the caller" if stopped else "several processes"}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    _write_summary(out_dir, result, ckpt)
    return result


def _soup_and_finish(results: list, setup, ckpt: Path, s: Mapping, n: int, voxel_size_nm) -> tuple[dict, str]:
    """Average the runs into ``ckpt``, then BatchNorm / blend / temperature (:func:`finish`); the result and
    the validation source's description."""
    soup_of_runs([r["best_ckpt"] for r in results], ckpt, n)
    ctx = setup.extra.get("context")
    if ctx is not None:  # the soup keeps no forest tensors
        store_context(ckpt, ctx)
    stopped = bool(results[-1].get("stopped"))
    source = setup.val_source if n == 1 or not setup.val_scribbles else \
        f"{setup.val_source} of run 1 of {n} (runs 2..{n} trained on part of them)"
    done = finish(ckpt, setup.raw, setup.names, s, train=setup.extra["train"], fit_labels=setup.fit_labels,
                  val_labels=setup.val_labels, val_source=source, scribbles=setup.val_scribbles,
                  judge_ckpt=Path(results[0]["best_ckpt"]),
                  frozen=setup.freeze_bn, stopped=stopped, voxel_size_nm=voxel_size_nm,
                  context=None if ctx is None else (setup.x, sorted(z for f in ctx.meta["folds"] for z in f)))
    result = results[0] if n == 1 else _soup_result(results, ckpt, stopped)
    result.update(done)
    result["stopped"] = stopped
    if ctx is not None:
        store_context(ckpt, ctx)  # refuses a blend forest that is not the same fit
        result["autocontext"] = {k: ctx.meta[k] for k in ("forest", "trees", "folds", "channels")}
    return result, source


def _write_summary(out_dir: Path, result: Mapping, ckpt: Path) -> None:
    """``out_dir/finetune_summary.json`` and the closing log line."""
    (out_dir / "finetune_summary.json").write_text(json.dumps(result, indent=2))
    log.info("fine-tuned in %.0f s (%s steps): validation awe %.2f %% (zero-shot %.2f %%, best at step %s); wrote %s",
             result["seconds"], result["steps"], result["best_val_awe"], result["val_awe_zero_shot"],
             result["best_step"], ckpt)


def _fit_runs(ck: dict, init, images, detectors, train, out_dir: Path, s: Mapping, selftrain: str, *,
              on_step: Callable[[dict], bool | None] | None, kw: Mapping) -> tuple[list[dict], Setup]:
    """The ``s["runs"]`` fine-tunings (seeds ``seed``, ``seed + 1``, ...) sharing ``max_minutes`` (less the
    ``selftrain_share`` of a second round with ``selftrain: auto``), each into ``out_dir`` (one run) or
    ``out_dir/runs/run<i>``; stops after a run that ``on_step`` stopped.
    Returns each run's result and the first run's :class:`Setup`; ``kw``: :func:`fit_run`'s keywords."""
    n = int(s["runs"])
    minutes = float(s["max_minutes"]) * (1.0 - float(s["selftrain_share"]) if selftrain == "auto" else 1.0)
    results, setup = [], None
    for i in range(n):
        if n > 1:
            log.info("fine-tuning run %d of %d (seed %d)", i + 1, n, s["seed"] + i)
        run_s = {**s, "max_minutes": minutes} if n == 1 else {**s, "seed": s["seed"] + i, "max_minutes": minutes / n}
        hook = on_step if on_step is None or n == 1 else (lambda info, i=i: on_step({**info, "run": i, "runs": n}))
        res, st = fit_run(ck, init, images, detectors, train, out_dir if n == 1 else out_dir / "runs" / f"run{i}",
                          run_s, on_step=hook, **kw)
        results.append(res)
        setup = setup or st
        if res.get("stopped"):  # stopped by on_step: the runs done so far make the model
            break
    return results, setup


def _soup_result(results: list, ckpt: Path, stopped: bool) -> dict:
    """The summary of several averaged runs: their first run's facts, awes averaged, steps summed."""
    keep = ("steps", "best_step", "best_val_awe", "val_awe_zero_shot", "seconds")
    first = results[0]
    return {"best_ckpt": str(ckpt), "val_source": first["val_source"],
            "val_awe_zero_shot": round(float(np.mean([r["val_awe_zero_shot"] for r in results])), 3),
            "best_val_awe": round(float(np.mean([r["best_val_awe"] for r in results])), 3),
            "best_step": [r["best_step"] for r in results], "steps": int(sum(r["steps"] for r in results)),
            "class_map": first["class_map"], "denoise": first["denoise"], "freeze_bn": first["freeze_bn"],
            "precision": first["precision"], "runs": [{k: r[k] for k in keep} for r in results],
            "stopped": stopped, "intensity": first["intensity"]}


def fit_run(ck: dict, init, images, detectors, train, out_dir: Path, s: Mapping, *, classes, test, voxel_size_nm,
            name: str, preprocess, on_step, trainer_cfg, start: Mapping | None = None,
            pseudo: tuple | None = None, context: dict | None = None) -> tuple[dict, Setup | None]:
    """One fine-tuning run on the Lightning Trainer; writes ``out_dir/best.ckpt`` (the kept weights, not yet
    adapted, blended nor calibrated). Returns ``(result, setup)``; ``({"rank": r}, None)`` on other processes.

    ``start``: a state dict the network starts from (and, with the base head, the teacher of ``distill``);
    ``pseudo``: ``(labels, weights, share)`` pseudo-labels for the user's batches (self-training's second round);
    ``context``: auto-context's dict shared by the runs (:func:`seglearn.pretrain.ft_setup.prepare`)."""
    import lightning as L
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from seglearn.pretrain.ft_lit import FinetuneModule, KeepBest, MixedData
    from seglearn.pretrain.lit import trainer_kwargs

    t0 = time.perf_counter()
    if int(s["threads"] or 0) > 0:
        torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(int(s["seed"]))
    st = prepare(ck, images, detectors, train, s, classes=classes, test=test, voxel_size_nm=voxel_size_nm, name=name,
                 init=init, context=context)
    t0 += st.extra.get("context_seconds", 0.0)  # auto-context's forests are fitted outside the budget
    if start is not None:
        state = {k[4:] if k.startswith("net.") else k: v for k, v in start.items()}
        st.net.load_state_dict(state)
        if st.same_head:
            st.base_net.load_state_dict(state)
    if pseudo is not None:
        st.extra["pseudo"] = pseudo
    tr = trainer_kwargs(trainer_cfg if trainer_cfg is not None else {"enable_progress_bar": False,
                                                                     "enable_model_summary": False},
                        s, time_limit=False)
    bf16 = "bf16" in str(tr["precision"])
    module = FinetuneModule(st, lr=float(s["lr"]), weight_decay=float(s["weight_decay"]),
                            distill=float(s["distill"]) if st.same_head else 0.0,
                            synth_weight=float(s["synth_weight"]), freeze_encoder=bool(s["freeze_encoder"]))
    budget = float(s["max_minutes"]) * 60.0
    keeper = KeepBest(st, val_every=int(s["val_every"]), patience=int(s["patience"]), max_steps=int(s["max_steps"]),
                      budget_s=budget, t0=t0, on_step=on_step, bf16=bf16)
    if time.perf_counter() - t0 >= budget:
        _zero_steps(out_dir, s)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(callbacks=[keeper], logger=CSVLogger(save_dir=str(out_dir), name="logs", version=""),
                        default_root_dir=str(out_dir), enable_checkpointing=False, **tr)
    log.info("fine-tuning %s on %s (%d classes, %s, val on %s, %s, %d process(es))",
             init, name, len(st.classes), "same head" if st.same_head else
             f"new head (linear probe; resembles base classes {st.cmap})", st.val_source, tr["precision"],
             trainer.world_size)
    trainer.fit(module, datamodule=MixedData(st, int(s["seed"])))
    if not trainer.is_global_zero:
        return {"rank": int(trainer.global_rank), "stopped": keeper.stopped}, None
    if keeper.steps == 0:  # the "fine-tuned" model would be the base model: no false success (issue 25)
        _zero_steps(out_dir, s)
    if s["keep_best"]:
        st.net.load_state_dict(keeper.best_state)
        best, best_step = keeper.best, keeper.best_step
    else:  # naive fine-tuning (for comparison): the last weights, whatever the validation says
        best, best_step = keeper.history[-1]["val_awe"], keeper.steps
    result = {"best_ckpt": str(out_dir / "best.ckpt"), "val_source": st.val_source,
              "val_awe_zero_shot": round(keeper.zero_shot, 3), "best_val_awe": round(best, 3), "best_step": best_step,
              "steps": keeper.steps, "seconds": round(time.perf_counter() - t0, 1),
              "class_map": None if st.same_head else [list(st.ck["meta"]["classes"])[c] for c in st.cmap],
              "history": keeper.history, "denoise": st.noise_info, "freeze_bn": st.freeze_bn,
              "precision": {**precision_record(trainer.strategy.root_device, bf16), "lightning": str(tr["precision"]),
                            "processes": int(trainer.world_size)},
              "stopped": keeper.stopped, "intensity": st.intensity}
    meta = run_meta(st, s, init, name=name, voxel_size_nm=voxel_size_nm, preprocess=preprocess, result=result)
    ctx = st.extra.get("context")
    save_checkpoint(out_dir / "best.ckpt", kind="unet", state_dict=st.net.cpu().state_dict(), meta=meta, overwrite=True,
                    blend=None if ctx is None else ctx.tensors())
    if out_dir.name.startswith("run") and out_dir.parent.name == "runs":  # one of several runs: its own summary
        (out_dir / "finetune_summary.json").write_text(json.dumps(result, indent=2))
    return result, st


def _zero_steps(out_dir: Path, s: Mapping) -> None:
    raise SeglearnError(f"{out_dir}: fine-tuning ran 0 steps; nothing was saved (max_minutes "
                        f"{s['max_minutes']} used up before the first step? check max_minutes and max_steps)")


def run_meta(st: Setup, s: Mapping, init, *, name: str, voxel_size_nm, preprocess, result: Mapping) -> dict:
    """The fine-tuned checkpoint's ``meta``: the base model's, with the dataset's detectors, classes,
    smoothing, voxel size and preprocessing, and ``train`` / ``finetune`` records of the run."""
    base = st.base_meta
    meta = copy.deepcopy(dict(base))
    base_dets, derived = list(base["detectors"]), list(base.get("derived", []))
    meta["net"] = {**st.net_cfg, "n_classes": len(st.classes)}
    meta["detectors"] = list(st.names)
    meta["derived"] = [f"{st.names[base_dets.index(a)]}-{st.names[base_dets.index(b)]}" for a, b in
                       (d.split("-") for d in derived)]
    meta["channels"] = meta["detectors"] + meta["derived"]
    meta["normalisation"] = {"method": base["normalisation"].get("method", "fixed"),
                             "percentiles": base["normalisation"].get("percentiles"), "ranges": st.ranges}
    if any(v > 0 for v in st.smooth):
        meta["normalisation"]["smooth"] = [float(v) for v in st.smooth]
    ctx = st.extra.get("context")
    if ctx is not None:  # auto-context: the forest's probabilities follow the image channels
        meta["channels"] += ctx.channels
        meta["normalisation"]["ranges"] = [*st.ranges, *[[0.0, 1.0]] * ctx.k]  # probabilities: read as they are
        meta["autocontext"] = dict(ctx.meta)
        meta["blend"] = {"weight": 1.0}  # the forest tensors are stored; blended only when fine-tuning says so
    meta["classes"] = list(st.classes)
    if voxel_size_nm is not None:
        meta["voxel_size_nm"] = [float(v) for v in voxel_size_nm]
    meta["train"] = {"dataset": name, "seed": int(s["seed"]), "val_source": st.val_source,
                     "val": {"awe": result["best_val_awe"]}, "global_step": result["steps"]}
    meta["finetune"] = {"init": str(init), "settings": dict(s), **{k: v for k, v in result.items() if k != "best_ckpt"}}
    meta["preprocess"] = dict(preprocess) if preprocess else None
    meta.pop("calibration", None)  # fitted on the final model (seglearn.pretrain.ft_final)
    return meta


def train(cfg) -> dict:
    """Entry point of ``train.py data.root=DATASET init=BASE.ckpt`` (settings: the ``finetune`` group,
    ``finetune.KEY=VALUE``; processes and devices: the ``trainer`` group)."""
    setup_logging()
    root = cfg.data.get("root")
    if not root:
        raise InputError("data.root is not set: give the dataset folder to fine-tune on, e.g. "
                         "python train.py data.root=DATASET init=checkpoints/fibsem_base.ckpt")
    s = dict(to_plain(cfg.get("finetune")) or {})
    s["seed"] = resolve_seed(cfg, "finetune", 0)
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
                      overwrite=bool(cfg.overwrite), name=str(root), preprocess=entry,
                      trainer_cfg=to_plain(cfg.get("trainer")))
    if "rank" in result:
        return result
    if not int(result.get("steps") or 0) or not Path(result["best_ckpt"]).is_file():
        raise SeglearnError(f"{out_dir}: fine-tuning ran {result.get('steps', 0)} steps but wrote no "
                            f"{Path(result['best_ckpt']).name}")
    return result
