"""The seed-003 user study: methods x users x coverages on raw and Gaussian-filtered CT.

``run(cfg)`` is what ``python benchmark.py experiment=ct_user_study`` (and
``python -m seglearn.ct``) calls. For each synthetic dataset (e.g. a noisy and a cleaner scan of
the same microstructure) and each filter (raw, Gaussian sigma 1.1) every simulated user makes

* ``S1`` / ``S2`` / ``S3``: a simple threshold picked by eye and -/+ 10 grey levels,
* ``gWS`` / ``cWS``: watershed with their generous / conservative seeding window,
* ``MLX##``: a random forest trained on their painting of 7 slices at ## % coverage,
* optionally ``UNetX##`` for a small subset (U-Net of :mod:`seglearn.segment`).

Per method: the standard deviation of the AM volume fraction across users, the mean % of voxels
where two users differ, the distance of the users' mean fraction to the true one, and the AM IoU.
Writes ``results.json``, ``per_user.csv``, ``summary.csv`` and the figures of seed 003.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from seglearn.config import to_plain as _plain
from seglearn.ct.annotators import annotation_slices, make_users
from seglearn.ct.ml import ml_segment, user_training_labels, volume_features
from seglearn.ct.phantom import AM, gaussian_prefilter, make_ct_phantom, NON_AM
from seglearn.ct.plots import write_figures
from seglearn.ct.unsupervised import apply_threshold, gradient_magnitude, pick_threshold, watershed_segment
from seglearn.errors import InputError, OutputExistsError
from seglearn.io import atomic_path, read_stack
from seglearn.metrics import fraction_std, percent_differ
from seglearn.paths import load_config

log = logging.getLogger("seglearn")

def defaults() -> dict:
    """The ``ct_study`` block of ``configs/experiment/ct_user_study.yaml``: the study's defaults (their one home)."""
    return load_config("experiment/ct_user_study.yaml")["ct_study"]


def study_params(cfg: Mapping[str, Any] | None) -> dict:
    """:func:`defaults` merged with ``cfg["ct_study"]`` (or ``cfg`` itself); unknown keys are refused."""
    cfg = dict(_plain(cfg) or {})
    p = dict(_plain(cfg.get("ct_study", cfg)) or {})
    p.pop("study", None)
    base = defaults()
    unknown = sorted(set(p) - set(base))
    if unknown:
        raise InputError(f"ct_study: unknown key(s) {unknown}; known: {sorted(base)}")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in p.items():
        out[k] = {**out[k], **(v or {})} if isinstance(out[k], dict) and isinstance(v, dict) else v
    bad = sorted(set(out["filters"]) - {"raw", "gauss"})
    if bad or not out["filters"]:
        raise InputError(f"ct_study.filters: use raw and/or gauss, got {out['filters']}")
    for ds in out["datasets"]:
        if "name" not in ds:
            raise InputError("ct_study.datasets: every dataset needs a name")
        for c in ds.get("coverages", []):
            if not 0 < float(c) <= 100:
                raise InputError(f"ct_study: coverage is a percentage in (0, 100], got {c}")
    return out


def _resolve(path: str | None) -> Path | None:
    """A path of the config (relative ones: to the working directory, as every command's paths)."""
    return None if path is None else Path(path)


def _summarise(segs: list[np.ndarray], truth: np.ndarray, true_fraction: float) -> dict:
    fr = [float(np.mean(s == AM)) for s in segs]
    pairs = [percent_differ(a, b) for a, b in itertools.combinations(segs, 2)]
    ious = []
    for s in segs:
        a, t = s == AM, truth == AM
        union = np.logical_or(a, t).sum()
        ious.append(float(np.logical_and(a, t).sum() / union) if union else 1.0)
    mean = float(np.mean(fr))
    return {"fractions": fr, "mean_fraction": mean, "std": fraction_std(segs, AM),
            "pct_differ": float(np.mean(pairs)) if pairs else 0.0, "distance_to_true": abs(mean - true_fraction),
            "iou_am": float(np.mean(ious)), "true_fraction": true_fraction}


def _run_volume(image: np.ndarray, truth: np.ndarray, users, p: dict, coverages, seed: int,
                record) -> dict[str, list[np.ndarray]]:
    """All methods of all users on one (filtered) volume; returns method -> segmentations per user."""
    from tqdm.auto import tqdm

    segs: dict[str, list[np.ndarray]] = {}
    step = float(p["threshold_step"])
    grad = gradient_magnitude(image)
    zc = annotation_slices(image.shape[0], p["n_slices"])[0]
    for ui, u in enumerate(users):
        rng = np.random.default_rng([seed, ui, 1])
        s2 = pick_threshold(image, u, truth_slice=truth[zc], image_slice=image[zc], rng=rng)
        for name, t in (("S1", s2 - step), ("S2", s2), ("S3", s2 + step)):
            segs.setdefault(name, []).append(apply_threshold(image, t))
            record(name, None, u.name, segs[name][-1], {"threshold": t})
        for name, w in (("gWS", u.gws_window), ("cWS", u.cws_window)):
            segs.setdefault(name, []).append(watershed_segment(image, s2, w, gradient=grad))
            record(name, None, u.name, segs[name][-1], {"threshold": s2, "window": w})
    if not coverages:
        return segs
    t0 = time.perf_counter()
    feats = volume_features(image, p["features"])
    log.info("features %s in %.1f s", feats.shape, time.perf_counter() - t0)
    slices = annotation_slices(image.shape[0], p["n_slices"])
    jobs = [(c, ui, u) for c in coverages for ui, u in enumerate(users)]
    for cov, ui, u in tqdm(jobs, desc="ML users", leave=False, disable=None):
        rng = np.random.default_rng([seed, ui, int(round(float(cov) * 10)), 2])
        seg, lab = ml_segment(truth, u, float(cov) / 100.0, slices, feats, rng, iterative=bool(p["iterative"]),
                              rf=p["rf"], seed=seed + ui)
        name = f"MLX{int(round(float(cov)))}"
        segs.setdefault(name, []).append(seg)
        sl = lab[slices]
        record(name, float(cov), u.name, seg, {"painted_share": float((sl > 0).mean()),
                                               "painted_am_share": float((sl == AM).sum() / max((sl > 0).sum(), 1))})
    return segs


def _unet_subset(image, truth, users, p, seed, out_dir: Path, record) -> list[np.ndarray]:
    """U-Net from the same painted slices for a few users (slow on a CPU: keep it small)."""
    from seglearn.segment import fit_segmenter, load_segmenter

    u_cfg = p["unet"]
    cov = float(u_cfg["coverage"])
    slices = annotation_slices(image.shape[0], p["n_slices"])
    feats = volume_features(image, p["features"]) if p["iterative"] else None
    segs = []
    for ui, u in enumerate(users[: int(u_cfg["n_users"])]):
        rng = np.random.default_rng([seed, ui, int(round(cov * 10)), 2])
        lab = user_training_labels(truth, u, cov / 100.0, slices, feats, rng, iterative=bool(p["iterative"]),
                                   rf=p["rf"], seed=seed + ui)
        ckpt = fit_segmenter(image[None].astype(np.float32), lab, ["CT"], out_dir / f"unet_{u.name}",
                             overrides={**dict(u_cfg.get("overrides") or {}),
                                        "classes": ["non_active", "active_material"]})
        seg = load_segmenter(ckpt).predict(image[None].astype(np.float32), ["CT"])
        seg = np.where(np.asarray(seg) == AM, AM, NON_AM).astype(np.uint8)
        segs.append(seg)
        record(f"UNetX{int(round(cov))}", cov, u.name, seg, {})
    return segs


def real_ct_check(p: dict, users, seed: int) -> dict | None:
    """Users on the real CT slice of a cylindrical cell, scored against its mask (binary IoU)."""
    rc = p["real_ct"]
    img_p, mask_p = _resolve(rc.get("image")), _resolve(rc.get("mask"))
    if not rc["enabled"]:
        return None
    if img_p is None or mask_p is None or not img_p.exists() or not mask_p.exists():
        log.warning("real CT check skipped: %s or %s not found", rc.get("image"), rc.get("mask"))
        return {"skipped": f"{rc.get('image')} or {rc.get('mask')} not found"}
    img, _ = read_stack(img_p)
    mask, _ = read_stack(mask_p)
    if img.shape != mask.shape:
        raise InputError(f"{mask_p}: mask shape {mask.shape} differs from image shape {img.shape}")
    lo, hi = np.percentile(img, [0.5, 99.5])
    image = np.clip((img.astype(np.float32) - lo) * 255.0 / max(hi - lo, 1e-6), 0, 255).round().astype(np.uint8)
    truth = np.where(mask > 0, AM, NON_AM).astype(np.uint8)
    q = dict(p, n_slices=1, features={**dict(p["features"]), "dims": 2 if image.shape[0] == 1 else 3})
    per = []

    def record(method, cov, user, seg, extra):
        a, t = seg == AM, truth == AM
        per.append({"method": method, "coverage": cov, "user": user,
                    "iou": float(np.logical_and(a, t).sum() / max(np.logical_or(a, t).sum(), 1)),
                    "fraction": float(a.mean())})

    segs = _run_volume(image, truth, users, q, rc["coverages"], seed, record)
    methods = {}
    for m, ss in segs.items():
        s = _summarise(ss, truth, float((truth == AM).mean()))
        s["iou_users"] = [r["iou"] for r in per if r["method"] == m]
        methods[m] = s
    return {"image": str(img_p), "shape": list(image.shape), "true_fraction": float((truth == AM).mean()),
            "methods": methods}


def _check_out(out: Path, overwrite: bool) -> None:
    if (out / "results.json").exists() and not overwrite:
        raise OutputExistsError(f"{out}/results.json: output already exists; pass overwrite=true to replace it")


def _run_dataset(p: dict, di: int, ds: dict, users, seed: int, out: Path, per_user: list) -> tuple[dict, dict, dict]:
    """Every filter and method of one dataset; returns its summary, phantom info and preview slices per filter."""
    ph_cfg = {**dict(p["phantom"]), **dict(ds.get("phantom") or {})}
    ph_cfg.setdefault("seed", seed)
    if ph_cfg.get("source"):
        ph_cfg["source"] = str(_resolve(ph_cfg["source"]))
    ph = make_ct_phantom(ph_cfg)
    true_f = ph.info["am_fraction"]
    info = {k: v for k, v in ph.info.items() if k != "config"} | {"phantom": ph_cfg}
    summary, previews = {}, {}
    for filt in p["filters"]:
        image = ph.image if filt == "raw" else gaussian_prefilter(ph.image, float(p["gauss_sigma"]))
        log.info("dataset %s (%s): AM fraction %.3f", ds["name"], filt, true_f)

        def record(method, cov, user, seg, extra, _d=ds["name"], _f=filt):
            a, t = seg == AM, ph.truth == AM
            per_user.append({"dataset": _d, "filter": _f, "method": method, "coverage": cov, "user": user,
                             "am_fraction": float(a.mean()), "true_fraction": true_f,
                             "iou_am": float(np.logical_and(a, t).sum() / max(np.logical_or(a, t).sum(), 1)),
                             **extra})

        segs = _run_volume(image, ph.truth, users, p, ds.get("coverages", []), seed + 101 * di, record)
        u_cfg = p["unet"]
        if (u_cfg.get("enabled") and u_cfg.get("dataset") == ds["name"] and u_cfg.get("filter") == filt):
            try:
                segs[f"UNetX{int(round(float(u_cfg['coverage'])))}"] = _unet_subset(
                    image, ph.truth, users, p, seed + 101 * di, out, record)
            except (ImportError, InputError) as exc:  # the U-Net is optional here
                log.warning("U-Net subset skipped: %s", exc)
        summary[filt] = {m: _summarise(s, ph.truth, true_f) for m, s in segs.items()}
        zc = ph.image.shape[0] // 2
        previews[filt] = {"image": image[zc], "truth": ph.truth[zc], **{m: [s[zc] for s in ss] for m, ss in segs.items()}}
    return summary, info, previews


def _write_results(p: dict, out: Path, result: dict, previews: dict) -> list[str]:
    """Figures, per_user.csv, summary.csv and results.json in ``out``; returns the files written."""
    summary, files = result["summary"], []
    if p["figures"]:
        files += write_figures(summary, previews, out, overwrite=bool(p["overwrite"]), real=result["real_ct"])
    with atomic_path(out / "per_user.csv", overwrite=True) as tmp:
        _write_csv(tmp, result["per_user"])
    rows = [{"dataset": d, "filter": f, "method": m, **{k: v for k, v in s.items() if k != "fractions"},
             "fractions": " ".join(f"{x:.4f}" for x in s["fractions"])}
            for d, fs in summary.items() for f, ms in fs.items() for m, s in ms.items()]
    with atomic_path(out / "summary.csv", overwrite=True) as tmp:
        _write_csv(tmp, rows)
    files += [str(out / "per_user.csv"), str(out / "summary.csv"), str(out / "results.json")]
    result["files"] = files
    with atomic_path(out / "results.json", overwrite=bool(p["overwrite"])) as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=_json_default))
    return files


def run(cfg: Mapping[str, Any] | None = None) -> dict:
    """Run the study; returns (and writes) its results.

    Parameters
    ----------
    cfg : mapping
        ``ct_study`` block of ``configs/experiment/ct_user_study.yaml`` (or the whole config
        holding it); missing keys take the YAML's values (:func:`defaults`).

    Returns
    -------
    dict
        ``summary`` (dataset -> filter -> method -> std, pct_differ, mean_fraction,
        distance_to_true, iou_am, fractions), ``finding`` (ML vs S2/cWS per dataset and filter),
        ``real_ct``, ``per_user`` rows, ``files``.
    """
    p = study_params(cfg)
    out = Path(p["out"])
    _check_out(out, bool(p["overwrite"]))
    out.mkdir(parents=True, exist_ok=True)
    seed = int(p["seed"])
    users = make_users(int(p["n_users"]), seed, p["users"])
    t_start = time.perf_counter()
    summary, per_user, previews, datasets_info = {}, [], {}, {}
    for di, ds in enumerate(p["datasets"]):
        summary[ds["name"]], datasets_info[ds["name"]], prev = _run_dataset(p, di, ds, users, seed, out, per_user)
        previews.update({(ds["name"], filt): v for filt, v in prev.items()})
    real = real_ct_check(p, users, seed)
    finding = findings(summary)
    result = {"params": p, "users": [u.as_dict() for u in users], "datasets": datasets_info,
              "summary": summary, "finding": finding, "real_ct": real, "per_user": per_user,
              "seconds": round(time.perf_counter() - t_start, 1)}
    _write_results(p, out, result, previews)
    log.info("ct user study: %d segmentations in %.0f s -> %s", len(per_user), result["seconds"], out)
    for line in finding.get("lines", []):
        log.info("%s", line)
    return result


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def findings(summary: dict) -> dict:
    """Seed 003's claim per dataset and filter: does ML vary less between users than S2 and cWS?"""
    out: dict = {"cases": [], "lines": []}
    for d, fs in summary.items():
        for f, ms in fs.items():
            ml = {m: s for m, s in ms.items() if m.startswith("MLX")}
            if not ml or "S2" not in ms:
                continue
            best = min(ml, key=lambda m: ml[m]["std"])
            case = {"dataset": d, "filter": f, "s2_std": ms["S2"]["std"], "cws_std": ms.get("cWS", {}).get("std"),
                    "ml_std": {m: s["std"] for m, s in ml.items()}, "best_ml": best,
                    "ml_below_s2": {m: bool(s["std"] < ms["S2"]["std"]) for m, s in ml.items()},
                    "ml_below_cws": {m: bool(s["std"] < ms["cWS"]["std"]) for m, s in ml.items()} if "cWS" in ms else {},
                    "ml_differ_below_s2": {m: bool(s["pct_differ"] < ms["S2"]["pct_differ"]) for m, s in ml.items()}}
            out["cases"].append(case)
            n_below = sum(case["ml_below_s2"].values())
            out["lines"].append(f"{d}/{f}: S2 std {case['s2_std']:.4f}, cWS std {case['cws_std']:.4f}, "
                                f"best ML {best} std {ml[best]['std']:.4f}; {n_below}/{len(ml)} ML coverages below S2")
    return out
