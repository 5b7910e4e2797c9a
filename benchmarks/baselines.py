"""Feature + random-forest prediction speed: seglearn's chunked features vs scikit-image.

Same filters on both sides (Gaussian, gradient magnitude, Hessian eigenvalues, 3D, same sigmas),
same forest settings and ``n_jobs``; times features + ``predict`` over a whole volume:

- scikit-image: ``multiscale_basic_features`` + sklearn ``RandomForestClassifier.predict``;
- seglearn as shipped: chunked ``FeatureStack`` + the baseline's forest engine (``--engine``,
  default ``auto`` = compiled where numba is installed), plus the breakdown (features alone,
  the same seglearn forest with sklearn's ``predict``) and whether the engine's labels equal
  sklearn's ``predict`` of the same forest exactly.

    .venv/bin/python benchmarks/baselines.py [--dataset /tmp/ph0] [--slices 32] [--trees 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default=None, help="a dataset folder (default: a 32x128x128 phantom)")
    ap.add_argument("--slices", type=int, default=32, help="slices of the volume to predict")
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=-1)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--engine", default="auto", choices=["auto", "sklearn", "compiled"],
                    help="seglearn's forest engine (seglearn.baselines.forest_engine)")
    args = ap.parse_args()

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    from seglearn.baselines.forest_engine import make_predictor, resolve_engine
    from seglearn.features.stack import FeatureStack, predict_volume, training_samples

    if args.dataset:
        from seglearn.data import load_dataset

        ds = load_dataset(args.dataset)
        vol, train = ds.channel(ds.detectors[0]), ds.train
    else:
        from seglearn.synth import make_phantom

        ph = make_phantom({"shape": [args.slices, 128, 128], "seed": 1, "test_gap": 4})
        vol, train = ph.images["SE2"], ph.train
    z_n = min(args.slices, vol.shape[0])
    lab_slices = np.nonzero(train.reshape(train.shape[0], -1).max(1))[0]
    z0 = int(lab_slices[0])
    z0 = max(0, min(z0, vol.shape[0] - z_n))
    vol, train = vol[z0:z0 + z_n], train[z0:z0 + z_n]
    print(f"volume {vol.shape}, labelled voxels {int((train > 0).sum())}, sigmas {args.sigmas}, trees {args.trees}")

    # scikit-image: whole-volume features, then one predict
    sig = np.asarray(args.sigmas)
    c0, t0 = time.process_time(), time.perf_counter()
    f_sk = multiscale_basic_features(vol.astype(np.float32), intensity=True, edges=True, texture=True,
                                     sigma_min=float(sig.min()), sigma_max=float(sig.max()), num_sigma=len(sig))
    c1, t1 = time.process_time(), time.perf_counter()
    sel = train > 0
    rf = RandomForestClassifier(args.trees, n_jobs=args.jobs, random_state=0).fit(f_sk[sel], train[sel])
    c2, t2 = time.process_time(), time.perf_counter()
    p_sk = rf.predict(f_sk.reshape(-1, f_sk.shape[-1])).reshape(vol.shape)
    c3, t3 = time.process_time(), time.perf_counter()
    sk_feat, sk_pred = t1 - t0, t3 - t2
    cpu_sk = (c3 - c2) + (c1 - c0)
    del f_sk

    # seglearn: chunked features (shared 1D passes), predict per chunk
    spec = {"inputs": ["V"], "ilastik": {"sigmas": [float(s) for s in sig], "features": ["gauss", "ggm", "hoge"],
                                         "dims": 3}}
    stack = FeatureStack(vol[None], ["V"], spec, None)
    x, y = training_samples(stack, train)
    rf2 = RandomForestClassifier(args.trees, n_jobs=args.jobs, random_state=0).fit(x, y)
    engine = resolve_engine(rf2, args.engine)
    ours = make_predictor(rf2, args.engine, n_jobs=args.jobs)
    ours(x[:64])  # numba compiles (or loads its cache) once per process: not part of the timing
    chunk_t = {"predict": 0.0, "cpu": 0.0}

    def timed(fn):
        def run(xc):
            c, t = time.process_time(), time.perf_counter()
            out = np.asarray(fn(xc)).astype(np.uint8)
            chunk_t["predict"] += time.perf_counter() - t
            chunk_t["cpu"] += time.process_time() - c
            return out
        return run

    c4, t4 = time.process_time(), time.perf_counter()
    p_sl = predict_volume(stack, timed(ours), progress=False)  # seglearn as shipped
    c5, t5 = time.process_time(), time.perf_counter()
    our_pred, our_cpu = chunk_t["predict"], chunk_t["cpu"]
    # breakdown: features alone; the same forest through sklearn's predict (labels must be equal)
    t6 = time.perf_counter()
    for a in range(0, z_n, stack.chunk_slices()):
        stack.compute_samples(a, min(a + stack.chunk_slices(), z_n))
    t7 = time.perf_counter()
    chunk_t.update(predict=0.0, cpu=0.0)
    p_ref = predict_volume(stack, timed(rf2.predict), progress=False)
    sk_pred2, sk_cpu2 = chunk_t["predict"], chunk_t["cpu"]
    feat_t, total_sk, total_sl = t7 - t6, sk_feat + sk_pred, t5 - t4
    print(f"threads n_jobs={args.jobs}; seglearn forest engine: {engine} (asked {args.engine})")
    print(f"scikit-image multiscale_basic_features + sklearn predict: features {sk_feat:.1f} s, "
          f"predict {sk_pred:.1f} s (CPU {c3 - c2:.1f} s), total {total_sk:.1f} s")
    print(f"seglearn FeatureStack + {engine} predict (chunked, as shipped): total {total_sl:.1f} s "
          f"(features {feat_t:.1f} s alone, predict {our_pred:.1f} s, CPU {our_cpu:.1f} s)")
    print(f"  same seglearn forest with sklearn predict: {sk_pred2:.1f} s (CPU {sk_cpu2:.1f} s) -> predict "
          f"speed-up {sk_pred2 / max(our_pred, 1e-9):.2f}x (CPU {sk_cpu2 / max(our_cpu, 1e-9):.2f}x)")
    print(f"speed-up features {sk_feat / max(feat_t, 1e-9):.2f}x, features + predict "
          f"{total_sk / max(total_sl, 1e-9):.2f}x (wall); CPU time {cpu_sk:.1f} s vs {c5 - c4:.1f} s: "
          f"{cpu_sk / max(c5 - c4, 1e-9):.2f}x")
    same = bool(np.array_equal(p_sl, p_ref))
    print(f"{engine} labels == sklearn predict of the same forest: {same} "
          f"({int((p_sl != p_ref).sum())} of {p_sl.size} voxels differ)")
    print(f"agreement of the two forests' labels (skimage vs seglearn features): {np.mean(p_sk == p_sl) * 100:.1f} %")

if __name__ == "__main__":
    main()
