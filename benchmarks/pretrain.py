"""Benchmark of synthetic pretraining + few-scribble adaptation (issue 12).

Cases:

- ``phantom``: a 128 x 256 x 256 SE2 + InLens phantom drawn with parameters *outside* the
  pretraining ranges (:data:`OOD`); scored on its dense test slice. Base model: ``fibsem_base``.
- ``micro``: ``../shared/data/real/micrograph_2class.tif`` (one detector, 2 classes; scribbles
  127/254 -> classes 1/2), scored on ``_truth.tif`` over the whole image. Base model:
  ``fibsem_base_1det`` with a new 2-class head.

Methods: ``rf`` (seglearn.baselines random forest, ``configs/method/rf_ilastik.yaml``),
``scratch`` (the U-Net from scratch on the scribbles, :func:`seglearn.segment.train.fit_segmenter`),
``zeroshot`` (base model, no training; for a class-count mismatch the new head is only
initialised from the scribble class map), ``zeroshot_adapt`` (base model adapted to the volume
without labels, as ``predict.py`` does by default: :func:`seglearn.pretrain.adapt.adapt_to_volume`;
on the 2-class micrograph the 3 predicted classes are merged into 2, both ways, with and without
adaptation), ``finetune`` (seglearn.pretrain.finetune, early
stopping on held-out scribbles, never on the scored truth), ``naive`` (fine-tuning on the scribbles
alone, a from-scratch learning rate, last weights kept).

Every method's result is appended to ``OUT/results.json`` so stages can run separately::

    python benchmarks/pretrain.py --cases phantom micro --methods rf scratch zeroshot zeroshot_adapt finetune naive

``--set KEY=VALUE ...`` overrides fine-tuning settings of the ``finetune`` method
(``configs/finetune/default.yaml`` keys), e.g. ``--set max_steps=1200 "ranges={noise: [0.12, 0.2]}"``.
``--phantom-seed N`` draws the out-of-range phantom again with another seed (same parameters).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"

#: the out-of-range phantom: each value lies outside seglearn.pretrain.randomise.DEFAULT_RANGES
OOD = {
    "shape": [128, 256, 256], "seed": 101, "voxel_size_nm": [40.0, 12.0, 12.0],  # anisotropy 3.33 (range 1..3), xy 12
    "particle_radius_nm": 720.0,  # range 200..650
    "am_fraction": 0.55, "cbd_fraction": 0.15,
    "se2": {"noise": 0.17, "curtain": 0.15},  # noise range 0.02..0.14, curtain 0..0.12
    "inlens": {"noise": 0.18, "curtain": 0.15},
    "gradient_face": 0.5,  # range 0..0.45
}
STEPS = 300  # step budget of every trained U-Net (scratch, fine-tuned, naive)


def load_case(name: str, out: Path, phantom_seed: int = OOD["seed"]) -> dict:
    """``images (C, Z, Y, X)``, ``detectors``, ``train``, ``truth`` (scored labels), ``classes``, ``voxel``, ``score_z``.

    ``phantom_seed``: another draw of the out-of-range phantom (same parameters), for a check
    independent of the seed-101 phantom the defaults were chosen on."""
    if name == "phantom":
        from seglearn.data import load_dataset
        from seglearn.synth.phantom import write_phantom

        root = out / ("phantom_ood" if phantom_seed == OOD["seed"] else f"phantom_ood_seed{phantom_seed}")
        if not (root / "dataset.yaml").exists():
            write_phantom(root, {**OOD, "seed": phantom_seed}, overwrite=True, name=root.name)
        ds = load_dataset(root, labels=("train", "test"), require=("train",))
        z = int(np.nonzero(ds.test)[0][0])
        return {"images": ds.images, "detectors": list(ds.detectors), "train": ds.train, "truth": ds.test,
                "classes": list(ds.classes), "voxel": tuple(ds.voxel_size_nm), "score_z": [z],
                "base": "fibsem_base.ckpt"}
    if name == "micro":
        import tifffile

        img = tifffile.imread(REAL / "micrograph_2class.tif")
        scr = tifffile.imread(REAL / "micrograph_2class_scribbles.tif").reshape(img.shape)
        tru = tifffile.imread(REAL / "micrograph_2class_truth.tif").reshape(img.shape)
        lab = lambda a: np.select([a == 127, a == 254], [1, 2], 0).astype(np.uint8)[None]  # noqa: E731
        return {"images": img[None, None], "detectors": ["SEM"], "train": lab(scr), "truth": lab(tru),
                "classes": ["dark", "bright"], "voxel": (1.0, 1.0, 1.0), "score_z": [0], "base": "fibsem_base_1det.ckpt"}
    raise SystemExit(f"unknown case {name}")


def score_slices(pred: np.ndarray, case: dict) -> dict:
    from seglearn.metrics import score

    zs = case["score_z"]
    r = score(pred[zs] if pred.shape[0] != len(zs) else pred, case["truth"][zs], len(case["classes"]))
    return {"awe": round(r["awe"], 2), "iou": [None if v is None else round(v, 4) for v in r["iou"]]}


def predict_unet(ckpt: str, case: dict, tta: str | None = None) -> np.ndarray:
    """Labels of the scored slices with a U-Net checkpoint (each slice with its full 2.5D context);
    ``tta`` = test-time augmentation (seglearn.segment.tta)."""
    from seglearn.segment.api import load_segmenter

    seg = load_segmenter(ckpt, device="cpu")
    h = seg.net.halo
    n = case["images"].shape[1]
    out = []
    for z in case["score_z"]:
        a, b = max(0, z - h - 8), min(n, z + h + 9)  # generous context for the block's edge replication
        p = seg.predict(case["images"][:, a:b], case["detectors"], tta=tta)
        out.append(p[z - a])
    return np.stack(out)


def run_rf(case: dict, out: Path) -> dict:
    from omegaconf import OmegaConf

    from seglearn.baselines.registry import fit_method, predict_method

    p = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "method" / "rf_ilastik.yaml"))
    impl = p.pop("impl")
    p["n_jobs"] = 1
    if case["images"].shape[1] == 1:
        p["features"]["ilastik"]["dims"] = 2
    p["features"]["inputs"] = [i for i in p["features"]["inputs"] if all(d in case["detectors"] for d in i.split("-"))] \
        or list(case["detectors"])
    p["voxel_size_nm"] = list(case["voxel"])
    t0 = time.perf_counter()
    model = fit_method(impl, case["images"], case["detectors"], case["train"], **p)
    pred = predict_method(impl, model, case["images"], case["detectors"], slices=case["score_z"])
    return {**score_slices(pred, case), "seconds": round(time.perf_counter() - t0, 1), "config": "rf_ilastik",
            "inputs": p["features"]["inputs"]}


def run_scratch(case: dict, out: Path) -> dict:
    from seglearn.segment.train import fit_segmenter

    t0 = time.perf_counter()
    d = out / f"scratch_{case['name']}"
    ck = fit_segmenter(case["images"], case["train"], case["detectors"], d,
                       overrides={"trainer.max_steps": STEPS, "overwrite": True, "classes": case["classes"],
                                  "voxel_size_nm": list(case["voxel"])})
    secs = time.perf_counter() - t0
    return {**score_slices(predict_unet(str(ck), case), case), "seconds": round(secs, 1), "steps": STEPS}


def with_tta(res: dict, ckpt: str, case: dict, tta: str | None) -> dict:
    """``res`` plus ``tta: {mode, awe, iou}``: the same checkpoint scored with test-time augmentation."""
    if tta and tta != "none":
        res["tta"] = {"mode": tta, **score_slices(predict_unet(ckpt, case, tta), case)}
    return res


def run_zeroshot_adapt(case: dict, out: Path, base: Path, tta: str | None = None) -> dict:
    """The base model adapted to the case's volume without labels (``predict.py adapt=auto``)."""
    from seglearn.ckpt import load_checkpoint, save_checkpoint
    from seglearn.pretrain.adapt import adapt_to_volume

    ck = load_checkpoint(base / case["base"], kind="unet")
    t0 = time.perf_counter()
    if len(ck["meta"]["detectors"]) == 1 and len(case["detectors"]) == 1:  # a single-detector base takes any one
        idx = [0]
    else:
        idx = [list(case["detectors"]).index(d) for d in ck["meta"]["detectors"]]
    images = case["images"][idx]
    if list(ck["meta"]["classes"]) != list(case["classes"]):
        return merged_zeroshot(ck, images, case, t0)
    new, info = adapt_to_volume(ck, lambda a, b: images[:, a:b], images.shape[1:], ck["meta"]["detectors"], "auto",
                                where=case["base"])
    path = out / f"zeroshot_adapt_{case['name']}.ckpt"
    save_checkpoint(path, kind="unet", state_dict=new["state_dict"], meta=new["meta"], overwrite=True)
    pred = predict_unet(str(path), case)
    case.setdefault("preds", {})["zeroshot_adapt"] = pred
    res = {**score_slices(pred, case), "seconds": round(time.perf_counter() - t0, 1), "base": case["base"], "adapt": info}
    return with_tta(res, str(path), case, tta)


def merged_zeroshot(ck: dict, images: np.ndarray, case: dict, t0: float) -> dict:
    """A 3-class base model on a 2-class case, without labels: pore -> class 1, active material ->
    class 2, and carbon-binder to either (both are scored: which one is right is not known without
    labels), with ``adapt=off`` and ``adapt=auto``."""
    from seglearn.pretrain.adapt import adapt_to_volume
    from seglearn.segment.api import segmenter_from_checkpoint

    if len(ck["meta"]["classes"]) != 3 or len(case["classes"]) != 2:
        return {"skipped": f"the case's classes {case['classes']} are not the base model's {ck['meta']['classes']}"}
    res: dict = {"merged": {}}
    for setting in ("off", "auto"):
        new, info = adapt_to_volume(ck, lambda a, b: images[:, a:b], images.shape[1:], ck["meta"]["detectors"],
                                    setting)
        seg = segmenter_from_checkpoint(new, device="cpu")
        pred = np.stack([seg.predict(images[:, z:z + 1], seg.detectors)[0] for z in case["score_z"]])
        for cb in (1, 2):
            merged = np.select([pred == 1, pred == 2, pred == 3], [1, cb, 2], 0).astype(np.uint8)
            res["merged"][f"adapt={setting}, carbon_binder->{case['classes'][cb - 1]}"] = score_slices(merged, case)["awe"]
        if info:
            res["adapt"] = info
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def run_finetune(case: dict, out: Path, base: Path, kind: str, tta: str | None = None,
                 extra: dict | None = None) -> dict:
    """One base-model method on ``case``; ``extra`` overrides the fine-tuning settings of ``finetune``
    (configs/finetune/default.yaml keys)."""
    from seglearn.pretrain.finetune import finetune

    settings = {"max_steps": STEPS, **(extra or {})}
    if kind == "zeroshot":
        # the base model as it is
        settings = {"max_steps": 0, "synth_fraction": 0, "runs": 1, "denoise": "off", "adapt_bn": "off"}
    elif kind == "naive":
        settings = {"max_steps": STEPS, "max_minutes": 4.0, "synth_fraction": 0, "lr": 3e-3, "keep_best": False, "distill": 0.0,
                    "patience": 0, "runs": 1, "denoise": "off", "adapt_bn": "off"}
    t0 = time.perf_counter()
    d = out / f"{kind}_{case['name']}"
    r = finetune(str(base / case["base"]), case["images"], case["detectors"], case["train"], d, classes=case["classes"],
                 voxel_size_nm=case["voxel"], settings=settings, overwrite=True, name=case["name"])
    secs = time.perf_counter() - t0
    pred = predict_unet(r["best_ckpt"], case)
    case.setdefault("preds", {})[kind] = pred
    res = {**score_slices(pred, case), "seconds": round(secs, 1), "steps": r["steps"], "best_step": r["best_step"],
           "val_awe_zero_shot": r["val_awe_zero_shot"], "best_val_awe": r["best_val_awe"], "class_map": r["class_map"],
           "base": case["base"], "denoise": r.get("denoise"), "adapt_bn": r.get("adapt_bn")}
    return with_tta(res, r["best_ckpt"], case, tta)


def write_png(path: Path, case: dict, results: dict) -> None:
    """Panels of the first scored slice: the image, its truth and each method's labels with its awe."""
    from seglearn.io import write_preview

    img = case["images"][0, case["score_z"][0]]
    panels = [(f"{case['detectors'][0]} z={case['score_z'][0]}", img, None), ("truth", img, case["truth"][case["score_z"][0]])]
    for m, pred in case.get("preds", {}).items():
        panels.append((f"{m}: awe {results[m]['awe']:.2f} %", img, pred[0]))
    write_preview(path, panels, case["classes"], overwrite=True, title=f"benchmarks/pretrain.py, case {case['name']}")


def report(results: dict) -> str:
    """Markdown table of ``results`` (awe per case and method)."""
    names = {"rf": "random forest (rf_ilastik) on the scribbles", "scratch": "U-Net from scratch on the scribbles",
             "zeroshot": "base model zero-shot",
             "zeroshot_adapt": "base model zero-shot, adapted to the volume without labels (`predict.py` default)",
             "finetune": "base model fine-tuned", "naive": "base model, naive fine-tuning"}
    lines = ["| case | method | awe % | IoU per class | seconds | steps |", "|---|---|---|---|---|---|"]
    for case, res in results.items():
        for m in ("rf", "scratch", "zeroshot", "zeroshot_adapt", "finetune", "naive"):
            if m in res and "awe" in res[m]:
                r = res[m]
                steps = r.get("steps", "")
                if m in ("finetune", "naive", "zeroshot") and "best_step" in r:
                    steps = f"{r['steps']} (kept step {r['best_step']})"
                lines.append(f"| {case} | {names[m]} | {r['awe']:.2f} | {r['iou']} | {r['seconds']} | {steps} |")
                if "tta" in r:
                    t = r["tta"]
                    lines.append(f"| {case} | {names[m]}, test-time augmentation ({t['mode']}) | {t['awe']:.2f} | {t['iou']} | | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["phantom", "micro"])
    ap.add_argument("--methods", nargs="+", default=["rf", "scratch", "zeroshot", "zeroshot_adapt", "finetune", "naive"])
    ap.add_argument("--base-dir", default=str(ROOT / "checkpoints"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_pretrain"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tta", default="none", choices=["none", "flips", "dihedral"],
                    help="also score the U-Nets with this test-time augmentation")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="settings",
                    help="fine-tuning settings for the finetune method (configs/finetune/default.yaml keys, YAML values)")
    ap.add_argument("--report", action="store_true", help="print the markdown table of OUT/results.json and exit")
    ap.add_argument("--png", default=None, metavar="PATH",
                    help="picture of the scored slice with each U-Net method's labels (PATH gets the case name)")
    ap.add_argument("--phantom-seed", type=int, default=OOD["seed"],
                    help="seed of the out-of-range phantom (same parameters; default 101)")
    a = ap.parse_args(argv)
    if a.report:
        print(report(json.loads((Path(a.out) / "results.json").read_text())))
        return
    from seglearn.config import parse_pairs

    extra = parse_pairs(a.settings, "--set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results: dict = {}
    for cname in a.cases:
        case = load_case(cname, out, a.phantom_seed)
        case["name"] = cname
        for m in a.methods:
            logging.info("== %s / %s", cname, m)
            if m == "rf":
                r = run_rf(case, out)
            elif m == "scratch":
                r = run_scratch(case, out)
            elif m == "zeroshot_adapt":
                r = run_zeroshot_adapt(case, out, Path(a.base_dir), a.tta)
            else:
                r = run_finetune(case, out, Path(a.base_dir), m, a.tta, extra if m == "finetune" else None)
                if extra and m == "finetune":
                    r["settings"] = extra
            r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            results = json.loads(res_path.read_text()) if res_path.exists() else {}  # merge: stages may run in parallel
            results.setdefault(cname, {})[m] = r
            res_path.write_text(json.dumps(results, indent=2))
            logging.info("%s / %s: %s", cname, m, json.dumps(r))
        if a.png and case.get("preds"):
            png = Path(a.png)
            write_png(png.with_name(f"{png.stem}_{cname}{png.suffix or '.png'}"), case, results[cname])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
