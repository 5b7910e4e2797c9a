"""Time a characterisation of a label volume (all steps, or some) and check tortuosity against taufactor.

``python benchmarks/characterise.py [--input ../shared/data/real/electrode_nmc_3phase_256.tif]
[--crop Z Y X] [--voxel-nm 100] [--out /tmp/bench_characterise] [--steps tortuosity ...]
[--directions z y x] [--tortuosity-phases pore] [--solver auto|fv|taufactor] [--time-limit-s S]
[--threads 2] [--skip-direct]``

Prints (and writes ``OUT/bench.json``): wall and CPU seconds of the whole report and of each step,
peak resident memory, the load average, each tortuosity solve (tau, status, iterations, seconds)
and, unless ``--skip-direct``, taufactor's own tau for the pore phase along z (``Solver`` called
directly, isotropic voxels only) against the report's value. ``--crop`` keeps the leading
``Z x Y x X`` corner. The file has no calibration: ``--voxel-nm`` is an assumption (tau and
fractions do not depend on it when it is isotropic; sizes scale with it).

Tortuosity step of the 96 x 128 x 128 NMC crop, all phases and directions (docs/characterise.md)::

    python benchmarks/characterise.py --crop 96 128 128 --voxel-nm 398 --steps fractions tortuosity \\
        --directions z y x --skip-direct --threads 1

``--compare PHASE`` instead solves that phase along z every way there is, for voxels that may be
anisotropic (the file's calibration, else ``--voxel-nm``): seglearn's ``fv`` solver, taufactor's
``Solver`` ignoring the voxel shape, both on the volume resampled to isotropic voxels (each voxel
repeated along its long axes), taufactor's ``AnisotropicSolver`` as released and as corrected here::

    python benchmarks/characterise.py --input outputs/demo/labels.tif --classes pore carbon_binder \\
        active_material --compare pore --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
    ap.add_argument("--crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--voxel-nm", type=float, nargs="+", default=[100.0], help="one number or z y x")
    ap.add_argument("--classes", nargs="+", default=["pore", "active_material", "carbon_binder"])
    ap.add_argument("--out", default="/tmp/bench_characterise")
    ap.add_argument("--steps", nargs="+", default=None, help="default: every step")
    ap.add_argument("--directions", nargs="+", default=["z"])
    ap.add_argument("--tortuosity-phases", nargs="+", default=None, help="default: every class")
    ap.add_argument("--solver", default=None, help="tortuosity.solver (default: the YAML's)")
    ap.add_argument("--time-limit-s", type=float, default=None, help="tortuosity.time_limit_s (default: the YAML's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-direct", action="store_true", help="do not call taufactor directly")
    ap.add_argument("--compare", default=None, metavar="PHASE", help="compare the solvers on this phase (along z)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from seglearn.characterise import characterise
    from seglearn.characterise.core import STEPS
    from seglearn.cli import setup_logging
    from seglearn.io import read_stack

    setup_logging()
    raw, meta = read_stack(args.input)
    voxel = meta.get("voxel_size_nm") or (args.voxel_nm * 3 if len(args.voxel_nm) == 1 else args.voxel_nm)
    if args.crop:
        raw = np.ascontiguousarray(raw[: args.crop[0], : args.crop[1], : args.crop[2]])
    tort = {"directions": args.directions, "phases": args.tortuosity_phases}
    if args.solver:
        tort["solver"] = args.solver
    if args.time_limit_s is not None:
        tort["time_limit_s"] = args.time_limit_s
    if args.compare:
        from seglearn.characterise.labels import class_id, map_labels

        lab, classes, _ = map_labels(raw, args.classes)
        res = compare_solvers(lab == class_id(classes, args.compare), [float(v) for v in voxel])
        res.update(input=args.input, phase=args.compare, shape=list(raw.shape))
        print(json.dumps(res, indent=1))
        return res
    res: dict = {"input": args.input, "shape": list(raw.shape), "voxel_size_nm": list(voxel),
                 "torch_threads": args.threads, "cpu_count": os.cpu_count(), "load_before": os.getloadavg(),
                 "tortuosity_options": tort}
    t0, c0 = time.perf_counter(), time.process_time()
    rep = characterise(raw, voxel, args.classes, out_dir=args.out, overwrite=True, progress=False,
                       steps=args.steps or list(STEPS), tortuosity=tort)
    res["report_wall_s"] = round(time.perf_counter() - t0, 1)
    res["report_cpu_s"] = round(time.process_time() - c0, 1)
    res["step_wall_s"] = rep["timings_s"]
    res["step_cpu_s"] = rep["timings_cpu_s"]
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["load_after"] = os.getloadavg()
    res["fractions"] = rep.get("fractions")
    res["tortuosity"] = [{k: r[k] for k in ("phase", "direction", "tau", "status", "solver", "iterations", "seconds")}
                         for r in rep.get("tortuosity") or []]
    if rep.get("size_distribution"):
        res["constrictivity"] = {k: v["constrictivity"] for k, v in rep["size_distribution"]["phases"].items()}
    mine = next((r["tau"] for r in rep.get("tortuosity") or []
                 if r["phase"] == args.classes[0] and r["direction"] == "z"), None)
    if not args.skip_direct and mine is not None:
        import taufactor

        pore = raw == np.unique(raw)[0]
        t1, c1 = time.perf_counter(), time.process_time()
        solver = taufactor.Solver(pore.astype(np.uint8), device="cpu")
        tau = float(np.asarray(solver.solve(verbose=False)).ravel()[0])
        res["taufactor_direct"] = {"tau": tau, "iterations": int(solver.iter), "converged": bool(solver.converged),
                                   "wall_s": round(time.perf_counter() - t1, 1),
                                   "cpu_s": round(time.process_time() - c1, 1),
                                   "report_tau": mine, "relative_difference": abs(mine - tau) / tau}
    print(json.dumps(res, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(res, indent=1))
    return res


def compare_solvers(mask, spacing) -> dict:
    """tau of ``mask`` along z by every solver, with the voxel shape and on resampled isotropic voxels."""
    import numpy as np
    import taufactor

    from seglearn.characterise.core import merge_options
    from seglearn.characterise.tortuosity import _anisotropic_solver, tortuosity_factor

    policy = {k: v for k, v in merge_options(None)["tortuosity"].items() if k not in ("phases", "directions")}
    reps = [max(1, round(s / min(spacing))) for s in spacing]
    iso = mask
    for ax, r in enumerate(reps):
        iso = np.repeat(iso, r, axis=ax)
    img, img_iso = mask.astype(np.uint8), iso.astype(np.uint8)
    out: dict = {"voxel_size_nm": spacing, "resampled_shape": list(iso.shape), "volume_fraction": float(mask.mean())}

    def timed(name, fn):
        t = time.perf_counter()
        tau, extra = fn()
        out[name] = {"tau": tau, **extra, "seconds": round(time.perf_counter() - t, 1)}

    def tf(solver_cls, arr, **kw):
        s = solver_cls(arr, device="cpu", **kw)
        with contextlib.redirect_stdout(io.StringIO()):  # taufactor prints "Warning: not converged"
            tau = float(np.asarray(s.solve(verbose=False, iter_limit=int(policy["iter_limit"]))).ravel()[0])
        return tau, {"converged": bool(s.converged), "iterations": int(s.iter)}

    def fv(arr, sp):
        r = tortuosity_factor(arr, "z", sp, **{**policy, "solver": "fv"})
        return r["tau"], {"converged": r["converged"], "iterations": r["iterations"]}

    timed("fv", lambda: fv(mask, spacing))
    timed("fv_resampled_isotropic", lambda: fv(iso, [min(spacing)] * 3))
    timed("taufactor_solver_ignoring_voxel_shape", lambda: tf(taufactor.Solver, img))
    timed("taufactor_solver_resampled_isotropic", lambda: tf(taufactor.Solver, img_iso))
    if max(spacing) > min(spacing):
        timed("taufactor_anisotropic_corrected", lambda: tf(_anisotropic_solver(), img, spacing=tuple(spacing)))
        timed("taufactor_anisotropic_as_released", lambda: tf(taufactor.AnisotropicSolver, img, spacing=tuple(spacing)))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
