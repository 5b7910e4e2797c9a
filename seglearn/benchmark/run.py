"""Run the benchmark: every method of ``cfg.methods`` fitted on labels/train.tif, scored on labels/test.tif.

Writes ``results.json``, ``results.md`` and ``panel.png`` (the first test slice per method beside
the truth) into ``cfg.out``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from seglearn.baselines.forest import predict_proba
from seglearn.baselines.registry import accepts, fit_method, get_method, predict_method
from seglearn.benchmark.panel import write_panel
from seglearn.benchmark.report import markdown_table
from seglearn.data import load_dataset
from seglearn.errors import InputError, OutputExistsError
from seglearn.io.atomic import atomic_path
from seglearn.metrics import score
from seglearn.paths import load_config
from seglearn.preprocess.stage import preprocess_loaded, stage_config
from seglearn.segment.predict_io import write_probabilities_tif

log = logging.getLogger("seglearn")

RESERVED = ("impl", "label")
OUTPUTS = ("results.json", "results.md", "panel.png")


def _plain(obj: Any) -> Any:
    """JSON-safe copy of a fitted model's summary (arrays and estimators are dropped or listed)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items() if k != "clf"}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"array{obj.shape}"
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def method_config(cfg: Mapping, name: str) -> tuple[str, dict]:
    """``(impl, params)`` of a method name from the benchmark config."""
    if name not in cfg or not isinstance(cfg[name], Mapping):
        known = sorted(k for k, v in cfg.items() if isinstance(v, Mapping) and "impl" in v)
        raise InputError(f"methods: no config for method {name!r}; known: {known}")
    mc = dict(cfg[name])
    impl = mc.pop("impl", name)
    for k in RESERVED:
        mc.pop(k, None)
    return str(impl), mc


def test_slices(test: np.ndarray) -> list[int]:
    return np.nonzero(test.reshape(test.shape[0], -1).max(axis=1))[0].tolist()


def _check_outputs(out: Path, overwrite: bool) -> None:
    if not overwrite:
        for f in OUTPUTS:
            if (out / f).exists():
                raise OutputExistsError(f"{out / f}: exists; pass overwrite=true to replace it")


def _load(cfg: Mapping):
    """The dataset (preprocessed by the configured stage) and the stage's record; refuses empty test labels."""
    ds = load_dataset(cfg["data"]["root"], labels=("train", "test"), require=("train", "test"))
    steps, frame = stage_config(cfg)
    pre_entry = None
    if steps:  # the configured preprocessing stage, before any method sees the data
        ds, pre_entry = preprocess_loaded(ds, steps, labels_frame=frame)
    if not np.any(ds.test):
        raise InputError(f"{ds.root / 'labels' / 'test.tif'}: holds no labelled voxel to score")
    return ds, pre_entry


def _run_method(name: str, impl: str, params: dict, ds, *, scored: list, only_test: bool, roi,
                fail_fast: bool) -> tuple[dict, Any, np.ndarray | None]:
    """Fit and score one method: its record, its fitted model and its prediction (None after a user error)."""
    fit, _ = get_method(impl)
    if accepts(fit, "voxel_size_nm") and params.get("voxel_size_nm") is None:
        params["voxel_size_nm"] = list(ds.voxel_size_nm)
    log.info("benchmark: %s (%s)", name, impl)
    rec: dict[str, Any] = {"method": name, "impl": impl, "params": _plain(params)}
    try:
        t0 = time.perf_counter()
        model = fit_method(impl, ds.images, ds.detectors, ds.train, **params)
        t1 = time.perf_counter()
        pred = predict_method(impl, model, ds.images, ds.detectors, slices=scored if only_test else None)
        t2 = time.perf_counter()
    except InputError as exc:
        if fail_fast:
            raise
        log.warning("benchmark: %s failed: %s", name, exc)
        rec["error"] = str(exc).splitlines()[0]
        return rec, None, None
    if pred.shape != ds.shape:
        raise InputError(f"method {name}: predicted shape {pred.shape}, expected {ds.shape}")
    k = ds.n_classes
    rec.update(fit_s=t1 - t0, predict_s=t2 - t1, model=_plain(model),
               full=score(pred, ds.test, k, class_names=ds.classes))
    rec["roi"] = score(pred, ds.test, k, roi=roi, class_names=ds.classes) if roi else None
    log.info("benchmark: %s awe %.1f %% (fit %.1f s, predict %.1f s)", name, rec["full"]["awe"],
             rec["fit_s"], rec["predict_s"])
    return rec, model, pred


def _write_reports(cfg: Mapping, out: Path, summary: dict, ds, preds: list) -> None:
    """results.json, results.md and panel.png (the first test slice per method beside the truth)."""
    results, scored, roi, pre_entry = summary["methods"], summary["test_slices"], summary["roi"], summary["preprocess"]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.json", overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    md = [f"# Benchmark on {ds.root}\n", f"Shape {list(ds.shape)}, test slices {scored}, "
          f"ROI {roi if roi else 'none'}, prediction: {summary['predict']}"
          + (f", preprocessing: {[s['step'] for s in pre_entry['steps']]}" if pre_entry else "") + ".\n",
          markdown_table(results, ds.classes, roi=bool(roi))]
    with atomic_path(out / "results.md", overwrite=True) as tmp:
        Path(tmp).write_text("\n".join(md))
    z = scored[0]
    det = cfg.get("panel_detector") or ds.detectors[0]
    write_panel(out / "panel.png", ds.channel(det)[z], ds.test[z],
                [(f"{n} ({r['full']['awe']:.1f} %)", p) for (n, p), r in
                 zip(preds, [r for r in results if "error" not in r])],
                ds.classes, overwrite=True, title=f"{ds.name}: slice {z}")


def run_benchmark(cfg: Mapping) -> dict:
    """Run the benchmark described by ``cfg`` (see ``configs/benchmark.yaml``); returns the results dict."""
    cfg = {**load_config("benchmark.yaml"), **dict(cfg)}
    out = Path(cfg["out"])
    overwrite = bool(cfg["overwrite"])
    _check_outputs(out, overwrite)
    methods = list(cfg["methods"] or [])
    if not methods:
        raise InputError("methods: empty list; name at least one method, e.g. methods=[double_threshold]")
    resolved = [(m, *method_config(cfg, m)) for m in methods]
    for _, impl, _ in resolved:
        get_method(impl)  # unknown implementations fail before any work
    ds, pre_entry = _load(cfg)
    roi = cfg.get("roi")
    if roi is not None:
        roi = [tuple(int(v) for v in pair) for pair in roi]
    scored = test_slices(ds.test)
    only_test = str(cfg["predict"]) == "test_slices"
    results, preds = [], []
    for name, impl, params in resolved:
        rec, model, pred = _run_method(name, impl, params, ds, scored=scored, only_test=only_test, roi=roi,
                                       fail_fast=bool(cfg["fail_fast"]))
        results.append(rec)
        if pred is None:
            continue
        preds.append((name, pred[scored[0]].copy()))
        del pred
        if cfg.get("probabilities") and impl == "random_forest":  # for characterise.py probabilities=... (issue 27)
            _write_forest_probabilities(out / f"probabilities_{name}", model, ds, overwrite)
    summary = {"dataset": str(ds.root), "shape": list(ds.shape), "classes": ds.classes, "detectors": ds.detectors,
               "test_slices": scored, "roi": roi, "predict": "test_slices" if only_test else "full",
               "preprocess": pre_entry, "methods": results}
    _write_reports(cfg, out, summary, ds, preds)
    log.info("benchmark: wrote %s", out)
    return summary


def _write_forest_probabilities(folder: Path, model, ds, overwrite: bool) -> None:
    """``folder/probabilities.tif`` (Z x K x Y x X float16) and ``summary.json`` of a forest, as predict.py writes them."""
    if (folder / "probabilities.tif").exists() and not overwrite:
        raise OutputExistsError(f"{folder / 'probabilities.tif'}: exists; pass overwrite=true to replace it")
    p = predict_proba(model, ds.images, ds.detectors, n_classes=ds.n_classes)
    folder.mkdir(parents=True, exist_ok=True)
    write_probabilities_tif(folder, p.shape[1:], p.shape[0], (p[c, z] for z in range(p.shape[1])
                                                             for c in range(p.shape[0])), list(ds.voxel_size_nm))
    with atomic_path(folder / "summary.json", overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps({"classes": list(ds.classes), "voxel_size_nm": list(ds.voxel_size_nm),
                                         "probabilities": "probabilities.tif", "method": "random_forest"}))
