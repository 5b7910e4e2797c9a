"""Label efficiency with a simulated annotator: suggested vs random placement, U-Net vs forest.

A phantom's truth plays the user: each round it draws scribble strokes (short straight strokes
that stay inside one phase, every phase present in the region gets strokes) of ``--pixels``
voxels inside the region it is told, then ``fibsem_base`` is fine-tuned afresh on all labels so
far (:func:`seglearn.pretrain.finetune.finetune`, the widget's Train) and scored on the dense
truth of the whole volume (awe). Placement: ``suggest`` = the top region of
:func:`seglearn.suggest.suggest` (uncertainty, forest disagreement, distance from the labels);
``random`` = a random slice and region of the same size. The random forest (``rf_tailored``) is
fitted on the same labels as the ``suggest`` curve, and on the phantom's own scribbles (its "full
label budget": ``n_train_slices`` scribbled slices). Start: the phantom's scribbles on one slice.

    .venv/bin/python benchmarks/label_efficiency.py [--family a] [--rounds 5] [--pixels 400] [--steps 60]

Writes docs/bench_label_efficiency.md (appends a section per family) and docs/label_efficiency_<family>.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "checkpoints" / "fibsem_base.ckpt"


def annotate(labels, truth, box, n_pixels, rng, stroke=10):
    """Draw strokes of ``truth``'s classes inside ``box = (z, y0, y1, x0, x1)`` until ``n_pixels`` are added."""
    from scipy.ndimage import binary_erosion

    z, y0, y1, x0, x1 = box
    sub = truth[z, y0:y1, x0:x1]
    inner = {int(c): np.argwhere(binary_erosion(sub == c)) for c in np.unique(sub) if c > 0}
    inner = {c: v for c, v in inner.items() if len(v)}
    added, tries = 0, 0
    while added < n_pixels and inner and tries < 50 * n_pixels:
        tries += 1
        c = list(inner)[int(rng.integers(len(inner)))]
        y, x = inner[c][int(rng.integers(len(inner[c])))]
        a = rng.uniform(0, np.pi)
        for t in range(stroke):
            yy, xx = int(round(y + t * np.sin(a))), int(round(x + t * np.cos(a)))
            if not (0 <= yy < sub.shape[0] and 0 <= xx < sub.shape[1]) or sub[yy, xx] != c:
                break
            if labels[z, y0 + yy, x0 + xx] == 0:
                labels[z, y0 + yy, x0 + xx] = c
                added += 1
                if added >= n_pixels:
                    break
    return labels


def forest_awe(images, dets, labels, truth, voxel, params):
    from seglearn.metrics import score
    from seglearn.suggest import forest_labels

    class _DS:
        pass

    ds = _DS()
    ds.images, ds.detectors, ds.voxel_size_nm = images, dets, voxel
    pred = forest_labels(params, ds, labels)
    return float(score(pred, truth, 3)["awe"]), pred


def curve(strategy, ph, images, dets, start, args, cfg, work):
    from seglearn.metrics import score
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.api import load_segmenter
    from seglearn.suggest import suggest

    rng = np.random.default_rng(args.seed)
    labels, rows, states = start.copy(), [], []
    truth, voxel = ph.truth, ph.config.voxel_size_nm
    # the network alone (blend off: no forest mixed into its probabilities), one run, no synthetic
    # batches (seconds per round instead of minutes on a 2-core CPU)
    settings = {"max_steps": args.steps, "runs": 1, "val_every": max(args.steps // 3, 1), "patience": 0,
                "batch_size": 4, "patch": 64, "adapt_bn": "off", "seed": args.seed, "blend": "off",
                "synth_fraction": args.synth_fraction}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        res = finetune(str(BASE), images, dets, labels, work / f"{strategy}{r}", classes=list(ph.classes) if hasattr(
            ph, "classes") else None, voxel_size_nm=voxel, settings=settings, overwrite=True)
        probs = load_segmenter(res["best_ckpt"]).predict_proba(images, dets, block_slices=32)
        awe = float(score(np.argmax(probs, 0) + 1, truth, 3)["awe"])
        rows.append({"round": r, "labelled": int(np.count_nonzero(labels)), "awe": round(awe, 2),
                     "seconds": round(time.perf_counter() - t0, 1)})
        states.append(labels.copy())
        print(strategy, rows[-1], flush=True)
        if r == args.rounds - 1:
            break
        ry, rx = cfg["region"]
        if strategy == "suggest":
            _, forest_pred = forest_awe(images, dets, labels, truth, voxel, cfg["forest"])
            top = suggest(probs, labels, voxel_size_nm=voxel, forest_labels=forest_pred, settings=cfg)[0][0]
            box = (top["z"], top["y0"], top["y1"], top["x0"], top["x1"])
        else:
            z = int(rng.integers(truth.shape[0]))
            y0, x0 = int(rng.integers(truth.shape[1] - ry + 1)), int(rng.integers(truth.shape[2] - rx + 1))
            box = (z, y0, y0 + ry, x0, x0 + rx)
        labels = annotate(labels, truth, box, args.pixels, rng)
    return rows, states


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="a")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pixels", type=int, default=400)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synth_fraction", type=float, default=0.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_label_efficiency.md"))
    args = ap.parse_args()
    from seglearn.cli import setup_logging
    from seglearn.suggest import load_config
    from seglearn.synth import make_phantom

    setup_logging()

    t_all = time.perf_counter()
    ph = make_phantom({"shape": args.shape, "seed": 21, "family": args.family})
    dets = list(ph.images)
    images = np.stack([ph.images[d] for d in dets])
    cfg = load_config(["region=[32,32]", "forest.n_jobs=2"])
    train_z = np.unique(np.nonzero(ph.train)[0])
    start = np.zeros_like(ph.train)
    start[train_z[0]] = ph.train[train_z[0]]
    work = Path(tempfile.mkdtemp(prefix="label_eff_"))
    curves = {s: curve(s, ph, images, dets, start, args, cfg, work) for s in ("suggest", "random")}
    forest_rows = []
    for st in curves["suggest"][1]:
        forest_rows.append({"labelled": int(np.count_nonzero(st)),
                            "awe": round(forest_awe(images, dets, st, ph.truth, ph.config.voxel_size_nm,
                                                    cfg["forest"])[0], 2)})
    full_awe = round(forest_awe(images, dets, ph.train, ph.truth, ph.config.voxel_size_nm, cfg["forest"])[0], 2)
    full_n = int(np.count_nonzero(ph.train))
    report(args, curves, forest_rows, full_awe, full_n, time.perf_counter() - t_all)


def report(args, curves, forest_rows, full_awe, full_n, seconds) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = ROOT / "docs" / f"label_efficiency_{args.family}.png"
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (rows, _) in curves.items():
        ax.plot([r["labelled"] for r in rows], [r["awe"] for r in rows], "o-",
                label="U-Net, suggested placement" if name == "suggest" else "U-Net, random placement")
    ax.plot([r["labelled"] for r in forest_rows], [r["awe"] for r in forest_rows], "s--",
            label="forest, suggested labels")
    ax.axhline(full_awe, color="grey", ls=":", label=f"forest, full budget ({full_n} voxels)")
    ax.set_xlabel("labelled voxels")
    ax.set_ylabel("awe (%) on the whole volume")
    ax.set_title(f"label efficiency, phantom family {args.family}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    sug = curves["suggest"][0]
    reach = next((r["labelled"] for r in sug if r["awe"] <= full_awe), None)
    cmd = (f".venv/bin/python benchmarks/label_efficiency.py --family {args.family} --rounds {args.rounds} "
           f"--pixels {args.pixels} --steps {args.steps} --shape {' '.join(map(str, args.shape))} --seed {args.seed} "
           f"--synth_fraction {args.synth_fraction}")
    lines = [f"\n## Phantom family {args.family} ({date.today()}, {platform.node()}, {seconds:.0f} s)\n",
             f"`{cmd}`\n", f"![curve]({png.name})\n",
             "| round | suggest: labelled | suggest: U-Net awe % | random: labelled | random: U-Net awe % | "
             "forest on the suggest labels awe % |", "|---|---|---|---|---|---|"]
    for a, b, f in zip(curves["suggest"][0], curves["random"][0], forest_rows):
        lines.append(f"| {a['round']} | {a['labelled']} | {a['awe']} | {b['labelled']} | {b['awe']} | {f['awe']} |")
    verdict = ("not reached in these rounds" if reach is None else
               f"reached with {reach} labelled voxels = {reach / full_n:.2f} of the forest's {full_n}")
    lines += ["", f"Forest at its full label budget ({full_n} voxels, the phantom's scribbles): awe {full_awe} %. "
              f"U-Net with suggestions at or below it: {verdict} (target: <= 1/3).", ""]
    out = Path(args.out)
    head = "" if out.exists() else ("# Label efficiency with a simulated annotator (issue 24)\n\n"
                                    "Made by `benchmarks/label_efficiency.py` (see its docstring for the protocol).\n")
    out.write_text((out.read_text() if out.exists() else head) + "\n".join(lines) + "\n")
    (ROOT / "docs" / f"label_efficiency_{args.family}.json").write_text(json.dumps(
        {"curves": {k: v[0] for k, v in curves.items()}, "forest": forest_rows, "forest_full": [full_n, full_awe]},
        indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
