"""Benchmark of 3D particle instances on a phantom with true particles (issue 5).

Methods, each timed from the normalised volume to the 3D labels:

- ``fusion``: the StarDist-style model on xy, xz and yz slices, probability maps fused (default);
- ``linking``: the model on xy slices, 2D labels linked by Hungarian assignment;
- ``watershed``: the classical baseline, Otsu foreground (holes filled) + distance-transform watershed;
- ``watershed_nnfg``: the same watershed on the network's fused foreground (isolates the splitting step);
- ``fusion_oracle``: view fusion of the *true* per-view StarDist probabilities (upper bound of the fusion step).

Free parameters of fusion (``h``, ``sigma``) and of the watershed (``h``, ``min_distance``) are
chosen on the *training* phantom (``--tune``), then applied unchanged to the test phantom.

Usage::

    python -m seglearn.synth out=DATA/train96 seed=11 'shape=[96,96,96]' 'voxel_size_nm=[20,20,20]' particle_radius_nm=260
    python -m seglearn.synth out=DATA/bench96 seed=12 'shape=[96,96,96]' 'voxel_size_nm=[20,20,20]' particle_radius_nm=260
    python train.py model=stardist data.root=DATA/train96 out_dir=RUN
    python benchmarks/instances.py --ckpt RUN/best.ckpt --data DATA/bench96 --tune DATA/train96 --out bench_instances.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time

import numpy as np


def _f1(true, pred, t="0.5"):
    from seglearn.instances.metrics import instance_scores

    return instance_scores(true, pred)[t]["f1"]


def _bf16(net, params) -> bool:
    from seglearn.precision import resolve_bf16

    return resolve_bf16(params.get("bf16", "auto"), next(net.parameters()).device)


def _views(net, x, prob_t, nms_t, params):
    from seglearn.instances.volume import predict_view

    probs, masks = [], []
    for v in ("xy", "xz", "yz"):
        p, lbl = predict_view(net, x, v, prob_thresh=prob_t, nms_thresh=nms_t, tile=tuple(params.get("tile", (256, 256))),
                              context=int(params.get("context", 64)), progress=False, bf16=_bf16(net, params))
        probs.append(p)
        masks.append(lbl > 0)
    return probs, masks


def tune(net, meta, root, fusion_grid, ws_grid):
    """Best fusion and watershed parameters (F1 at IoU 0.5) on a dataset with true instances."""
    from seglearn.data import load_dataset
    from seglearn.instances.fusion import fuse_views
    from seglearn.instances.pipeline import prepare_images
    from seglearn.instances.watershed import distance_watershed, threshold_foreground

    ds = load_dataset(root, labels=("instances",))
    x = prepare_images(ds.images, meta)
    thr = meta["thresholds"]
    probs, masks = _views(net, x, thr["prob"], thr["nms"], meta.get("predict") or {})
    fus = []
    for h, sigma, vote, seed in fusion_grid:
        f = _f1(ds.instances, fuse_views(probs, masks, seed_thresh=seed, h=h, sigma=sigma, fg_vote=vote))
        fus.append(({"h": h, "sigma": sigma, "fg_vote": vote, "seed_thresh": seed}, f))
    wss = []
    for ch in [None] + list(range(ds.images.shape[0])):
        fg = threshold_foreground(ds.images, channel=ch)
        for h, md in ws_grid:
            f = _f1(ds.instances, distance_watershed(fg, spacing=ds.voxel_size_nm, h=h, min_distance=md))
            wss.append(({"channel": ch, "h": h, "min_distance": md}, f))
    best_f = max(fus, key=lambda r: r[1])
    best_w = max(wss, key=lambda r: r[1])
    logging.info("tuning on %s: fusion %s (F1 %.3f), watershed %s (F1 %.3f)", root, *best_f, *best_w)
    return best_f[0], best_w[0], {"fusion": fus, "watershed": wss}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True, help="test dataset with labels/instances.tif")
    ap.add_argument("--tune", default=None, help="dataset to choose fusion / watershed parameters on (the training one)")
    ap.add_argument("--out", default=None, help="JSON with every figure")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", choices=["auto", "true", "false"], default=None,
                    help="network precision at prediction (default: the checkpoint's, auto)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from stardist import edt_prob

    from seglearn.ckpt import load_checkpoint
    from seglearn.data import load_dataset
    from seglearn.instances.fusion import fuse_views
    from seglearn.instances.linking import link_slices
    from seglearn.instances.metrics import instance_scores
    from seglearn.instances.pipeline import load_model, prepare_images, segment_particles
    from seglearn.instances.targets import relabel_slice, unview_stack, view_stack
    from seglearn.instances.volume import predict_view
    from seglearn.instances.watershed import distance_watershed, threshold_foreground

    ck = load_checkpoint(a.ckpt, kind="stardist")
    meta = ck["meta"]
    net = load_model(ck, device="cpu")
    params = dict(meta.get("predict") or {})
    if a.bf16 is not None:
        params["bf16"] = a.bf16
    meta = {**meta, "predict": params}  # tune() reads the same prediction settings
    thr = meta["thresholds"]
    fusion_p = dict(params.get("fusion") or {})
    ws_p = {"channel": None, "h": 1.0, "min_distance": 5}
    tuning = None
    if a.tune:
        best_f, best_w, tuning = tune(net, meta, a.tune, list(itertools.product([0.02, 0.05, 0.1], [0.0, 0.5, 1.0], [0.5], [0.4, 0.5, 0.6])),
                                      list(itertools.product([0.5, 1.0, 2.0], [3, 5, 7])))
        fusion_p.update(best_f)
        ws_p = best_w
    params["fusion"] = fusion_p
    ds = load_dataset(a.data, labels=("instances",))
    true = ds.instances
    results = {}

    t0 = time.perf_counter()
    x = prepare_images(ds.images, meta)
    t_norm = time.perf_counter() - t0
    for method in ("fusion", "linking"):
        labels, info = segment_particles(net, x, method=method, prob_thresh=thr["prob"], nms_thresh=thr["nms"],
                                         params=params, progress=False)
        results[method] = {"seconds": info["seconds"] + t_norm, "n_pred": int(labels.max()),
                           "scores": instance_scores(true, labels)}
    # per-slice 2D quality of the network alone (xy), for reference
    t0 = time.perf_counter()
    ws_kw = {k: v for k, v in ws_p.items() if k != "channel"}
    fg = threshold_foreground(ds.images, channel=ws_p["channel"])
    ws = distance_watershed(fg, spacing=ds.voxel_size_nm, **ws_kw)
    results["watershed"] = {"seconds": time.perf_counter() - t0, "n_pred": int(ws.max()),
                            "scores": instance_scores(true, ws), "params": ws_p}
    # watershed on the network's foreground (same masks as fusion)
    t0 = time.perf_counter()
    masks = [predict_view(net, x, v, prob_thresh=thr["prob"], nms_thresh=thr["nms"], progress=False,
                          bf16=_bf16(net, params))[1] > 0
             for v in ("xy", "xz", "yz")]
    nnfg = np.mean(masks, axis=0) >= float(fusion_p.get("fg_vote", 0.5)) - 1e-6
    ws2 = distance_watershed(nnfg, spacing=ds.voxel_size_nm, **ws_kw)
    results["watershed_nnfg"] = {"seconds": time.perf_counter() - t0, "n_pred": int(ws2.max()),
                                 "scores": instance_scores(true, ws2)}
    # upper bound: fusion of the true per-view probabilities
    t0 = time.perf_counter()
    probs = [unview_stack(np.stack([edt_prob(relabel_slice(s)) for s in view_stack(true, v)]), v) for v in ("xy", "xz", "yz")]
    oracle = fuse_views(probs, [true > 0] * 3, seed_thresh=0.5, h=fusion_p.get("h", 0.1),
                        sigma=fusion_p.get("sigma", 1.0))
    results["fusion_oracle"] = {"seconds": time.perf_counter() - t0, "n_pred": int(oracle.max()),
                                "scores": instance_scores(true, oracle)}
    from skimage.measure import label as cc

    linked_true = link_slices(np.stack([cc(s) for s in true > 0]), progress=False)
    results["linking_oracle_cc"] = {"seconds": None, "n_pred": int(linked_true.max()),
                                    "scores": instance_scores(true, linked_true)}
    report = {"data": a.data, "ckpt": a.ckpt, "n_true": int(len(np.unique(true)) - 1), "shape": list(true.shape),
              "thresholds": thr, "fusion_params": fusion_p, "watershed_params": ws_p, "tuning": tuning,
              "threads": torch.get_num_threads(), "bf16": _bf16(net, params), "results": results}
    print(f"{'method':<20} {'F1@0.5':>7} {'F1@0.7':>7} {'F1@0.9':>7} {'PQ@0.5':>7} {'AP@0.5':>7} {'n_pred':>7} {'s/volume':>9}")
    for k, r in results.items():
        s = r["scores"]
        sec = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{k:<20} {s['0.5']['f1']:7.3f} {s['0.7']['f1']:7.3f} {s['0.9']['f1']:7.3f} "
              f"{s['0.5']['panoptic_quality']:7.3f} {s['0.5']['ap']:7.3f} {r['n_pred']:7d} {sec:>9}")
    print(f"true particles: {report['n_true']}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main()
