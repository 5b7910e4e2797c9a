"""Label efficiency with a simulated annotator: suggested vs random placement, U-Net vs forest.

A phantom's truth plays the user: each round it draws scribble strokes (short straight strokes
that stay inside one phase, every phase present in the region gets strokes) of ``--pixels``
voxels inside the region it is told, then ``fibsem_base`` is fine-tuned afresh on all labels so
far (:func:`seglearn.pretrain.finetune.finetune`, the widget's Train) and scored on the dense
truth of the whole volume (awe). Placement: ``suggest`` = the top region of
:func:`seglearn.suggest.suggest` (uncertainty, forest disagreement, distance from the labels);
``random`` = a random slice and region of the same size. The random forest (``rf_tailored``) is
fitted on the labels of both curves, and on the phantom's own scribbles (its "full label budget":
``n_train_slices`` scribbled slices). Start: the phantom's scribbles on one slice. Each seed is
another phantom (synth seed ``21 + seed``), annotator and fine-tuning seed.

    .venv/bin/python benchmarks/label_efficiency.py --family a --seeds 0 1 2 [--rounds 4] [--pixels 400] [--steps 30]
    .venv/bin/python benchmarks/label_efficiency.py --report      # the page from the JSON of both families

A run writes ``docs/label_efficiency_<family>.json``; ``--report`` (also done after every run) writes
docs/bench_label_efficiency.md and docs/label_efficiency_<family>.png from the JSON files present.
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


def curve(strategy, ph, images, dets, start, args, cfg, work, seed):
    from seglearn.metrics import score
    from seglearn.pretrain.finetune import finetune
    from seglearn.segment.api import load_segmenter
    from seglearn.suggest import suggest

    rng = np.random.default_rng(seed)
    labels, rows, states = start.copy(), [], []
    truth, voxel = ph.truth, ph.config.voxel_size_nm
    # the network alone (blend off: no forest mixed into its probabilities), one run, no synthetic
    # batches (seconds per round instead of minutes on a 2-core CPU)
    settings = {"max_steps": args.steps, "runs": 1, "val_every": max(args.steps // 3, 1), "patience": 0,
                "batch_size": 4, "patch": 64, "adapt_bn": "off", "seed": seed, "blend": "off",
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


DOCS = ROOT / "docs"


def run_seed(args, seed: int, cfg) -> dict:
    """Both placements, the forest on each one's labels and at its full budget, for one phantom."""
    from seglearn.synth import make_phantom

    ph = make_phantom({"shape": args.shape, "seed": 21 + seed, "family": args.family})
    dets = list(ph.images)
    images = np.stack([ph.images[d] for d in dets])
    train_z = np.unique(np.nonzero(ph.train)[0])
    start = np.zeros_like(ph.train)
    start[train_z[0]] = ph.train[train_z[0]]
    work = Path(tempfile.mkdtemp(prefix="label_eff_"))
    curves = {s: curve(s, ph, images, dets, start, args, cfg, work, seed) for s in ("suggest", "random")}
    voxel = ph.config.voxel_size_nm
    forest = {s: [{"labelled": int(np.count_nonzero(st)),
                   "awe": round(forest_awe(images, dets, st, ph.truth, voxel, cfg["forest"])[0], 2)}
                  for st in states] for s, (_, states) in curves.items()}
    full = [int(np.count_nonzero(ph.train)), round(forest_awe(images, dets, ph.train, ph.truth, voxel, cfg["forest"])[0], 2)]
    return {"seed": seed, "phantom_seed": 21 + seed, "curves": {s: rows for s, (rows, _) in curves.items()},
            "forest": forest, "forest_full": full}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", default="a")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--pixels", type=int, default=400)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--shape", type=int, nargs=3, default=[24, 128, 128])
    ap.add_argument("--synth_fraction", type=float, default=0.0)
    ap.add_argument("--report", action="store_true", help="only write the page from the JSON files")
    args = ap.parse_args()
    if args.report:
        return write_page()
    from seglearn.cli import setup_logging
    from seglearn.suggest import load_config

    setup_logging()
    t_all = time.perf_counter()
    cfg = load_config(["region=[32,32]", "forest.n_jobs=1"])
    runs = [run_seed(args, s, cfg) for s in args.seeds]
    cmd = (f".venv/bin/python benchmarks/label_efficiency.py --family {args.family} --seeds {' '.join(map(str, args.seeds))} "
           f"--rounds {args.rounds} --pixels {args.pixels} --steps {args.steps} --shape {' '.join(map(str, args.shape))} "
           f"--synth_fraction {args.synth_fraction}")
    rec = {"family": args.family, "command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": platform.node(), "seconds": round(time.perf_counter() - t_all), "runs": runs}
    (DOCS / f"label_efficiency_{args.family}.json").write_text(json.dumps(rec, indent=1))
    write_page()


def _ms(values, digits: int = 2) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def reach(run: dict) -> float | None:
    """Share of the forest's full budget at which the U-Net with suggestions first reaches its awe (None: never)."""
    n, awe = run["forest_full"]
    hit = next((r["labelled"] for r in run["curves"]["suggest"] if r["awe"] <= awe), None)
    return None if hit is None else hit / n


def family_section(rec: dict) -> list[str]:
    runs, fam = rec["runs"], rec["family"]
    lines = [f"## Phantom family {fam} ({rec['date']}, {len(runs)} seeds, {rec['seconds']} s)", "",
             f"`{rec['command']}`", "", f"![curve](label_efficiency_{fam}.png)", "",
             "Mean ± sd over the seeds (each seed another phantom); awe % on the dense truth of the whole volume.", "",
             "| round | labelled voxels | U-Net, suggested | U-Net, random | forest, suggested labels | forest, random labels |",
             "|---|---:|---:|---:|---:|---:|"]
    for i in range(len(runs[0]["curves"]["suggest"])):
        col = lambda src, s: _ms([r[src][s][i]["awe"] for r in runs])  # noqa: E731
        lines.append(f"| {i} | {_ms([r['curves']['suggest'][i]['labelled'] for r in runs], 0)} | {col('curves', 'suggest')} | "
                     f"{col('curves', 'random')} | {col('forest', 'suggest')} | {col('forest', 'random')} |")
    full = [r["forest_full"] for r in runs]
    d_net = [r["curves"]["suggest"][-1]["awe"] - r["curves"]["random"][-1]["awe"] for r in runs]
    d_for = [r["forest"]["suggest"][-1]["awe"] - r["forest"]["random"][-1]["awe"] for r in runs]
    reaches = [reach(r) for r in runs]
    lines += ["", f"- Forest at its full label budget (the phantom's scribbles, {_ms([f[0] for f in full], 0)} voxels): "
              f"awe {_ms([f[1] for f in full])} %.",
              "- U-Net with suggestions first at or below that awe, as a share of the forest's voxels (per seed; "
              "target <= 1/3): " + ", ".join("not reached" if x is None else f"{x:.2f}" for x in reaches) + ".",
              f"- Suggested minus random placement after the last round (negative = suggestions better): U-Net "
              f"{_ms(d_net)} points (better on {sum(d < 0 for d in d_net)} of {len(runs)} seeds), forest {_ms(d_for)} "
              f"(better on {sum(d < 0 for d in d_for)} of {len(runs)}).", ""]
    return lines


def plot(rec: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = rec["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for src, s, style, label in [("curves", "suggest", "o-", "U-Net, suggested placement"),
                                 ("curves", "random", "o--", "U-Net, random placement"),
                                 ("forest", "suggest", "s-", "forest, suggested labels"),
                                 ("forest", "random", "s--", "forest, random labels")]:
        x = np.mean([[p["labelled"] for p in r[src][s]] for r in runs], 0)
        y = np.asarray([[p["awe"] for p in r[src][s]] for r in runs], float)
        line, = ax.plot(x, y.mean(0), style, label=label)
        if len(runs) > 1:
            ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.12)
    ax.axhline(np.mean([r["forest_full"][1] for r in runs]), color="grey", ls=":",
               label=f"forest, full budget (~{np.mean([r['forest_full'][0] for r in runs]):.0f} voxels)")
    ax.set_xlabel("labelled voxels")
    ax.set_ylabel("awe (%) on the whole volume")
    ax.set_title(f"label efficiency, phantom family {rec['family']} (mean, band = min..max of {len(runs)} seeds)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / f"label_efficiency_{rec['family']}.png", dpi=110)
    plt.close(fig)


def write_page() -> None:
    """docs/bench_label_efficiency.md (and the curves) from the JSON files of the families run."""
    recs = [json.loads(p.read_text()) for p in sorted(DOCS.glob("label_efficiency_*.json"))]
    recs = [r for r in recs if "runs" in r]
    lines = ["# Label efficiency with a simulated annotator (issue 24)", "",
             "Made by `benchmarks/label_efficiency.py` (its docstring gives the protocol; `--report` rewrites this page "
             "from `docs/label_efficiency_<family>.json`). Fine-tuning per round: `fibsem_base.ckpt`, the network alone "
             "(blend off, one run, no synthetic batches, no BatchNorm adaptation), a fixed number of steps, so rounds "
             "take seconds on a 2-core CPU; not the widget's default fine-tuning.", ""]
    for rec in recs:
        plot(rec)
        lines += family_section(rec)
    (DOCS / "bench_label_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
