"""The pore-space steps of :func:`~seglearn.characterise.characterise` as tasks: sizes, tortuosity,
geodesic tortuosity, inner pores (plans as in :mod:`seglearn.characterise.steps`).
"""

from __future__ import annotations

import logging

import numpy as np

from seglearn.characterise.context import Ctx, Plan, finite, phase_ids
from seglearn.characterise.geodesic import sampled_geodesic
from seglearn.characterise.inner import fraction_vs_boundary_distance, inner_pores
from seglearn.characterise.labels import class_id
from seglearn.characterise.parallel import Task
from seglearn.characterise.sizes import sampled_size_distribution
from seglearn.characterise.tortuosity import BYTES_PER_UNKNOWN, choose_solver, tortuosity_factor

log = logging.getLogger("seglearn")


def _um(x):
    return None if x is None else float(x) / 1e3


# ----------------------------------------------------------------------------------------- sizes

def _sizes(ctx: Ctx) -> Plan:
    o = ctx.opts["sizes"]
    pids = phase_ids(o["phases"], ctx.classes, ctx.all_ids)
    n = min(ctx.lab.size, int(o["max_voxels"] or ctx.lab.size))
    par = ctx.opts["parallel"]
    serial = int(par["workers"]) <= 1 or ctx.lab.size < int(par["min_voxels"])  # a progress bar per worker garbles

    def one(pid):
        return sampled_size_distribution(ctx.lab, pid, ctx.spacing, n_linear=o["n_linear"], growth=o["growth"],
                                         inlet=o["inlet"], max_voxels=o["max_voxels"],
                                         progress=bool(ctx.opts["progress"]) and serial)

    tasks = [Task("sizes", (lambda p=p: one(p)), cost=9.0 * n, mem=16.0 * n, name=f"sizes {ctx.classes[p - 1]}")
             for p in pids]

    def combine(res):
        out, rows = {}, []
        for pid, r in zip(pids, res):
            name = ctx.classes[pid - 1]
            out[name] = {"r50_opening_um": _um(r["r50_opening_nm"]), "r50_intrusion_um": _um(r["r50_intrusion_nm"]),
                         "constrictivity": finite(r["constrictivity"]), "mean_diameter_um": _um(r["mean_diameter_nm"]),
                         "d50_opening_um": None if r["r50_opening_nm"] is None else 2 * r["r50_opening_nm"] / 1e3,
                         "radius_um": (r["radius_nm"] / 1e3).tolist(), "opened": r["opened"].tolist(),
                         "intruded": None if r["intruded"] is None else r["intruded"].tolist(),
                         "sampled_box": r.get("box")}
            for j, rad in enumerate(r["radius_nm"]):
                rows.append({"phase": name, "radius_um": rad / 1e3, "diameter_um": 2 * rad / 1e3,
                             "opened_fraction": float(r["opened"][j]),
                             "intruded_fraction": None if r["intruded"] is None else float(r["intruded"][j])})
        ctx.rep["size_distribution"] = {"inlet": o["inlet"], "max_voxels": o["max_voxels"], "phases": out}
        ctx.tables["size_distribution"] = rows

    return tasks, combine


# ------------------------------------------------------------------------------------ tortuosity

def tortuosity_row(phase: str, r: dict) -> dict:
    """One row of the tortuosity table: ``tau`` only when converged, else the status names the bound."""
    tau = r["tau"]
    status = "converged"
    if not r["converged"]:
        status = (f"not solved: {r['stopped_by']}" if r["tau_unconverged"] is None else
                  f"not converged: {r['stopped_by']} (last estimate {r['tau_unconverged']:.4g}, not a result)")
    return {"phase": phase, "direction": r["direction"], "tau": finite(tau), "status": status,
            "percolating": bool(tau is None or np.isfinite(tau)), "volume_fraction": r["volume_fraction"],
            "relative_diffusivity": r["d_eff"], "solver": r["solver"], "iterations": r["iterations"],
            "flux_spread": finite(r["flux_spread"]), "converged": r["converged"], "seconds": round(r["seconds"], 2)}


def _tortuosity(ctx: Ctx) -> Plan:
    t = ctx.opts["tortuosity"]
    policy = {k: v for k, v in t.items() if k not in ("phases", "directions")}
    jobs = [(pid, d) for pid in phase_ids(t["phases"], ctx.classes, ctx.all_ids) for d in t["directions"]]

    def one(pid, d):
        if ctx.counts[pid] > t["max_phase_voxels"]:  # refused before the phase mask is made (memory)
            return tortuosity_row(ctx.classes[pid - 1], _not_solved(ctx, pid, d, t))
        r = tortuosity_factor(ctx.lab == pid, d, ctx.spacing, label=ctx.classes[pid - 1], **policy)
        return tortuosity_row(ctx.classes[pid - 1], r)

    tasks = []
    for pid, d in jobs:
        nph = float(ctx.counts[pid]) if ctx.counts[pid] <= t["max_phase_voxels"] else 0.0  # else refused at once
        tasks.append(Task("tortuosity", (lambda p=pid, d=d: one(p, d)), cost=20.0 * nph,
                          mem=BYTES_PER_UNKNOWN * nph + (10.0 if nph else 2.0) * ctx.lab.size,
                          name=f"tortuosity {ctx.classes[pid - 1]} {d}", optional=True))

    def combine(res):  # a solve refused by the memory budget keeps its row, with no tau
        rows = [_not_run_row(ctx, pid, d, r["not_run"]) if "not_run" in r else r for (pid, d), r in zip(jobs, res)]
        ctx.tables["tortuosity"] = rows
        ctx.rep["tortuosity"] = rows

    return tasks, combine


def _not_solved(ctx: Ctx, pid: int, direction: str, t: dict) -> dict:
    """What :func:`.tortuosity.tortuosity_factor` returns for a phase over ``max_phase_voxels``."""
    n = int(ctx.counts[pid])
    why = f"max_phase_voxels={int(t['max_phase_voxels'])} exceeded ({n} voxels)"
    log.warning("tortuosity %s %s: not solved, %s", ctx.classes[pid - 1], direction, why)
    return {"direction": direction, "volume_fraction": n / ctx.lab.size,
            "solver": choose_solver(t["solver"], t["device"]),
            "tau": None, "tau_unconverged": None, "d_eff": None, "converged": False, "stopped_by": why,
            "flux_spread": 0.0, "iterations": 0, "seconds": 0.0}


def _not_run_row(ctx: Ctx, pid: int, direction: str, why: str) -> dict:
    """The tortuosity row of a solve the memory budget refused: no tau, the status says why."""
    return {"phase": ctx.classes[pid - 1], "direction": direction, "tau": None, "status": f"not run: {why}",
            "percolating": None, "volume_fraction": float(ctx.counts[pid]) / max(int(ctx.counts[1:].sum()), 1),
            "relative_diffusivity": None, "solver": None, "iterations": 0, "flux_spread": None, "converged": False,
            "seconds": 0.0}


# -------------------------------------------------------------------------------------- geodesic

def _geodesic(ctx: Ctx) -> Plan:
    o = ctx.opts["geodesic"]
    pid = class_id(ctx.classes, o["phase"]) if o["phase"] is not None else ctx.roles.get("pore")
    if not pid:
        def skip(_):
            ctx.rep["geodesic_tortuosity"] = None
            log.info("characterise: no pore class found (set geodesic.phase=...), geodesic tortuosity skipped")

        return [], skip
    face = o["face"]
    ax = "zyx".index(face[0])
    extent = ctx.lab.shape[ax] * ctx.spacing[ax]
    ds = [float(d) * 1e3 for d in o["d_um"]] if o["d_um"] else [float(f) * extent for f in o["d_fractions"]]
    bad = [d for d in ds if d <= 0 or d >= extent]
    for d in bad:
        log.warning("geodesic: d = %.4g um is outside the box (0, %.4g um), skipped", d / 1e3, extent / 1e3)
    ds = [d for d in ds if d not in bad]
    n = min(ctx.lab.size, int(o["max_voxels"] or ctx.lab.size))

    def one(d):
        return sampled_geodesic(ctx.lab, face, d, ctx.spacing, max_starts=o["max_values"], max_voxels=o["max_voxels"],
                                phase=pid)

    tasks = [Task("geodesic", (lambda d=d: one(d)), cost=2.0 * n * d / extent, mem=40.0 * n * d / extent,
                  name=f"geodesic d={d / 1e3:.4g} um")
             for d in ds]

    def combine(res):
        out, rows = [], []
        for d, g in zip(ds, res):
            out.append({"d_um": d / 1e3, "mean": g["mean"], "std": g["std"], "median": g["median"],
                        "n_starts": g["n_starts"], "reached": g["reached"], "sampled_box": g.get("box"),
                        "percentiles": {str(p): float(np.percentile(g["tau"], p)) for p in (5, 25, 50, 75, 95)}
                        if g["tau"].size else None})
            ctx.arrays[f"geodesic_{d / 1e3:.4g}"] = g["tau"]
            rows += [{"d_um": d / 1e3, "tau": float(t)} for t in g["tau"]]
        ctx.rep["geodesic_tortuosity"] = {"phase": ctx.classes[pid - 1], "face": face, "max_voxels": o["max_voxels"],
                                          "results": out}
        ctx.tables["geodesic_tortuosity"] = rows

    return tasks, combine


# ----------------------------------------------------------------------------------- inner pores

def _inner_result(ctx: Ctx, solid_ids: list) -> dict:
    o, lab = ctx.opts["inner_pores"], ctx.lab
    solid = np.isin(lab, solid_ids)
    r_nm = float(o["radius_um"]) * 1e3
    ip = inner_pores(solid, r_nm, ctx.spacing)
    inner = ip["inner"] & (lab > 0)
    pore_id = ctx.roles.get("pore")
    prof = fraction_vs_boundary_distance(solid, ip["particle"], ctx.spacing, step_nm=o["step_nm"])
    rep = {"solid": [ctx.classes[i - 1] for i in solid_ids], "radius_um": r_nm / 1e3,
           "particle_solid_fraction": ip["solid_fraction"], "inner_fraction_of_void": ip["inner_fraction_of_void"],
           "inner_volume_um3": float(inner.sum() * ctx.vox_um3),
           "inner_pore_volume_um3": None if not pore_id else float((inner & (lab == pore_id)).sum() * ctx.vox_um3),
           "particle_volume_um3": float(ip["particle"].sum() * ctx.vox_um3)}
    rows = [{"delta_um": float(d) / 1e3, "local_solid_fraction": finite(v), "cumulative_solid_fraction": finite(c),
             "voxels": int(n)} for d, v, c, n in zip(prof["delta_nm"], prof["local"], prof["cumulative"], prof["voxels"])]
    return {"rep": rep, "rows": rows}


def _inner(ctx: Ctx) -> Plan:
    o = ctx.opts["inner_pores"]
    solid_ids = phase_ids(o["solid"], ctx.classes, [ctx.roles["active"]] if ctx.roles.get("active") else [])
    if not solid_ids:
        def skip(_):
            ctx.rep["inner_pores"] = None
            log.info("characterise: no active-material class found (set inner_pores.solid=...), inner pores skipped")

        return [], skip

    def combine(res):
        ctx.rep["inner_pores"] = res[0]["rep"]
        ctx.tables["local_fraction"] = res[0]["rows"]

    return [Task("inner_pores", lambda: _inner_result(ctx, solid_ids), cost=5.0 * ctx.lab.size,
                 mem=24.0 * ctx.lab.size)], combine


PLANS = {"sizes": _sizes, "tortuosity": _tortuosity, "geodesic": _geodesic, "inner_pores": _inner}
