"""Benchmarks of the preprocessing stage (results go to docs/bench_preprocess.md).

    python benchmarks/preprocess.py drift    [--z 96 --size 256 --drift 0 0.3 0.7 --voxel-z 30]   residual vs drift.csv
             [--fiducial 24 --band-inset 8 --variants 'chain, refined' 'fiducial band roi' ...]  with a fiducial band
    python benchmarks/preprocess.py drift-awe                                       threshold awe raw vs registered
    python benchmarks/preprocess.py curtain  [--z 96 --size 256 --curtain 0.25 --seed 11 --pipelines none wavelet ...]
                                             awe before/after destriping (threshold baselines + random forest)
    python benchmarks/preprocess.py memory   [--zs 100 1000 --size 1024 --steps light|full]  peak RSS, big uint8 stack

Phantoms are written under --work (default /tmp/seglearn_bench_preprocess) and reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def phantom(work: Path, name: str, **params) -> Path:
    from seglearn.synth.phantom import write_phantom

    out = work / name
    if not (out / "dataset.yaml").exists():
        write_phantom(out, params, overwrite=True, name=name)
    return out


REGISTER_VARIANTS = {
    "chain, 1 estimate": {"refine": 0},
    "chain, refined": {},
    "chain, refined x2": {"refine": 2},
    "lags 1,2,4,8 LSQ": {"lags": [1, 2, 4, 8]},
    # on phantoms with --fiducial H: the shifts estimated on the cap band only (see band_roi)
    "fiducial band roi": {"roi": "band"},
    "fiducial band roi, inset": {"roi": "inset"},
    "fiducial band roi, inset, lags 1,2,4,8": {"roi": "inset", "lags": [1, 2, 4, 8]},
}


def band_roi(spec: str, height: int, width: int, inset: int) -> list[int]:
    """``roi`` of a REGISTER_VARIANTS entry: ``band`` = the whole fiducial band ``[0, H, 0, X]``;
    ``inset`` = the band less its ``inset`` bottom rows ``[0, H - inset, 0, X]`` (the drift lifts
    the sample into the bottom rows of the band in some slices)."""
    if not height:
        raise SystemExit("the fiducial variants need --fiducial H (rows of the band)")
    return [0, height - (inset if spec == "inset" else 0), 0, width]


def bench_drift(args) -> list[dict]:
    from seglearn.data import load_dataset
    from seglearn.preprocess import Pipeline, read_shifts_csv, residual_rms

    rows = []
    vz = args.voxel_z
    for drift in args.drift:
        name = f"drift{drift}_z{args.z}" + (f"_vz{vz:g}" if vz != 30 else "") + (
            f"_fid{args.fiducial}" if args.fiducial else "")
        root = phantom(args.work, name, seed=args.seed, shape=[args.z, args.size, args.size], drift_px=drift,
                       voxel_size_nm=[vz, 15.0, 15.0], **({"fiducial": args.fiducial} if args.fiducial else {}))
        ds = load_dataset(root)
        true = read_shifts_csv(root / "drift.csv") if drift > 0 else np.zeros((ds.shape[0], 2))
        if args.linear:  # add a steady drift of args.linear px per slice along x (moved like the phantom does)
            from scipy import ndimage as ndi

            lin = np.zeros_like(true)
            lin[:, 1] = args.linear * (np.arange(len(true)) - len(true) // 2)
            ds.images = np.stack([np.stack([np.clip(np.rint(ndi.shift(ch[z].astype(np.float32), lin[z], order=1,
                                                                        mode="nearest")), 0, 255).astype(ch.dtype)
                                            for z in range(len(ch))]) for ch in ds.images])
            true = true + lin
        for variant in args.variants:
            params = dict(REGISTER_VARIANTS[variant])
            if isinstance(params.get("roi"), str):
                params["roi"] = band_roi(params["roi"], args.fiducial, ds.shape[-1], args.band_inset)
            for det in ds.detectors:
                pipe = Pipeline.from_config([{"step": "register", "method": args.methods[0], "channel": det,
                                              "tvl1_downsample": 1, **params}])
                t0 = time.perf_counter()
                pipe.fit(ds.images, detectors=ds.detectors, progress=False)
                dt = time.perf_counter() - t0
                res = residual_rms(pipe.steps[0].shifts, true)
                raw = residual_rms(np.zeros_like(true), true)
                rows.append({"drift_px": drift, "linear_px": args.linear, "voxel_z_nm": vz, "fiducial": args.fiducial,
                             "variant": variant, "roi": params.get("roi"), "detector": det,
                             "seconds": round(dt, 1), "raw_rms": round(raw["absolute_rms"], 3),
                             "raw_pairwise": round(raw["pairwise_rms"], 3),
                             **{k: round(v, 3) for k, v in res.items()}})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_drift_awe(args) -> list[dict]:
    """Double threshold (fitted on the scribbles) before/after registration, scored on the truth."""
    from seglearn.baselines.threshold_fit import apply_double_threshold, best_double_threshold
    from seglearn.data import load_dataset
    from seglearn.metrics import score
    from seglearn.preprocess import Pipeline

    rows = []
    for drift in args.drift:
        root = phantom(args.work, f"drift{drift}_z{args.z}", seed=args.seed, shape=[args.z, args.size, args.size],
                       drift_px=drift)
        ds = load_dataset(root)
        pipe = Pipeline.from_config([{"step": "register", "channel": "InLens"}])
        images = pipe.apply(ds.images, detectors=ds.detectors)
        variants = {"raw": (ds.images, ds.train, ds.test, ds.truth),
                    "registered": (images, *(pipe.apply_labels(v, frame="registered")
                                             for v in (ds.train, ds.test, ds.truth)))}
        for name, (imgs, train, test, truth) in variants.items():
            row = {"drift_px": drift, "images": name}
            for ci, det in enumerate(ds.detectors):
                fit = best_double_threshold(imgs[ci], train)
                pred = apply_double_threshold(imgs[ci], fit["thresholds"], fit["order"])
                row[f"awe_truth_{det}"] = round(score(pred, truth, 3)["awe"], 2)
                row[f"awe_test_{det}"] = round(score(pred, test, 3)["awe"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _scores(ds, images, train, test, *, rf: bool = True) -> dict:
    from seglearn.baselines.threshold_fit import apply_double_threshold, best_double_threshold
    from seglearn.metrics import score

    out = {}
    for ci, det in enumerate(ds.detectors):
        fit = best_double_threshold(images[ci], train)
        pred = apply_double_threshold(images[ci], fit["thresholds"], fit["order"])
        out[f"threshold_{det}"] = score(pred, test, 3)["awe"]
    if not rf:
        return out
    try:  # the random forest of seglearn.baselines (another helper's), when present
        from seglearn.baselines.registry import fit_method, predict_method

        import yaml

        params = yaml.safe_load((ROOT / "configs" / "method" / "rf_ilastik.yaml").read_text())
        params.pop("impl")
        params.update(n_jobs=2, voxel_size_nm=list(ds.voxel_size_nm))
        model = fit_method("random_forest", images, ds.detectors, train, **params)
        test_slices = sorted({int(z) for z in np.nonzero(test.reshape(test.shape[0], -1).any(1))[0]})
        pred = predict_method("random_forest", model, images, ds.detectors, slices=test_slices)
        out["random_forest"] = score(pred, test, 3)["awe"]
    except Exception as exc:  # noqa: BLE001 - optional, reported in the table
        out["random_forest"] = f"n/a ({type(exc).__name__}: {exc})"[:120]
    return out


CURTAIN_PIPELINES = {
    "wavelet": [{"step": "destripe", "method": "wavelet"}],
    "fft": [{"step": "destripe", "method": "fft"}],
    "wavelet_joint": [{"step": "destripe", "method": "wavelet", "joint": True}],
    "fft_joint": [{"step": "destripe", "method": "fft", "joint": True}],
    "open_median": [{"step": "destripe", "method": "open_median"}],
    "fft+clahe": [{"step": "destripe", "method": "fft"}, {"step": "clahe"}],
}


def curtain_pipeline(name: str) -> list[dict]:
    """A named pipeline, or ``METHOD:key=value,...`` (one destripe step), e.g. ``wavelet:level=5,sigma=1``."""
    if name in CURTAIN_PIPELINES:
        return CURTAIN_PIPELINES[name]
    method, _, opts = name.partition(":")
    step = {"step": "destripe", "method": method}
    for kv in filter(None, opts.split(",")):
        k, v = kv.split("=")
        if v in ("true", "false"):
            step[k] = v == "true"
        else:
            step[k] = v if k in ("wavelet", "estimator") else float(v) if "." in v else int(v)
    return [step]


def bench_curtain(args) -> list[dict]:
    from seglearn.data import load_dataset
    from seglearn.preprocess import Pipeline

    root = phantom(args.work, f"curtain{args.curtain}_z{args.z}" + (f"_s{args.seed}" if args.seed != 11 else ""),
                   seed=args.seed, shape=[args.z, args.size, args.size],
                   se2={"curtain": args.curtain}, inlens={"curtain": args.curtain})
    ds = load_dataset(root)
    rows = []
    for name in args.pipelines:
        if name == "none":
            imgs, dt = ds.images, 0.0
        else:
            pipe = Pipeline.from_config(curtain_pipeline(name))
            t0 = time.perf_counter()
            imgs = pipe.apply(ds.images, detectors=ds.detectors)
            dt = time.perf_counter() - t0
        rows.append({"pipeline": name, "seed": args.seed, "seconds": round(dt, 1),
                     **_scores(ds, imgs, ds.train, ds.test, rf=not args.no_rf)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def make_big_stack(root: Path, z: int, size: int, detectors=("SE2", "InLens"), drift: float = 0.5) -> Path:
    """A uint8 dataset of ``z`` slices of ``size``^2 written slice by slice (never whole in memory)."""
    import yaml
    from scipy import ndimage as ndi

    from seglearn.io import write_volume_stream

    if (root / "dataset.yaml").exists():
        return root
    rng = np.random.default_rng(0)
    pad = 64
    base = ndi.gaussian_filter(rng.random((size + 2 * pad, size + 2 * pad), dtype=np.float32), 3)
    base = (base - base.min()) / (base.max() - base.min())
    walk = np.clip(np.cumsum(rng.normal(0, drift, (z, 2)), axis=0), -pad + 1, pad - 1).round().astype(int)
    for k, det in enumerate(detectors):
        def slices(k=k):
            r = np.random.default_rng(k)
            for i in range(z):
                dy, dx = walk[i]
                s = base[pad + dy: pad + dy + size, pad + dx: pad + dx + size]
                s = 40 + 170 * (s if k == 0 else 1 - s) + r.normal(0, 8, s.shape).astype(np.float32)
                yield np.clip(s, 0, 255).astype(np.uint8)
        write_volume_stream(root / "images" / f"{det}.tif", slices(), shape=(z, size, size), dtype=np.uint8,
                            voxel_size_nm=(10, 5, 5), overwrite=True)
    meta = {"name": root.name, "detectors": list(detectors), "classes": ["pore", "carbon_binder", "active_material"],
            "voxel_size_nm": [10.0, 5.0, 5.0]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return root


MEMORY_STEPS = {
    "full": [{"step": "register", "method": "phase", "channel": 0},
             {"step": "match_histograms", "reference": "running", "window": 15},
             {"step": "destripe", "method": "fft"}],
    # cheaper per slice (the memory use is the same): registration on the central half
    "light": [{"step": "register", "method": "phase", "channel": 0, "margin": 0.25, "upsample": 10},
              {"step": "match_histograms", "reference": "running", "window": 15}],
}


def bench_memory(args) -> list[dict]:
    rows = []
    for z in args.zs:
        root = make_big_stack(args.work / f"big_z{z}_{args.size}", z, args.size)
        out = args.work / f"big_z{z}_{args.size}_out"
        t0 = time.perf_counter()
        code = ("import json,resource,sys;from seglearn.preprocess.run import preprocess_dataset as p;"
                f"r=p({str(root)!r},{str(out)!r},{MEMORY_STEPS[args.steps]!r},chunk={args.chunk},overwrite=True,progress=False);"
                "print(json.dumps({'shape':r['shape'],'maxrss_kb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise SystemExit(res.stderr)
        info = json.loads(res.stdout.strip().splitlines()[-1])
        gb_in = 2 * z * args.size ** 2 / 2**30
        rows.append({"z": z, "size": args.size, "detectors": 2, "steps": args.steps, "input_GiB": round(gb_in, 2), "chunk": args.chunk,
                     "seconds": round(time.perf_counter() - t0, 1), "peak_rss_MiB": round(info["maxrss_kb"] / 1024, 1),
                     "out_shape": info["shape"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["drift", "drift-awe", "curtain", "memory"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/seglearn_bench_preprocess"))
    ap.add_argument("--z", type=int, default=96)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--drift", type=float, nargs="+", default=[0.3, 0.7])
    ap.add_argument("--methods", nargs="+", default=["phase"])
    ap.add_argument("--variants", nargs="+", default=[v for v in REGISTER_VARIANTS if "fiducial" not in v],
                    choices=list(REGISTER_VARIANTS))
    ap.add_argument("--linear", type=float, default=0.0, help="add a steady x drift of this many px per slice")
    ap.add_argument("--voxel-z", type=float, default=30.0, help="slice thickness of the drift phantoms (nm; xy 15)")
    ap.add_argument("--fiducial", type=int, default=0,
                    help="drift phantoms with a fiducial band of this many rows at the top (phantom option fiducial)")
    ap.add_argument("--band-inset", type=int, default=8,
                    help="bottom rows of the band left out by the variant 'fiducial band roi, inset'")
    ap.add_argument("--curtain", type=float, default=0.25)
    ap.add_argument("--pipelines", nargs="+", default=["none", *CURTAIN_PIPELINES],
                    help="names of CURTAIN_PIPELINES, 'none', or METHOD:key=value,... (e.g. wavelet:level=5,sigma=1)")
    ap.add_argument("--no-rf", action="store_true", help="thresholds only (fast)")
    ap.add_argument("--zs", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--steps", choices=sorted(MEMORY_STEPS), default="light")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "memory" and args.size == 256:
        args.size = 1024
    rows = {"drift": bench_drift, "drift-awe": bench_drift_awe, "curtain": bench_curtain,
            "memory": bench_memory}[args.what](args)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
