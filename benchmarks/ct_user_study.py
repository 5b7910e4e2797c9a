"""Seed-003 CT user study benchmark: run the study (or read a finished one) and print its tables.

    python benchmarks/ct_user_study.py --out results/ct_bench --shape 64 [--unet]
    python benchmarks/ct_user_study.py --out results/ct_nobias --shape 64 --quick --no-boundary-bias
    python benchmarks/ct_user_study.py --results results/ct_bench/results.json

Prints markdown tables (std of the AM fraction across users, mean % voxels differing between two
users, |mean - true| fraction, AM IoU) per dataset and filter, the real-CT check and the
seed's finding (does ML vary less than S2 / cWS?).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tables(res: dict) -> str:
    lines = []
    for d, fs in res["summary"].items():
        info = res.get("datasets", {}).get(d, {})
        lines.append(f"\n### {d} (SNR {info.get('phantom', {}).get('snr', '?')}, true AM fraction "
                     f"{info.get('am_fraction', float('nan')):.3f})\n")
        lines.append("| filter | method | AM fraction per user | std | % voxels differ | abs(mean - true) | AM IoU |")
        lines.append("|---|---|---|---|---|---|---|")
        for f, ms in fs.items():
            for m, s in ms.items():
                fr = " / ".join(f"{x:.3f}" for x in s["fractions"])
                lines.append(f"| {f} | {m} | {fr} | {s['std']:.4f} | {s['pct_differ']:.1f} | "
                             f"{s['distance_to_true']:.3f} | {s['iou_am']:.3f} |")
    real = res.get("real_ct")
    if real and real.get("methods"):
        lines.append(f"\n### real CT slice ({Path(real['image']).name}, {real['shape']}, mask fraction "
                     f"{real['true_fraction']:.3f})\n")
        lines.append("| method | binary IoU per user | std of fraction | % pixels differ |")
        lines.append("|---|---|---|---|")
        for m, s in real["methods"].items():
            lines.append(f"| {m} | {' / '.join(f'{x:.3f}' for x in s['iou_users'])} | {s['std']:.4f} | "
                         f"{s['pct_differ']:.1f} |")
    lines.append("\n### finding\n")
    lines += [f"- {line}" for line in res["finding"]["lines"]]
    lines.append(f"\n(study wall time {res.get('seconds', '?')} s)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", help="print the tables of a finished study's results.json")
    ap.add_argument("--out", default="results/ct_bench")
    ap.add_argument("--shape", type=int, default=80, help="edge of the cubic phantom")
    ap.add_argument("--unet", action="store_true", help="add the U-Net subset (3 users, MLX25 labels)")
    ap.add_argument("--quick", action="store_true", help="raw data only, coverages 10 and 25, no real CT")
    ap.add_argument("--no-boundary-bias", action="store_true",
                    help="users A, B, C with boundary_bias 0 (their other habits kept)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    if a.results:
        res = json.loads(Path(a.results).read_text())
    else:
        from seglearn.cli import setup_logging
        from seglearn.ct.study import run

        setup_logging()
        from seglearn.ct.annotators import DEFAULT_USERS

        study = {"out": a.out, "overwrite": a.overwrite, "phantom": {"shape": [a.shape] * 3},
                 "unet": {"enabled": bool(a.unet)}}
        if a.quick:
            study.update(filters=["raw"], real_ct={"enabled": False},
                         datasets=[{"name": "low_snr", "phantom": {"snr": 1.5}, "coverages": [10, 25]},
                                   {"name": "high_snr", "phantom": {"snr": 4.0}, "coverages": [10, 25]}])
        if a.no_boundary_bias:
            study["users"] = [{**u.as_dict(), "boundary_bias": 0.0} for u in DEFAULT_USERS]
        t = time.perf_counter()
        res = run({"ct_study": study})
        print(f"wall {time.perf_counter() - t:.0f} s")
    print(tables(res))


if __name__ == "__main__":
    main()
