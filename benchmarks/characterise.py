"""Time a full characterisation of a 256^3 label volume and check tortuosity against taufactor.

``python benchmarks/characterise.py [--input ../shared/data/real/electrode_nmc_3phase_256.tif]
[--voxel-nm 100] [--out /tmp/bench_characterise] [--directions z] [--tortuosity-phases pore] [--threads 2]
[--skip-direct]``

Prints (and writes ``OUT/bench.json``): wall and CPU seconds of the whole report and of each step,
peak resident memory, the load average, and taufactor's own tau for the pore phase (``Solver``
called directly) against the report's value. The file has no calibration: ``--voxel-nm`` is an
assumption (tau and fractions do not depend on it; sizes scale with it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "real" / "electrode_nmc_3phase_256.tif"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=str(DEFAULT))
    ap.add_argument("--voxel-nm", type=float, default=100.0)
    ap.add_argument("--classes", nargs="+", default=["pore", "active_material", "carbon_binder"])
    ap.add_argument("--out", default="/tmp/bench_characterise")
    ap.add_argument("--directions", nargs="+", default=["z"])
    ap.add_argument("--tortuosity-phases", nargs="+", default=None, help="default: every class")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-direct", action="store_true", help="do not call taufactor directly")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from seglearn.characterise import characterise
    from seglearn.cli import setup_logging
    from seglearn.io import read_stack

    setup_logging()
    raw, _ = read_stack(args.input)
    res: dict = {"input": args.input, "shape": list(raw.shape), "voxel_size_nm": args.voxel_nm,
                 "torch_threads": args.threads, "cpu_count": os.cpu_count(), "load_before": os.getloadavg()}
    t0, c0 = time.perf_counter(), time.process_time()
    rep = characterise(raw, args.voxel_nm, args.classes, out_dir=args.out, overwrite=True, progress=False,
                       tortuosity={"directions": args.directions, "phases": args.tortuosity_phases})
    res["report_wall_s"] = round(time.perf_counter() - t0, 1)
    res["report_cpu_s"] = round(time.process_time() - c0, 1)
    res["step_wall_s"] = rep["timings_s"]
    res["step_cpu_s"] = rep["timings_cpu_s"]
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["load_after"] = os.getloadavg()
    res["fractions"] = rep["fractions"]
    res["tortuosity"] = rep["tortuosity"]
    res["constrictivity"] = {k: v["constrictivity"] for k, v in rep["size_distribution"]["phases"].items()}
    if not args.skip_direct:
        import taufactor

        pore = raw == np.unique(raw)[0]
        t1, c1 = time.perf_counter(), time.process_time()
        solver = taufactor.Solver(pore.astype(np.uint8), device="cpu")
        tau = float(np.asarray(solver.solve(verbose=False)).ravel()[0])
        mine = next(r["tau"] for r in rep["tortuosity"] if r["phase"] == args.classes[0] and r["direction"] == "z")
        res["taufactor_direct"] = {"tau": tau, "iterations": int(solver.iter),
                                   "wall_s": round(time.perf_counter() - t1, 1),
                                   "cpu_s": round(time.process_time() - c1, 1),
                                   "report_tau": mine, "relative_difference": abs(mine - tau) / tau}
    print(json.dumps(res, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
