"""Side-by-side picture of the two FIB-SEM forward models (``docs/synth_families.png``).

The same geometry rendered by family a and family b, both detectors, one xy slice each, plus the
truth; one row for the generated microstructure (seed 0) and one for a real electrode geometry
(``../shared/data/real/electrode_nmc_3phase_256.tif`` when present).

    .venv/bin/python benchmarks/synth_families.py [--out docs/synth_families.png] [--slices 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/synth_families.png")
    ap.add_argument("--slices", type=int, default=64, help="Z of each phantom (the slice shown is 3/4 down)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from seglearn.synth import make_phantom

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "electrode_nmc_3phase_256.tif"
    rows = [("generated (seed %d)" % args.seed, {})]
    if real.is_file():
        rows.append(("real NMC geometry", {"source": str(real), "voxel_size_nm": [30.0, 15.0, 15.0]}))
    fig, axes = plt.subplots(len(rows), 5, figsize=(20, 4.3 * len(rows)), squeeze=False)
    cmap = ListedColormap(["black", "#1f77b4", "#2ca02c", "#ffbf00"])
    for r, (title, extra) in enumerate(rows):
        cfg = {"seed": args.seed, "shape": [args.slices, 256, 256], **extra}
        pa = make_phantom({**cfg, "family": "a"})
        pb = make_phantom({**cfg, "family": "b"})
        assert np.array_equal(pa.truth, pb.truth)
        z = (3 * pa.truth.shape[0]) // 4
        panels = [("family a SE2", pa.images["SE2"]), ("family a InLens", pa.images["InLens"]),
                  ("family b SE2", pb.images["SE2"]), ("family b InLens", pb.images["InLens"])]
        for c, (name, img) in enumerate(panels):
            axes[r, c].imshow(img[z], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[r, c].set_title(f"{name}, {title}, z={z}", fontsize=9)
        axes[r, 4].imshow(pa.truth[z], cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        axes[r, 4].set_title("truth: blue pore, green carbon-binder, yellow active", fontsize=9)
        for a in axes[r]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=72)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
