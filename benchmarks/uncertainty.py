"""Coverage of the 95 % intervals of characterise (issue 27) on phantoms of both families, with their truth.

For each seed and family: a phantom (``seglearn.synth.make_phantom``), the class probabilities of
``--ckpt`` zero-shot (as ``predict.py ... probabilities=true``), optionally temperature-calibrated on
the phantom's scribbles (``seglearn.segment.calibrate``), the characterisation with intervals of the
argmax and the characterisation of the truth. Reports how often the interval holds the truth's
value (each phase's volume fraction and specific surface area by mesh and by faces, pore tau along z), the
interval widths, and the ECE of the test slice before and after calibration.

    .venv/bin/python benchmarks/uncertainty.py --seeds 0 1 2 3 4 5 6 7 8 9 --out docs/bench_uncertainty.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

#: the numbers scored: every phase's volume fraction and specific surface area (mesh and faces), the pore's tau
PHASES = ("pore", "carbon_binder", "active_material")
NUMBERS = {**{f"{ph} fraction": f"fractions/{ph}/fraction" for ph in PHASES},
           **{f"{ph} SSA (mesh)": f"surface/{ph}/ssa_mesh_per_um" for ph in PHASES},
           **{f"{ph} SSA (faces)": f"surface/{ph}/ssa_faces_per_um" for ph in PHASES},
           "pore tau z": "tortuosity/pore/z/tau"}


#: a light ilastik feature set for the forest predictor (--predictor forest)
FOREST = {"inputs": ["SE2", "InLens"],
          "ilastik": {"sigmas": [0.7, 1.6, 3.5], "features": ["gauss", "log", "ggm", "ste"], "dims": 3}}


def synth_config(seed: int, family: str, shape) -> dict:
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "synth.yaml").read_text())
    for k in ("defaults", "hydra", "out", "overwrite", "name"):
        cfg.pop(k, None)
    return {**cfg, "seed": int(seed), "family": family, "shape": list(shape)}


def one(seg, seed: int, family: str, shape, opts: dict, measured=("raw", "calibrated")) -> dict:
    from seglearn.characterise import characterise
    from seglearn.characterise.intervals import flatten
    from seglearn.segment.calibrate import expected_calibration_error, fit_temperature, softmax, temperature_bounds
    from seglearn.synth.phantom import make_phantom

    ph = make_phantom(synth_config(seed, family, shape))
    t0 = time.perf_counter()
    if seg == "forest":  # a random forest fitted on the phantom's scribbles (the baseline's probabilities)
        from seglearn.baselines import forest

        ch, det = ph.channels(), list(ph.config.detectors)
        model = forest.fit(ch, det, ph.train, features=FOREST, n_estimators=50, n_jobs=1, engine="sklearn",
                           voxel_size_nm=ph.config.voxel_size_nm)
        p = forest.predict_proba(model, ch, det, n_classes=3)
        classes = ["pore", "carbon_binder", "active_material"]
    else:
        images = np.stack([ph.images[d] for d in seg.detectors])
        p = seg.predict_proba(images, seg.detectors)
        classes = list(seg.classes)
    t_pred = time.perf_counter() - t0
    logp = np.log(np.clip(p, 1e-12, None))
    temp = fit_temperature(logp, ph.train, probs=False, bounds=temperature_bounds(scribbles=True))
    variants = {"raw": p, "calibrated": softmax(logp / temp, 0).astype(np.float32)}
    vs = list(ph.config.voxel_size_nm)
    common = {"steps": ["fractions", "interfaces", "tortuosity"], "tortuosity": {"phases": ["pore"]},
              "plots": False, "html": False, "progress": False}
    tt: dict = {}
    truth = flatten(characterise(ph.truth, vs, classes, values=[1, 2, 3], tables_out=tt, **common), tt)
    rec = {"seed": seed, "family": family, "temperature": temp, "predict_s": round(t_pred, 2),
           "ece_test": {k: expected_calibration_error(v, ph.test) for k, v in variants.items()}}
    for name, probs in variants.items():
        if name not in measured:
            continue
        t0 = time.perf_counter()
        rep = characterise((probs.argmax(0) + 1).astype(np.uint8), vs, classes, values=[1, 2, 3], probabilities=probs,
                           intervals=opts, **common)
        ivs = rep["intervals"]["values"]
        rec[name] = {"seconds": round(time.perf_counter() - t0, 1),
                     "correlation_length": rep["intervals"]["correlation_length_voxels"],
                     **{label: {"truth": truth.get(path), **{k: ivs[path][k] for k in ("value", "low", "high")}}
                        for label, path in NUMBERS.items() if path in ivs}}
    return rec


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for variant in ("raw", "calibrated"):
        for label in NUMBERS:
            for fam in ("a", "b", "both"):
                rs = [r[variant][label] for r in records if (fam == "both" or r["family"] == fam)
                      and label in r.get(variant, {})]
                ok = [r for r in rs if r["truth"] is not None and r["low"] is not None]
                if not ok:
                    continue
                hit = [r["low"] <= r["truth"] <= r["high"] for r in ok]
                width = [(r["high"] - r["low"]) / abs(r["truth"]) for r in ok]
                err = [abs(r["value"] - r["truth"]) / abs(r["truth"]) for r in ok]
                rows.append({"probabilities": variant, "number": label, "family": fam, "n": len(ok),
                             "coverage": float(np.mean(hit)), "median_rel_width": float(np.median(width)),
                             "median_rel_error_argmax": float(np.median(err))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="checkpoints/fibsem_base.ckpt")
    ap.add_argument("--predictor", choices=["unet", "forest"], default="unet",
                    help="unet: --ckpt zero-shot; forest: a random forest fitted on each phantom's scribbles")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--families", nargs="+", default=["a", "b"])
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128])
    ap.add_argument("--n-samples", type=int, default=24)
    ap.add_argument("--n-samples-slow", type=int, default=4)
    ap.add_argument("--correlation-scale", type=float, default=None, help="default: configs/characterise.yaml's")
    ap.add_argument("--variants", nargs="+", default=["raw", "calibrated"],
                    help="probabilities characterised with intervals: raw (T = 1, as predict.py writes them for "
                         "fibsem_base) and/or calibrated (T fitted on the phantom's scribbles)")
    ap.add_argument("--out", default="outputs/bench_uncertainty.json")
    ap.add_argument("--merge", nargs="+", help="only merge the records of earlier runs' JSON files and print the table")
    a = ap.parse_args()
    if a.merge:
        runs = [json.loads(Path(f).read_text()) for f in a.merge]
        report([r for run in runs for r in run["records"]], [run["command"] for run in runs], runs[0]["options"], a.out)
        return
    from seglearn.characterise.core import default_options
    from seglearn.segment.api import load_segmenter

    opts = {**default_options()["intervals"], "n_samples": a.n_samples, "n_samples_slow": a.n_samples_slow}
    if a.correlation_scale is not None:
        opts["correlation_scale"] = a.correlation_scale
    seg = load_segmenter(a.ckpt, device="cpu") if a.predictor == "unet" else "forest"
    records = []
    for fam in a.families:
        for s in a.seeds:
            t0 = time.perf_counter()
            records.append(one(seg, s, fam, a.shape, opts, a.variants))
            r = records[-1]
            print(f"family {fam} seed {s}: T {r['temperature']:.2f}, ECE {r['ece_test']['raw']:.3f} -> "
                  f"{r['ece_test']['calibrated']:.3f}, " + ", ".join(
                      f"{k} {v['truth']:.4g} in [{v['low']:.4g}, {v['high']:.4g}]"
                      for k, v in r.get(a.variants[0], {}).items()
                      if isinstance(v, dict) and v.get("low") is not None and v.get("truth") is not None)
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    report(records, "benchmarks/uncertainty.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
                                                          if k != "merge"), opts, a.out)


def report(records: list[dict], command, opts: dict, path: str) -> None:
    """Write the JSON (records, summary, mean ECE) and print the markdown table."""
    rows = summarise(records)
    ece = {k: [r["ece_test"][k] for r in records] for k in ("raw", "calibrated")}
    out = {"command": command, "options": opts, "summary": rows,
           "ece_test_mean": {k: float(np.mean(v)) for k, v in ece.items()},
           "temperature": {"median": float(np.median([r["temperature"] for r in records])),
                           "min": float(np.min([r["temperature"] for r in records])),
                           "max": float(np.max([r["temperature"] for r in records]))},
           "records": records}
    for fam in ("a", "b"):
        fr = [r for r in records if r["family"] == fam]
        out["ece_test_mean"][fam] = {k: float(np.mean([r["ece_test"][k] for r in fr])) if fr else None
                                     for k in ("raw", "calibrated")}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))
    print(f"ECE of the test slices: {out['ece_test_mean']['raw']:.4f} (T = 1) -> "
          f"{out['ece_test_mean']['calibrated']:.4f} (T fitted on the scribbles)")
    print("| probabilities | number | family | n | coverage | median width / truth | median argmax error / truth |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['probabilities']} | {r['number']} | {r['family']} | {r['n']} | {100 * r['coverage']:.0f} % | "
              f"{100 * r['median_rel_width']:.1f} % | {100 * r['median_rel_error_argmax']:.1f} % |")


if __name__ == "__main__":
    main()
