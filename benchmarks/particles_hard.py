"""Per-stage error breakdown of the particle pipeline on hard phantoms (issue 29).

Stages, each scored against the true instances of the test volume:

- ``view xy / xz / yz``: the network's 2D instances (after NMS, the checkpoint's thresholds) in
  every slice of a view, against the truth's 2D sections (F1 pooled over the slices);
- ``fusion``: the three views' probabilities fused into 3D particles (checkpoint defaults, then
  the fusion parameters tuned on ``--tune``);
- ``fusion, true foreground``: the same seeds / watershed inside the true foreground (isolates
  the foreground from the splitting);
- ``fusion of true views``: fusion of the truth's own per-view StarDist probabilities (the
  fusion step alone, a perfect network);
- ``linking``: the xy 2D instances linked by Hungarian assignment;
- ``watershed``: the distance-transform watershed baseline, tuned on ``--tune`` the same way.

For 3D results: F1 at IoU 0.5 and 0.75, found / true, merged / split / lost / false particles and
boundary IoU (:func:`seglearn.instances.metrics.error_breakdown`). Free parameters are chosen on
``--tune`` (a volume that is neither trained on nor scored) by F1 at IoU 0.75, the issue's target
(ties: F1 at 0.5, then mean IoU).

Usage (the issue's hard case: 48 x 96 x 96 at 140 x 70 x 70 nm, dense, cracked, faint contacts)::

    python -m seglearn.synth.particles out=DATA/hard_s1 seed=1     # train
    python -m seglearn.synth.particles out=DATA/hard_s2 seed=2     # test
    python -m seglearn.synth.particles out=DATA/hard_s3 seed=3     # tune
    python train.py model=stardist data.root=DATA/hard_s1 out_dir=RUN model.max_minutes=4
    python benchmarks/particles_hard.py --ckpt RUN/best.ckpt --data DATA/hard_s2 --tune DATA/hard_s3

The difficulty grid (packing x contact contrast x crack probability x anisotropy, 16 cells): the model
trained on the hard case above scores every cell's seed-2 phantom with its checkpoint's fusion settings;
the watershed is tuned per cell on the cell's seed-3 phantom (phantoms written under ``--grid``)::

    python benchmarks/particles_hard.py --ckpt RUN/best.ckpt --grid DATA/grid --out grid.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time

import numpy as np

FUSION_GRID = {"h": [0.03, 0.05, 0.1], "sigma": [1.0, 1.5], "seed_thresh": [0.3, 0.5],
               "fg": [("polygons", 0.3), ("polygons", 0.5), ("probability", 0.08), ("probability", 0.1),
                      ("probability", 0.12), ("probability", 0.15)]}
WATERSHED_GRID = {"sigma": [0.5, 1.0], "h": [0.5, 1.0, 2.0], "min_distance": [2, 3, 5]}
#: the difficulty axes: (name, {value name: phantom overrides}), hard value first (configs/particles.yaml)
DIFFICULTY = (
    ("packing", {"dense": {}, "loose": {"solid_fraction": 0.25, "particle_min_gap": 1.2}}),
    ("contacts", {"faint": {}, "visible": {"contact_contrast": 0.6}}),
    ("cracks", {"cracked": {}, "whole": {"crack_probability": 0.0}}),
    ("voxels", {"140x70x70": {}, "70x70x70": {"shape": [96, 96, 96], "voxel_size_nm": [70.0, 70.0, 70.0]}}),
)


class Outputs:
    """The network's per-view probabilities and 2D labels of a volume, on the grid it saw (isotropic
    voxels for an isotropic checkpoint), and the way back to the volume's grid."""

    def __init__(self, net, meta, root, params):
        from seglearn.data import load_dataset
        from seglearn.instances.pipeline import prepare_images, view_outputs

        self.ds = load_dataset(root, labels=("instances",), require=("instances",))
        x = prepare_images(self.ds.images, meta)
        self.prob_thresh = meta["thresholds"]["prob"]
        t0 = time.perf_counter()
        self.probs, self.labels = view_outputs(net, x, prob_thresh=self.prob_thresh, nms_thresh=meta["thresholds"]["nms"],
                                               params=params, voxel_size_nm=self.ds.voxel_size_nm, progress=False,
                                               back=False)
        self.seconds = time.perf_counter() - t0
        self.shape = self.ds.instances.shape
        self.scale = self.labels[0].size / self.ds.instances.size

    def back(self, a):
        from seglearn.instances.anisotropy import from_isotropic

        return from_isotropic(a, self.shape)

    def fuse(self, fu, *, true_fg: bool = False):
        """3D particles on the volume's grid; ``true_fg``: inside the true foreground instead."""
        from seglearn.instances.anisotropy import to_isotropic
        from seglearn.instances.fusion import fuse_views
        from seglearn.instances.pipeline import fuse_settings

        if not true_fg:
            return self.back(fuse_settings(self.probs, self.labels, fu, self.prob_thresh, self.scale))
        factors = [m / n for m, n in zip(self.labels[0].shape, self.shape)]
        fg = to_isotropic(self.ds.instances, factors, labels=True) > 0
        return self.back(fuse_views(self.probs, [fg] * 3, seed_thresh=fu.get("seed_thresh") or self.prob_thresh, h=fu["h"], sigma=fu["sigma"],
                                    min_size=int(round(fu["min_size"] * self.scale))))


def _fusion(fu: dict) -> dict:
    """Fusion settings from a grid point (``fg`` = (foreground, fg_vote or fg_prob))."""
    fu = dict(fu)
    kind, value = fu.pop("fg")
    return {**fu, "foreground": kind, "fg_vote": value if kind == "polygons" else 0.5,
            "fg_prob": value if kind == "probability" else 0.1, "min_size": 20}


def _watershed(ds, wp):
    from seglearn.instances.watershed import distance_watershed, threshold_foreground

    fg = threshold_foreground(ds.images, sigma=wp["sigma"])
    return distance_watershed(fg, spacing=ds.voxel_size_nm, h=wp["h"], min_distance=wp["min_distance"])


def _score(true, pred):
    from seglearn.instances.metrics import instance_scores

    s = instance_scores(true, pred, thresholds=(0.5, 0.75))
    return (s["0.75"]["f1"], s["0.5"]["f1"], s["0.5"]["mean_matched_score"])


def tune(out: Outputs):
    """Best fusion and watershed parameters on a tuning volume (F1 at IoU 0.75, then 0.5, then the mean IoU of
    the matched particles)."""
    ds = out.ds
    fus = []
    for vals in itertools.product(*FUSION_GRID.values()):
        fu = _fusion(dict(zip(FUSION_GRID, vals)))
        fus.append((_score(ds.instances, out.fuse(fu)), fu))
    wss = []
    for vals in itertools.product(*WATERSHED_GRID.values()):
        wp = dict(zip(WATERSHED_GRID, vals))
        wss.append((_score(ds.instances, _watershed(ds, wp)), wp))
    (sf, bf), (sw, bw) = max(fus, key=lambda r: r[0]), max(wss, key=lambda r: r[0])
    logging.info("tuned: fusion %s (F1@0.75 %.3f), watershed %s (F1@0.75 %.3f)", bf, sf[0], bw, sw[0])
    return bf, bw


def true_view_probs(true):
    """The truth's own StarDist probability in each view (``edt_prob`` of every 2D section)."""
    from stardist import edt_prob

    from seglearn.instances.targets import relabel_slice, unview_stack, view_stack

    out = []
    for v in ("xy", "xz", "yz"):
        st = view_stack(true, v)
        out.append(unview_stack(np.stack([edt_prob(relabel_slice(s)) for s in st]).astype(np.float32), v))
    return out


def view_scores(true, labels):
    """2D F1 at IoU 0.5 / 0.75 and found / true of each view's instances against the truth's sections."""
    from seglearn.instances.metrics import instance_scores_2d
    from seglearn.instances.targets import relabel_slice, view_stack

    rows = {}
    for v, lbl in zip(("xy", "xz", "yz"), labels):
        t = np.stack([relabel_slice(s) for s in view_stack(true, v)])
        p = np.stack([relabel_slice(s) for s in view_stack(lbl, v)])
        s = instance_scores_2d(t, p, thresholds=(0.5, 0.75))
        rows[v] = {"f1_0.5": s["0.5"]["f1"], "f1_0.75": s["0.75"]["f1"], "n_true": s["0.5"]["n_true"],
                   "n_pred": s["0.5"]["n_pred"]}
    return rows


def table(views, stages) -> str:
    """The results as a markdown table."""
    head = ("| stage | F1 @ 0.5 | F1 @ 0.75 | found / true | merged | split | lost | false | mean IoU | boundary IoU |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for v, r in views.items():
        lines.append(f"| view {v} (2D, per slice) | {r['f1_0.5']:.3f} | {r['f1_0.75']:.3f} | {r['n_pred']} / {r['n_true']} "
                     "| | | | | | |")
    for name, r in stages.items():
        lines.append(f"| {name} | {r['f1_0.5']:.3f} | {r['f1_0.75']:.3f} | {r['n_pred']} / {r['n_true']} | {r['merged']} "
                     f"| {r['split']} | {r['lost']} | {r['false']} | {r['mean_iou']:.3f} | {r['boundary_iou']:.3f} |")
    return "\n".join(lines)


def _cell_data(root, name: str, over: dict, seed: int):
    """The cell's phantom of ``seed`` under ``root`` (written once)."""
    from pathlib import Path

    from seglearn.synth.particles import write_particles

    path = Path(root) / f"{name}_s{seed}"
    if not (path / "dataset.yaml").exists():
        write_particles(path, {**over, "seed": seed}, overwrite=True)
    return str(path)


def grid(net, meta, params, root) -> list[dict]:
    """Every cell of :data:`DIFFICULTY`: fusion with the checkpoint's settings on the seed-2 phantom, the
    watershed tuned on the seed-3 phantom; one row per cell (its ``error_breakdown`` per method)."""
    from seglearn.data import load_dataset
    from seglearn.instances.metrics import error_breakdown

    rows = []
    for combo in itertools.product(*(list(values.items()) for _, values in DIFFICULTY)):
        name = "_".join(k for k, _ in combo)
        over = {k: v for _, o in combo for k, v in o.items()}
        test, tune_root = _cell_data(root, name, over, 2), _cell_data(root, name, over, 3)
        out = Outputs(net, meta, test, params)
        tds = load_dataset(tune_root, labels=("instances",), require=("instances",))
        wss = [(_score(tds.instances, _watershed(tds, dict(zip(WATERSHED_GRID, v)))), dict(zip(WATERSHED_GRID, v)))
               for v in itertools.product(*WATERSHED_GRID.values())]
        wp = max(wss, key=lambda r: r[0])[1]
        row = {"cell": dict(zip([a for a, _ in DIFFICULTY], name.split("_"))), "watershed_params": wp,
               "fusion": error_breakdown(out.ds.instances, out.fuse(params["fusion"])),
               "watershed": error_breakdown(out.ds.instances, _watershed(out.ds, wp))}
        logging.info("%s: fusion F1@0.75 %.3f, watershed %.3f", name, row["fusion"]["f1_0.75"], row["watershed"]["f1_0.75"])
        rows.append(row)
    return rows


def grid_table(rows) -> str:
    """The grid as a markdown table."""
    axes = [a for a, _ in DIFFICULTY]
    lines = ["| " + " | ".join(axes) + " | fusion F1 @ 0.5 | F1 @ 0.75 | found / true | watershed F1 @ 0.5 | F1 @ 0.75 "
             "| found / true |", "|" + "---|" * (len(axes) + 6)]
    for r in rows:
        f, w = r["fusion"], r["watershed"]
        lines.append("| " + " | ".join(r["cell"][a] for a in axes) + f" | {f['f1_0.5']:.3f} | {f['f1_0.75']:.3f} | "
                     f"{f['n_pred']} / {f['n_true']} | {w['f1_0.5']:.3f} | {w['f1_0.75']:.3f} | {w['n_pred']} / {w['n_true']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default=None, help="test dataset with labels/instances.tif")
    ap.add_argument("--grid", default=None, help="folder for the difficulty grid's phantoms (instead of --data)")
    ap.add_argument("--tune", default=None, help="dataset to tune fusion / watershed on (not the test one)")
    ap.add_argument("--out", default=None, help="JSON with every figure")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--oracle", action="store_true", help="also the fusion of the truth's own views")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(a.threads)
    from seglearn.ckpt import load_checkpoint
    from seglearn.instances.linking import link_slices
    from seglearn.instances.metrics import error_breakdown
    from seglearn.instances.pipeline import load_model

    ck = load_checkpoint(a.ckpt, kind="stardist")
    meta = ck["meta"]
    net = load_model(ck, device="cpu")
    params = dict(meta.get("predict") or {})
    from seglearn.instances.fusion import fuse_views
    from seglearn.instances.pipeline import predict_settings

    params = predict_settings(params)
    if a.grid:
        rows = grid(net, meta, params, a.grid)
        print(grid_table(rows))
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"ckpt": a.ckpt, "grid": rows}, f, indent=2)
        return {"grid": rows}
    if not a.data:
        ap.error("--data (or --grid) is required")
    default_fu = dict(params["fusion"])
    tuned_fu, tuned_ws = dict(default_fu), {"sigma": 1.0, "h": 1.0, "min_distance": 5}
    if a.tune:
        tuned_fu, tuned_ws = tune(Outputs(net, meta, a.tune, params))
    out = Outputs(net, meta, a.data, params)
    ds, true = out.ds, out.ds.instances
    labels = [out.back(lbl) for lbl in out.labels]
    stages = {"fusion (checkpoint defaults)": error_breakdown(true, out.fuse(default_fu))}
    if a.tune:
        stages["fusion (tuned)"] = error_breakdown(true, out.fuse(tuned_fu))
    stages["fusion, true foreground"] = error_breakdown(true, out.fuse(tuned_fu, true_fg=True))
    if a.oracle:
        stages["fusion of true views"] = error_breakdown(true, fuse_views(true_view_probs(true), [true > 0] * 3,
                                                                          seed_thresh=0.3, h=0.05, sigma=1.0))
    lk = params["linking"]
    stages["linking (xy)"] = error_breakdown(true, link_slices(labels[0], max_distance=float(lk["max_distance"]),
                                                               progress=False))
    stages["watershed" + (" (tuned)" if a.tune else "")] = error_breakdown(true, _watershed(ds, tuned_ws))
    views = view_scores(true, labels)
    print(table(views, stages))
    out = {"ckpt": a.ckpt, "data": a.data, "tune": a.tune, "fusion": tuned_fu, "watershed": tuned_ws,
           "views": views, "stages": stages, "network_seconds": out.seconds}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
