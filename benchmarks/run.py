"""Run benchmark scripts and check the index of their pages, docs/benchmarks.md.

    python benchmarks/run.py                 # check that docs/benchmarks.md lists every docs/bench_*.md
    python benchmarks/run.py --run flops     # re-run one or more benchmark scripts first

Each script in benchmarks/ writes docs/bench_<topic>.md with its command, date, machine and the
peer it is compared with in the same run. docs/benchmarks.md is a short hand-written index (one line
per page, no figures): figures live once, in their page. This runner only checks that the index
links every page and names no page that is gone; it exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "docs" / "benchmarks.md"


def index_problems(index: Path = INDEX) -> list[str]:
    """What is wrong with the index: pages it does not link, links to pages that do not exist."""
    pages = {p.name for p in (ROOT / "docs").glob("bench_*.md")}
    linked = set(re.findall(r"\]\((bench_[^)]+\.md)\)", index.read_text()))
    return ([f"{index.name} does not link {p}" for p in sorted(pages - linked)]
            + [f"{index.name} links {p}, which does not exist" for p in sorted(linked - pages)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", nargs="*", default=[], help="benchmark scripts (names in benchmarks/) to run first")
    args = ap.parse_args()
    for name in args.run:
        script = ROOT / "benchmarks" / f"{name}.py"
        print(f"running {script}", flush=True)
        subprocess.run([sys.executable, str(script)], cwd=ROOT, check=True)
    problems = index_problems()
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"{INDEX.relative_to(ROOT)} lists every benchmark page")


if __name__ == "__main__":
    main()
