"""Test awe of every network weight ``w`` of a blended fine-tuned checkpoint (issue 23, docs/bench_pretrain.md).

Scores ``w * P_net + (1 - w) * P_forest`` on the dataset's dense test slices for each ``w`` of the
grid, next to the weight fine-tuning chose (``meta.blend``), so one sees what the choice left on
the table. The forest is the one stored in the checkpoint (fitted on all training scribbles); a
checkpoint that kept the network alone (``w = 1``) gets the same forest fitted here.

    .venv/bin/python benchmarks/blend_weights.py --data DATASET --ckpt FINETUNED/best.ckpt
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    args = ap.parse_args()

    from seglearn.ckpt import load_checkpoint
    from seglearn.data import load_dataset
    from seglearn.metrics import score
    from seglearn.pretrain import blend
    from seglearn.pretrain.rules import scaled_inputs

    ds = load_dataset(args.data, labels=("train", "test"), require=("train", "test"))
    ck = load_checkpoint(args.ckpt, kind="unet")
    raw, names, _ = scaled_inputs(ck, ds.images, ds.detectors)
    k = len(ck["meta"]["classes"])
    zs = [int(z) for z in np.unique(np.nonzero(ds.test)[0])]
    p_net = blend._net_proba(args.ckpt, raw, names, zs)
    bl = blend.from_checkpoint(ck)
    if bl is None:  # the network alone was kept: the forest it was compared with
        cfg = blend.forest_config("rf_tailored", names)
        clf = blend.fit_forest(raw, names, ds.train, cfg, voxel_size_nm=ds.voxel_size_nm)
        bl = blend.Blend(blend.pack(clf, k), {"weight": 0.0, "features": cfg["features"], "detectors": names,
                                                    "n_features": int(clf.n_features_in_), "n_classes": k,
                                                    "voxel_size_nm": ds.voxel_size_nm})
    p_rf = np.concatenate([bl.forest_proba(lambda a, b: raw[:, a:b], raw.shape[1], z, z + 1) for z in zs], axis=1)
    test = ds.test[zs]
    rows = {}
    for w in args.weights:
        p = w * p_net + (1 - w) * p_rf
        rows[w] = round(score((p.argmax(0) + 1).astype(np.uint8), test, k)["awe"], 2)
    chosen = (ck["meta"].get("blend") or {}).get("weight")
    print(json.dumps({"data": args.data, "ckpt": args.ckpt, "test_slices": zs, "chosen_w": chosen,
                      "awe_by_w": rows}, indent=1))


if __name__ == "__main__":
    main()
