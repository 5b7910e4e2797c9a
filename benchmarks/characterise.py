"""Time a characterisation of a label volume (all steps, or some) and check tortuosity against taufactor.

``python benchmarks/characterise.py [--input ../shared/data/real/electrode_nmc_3phase_256.tif]
[--crop Z Y X] [--mirror 1|2|4] [--voxel-nm 100] [--out /tmp/bench_characterise] [--steps tortuosity ...]
[--directions z y x] [--tortuosity-phases pore] [--solver auto|fv|taufactor] [--time-limit-s S]
[--workers N] [--memory-gb G] [--full-sizes] [--no-plots] [--threads 2] [--skip-direct]``

The 512³ timing of issue 28 (every default step; the 256³ file tiled 2 x 2 x 2, mirrored)::

    /usr/bin/time -v .venv/bin/python benchmarks/characterise.py --mirror 2 --out /tmp/bench_512 \
        --skip-direct --threads 1

Prints (and writes ``OUT/bench.json``): wall and CPU seconds of the whole report (CPU of this
process and its worker processes) and of each step, peak resident memory (this process, the
largest worker, and the peak summed PSS of all of them sampled every 0.5 s), the load average
before and after, each tortuosity solve (tau, status, iterations, seconds)
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
    ap.add_argument("--mirror", type=int, default=1, choices=(1, 2, 4),
                    help="tile the volume n times along each axis, mirrored (256^3 -> 512^3 with 2)")
    ap.add_argument("--workers", type=int, default=None, help="parallel.workers (default: the YAML's)")
    ap.add_argument("--memory-gb", type=float, default=None, help="parallel.memory_gb (default: the YAML's)")
    ap.add_argument("--full-sizes", action="store_true", help="sizes and geodesic on the whole volume (no sampling)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots and HTML")
    ap.add_argument("--sampling-error", type=float, default=None, metavar="MAX_VOXELS",
                    help="instead: sizes (every phase) and geodesic tau (first class) sampled at MAX_VOXELS vs whole")
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
    ap.add_argument("--direct", nargs="+", default=None, choices=("taufactor", "porespy"),
                    help="instead: only the libraries called directly on the first class (taufactor's Solver along z; "
                         "PoreSpy's local_thickness and porosimetry from z0 on seglearn's radii), for their own "
                         "time and peak memory")
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
    raw = mirror_tile(raw, args.mirror)
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
    if args.direct:
        from seglearn.characterise.labels import map_labels

        lab, classes, _ = map_labels(raw, args.classes)
        res = {"input": args.input, "shape": list(raw.shape), "phase": classes[0], "load_before": os.getloadavg(),
               **direct_calls(lab == 1, [float(v) for v in voxel], args.direct)}
        res.update(peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                   load_after=os.getloadavg(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        print(json.dumps(res, indent=1))
        return res
    if args.sampling_error:
        from seglearn.characterise.labels import map_labels

        lab, classes, _ = map_labels(raw, args.classes)
        res = sampling_error(lab, classes, [float(v) for v in voxel], args.sampling_error)
        print(json.dumps(res, indent=1))
        return res
    res: dict = {"input": args.input, "shape": list(raw.shape), "voxel_size_nm": list(voxel),
                 "torch_threads": args.threads, "cpu_count": os.cpu_count(), "load_before": os.getloadavg(),
                 "tortuosity_options": tort}
    extra: dict = {"parallel": {k: v for k, v in (("workers", args.workers), ("memory_gb", args.memory_gb))
                                if v is not None}}
    if args.full_sizes:
        extra.update(sizes={"max_voxels": None}, geodesic={"max_voxels": None})
    res["options"] = extra
    from seglearn.characterise.labels import map_labels

    raw = map_labels(raw, args.classes)[0]  # ids 1..K, which characterise keeps as they are (no copy of the volume)
    t0 = time.perf_counter()
    with MemorySampler() as mem:
        rep = characterise(raw, voxel, args.classes, out_dir=args.out, overwrite=True, progress=False,
                           steps=args.steps or list(STEPS), tortuosity=tort, plots=not args.no_plots,
                           html=not args.no_plots, **extra)
    res["report_wall_s"] = round(time.perf_counter() - t0, 1)
    res["report_cpu_s"] = rep["timings_cpu_s"]["total"]  # this process and its workers
    res["step_wall_s"] = rep["timings_s"]
    res["step_cpu_s"] = rep["timings_cpu_s"]
    res["parallel"] = rep.get("parallel")
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    res["peak_rss_mb_workers"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    res["peak_pss_mb_all_processes"] = mem.peak_mb
    res["load_after"] = os.getloadavg()
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
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


def sampling_error(lab, classes, spacing, max_voxels: float) -> dict:
    """Sizes of every phase (inlet z0) and geodesic tau of phase 1 (from z0), sampled against whole."""
    from seglearn.characterise.geodesic import sampled_geodesic
    from seglearn.characterise.sizes import sampled_size_distribution

    def rel(a, b):
        return None if a is None or b in (None, 0) else round((a - b) / b, 5)

    def timed(fn):
        c = time.process_time()
        return fn(), round(time.process_time() - c, 1)

    out: dict = {"shape": list(lab.shape), "max_voxels": max_voxels, "sizes": {}, "geodesic": {}}
    keys = ("r50_opening_nm", "r50_intrusion_nm", "constrictivity", "mean_diameter_nm")
    for pid, name in enumerate(classes, 1):
        (whole, tw), (samp, ts) = [timed(lambda mv=mv: sampled_size_distribution(
            lab, pid, spacing, n_linear=6, growth=1.2, inlet="z0", max_voxels=mv)) for mv in (None, max_voxels)]
        out["sizes"][name] = {k: {"whole": whole[k], "sampled": samp[k], "rel_err": rel(samp[k], whole[k])}
                              for k in keys}
        out["sizes"][name].update(cpu_s={"whole": tw, "sampled": ts}, box=samp["box"])
    mask = lab == 1
    for f in (0.25, 0.5):
        d = f * lab.shape[0] * spacing[0]
        (whole, tw), (samp, ts) = [timed(lambda mv=mv: sampled_geodesic(mask, "z0", d, spacing, max_starts=20000,
                                                                        max_voxels=mv)) for mv in (None, max_voxels)]
        out["geodesic"][str(f)] = {k: {"whole": whole[k], "sampled": samp[k], "rel_err": rel(samp[k], whole[k])}
                                   for k in ("mean", "median", "std")}
        out["geodesic"][str(f)].update(cpu_s={"whole": tw, "sampled": ts}, box=samp["box"])
    return out


def direct_calls(mask, spacing, which) -> dict:
    """taufactor's ``Solver`` (tau along z) and PoreSpy's local thickness and intrusion of ``mask``, timed."""
    import numpy as np

    from seglearn.characterise.morph import radii_grid

    out: dict = {}

    def timed(name, fn):
        t, c = time.perf_counter(), time.process_time()
        out[name] = fn()
        out[name].update(wall_s=round(time.perf_counter() - t, 1), cpu_s=round(time.process_time() - c, 1))

    if "taufactor" in which:
        import taufactor

        def tf():
            s = taufactor.Solver(mask.astype(np.uint8), device="cpu")
            with contextlib.redirect_stdout(io.StringIO()):
                tau = float(np.asarray(s.solve(verbose=False)).ravel()[0])
            return {"tau": tau, "iterations": int(s.iter), "converged": bool(s.converged)}

        timed("taufactor_solver", tf)
    if "porespy" in which:  # radii in voxels, isotropic voxels assumed as PoreSpy does
        import porespy as ps

        radii = radii_grid(0.5 * max(mask.shape), (1.0, 1.0, 1.0), n_linear=6, growth=1.2)
        radii = np.unique(np.round(radii).astype(int))[::-1]
        inlet = np.zeros(mask.shape, bool)
        inlet[0] = True

        def lt():
            thick = ps.filters.local_thickness(mask, sizes=radii)  # radii; default method
            return {"mean_diameter_nm": float(2 * thick[mask].mean() * spacing[0]), "n_radii": int(radii.size)}

        def intrusion():
            por = ps.filters.porosimetry(mask, sizes=radii, inlets=inlet)
            v = por[mask]
            r50 = next((float(r) for r in radii if (v >= r).mean() >= 0.5), None)
            return {"r50_intrusion_nm": None if r50 is None else r50 * spacing[0]}

        timed("porespy_local_thickness", lt)
        timed("porespy_porosimetry", intrusion)
    return out


def mirror_tile(vol, n: int):
    """``vol`` repeated ``n`` times along each axis, every other copy mirrored (no seams)."""
    import numpy as np

    for ax in range(3):
        parts = [vol if i % 2 == 0 else np.flip(vol, ax) for i in range(n)]
        vol = np.concatenate(parts, axis=ax) if n > 1 else vol
    return np.ascontiguousarray(vol)


class MemorySampler:
    """Peak summed proportional set size (PSS, MB) of this process and its children, sampled every 0.5 s."""

    def __enter__(self):
        import threading

        import psutil

        self.peak_mb, self._stop = 0.0, threading.Event()

        def loop():
            me = psutil.Process()
            while not self._stop.wait(0.5):
                total = 0
                for p in [me] + me.children(recursive=True):
                    try:
                        total += p.memory_full_info().pss
                    except (psutil.Error, OSError):
                        pass
                self.peak_mb = max(self.peak_mb, total / 2**20)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = round(self.peak_mb, 1)


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
