"""Feature + random-forest prediction speed: seglearn's chunked features vs scikit-image.

Same filters on both sides (Gaussian, gradient magnitude, Hessian eigenvalues, 3D, same sigmas),
same forest settings; times features + ``predict`` over a whole volume.

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
    args = ap.parse_args()

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

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
    t0 = time.perf_counter()
    f_sk = multiscale_basic_features(vol.astype(np.float32), intensity=True, edges=True, texture=True,
                                     sigma_min=float(sig.min()), sigma_max=float(sig.max()), num_sigma=len(sig))
    t1 = time.perf_counter()
    sel = train > 0
    rf = RandomForestClassifier(args.trees, n_jobs=args.jobs, random_state=0).fit(f_sk[sel], train[sel])
    t2 = time.perf_counter()
    p_sk = rf.predict(f_sk.reshape(-1, f_sk.shape[-1])).reshape(vol.shape)
    t3 = time.perf_counter()
    sk_feat, sk_pred = t1 - t0, t3 - t2
    del f_sk

    # seglearn: chunked features (shared 1D passes), predict per chunk
    spec = {"inputs": ["V"], "ilastik": {"sigmas": [float(s) for s in sig], "features": ["gauss", "ggm", "hoge"],
                                         "dims": 3}}
    stack = FeatureStack(vol[None], ["V"], spec, None)
    x, y = training_samples(stack, train)
    rf2 = RandomForestClassifier(args.trees, n_jobs=args.jobs, random_state=0).fit(x, y)
    feat_t = [0.0]

    def pred(xc):
        return rf2.predict(xc).astype(np.uint8)

    t4 = time.perf_counter()
    p_sl = predict_volume(stack, pred, progress=False)
    t5 = time.perf_counter()
    # features alone
    t6 = time.perf_counter()
    for a in range(0, z_n, stack.chunk_slices()):
        stack.compute_samples(a, min(a + stack.chunk_slices(), z_n))
    t7 = time.perf_counter()
    feat_t[0] = t7 - t6
    total_sk, total_sl = sk_feat + sk_pred, t5 - t4
    print(f"scikit-image multiscale_basic_features: features {sk_feat:.1f} s, predict {sk_pred:.1f} s, total {total_sk:.1f} s")
    print(f"seglearn FeatureStack: features {feat_t[0]:.1f} s, features + predict (chunked) {total_sl:.1f} s")
    print(f"speed-up features {sk_feat / max(feat_t[0], 1e-9):.2f}x, features + predict {total_sk / max(total_sl, 1e-9):.2f}x")
    print(f"agreement of the two forests' labels: {np.mean(p_sk == p_sl) * 100:.1f} %")


if __name__ == "__main__":
    main()
