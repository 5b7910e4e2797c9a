"""``characterise(labels, voxel_size_nm, classes)``: every microstructure number of one label volume.

Lengths in the result are in µm, areas in µm², volumes in µm³, specific surface areas in µm⁻¹.
Which steps run and how is set by ``options`` (the keys of :data:`DEFAULTS`, the same as
``configs/characterise.yaml``); the report files are written when ``out_dir`` is given.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seglearn.errors import InputError

log = logging.getLogger("seglearn")


def _yaml_section(name: str) -> dict:
    """One section of ``configs/characterise.yaml`` (the single place of its defaults)."""
    import yaml

    with open(Path(__file__).resolve().parents[2] / "configs" / "characterise.yaml", encoding="utf-8") as f:
        return dict(yaml.safe_load(f)[name])


STEPS = ("fractions", "depth", "interfaces", "sizes", "tortuosity", "geodesic", "inner_pores",
         "sections", "rve", "particles")

DEFAULTS: dict[str, Any] = {
    "steps": list(STEPS),
    "values": None,           # grey value of each class (default: the rule of labels.py)
    "pore": None,             # class name/id of the pore phase (default: found from the names)
    "active": None,           # active material
    "binder": None,           # carbon-binder domain
    "depth": {"axis": "z", "n_regions": 5},
    "interfaces": {"mesh": True, "sigma": 0.7},
    "sizes": {"phases": None, "n_linear": 6, "growth": 1.2, "inlet": "z0"},
    "tortuosity": _yaml_section("tortuosity"),  # solver and convergence policy: configs/characterise.yaml only
    "geodesic": {"phase": None, "face": "z0", "d_fractions": [0.25, 0.5], "d_um": None, "max_values": 20000},
    "inner_pores": {"solid": None, "radius_um": 0.15, "step_nm": None},
    "rve": {"n_sizes": 8, "n_samples": 64, "tolerance": 0.02, "seed": 0},
    "particles": {"from_components": False, "exclude_border": False, "min_voxels": 1},
    "intervals": _yaml_section("intervals"),  # sampling of the probabilities: configs/characterise.yaml only
    "plots": True,
    "html": True,
    "overwrite": False,
    "progress": True,
    "source": None,
}


def merge_options(options: dict | None) -> dict:
    """Defaults updated by ``options`` (nested dicts merged); unknown keys are refused."""
    opts = copy.deepcopy(DEFAULTS)
    for key, val in (options or {}).items():
        if key not in opts:
            raise InputError(f"unknown characterise option {key!r}; known: {sorted(opts)}")
        if isinstance(opts[key], dict):
            if val is None:
                continue
            if not isinstance(val, dict):
                raise InputError(f"option {key!r} must be a mapping of {sorted(opts[key])}, got {val!r}")
            for k2, v2 in val.items():
                if k2 not in opts[key]:
                    raise InputError(f"unknown option {key}.{k2}; known: {sorted(opts[key])}")
                opts[key][k2] = v2
        else:
            opts[key] = val
    bad = [s for s in opts["steps"] if s not in STEPS]
    if bad:
        raise InputError(f"unknown characterise step(s) {bad}; known: {list(STEPS)}")
    return opts


def _phase_ids(choice, classes: Sequence[str], default: Sequence[int]) -> list[int]:
    from seglearn.characterise.labels import class_id

    if choice is None:
        return list(default)
    if isinstance(choice, (str, int)):
        choice = [choice]
    return [class_id(classes, c) for c in choice]


def _um(x):
    return None if x is None else float(x) / 1e3


def _f(x):
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def characterise(labels: np.ndarray, voxel_size_nm, classes: Sequence[str] | None = None,
                 instances: np.ndarray | None = None, out_dir=None, *, probabilities: np.ndarray | None = None,
                 tables_out: dict | None = None, **options) -> dict:
    """Measure a label volume: fractions, interfaces, sizes, transport, inner pores, RVE.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        Class ids ``1..K`` (0 = outside, not measured) or grey values mapped to classes by the
        rule of :mod:`seglearn.characterise.labels` (``values=[...]`` names them explicitly).
    voxel_size_nm : float or (z, y, x)
    classes : sequence of str, optional
        Class names (default ``value_<v>`` per distinct value).
    instances : (Z, Y, X) int ndarray, optional
        Particle ids (0 = none) for per-particle sizes and aspect ratios.
    out_dir : path-like, optional
        Write ``report.json``, CSV tables, PNG plots and ``report.html`` there.
    probabilities : (K, Z, Y, X) ndarray, optional
        Class probabilities of ``labels`` (ids ``1..K``): every number of the steps in
        :data:`seglearn.characterise.intervals.SLOW_STEPS` gets a 95 % interval from segmentations
        drawn from them (option ``intervals``; :mod:`seglearn.characterise.intervals`).
    tables_out : dict, optional
        Filled with the CSV tables (name -> rows).
    **options
        See :data:`DEFAULTS` / ``configs/characterise.yaml`` (e.g. ``steps=["fractions"]``,
        ``tortuosity={"directions": ["z", "x"]}``).

    Returns
    -------
    dict
        The content of ``report.json`` (plain lists and numbers).

    Examples
    --------
    >>> rep = characterise(pred, (20, 10, 10), ["pore", "carbon_binder", "active_material"],
    ...                    out_dir="out/characterise")  # doctest: +SKIP
    """
    from seglearn.characterise import fractions as fr
    from seglearn.characterise.labels import as_voxel_size, find_roles, map_labels

    opts = merge_options(options)
    t_all, c_all = time.perf_counter(), time.process_time()
    source = opts["source"] or "labels"
    lab, classes, values = map_labels(labels, classes, opts["values"], source=source)
    spacing = as_voxel_size(voxel_size_nm, source=source)
    k = len(classes)
    roles = find_roles(classes, pore=opts["pore"], active=opts["active"], binder=opts["binder"])
    measured = lab > 0
    n_meas = int(measured.sum())
    if n_meas == 0:
        raise InputError(f"{source}: no voxel belongs to a class")
    vox_um3 = float(np.prod(spacing)) / 1e9
    volume_um3 = n_meas * vox_um3
    if instances is not None:
        instances = np.asarray(instances)
        if instances.shape != lab.shape:
            raise InputError(f"instances shape {instances.shape} differs from labels shape {lab.shape}")
    rep: dict[str, Any] = {
        "input": {"source": source, "shape": list(lab.shape), "voxel_size_nm": list(spacing), "classes": classes,
                  "values": values, "roles": {r: (classes[i - 1] if i else None) for r, i in roles.items()},
                  "measured_voxels": n_meas, "outside_voxels": int(lab.size - n_meas),
                  "volume_um3": volume_um3},
        "timings_s": {},
        "timings_cpu_s": {},
    }
    tables: dict[str, list[dict]] = {}
    arrays: dict[str, Any] = {}
    steps = [s for s in STEPS if s in opts["steps"]]

    def timed(name):
        class _T:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.process_time()
                log.info("characterise: %s", name)

            def __exit__(self, *exc):
                rep["timings_s"][name] = round(time.perf_counter() - self.t, 3)
                rep["timings_cpu_s"][name] = round(time.process_time() - self.c, 3)
                log.info("characterise: %s done in %.1f s (%.1f s CPU)", name, rep["timings_s"][name],
                         rep["timings_cpu_s"][name])

        return _T()

    all_ids = list(range(1, k + 1))
    if "fractions" in steps:
        with timed("fractions"):
            f = fr.volume_fractions(lab, k)
            counts = fr.phase_counts(lab, k)[1:]
            rep["fractions"] = {c: float(f[i]) for i, c in enumerate(classes)}
            rep["phase_volume_um3"] = {c: float(counts[i] * vox_um3) for i, c in enumerate(classes)}
            tables["fractions"] = [{"phase": c, "id": i + 1, "value": values[i], "fraction": float(f[i]),
                                    "voxels": int(counts[i]), "volume_um3": float(counts[i] * vox_um3)}
                                   for i, c in enumerate(classes)]
    if "depth" in steps:
        with timed("depth"):
            ax = opts["depth"]["axis"]
            axi = fr._axis(ax)
            reg = fr.fractions_by_region(lab, k, n_regions=opts["depth"]["n_regions"], axis=ax,
                                         spacing_nm=spacing[axi])
            # interfaces per region (face counting), seed 001: phases and interfaces evolution
            from seglearn.characterise.interfaces import face_area_matrix

            rows = []
            for i, (a, b) in enumerate(zip(reg["start"], reg["stop"])):
                sl = [slice(None)] * 3
                sl[axi] = slice(a, b)
                sub = lab[tuple(sl)]
                area = face_area_matrix(sub, k, spacing)
                vol = max(int((sub > 0).sum()), 1) * vox_um3
                row = {"region": i, "start_um": reg["start_nm"][i] / 1e3, "stop_um": reg["stop_nm"][i] / 1e3}
                row.update({f"fraction_{c}": float(reg["fractions"][i, j]) for j, c in enumerate(classes)})
                for p in range(k):
                    for q in range(p + 1, k):
                        row[f"interface_{classes[p]}|{classes[q]}_per_um"] = float(area[p, q] / 1e6 / vol)
                rows.append(row)
            tables["fractions_by_depth"] = rows
            rep["fractions_by_depth"] = {"axis": reg["axis"], "regions": rows}
    if "interfaces" in steps:
        with timed("interfaces"):
            _interfaces(rep, tables, lab, k, classes, spacing, roles, opts, volume_um3)
    if "sizes" in steps:
        with timed("sizes"):
            _sizes(rep, tables, lab, classes, spacing, opts, all_ids)
    if "tortuosity" in steps:
        with timed("tortuosity"):
            from seglearn.characterise.tortuosity import tortuosity_factor

            t = opts["tortuosity"]
            rows = []
            for pid in _phase_ids(t["phases"], classes, all_ids):
                for d in t["directions"]:
                    r = tortuosity_factor(lab == pid, d, spacing, label=classes[pid - 1],
                                          **{k: v for k, v in t.items() if k not in ("phases", "directions")})
                    rows.append(tortuosity_row(classes[pid - 1], r))
            tables["tortuosity"] = rows
            rep["tortuosity"] = rows
    if "geodesic" in steps:
        with timed("geodesic"):
            _geodesic(rep, tables, arrays, lab, classes, spacing, roles, opts)
    if "inner_pores" in steps:
        with timed("inner_pores"):
            _inner(rep, tables, lab, classes, spacing, roles, opts)
    if "sections" in steps:
        with timed("sections"):
            sec = fr.section_fractions(lab, k)
            rep["sections"] = {"volume": {c: float(sec["volume"][i]) for i, c in enumerate(classes)},
                               "mean": {p: {c: _f(v[i]) for i, c in enumerate(classes)} for p, v in sec["mean"].items()},
                               "std": {p: {c: _f(v[i]) for i, c in enumerate(classes)} for p, v in sec["std"].items()}}
            rows = []
            for p, per in sec["per_slice"].items():
                for i in range(per.shape[0]):
                    rows.append({"plane": p, "slice": i, **{f"fraction_{c}": _f(per[i, j]) for j, c in enumerate(classes)}})
            tables["sections"] = rows
    if "rve" in steps:
        with timed("rve"):
            o = opts["rve"]
            rv = fr.representative_volume(lab, k, n_sizes=o["n_sizes"], n_samples=o["n_samples"],
                                          tolerance=o["tolerance"], seed=o["seed"])
            vmin = min(spacing)
            rep["representative_volume"] = {
                "edge_voxels": rv["edge"].tolist(), "edge_um": (rv["edge"] * vmin / 1e3).tolist(),
                "tolerance": o["tolerance"], "n_samples": o["n_samples"],
                "mean": {c: rv["mean"][:, i].tolist() for i, c in enumerate(classes)},
                "std": {c: rv["std"][:, i].tolist() for i, c in enumerate(classes)},
                "rve_edge_voxels": {c: rv["rve_edge"][i] for i, c in enumerate(classes)},
            }
            tables["representative_volume"] = [
                {"edge_voxels": int(e), **{f"mean_{c}": float(rv["mean"][j, i]) for i, c in enumerate(classes)},
                 **{f"std_{c}": float(rv["std"][j, i]) for i, c in enumerate(classes)}}
                for j, e in enumerate(rv["edge"])]
    if "particles" in steps:
        with timed("particles"):
            _particles(rep, tables, lab, instances, classes, spacing, roles, opts)
    if probabilities is not None and int(opts["intervals"]["n_samples"]) > 0:
        with timed("intervals"):
            _intervals(rep, tables, lab, probabilities, spacing, classes, opts)
    rep["timings_s"]["total"] = round(time.perf_counter() - t_all, 3)
    rep["timings_cpu_s"]["total"] = round(time.process_time() - c_all, 3)
    if tables_out is not None:
        tables_out.update(tables)
    if out_dir is not None:
        from seglearn.characterise.report import write_report

        rep["outputs"] = write_report(out_dir, rep, tables, arrays, plots=opts["plots"], html=opts["html"],
                                      overwrite=bool(opts["overwrite"]))
    return rep


def _intervals(rep, tables, lab, probabilities, spacing, classes, opts) -> None:
    """95 % intervals from segmentations drawn from ``probabilities`` (:mod:`seglearn.characterise.intervals`)."""
    from seglearn.characterise.intervals import add_intervals

    probabilities = np.asarray(probabilities)
    if probabilities.shape != (len(classes),) + lab.shape:
        raise InputError(f"{opts['source'] or 'probabilities'}: probabilities of shape {probabilities.shape}, expected "
                         f"(K={len(classes)}, Z, Y, X) = {(len(classes),) + lab.shape}")
    keep = ("values", "pore", "active", "binder", "depth", "interfaces", "sizes", "tortuosity", "geodesic")
    sub = {k: opts[k] for k in keep} | {"values": list(range(1, len(classes) + 1)), "progress": False}

    def measure(sample, steps):
        t: dict = {}
        mesh = "sizes" in steps and opts["interfaces"]["mesh"]  # the fast samples count faces only
        r = characterise(sample, spacing, classes, steps=steps, tables_out=t,
                         **(sub | {"interfaces": {**opts["interfaces"], "mesh": mesh}}))
        return r, t

    level = logging.getLogger("seglearn").level
    logging.getLogger("seglearn").setLevel(max(level, logging.WARNING))  # the samples' step logs are noise
    try:
        add_intervals(rep, tables, probabilities, measure, opts["intervals"])
    finally:
        logging.getLogger("seglearn").setLevel(level)


def tortuosity_row(phase: str, r: dict) -> dict:
    """One row of the tortuosity table: ``tau`` only when converged, else the status names the bound."""
    tau = r["tau"]
    status = "converged"
    if not r["converged"]:
        status = (f"not solved: {r['stopped_by']}" if r["tau_unconverged"] is None else
                  f"not converged: {r['stopped_by']} (last estimate {r['tau_unconverged']:.4g}, not a result)")
    return {"phase": phase, "direction": r["direction"], "tau": _f(tau), "status": status,
            "percolating": bool(tau is None or np.isfinite(tau)), "volume_fraction": r["volume_fraction"],
            "relative_diffusivity": r["d_eff"], "solver": r["solver"], "iterations": r["iterations"],
            "flux_spread": _f(r["flux_spread"]), "converged": r["converged"], "seconds": round(r["seconds"], 2)}


def _interfaces(rep, tables, lab, k, classes, spacing, roles, opts, volume_um3) -> None:
    from seglearn.characterise.interfaces import face_area_matrix, mesh_area_matrix

    faces = face_area_matrix(lab, k, spacing) / 1e6  # µm²
    mesh = None
    if opts["interfaces"]["mesh"]:
        m = mesh_area_matrix(lab, k, spacing, sigma=opts["interfaces"]["sigma"])
        mesh = m["pairs"] / 1e6
    rows = []
    for p in range(k):
        for q in range(p + 1, k):
            rows.append({"phase_a": classes[p], "phase_b": classes[q], "area_faces_um2": float(faces[p, q]),
                         "area_mesh_um2": None if mesh is None else float(mesh[p, q]),
                         "per_volume_faces_per_um": float(faces[p, q] / volume_um3),
                         "per_volume_mesh_per_um": None if mesh is None else float(mesh[p, q] / volume_um3)})
    tables["interfaces"] = rows
    pv = rep.get("phase_volume_um3") or {}
    surf = []
    for p in range(k):
        a_f = float(faces[p].sum())
        a_m = None if mesh is None else float(mesh[p].sum())
        vol_p = pv.get(classes[p]) or float((lab == p + 1).sum()) * float(np.prod(spacing)) / 1e9
        surf.append({"phase": classes[p], "area_faces_um2": a_f, "area_mesh_um2": a_m,
                     "ssa_faces_per_um": a_f / volume_um3,
                     "ssa_mesh_per_um": None if a_m is None else a_m / volume_um3,
                     "ssa_mesh_per_phase_volume_per_um": None if (a_m is None or not vol_p) else a_m / vol_p})
    tables["surface"] = surf
    rep["interfaces"] = rows
    rep["specific_surface_area"] = {s["phase"]: s for s in surf}
    am, cbd = roles.get("active"), roles.get("binder")
    if am and cbd:
        cov = {"faces": float(faces[am - 1, cbd - 1] / max(faces[am - 1].sum(), 1e-30))}
        if mesh is not None:
            cov["mesh"] = float(mesh[am - 1, cbd - 1] / max(mesh[am - 1].sum(), 1e-30))
        rep["cbd_coverage_of_am"] = cov
    else:
        rep["cbd_coverage_of_am"] = None
        log.info("characterise: no active-material/carbon-binder classes named, CBD coverage skipped")


def _sizes(rep, tables, lab, classes, spacing, opts, all_ids) -> None:
    from seglearn.characterise.morph import face_mask
    from seglearn.characterise.sizes import size_distribution

    o = opts["sizes"]
    inlet = face_mask(lab.shape, o["inlet"]) if o["inlet"] else None
    out = {}
    rows = []
    for pid in _phase_ids(o["phases"], classes, all_ids):
        name = classes[pid - 1]
        r = size_distribution(lab == pid, spacing, n_linear=o["n_linear"], growth=o["growth"], inlet=inlet,
                              progress=bool(opts["progress"]))
        out[name] = {"r50_opening_um": _um(r["r50_opening_nm"]), "r50_intrusion_um": _um(r["r50_intrusion_nm"]),
                     "constrictivity": _f(r["constrictivity"]), "mean_diameter_um": _um(r["mean_diameter_nm"]),
                     "d50_opening_um": None if r["r50_opening_nm"] is None else 2 * r["r50_opening_nm"] / 1e3,
                     "radius_um": (r["radius_nm"] / 1e3).tolist(), "opened": r["opened"].tolist(),
                     "intruded": None if r["intruded"] is None else r["intruded"].tolist()}
        for j, rad in enumerate(r["radius_nm"]):
            rows.append({"phase": name, "radius_um": rad / 1e3, "diameter_um": 2 * rad / 1e3,
                         "opened_fraction": float(r["opened"][j]),
                         "intruded_fraction": None if r["intruded"] is None else float(r["intruded"][j])})
    rep["size_distribution"] = {"inlet": o["inlet"], "phases": out}
    tables["size_distribution"] = rows


def _geodesic(rep, tables, arrays, lab, classes, spacing, roles, opts) -> None:
    from seglearn.characterise.geodesic import face_distance, geodesic_tortuosity
    from seglearn.characterise.labels import class_id

    o = opts["geodesic"]
    pid = class_id(classes, o["phase"]) if o["phase"] is not None else roles.get("pore")
    if not pid:
        rep["geodesic_tortuosity"] = None
        log.info("characterise: no pore class found (set geodesic.phase=...), geodesic tortuosity skipped")
        return
    face = o["face"]
    ax = "zyx".index(face[0])
    extent = lab.shape[ax] * spacing[ax]
    ds = [float(d) * 1e3 for d in o["d_um"]] if o["d_um"] else [float(f) * extent for f in o["d_fractions"]]
    dist = face_distance(lab.shape, face, spacing)
    mask = lab == pid
    res, rows = [], []
    for d in ds:
        if d <= 0 or d >= extent:
            log.warning("geodesic: d = %.4g um is outside the box (0, %.4g um), skipped", d / 1e3, extent / 1e3)
            continue
        g = geodesic_tortuosity(mask, dist, d, spacing, max_starts=o["max_values"])
        res.append({"d_um": d / 1e3, "mean": g["mean"], "std": g["std"], "median": g["median"],
                    "n_starts": g["n_starts"], "reached": g["reached"],
                    "percentiles": {str(p): float(np.percentile(g["tau"], p)) for p in (5, 25, 50, 75, 95)}
                    if g["tau"].size else None})
        arrays[f"geodesic_{d / 1e3:.4g}"] = g["tau"]
        rows += [{"d_um": d / 1e3, "tau": float(t)} for t in g["tau"]]
    rep["geodesic_tortuosity"] = {"phase": classes[pid - 1], "face": face, "results": res}
    tables["geodesic_tortuosity"] = rows


def _inner(rep, tables, lab, classes, spacing, roles, opts) -> None:
    from seglearn.characterise.inner import fraction_vs_boundary_distance, inner_pores

    o = opts["inner_pores"]
    solid_ids = _phase_ids(o["solid"], classes, [roles["active"]] if roles.get("active") else [])
    if not solid_ids:
        rep["inner_pores"] = None
        log.info("characterise: no active-material class found (set inner_pores.solid=...), inner pores skipped")
        return
    solid = np.isin(lab, solid_ids)
    r_nm = float(o["radius_um"]) * 1e3
    ip = inner_pores(solid, r_nm, spacing)
    vox_um3 = float(np.prod(spacing)) / 1e9
    inner = ip["inner"] & (lab > 0)
    pore_id = roles.get("pore")
    prof = fraction_vs_boundary_distance(solid, ip["particle"], spacing, step_nm=o["step_nm"])
    rep["inner_pores"] = {
        "solid": [classes[i - 1] for i in solid_ids], "radius_um": r_nm / 1e3,
        "particle_solid_fraction": ip["solid_fraction"], "inner_fraction_of_void": ip["inner_fraction_of_void"],
        "inner_volume_um3": float(inner.sum() * vox_um3),
        "inner_pore_volume_um3": None if not pore_id else float((inner & (lab == pore_id)).sum() * vox_um3),
        "particle_volume_um3": float(ip["particle"].sum() * vox_um3),
    }
    tables["local_fraction"] = [{"delta_um": float(d) / 1e3, "local_solid_fraction": _f(l),
                                 "cumulative_solid_fraction": _f(c), "voxels": int(n)}
                                for d, l, c, n in zip(prof["delta_nm"], prof["local"], prof["cumulative"], prof["voxels"])]


def _particles(rep, tables, lab, instances, classes, spacing, roles, opts) -> None:
    from seglearn.characterise.particles import particle_table

    o = opts["particles"]
    source = "instances"
    if instances is None and o["from_components"] and roles.get("active"):
        source = "connected components of " + classes[roles["active"] - 1]
        from scipy import ndimage as ndi

        instances, _ = ndi.label(lab == roles["active"])
    if instances is None:
        rep["particles"] = None
        return
    t = particle_table(instances, spacing, exclude_border=o["exclude_border"], min_voxels=o["min_voxels"])
    n = len(t["id"])
    rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in t.items()} for i in range(n)]
    tables["particles"] = rows

    def stats(a):
        return None if not n else {"mean": float(np.mean(a)), "std": float(np.std(a)), "median": float(np.median(a)),
                                   "min": float(np.min(a)), "max": float(np.max(a))}

    rep["particles"] = {"count": n, "equivalent_diameter_um": stats(t["equivalent_diameter_um"]),
                        "aspect_ratio": stats(t["aspect_ratio"]), "volume_um3": stats(t["volume_um3"]),
                        "source": source}
