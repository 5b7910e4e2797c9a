"""The volume steps of :func:`~seglearn.characterise.characterise` (fractions, depth, interfaces,
sections, RVE, particles), each cut into tasks for :mod:`.parallel`; the pore-space steps are in
:mod:`.steps_pores`.

Each ``_<step>(ctx)`` returns its plan (:data:`.context.Plan`): the tasks and a ``combine(results)``
that writes their results into the report (``ctx.rep``, ``ctx.tables``, ``ctx.arrays``). Tasks read
the label volume from ``ctx`` and return small picklable results, so they can run in forked worker
processes. Each task carries a rough memory estimate in bytes (what :func:`.parallel.run_tasks`
budgets) and a relative cost (what it orders by).
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

import seglearn.characterise.fractions as fr
from seglearn.characterise.context import Ctx, Plan, finite
from seglearn.characterise.interfaces import face_area_matrix, mesh_phase_areas, pair_areas
from seglearn.characterise.parallel import Task
from seglearn.characterise.particles import particle_table

log = logging.getLogger("seglearn")


# ------------------------------------------------------------------------------ fractions, depth

def _fractions(ctx: Ctx) -> Plan:
    def combine(_):
        c = ctx.counts[1:]
        f = c / max(int(c.sum()), 1)
        ctx.rep["fractions"] = {n: float(f[i]) for i, n in enumerate(ctx.classes)}
        ctx.rep["phase_volume_um3"] = {n: float(c[i] * ctx.vox_um3) for i, n in enumerate(ctx.classes)}
        ctx.tables["fractions"] = [{"phase": n, "id": i + 1, "value": ctx.values[i], "fraction": float(f[i]),
                                    "voxels": int(c[i]), "volume_um3": float(c[i] * ctx.vox_um3)}
                                   for i, n in enumerate(ctx.classes)]

    return [Task("fractions", lambda: None, cost=0.0)], combine


def _depth_rows(ctx: Ctx) -> dict:
    o, k, classes = ctx.opts["depth"], ctx.k, ctx.classes
    axi = fr._axis(o["axis"])
    reg = fr.fractions_by_region(ctx.lab, k, n_regions=o["n_regions"], axis=o["axis"], spacing_nm=ctx.spacing[axi])
    rows = []  # interfaces per region (face counting), seed 001: phases and interfaces evolution
    for i, (a, b) in enumerate(zip(reg["start"], reg["stop"])):
        sl = [slice(None)] * 3
        sl[axi] = slice(a, b)
        sub = ctx.lab[tuple(sl)]
        area = face_area_matrix(sub, k, ctx.spacing)
        vol = max(int((sub > 0).sum()), 1) * ctx.vox_um3
        row = {"region": i, "start_um": reg["start_nm"][i] / 1e3, "stop_um": reg["stop_nm"][i] / 1e3}
        row.update({f"fraction_{c}": float(reg["fractions"][i, j]) for j, c in enumerate(classes)})
        for p in range(k):
            for q in range(p + 1, k):
                row[f"interface_{classes[p]}|{classes[q]}_per_um"] = float(area[p, q] / 1e6 / vol)
        rows.append(row)
    return {"axis": reg["axis"], "regions": rows}


def _depth(ctx: Ctx) -> Plan:
    def combine(res):
        ctx.tables["fractions_by_depth"] = res[0]["regions"]
        ctx.rep["fractions_by_depth"] = res[0]

    n = ctx.lab.size
    return [Task("depth", lambda: _depth_rows(ctx), cost=1.0 * n, mem=3.0 * min(n, 2**24))], combine


# ------------------------------------------------------------------------------------ interfaces

def _interfaces(ctx: Ctx) -> Plan:
    lab, k, sp, n = ctx.lab, ctx.k, ctx.spacing, ctx.lab.size
    tasks = [Task("interfaces", lambda: face_area_matrix(lab, k, sp) / 1e6, cost=1.0 * n, mem=3.0 * min(n, 2**24))]
    mesh = bool(ctx.opts["interfaces"]["mesh"])
    if mesh:
        sigma = ctx.opts["interfaces"]["sigma"]
        for p in range(1, k + 1):
            tasks.append(Task("interfaces", (lambda p=p: mesh_phase_areas(lab, p, k, sp, sigma=sigma)),
                              cost=3.0 * n, mem=16.0 * n, name=f"interfaces mesh {ctx.classes[p - 1]}", optional=True))

    def combine(res):  # meshes refused by the memory budget: face counts only (not_run says why)
        faces, meshes = res[0], res[1:]
        m = None
        if meshes and not any(isinstance(r, dict) and "not_run" in r for r in meshes):
            m = pair_areas(np.stack([r[0] for r in meshes])) / 1e6
        _interface_tables(ctx, faces, m)

    return tasks, combine


def _interface_tables(ctx: Ctx, faces: np.ndarray, mesh: np.ndarray | None) -> None:
    classes, k, vol = ctx.classes, ctx.k, ctx.volume_um3
    rows = []
    for p in range(k):
        for q in range(p + 1, k):
            rows.append({"phase_a": classes[p], "phase_b": classes[q], "area_faces_um2": float(faces[p, q]),
                         "area_mesh_um2": None if mesh is None else float(mesh[p, q]),
                         "per_volume_faces_per_um": float(faces[p, q] / vol),
                         "per_volume_mesh_per_um": None if mesh is None else float(mesh[p, q] / vol)})
    surf = []
    for p in range(k):
        a_f = float(faces[p].sum())
        a_m = None if mesh is None else float(mesh[p].sum())
        vol_p = float(ctx.counts[p + 1]) * ctx.vox_um3
        surf.append({"phase": classes[p], "area_faces_um2": a_f, "area_mesh_um2": a_m,
                     "ssa_faces_per_um": a_f / vol, "ssa_mesh_per_um": None if a_m is None else a_m / vol,
                     "ssa_mesh_per_phase_volume_per_um": None if (a_m is None or not vol_p) else a_m / vol_p})
    ctx.tables["interfaces"], ctx.tables["surface"] = rows, surf
    ctx.rep["interfaces"] = rows
    ctx.rep["specific_surface_area"] = {s["phase"]: s for s in surf}
    am, cbd = ctx.roles.get("active"), ctx.roles.get("binder")
    if am and cbd:
        cov = {"faces": float(faces[am - 1, cbd - 1] / max(faces[am - 1].sum(), 1e-30))}
        if mesh is not None:
            cov["mesh"] = float(mesh[am - 1, cbd - 1] / max(mesh[am - 1].sum(), 1e-30))
        ctx.rep["cbd_coverage_of_am"] = cov
    else:
        ctx.rep["cbd_coverage_of_am"] = None
        log.info("characterise: no active-material/carbon-binder classes named, CBD coverage skipped")


# ------------------------------------------------------------------------- sections, RVE, particles

def _sections(ctx: Ctx) -> Plan:

    def combine(res):
        sec, classes = res[0], ctx.classes
        ctx.rep["sections"] = {
            "volume": {c: float(sec["volume"][i]) for i, c in enumerate(classes)},
            "mean": {p: {c: finite(v[i]) for i, c in enumerate(classes)} for p, v in sec["mean"].items()},
            "std": {p: {c: finite(v[i]) for i, c in enumerate(classes)} for p, v in sec["std"].items()}}
        ctx.tables["sections"] = [{"plane": p, "slice": i, **{f"fraction_{c}": finite(per[i, j])
                                                              for j, c in enumerate(classes)}}
                                  for p, per in sec["per_slice"].items() for i in range(per.shape[0])]

    return [Task("sections", lambda: fr.section_fractions(ctx.lab, ctx.k), cost=0.3 * ctx.lab.size,
                 mem=float(2**24))], combine


def _rve(ctx: Ctx) -> Plan:

    o = ctx.opts["rve"]

    def combine(res):
        rv, classes = res[0], ctx.classes
        ctx.rep["representative_volume"] = {
            "edge_voxels": rv["edge"].tolist(), "edge_um": (rv["edge"] * min(ctx.spacing) / 1e3).tolist(),
            "tolerance": o["tolerance"], "n_samples": o["n_samples"],
            "mean": {c: rv["mean"][:, i].tolist() for i, c in enumerate(classes)},
            "std": {c: rv["std"][:, i].tolist() for i, c in enumerate(classes)},
            "rve_edge_voxels": {c: rv["rve_edge"][i] for i, c in enumerate(classes)}}
        ctx.tables["representative_volume"] = [
            {"edge_voxels": int(e), **{f"mean_{c}": float(rv["mean"][j, i]) for i, c in enumerate(classes)},
             **{f"std_{c}": float(rv["std"][j, i]) for i, c in enumerate(classes)}}
            for j, e in enumerate(rv["edge"])]

    def run():
        return fr.representative_volume(ctx.lab, ctx.k, n_sizes=o["n_sizes"], n_samples=o["n_samples"],
                                        tolerance=o["tolerance"], seed=o["seed"])

    return [Task("rve", run, cost=0.5 * ctx.lab.size, mem=6.0 * ctx.lab.size)], combine


def _particle_result(ctx: Ctx) -> dict | None:
    o, instances, source = ctx.opts["particles"], ctx.instances, "instances"
    if instances is None and o["from_components"] and ctx.roles.get("active"):
        source = "connected components of " + ctx.classes[ctx.roles["active"] - 1]
        instances, _ = ndi.label(ctx.lab == ctx.roles["active"])
    if instances is None:
        return None
    t = particle_table(instances, ctx.spacing, exclude_border=o["exclude_border"], min_voxels=o["min_voxels"])
    n = len(t["id"])
    rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in t.items()} for i in range(n)]

    def stats(a):
        return None if not n else {"mean": float(np.mean(a)), "std": float(np.std(a)), "median": float(np.median(a)),
                                   "min": float(np.min(a)), "max": float(np.max(a))}

    rep = {"count": n, "equivalent_diameter_um": stats(t["equivalent_diameter_um"]),
           "aspect_ratio": stats(t["aspect_ratio"]), "volume_um3": stats(t["volume_um3"]), "source": source}
    return {"rep": rep, "rows": rows}


def _particles(ctx: Ctx) -> Plan:
    def combine(res):
        if res[0] is None:
            ctx.rep["particles"] = None
            return
        ctx.tables["particles"] = res[0]["rows"]
        ctx.rep["particles"] = res[0]["rep"]

    some = ctx.instances is not None or ctx.opts["particles"]["from_components"]
    return [Task("particles", lambda: _particle_result(ctx), cost=0.5 * ctx.lab.size * some,
                 mem=8.0 * ctx.lab.size * some)], combine


PLANS: dict[str, Callable[[Ctx], Plan]] = {
    "fractions": _fractions, "depth": _depth, "interfaces": _interfaces, "sections": _sections, "rve": _rve,
    "particles": _particles}
