"""Run the benchmarks and index their pages in docs/benchmarks.md.

    python benchmarks/run.py                 # index the per-topic files docs/bench_*.md
    python benchmarks/run.py --run flops     # re-run one or more benchmark scripts first

Each script in benchmarks/ writes docs/bench_<topic>.md with its command, date, machine and the
peer it is compared with in the same run; this runner only lists them (figures live once, in their page).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["baselines", "unet", "pretrain", "instances", "stardist_tf", "characterise", "preprocess", "tofsims", "ct",
         "perf", "flops", "predict_memory"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", nargs="*", default=[], help="benchmark scripts (names in benchmarks/) to run first")
    args = ap.parse_args()
    for name in args.run:
        script = ROOT / "benchmarks" / f"{name}.py"
        print(f"running {script}", flush=True)
        subprocess.run([sys.executable, str(script)], cwd=ROOT, check=True)
    parts = sorted((ROOT / "docs").glob("bench_*.md"),
                   key=lambda p: (ORDER.index(p.stem[6:]) if p.stem[6:] in ORDER else len(ORDER), p.stem))
    text = ["# Benchmarks", "",
            "One page per topic holds its current figures, each with the command that produced it and the date.",
            "Speed figures are measured beside their peer in the same run and given as ratios: absolute times on",
            "the shared 2-core CI machine are noisy. Accuracy figures name the dataset, the training labels and the",
            "test labels. This index is written by `python benchmarks/run.py`; the figures live only in the pages.", ""]
    for p in parts:
        heads = [ln.lstrip("#").strip() for ln in p.read_text().splitlines() if ln.startswith("#")]
        text.append(f"- [{p.stem[6:]}]({p.name}): " + "; ".join(heads[:4]))
    text.append("")
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(text))
    print(f"wrote docs/benchmarks.md: an index of {len(parts)} pages")


if __name__ == "__main__":
    main()
