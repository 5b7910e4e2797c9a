"""Draw ``docs/architecture.png``: the layers of ``seglearn`` with who imports whom, and the stages a
tomogram goes through.

The import edges are read from the code (every ``import`` statement, as ``tests/test_architecture.py``
reads them) and the layers are that test's :data:`LAYERS` table, so the picture cannot drift from the
check. Usage::

    python benchmarks/architecture.py [--out docs/architecture.png]
"""

from __future__ import annotations

import argparse
import importlib.util
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: one box per unit: its layer and its (x, width) in the left panel; foundations and commands are one box each
BOXES = {
    "commands": (5, 0.0, 10.0), "benchmark": (4, 1.0, 3.6), "napari": (4, 5.4, 3.6),
    "pretrain": (3, 0.0, 3.6), "suggest": (3, 4.0, 2.6), "ct": (3, 7.0, 3.0),
    "segment": (2, 0.0, 3.0), "ckpt": (2, 3.3, 1.6), "instances": (2, 5.2, 2.6), "synth": (2, 8.1, 1.9),
    "preprocess": (1, 0.0, 2.5), "baselines": (1, 2.6, 2.5), "characterise": (1, 5.1, 2.6), "tofsims": (1, 7.8, 2.2),
    "foundations": (0, 0.0, 10.0),
}
LAYER_NAMES = {5: "5 commands", 4: "4 applications", 3: "3 use networks", 2: "2 networks, phantoms",
               1: "1 stages without networks", 0: "0 foundations"}
FOUNDATIONS = "errors  log  paths  config  options  precision  io  data  metrics  features  tiling"
COMMANDS = "train.py, predict.py, ...  ->  commands  runner  cli  __main__  */cli  */__main__"


def _architecture_test():
    spec = importlib.util.spec_from_file_location("test_architecture", ROOT / "tests" / "test_architecture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def unit(module: str, layer: int) -> str:
    """The box a module is drawn in."""
    if layer == 5:
        return "commands"
    if layer == 0:
        return "foundations"
    return module.split(".")[1]


def unit_edges(arch) -> Counter:
    """``{(from box, to box): number of module imports}`` between different boxes."""
    graph = arch.import_graph()
    edges: Counter = Counter()
    for a, targets in graph.items():
        for b in targets:
            ua, ub = unit(a, arch.layer(a)), unit(b, arch.layer(b))
            if ua != ub:
                edges[(ua, ub)] += 1
    return edges


def _box(ax, x, y, w, h, text, colour, size=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=colour, ec="#333",
                                lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def draw_layers(ax, edges: Counter) -> None:
    colours = {5: "#f4cccc", 4: "#fce5cd", 3: "#fff2cc", 2: "#d9ead3", 1: "#d0e0e3", 0: "#e6e6e6"}
    h, gap = 0.62, 1.15
    centre = {}
    for name, (lay, x, w) in BOXES.items():
        y = lay * gap
        text = name if name not in ("foundations", "commands") else \
            f"{name}: {FOUNDATIONS if name == 'foundations' else COMMANDS}"
        _box(ax, x, y, w, h, text, colours[lay], size=7.5 if name in ("foundations", "commands") else 9.5)
        centre[name] = (x + w / 2, y, y + h)
    for lay, label in LAYER_NAMES.items():
        ax.text(-0.25, lay * gap + h / 2, label, ha="right", va="center", fontsize=8.5, color="#444")
    for (a, b), n in sorted(edges.items()):
        if b == "foundations":
            continue  # every box imports the foundations: drawn once as a note
        xa, ya0, ya1 = centre[a]
        xb, yb0, yb1 = centre[b]
        same = BOXES[a][0] == BOXES[b][0]
        start = (xa + (0.25 if same else 0), ya0 + (h / 2 if same else 0))
        end = (xb - (0.25 if same else 0), yb0 + (h / 2 if same else h))
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, lw=0.4 + 0.25 * min(n, 8) ** 0.5,
                                     color="#1f4e79", alpha=0.55, connectionstyle="arc3,rad=0.12" if same else "arc3"))
    ax.text(5.0, -0.45, "arrows: imports between boxes (width ~ number of module imports); every box imports the "
            "foundations; no arrow points up (tests/test_architecture.py)", ha="center", fontsize=7.5, color="#444")
    ax.set_xlim(-2.6, 10.2)
    ax.set_ylim(-0.7, 5 * gap + h + 0.1)
    ax.axis("off")
    ax.set_title("Layers of seglearn and who imports whom", fontsize=11)


STAGES = [  # (label, command, module, y)
    ("dataset\n(images/, labels/, dataset.yaml)", "python -m seglearn.synth / your data", "data, io, synth", 6),
    ("preprocess\n(register, destripe, ...)", "python preprocess.py", "preprocess", 5),
    ("pretrain a base model\n(phantom stream)", "python train.py\nexperiment=pretrain_fibsem", "pretrain", 4.6),
    ("train / fine-tune\n(U-Net, StarDist-style)", "python train.py [init=BASE]", "segment, pretrain, instances", 4),
    ("predict\n(tiles, TTA, adapt, blend)", "python predict.py ckpt=C input=D", "segment, instances", 3),
    ("characterise\n(fractions, tortuosity, ...)", "python characterise.py input=labels.tif", "characterise", 2),
    ("benchmark\n(every method, awe / IoU)", "python benchmark.py data.root=D", "benchmark, baselines", 1),
]


def draw_stages(ax) -> None:
    pos = {}
    for label, cmd, mod, y in STAGES:
        side = "pretrain" in label  # off the main line: its texts go under the box
        x, w = (-4.0, 3.0) if side else (0.0, 3.0)
        _box(ax, x, y, w, 0.62, label, "#eef3fb", size=8)
        tx, ty = (x, y - 0.08) if side else (x + w + 0.15, y + 0.42)
        ax.text(tx, ty, cmd, fontsize=7.2, family="monospace", va="top" if side else "center")
        ax.text(tx, ty - (0.45 if side else 0.26), f"seglearn.{mod}" if "," not in mod else mod, fontsize=7.2,
                color="#555", va="top" if side else "center")
        pos[label.split("\n")[0]] = (x + w / 2, y)
    chain = [("dataset", "preprocess"), ("preprocess", "train / fine-tune"), ("pretrain a base model", "train / fine-tune"),
             ("train / fine-tune", "predict"), ("predict", "characterise"), ("dataset", "benchmark")]
    for a, b in chain:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        rad = 0.12 if (a, b) == ("dataset", "benchmark") else 0.0
        if rad:  # along the left edge of the main line
            start, end = (xa - 1.5, ya + 0.31), (xb - 1.5, yb + 0.31)
        elif a.startswith("pretrain"):
            start, end = (xa + 1.5, ya + 0.31), (xb - 1.5, yb + 0.45)
        else:
            start, end = (xa, ya), (xb, yb + 0.62)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, lw=0.9, color="#7f6000",
                                     connectionstyle=f"arc3,rad={rad}"))
    ax.set_xlim(-4.2, 8.2)
    ax.set_ylim(0.7, 6.9)
    ax.axis("off")
    ax.set_title("Stages a tomogram goes through (command, package)", fontsize=11)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "architecture.png"))
    args = ap.parse_args(argv)
    edges = unit_edges(_architecture_test())
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(18, 6.2), gridspec_kw={"width_ratios": [1.2, 1.0]})
    draw_layers(a1, edges)
    draw_stages(a2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({sum(edges.values())} imports between {len(BOXES)} boxes)")


if __name__ == "__main__":
    main()
