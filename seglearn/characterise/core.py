"""``characterise(labels, voxel_size_nm, classes)``: every microstructure number of one label volume.

Lengths in the result are in µm, areas in µm², volumes in µm³, specific surface areas in µm⁻¹.
Which steps run and how is set by ``options``, whose defaults are ``configs/characterise.yaml``
(:func:`default_options`); the report files are written when ``out_dir`` is given. The steps are
cut into tasks (:mod:`seglearn.characterise.steps`) run on ``parallel.workers`` processes under
``parallel.memory_gb`` (:mod:`seglearn.characterise.parallel`).
"""

from __future__ import annotations

import copy
import logging
import resource
import time
from typing import Any, Sequence

import numpy as np

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

STEPS = ("fractions", "depth", "interfaces", "sizes", "tortuosity", "geodesic", "inner_pores",
         "sections", "rve", "particles")
#: keys of configs/characterise.yaml that are not options of characterise() (the CLI's input side)
_NOT_OPTIONS = ("input", "probabilities", "instances", "output", "voxel_size_nm", "classes", "hydra")


def default_options() -> dict[str, Any]:
    """The options of :func:`characterise` with their defaults, read from ``configs/characterise.yaml``."""
    from seglearn.paths import load_config

    opts = {k: v for k, v in load_config("characterise.yaml").items() if k not in _NOT_OPTIONS}
    opts["source"] = None  # name of the input in messages (API only, no YAML default)
    return opts


def merge_options(options: dict | None) -> dict:
    """Defaults updated by ``options`` (nested dicts merged); unknown keys are refused."""
    opts = default_options()
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
                opts[key][k2] = copy.deepcopy(v2)
        else:
            opts[key] = copy.deepcopy(val)
    bad = [s for s in opts["steps"] if s not in STEPS]
    if bad:
        raise InputError(f"unknown characterise step(s) {bad}; known: {list(STEPS)}")
    return opts


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


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
        Class probabilities of ``labels`` (ids ``1..K``): every number of the report gets a 95 %
        interval from segmentations drawn from them (option ``intervals``;
        :mod:`seglearn.characterise.intervals`).
    tables_out : dict, optional
        Filled with the CSV tables (name -> rows).
    **options
        See :func:`default_options` / ``configs/characterise.yaml`` (e.g. ``steps=["fractions"]``,
        ``tortuosity={"directions": ["z", "x"]}``, ``parallel={"workers": 1}``).

    Returns
    -------
    dict
        The content of ``report.json`` (plain lists and numbers); ``timings_s`` / ``timings_cpu_s``
        per step (a step's tasks summed, over every worker) and ``total`` (CPU: this process and
        its workers), ``parallel`` (workers used, their peak resident memory).

    Examples
    --------
    >>> rep = characterise(pred, (20, 10, 10), ["pore", "carbon_binder", "active_material"],
    ...                    out_dir="out/characterise")  # doctest: +SKIP
    """
    opts = merge_options(options)
    t_all, c_all, k_all = time.perf_counter(), time.process_time(), _children_cpu()
    ctx = _context(labels, voxel_size_nm, classes, instances, opts)
    info = _run_steps(ctx, [s for s in STEPS if s in opts["steps"]])
    rep = ctx.rep
    rep["parallel"] = info
    if probabilities is not None and int(opts["intervals"]["n_samples"]) > 0:
        t, c = time.perf_counter(), time.process_time()
        from seglearn.characterise.intervals import characterise_intervals

        characterise_intervals(rep, ctx.tables, ctx.lab, probabilities, ctx.spacing, ctx.classes, opts,
                               instances=ctx.instances, roles=ctx.roles)
        rep["timings_s"]["intervals"] = round(time.perf_counter() - t, 3)
        rep["timings_cpu_s"]["intervals"] = round(time.process_time() - c, 3)
    rep["timings_s"]["total"] = round(time.perf_counter() - t_all, 3)
    rep["timings_cpu_s"]["total"] = round(time.process_time() - c_all + _children_cpu() - k_all, 3)
    if tables_out is not None:
        tables_out.update(ctx.tables)
    if out_dir is not None:
        from seglearn.characterise.report import write_report

        rep["outputs"] = write_report(out_dir, rep, ctx.tables, ctx.arrays, plots=opts["plots"], html=opts["html"],
                                      overwrite=bool(opts["overwrite"]))
    return rep


def _run_steps(ctx, steps: list) -> dict:
    """Plan, run (:func:`.parallel.run_tasks`) and combine the steps into ``ctx.rep``; returns the run info."""
    from seglearn.characterise.parallel import run_tasks
    from seglearn.characterise.steps import plan

    plans = {s: plan(s, ctx) for s in steps}
    tasks = [t for s in steps for t in plans[s][0]]
    par = ctx.opts["parallel"]
    workers = int(par["workers"]) if ctx.lab.size >= int(par["min_voxels"]) else 1
    log.info("characterise: %d tasks of %d steps on up to %d processes", len(tasks), len(steps), workers)
    info = run_tasks(tasks, workers=workers, memory_gb=par["memory_gb"])
    for s in steps:
        mine = plans[s][0]
        refused = [t.refused for t in mine if t.refused]
        if refused:  # bounded: the step is reported as not run, never computed past the budget
            ctx.rep.setdefault("not_run", {})[s] = refused[0]
        else:
            plans[s][1]([t.result for t in mine])
        ctx.rep["timings_s"][s] = round(sum(t.wall_s for t in mine), 3)
        ctx.rep["timings_cpu_s"][s] = round(sum(t.cpu_s for t in mine), 3)
        log.info("characterise: %s done in %.1f s (%.1f s CPU)", s, ctx.rep["timings_s"][s],
                 ctx.rep["timings_cpu_s"][s])
    return info


def _context(labels, voxel_size_nm, classes, instances, opts):
    """The mapped label volume, roles, counts and the report's ``input`` section."""
    from seglearn.characterise import fractions as fr
    from seglearn.characterise.labels import as_voxel_size, find_roles, map_labels
    from seglearn.characterise.steps import Ctx

    source = opts["source"] or "labels"
    lab, classes, values = map_labels(labels, classes, opts["values"], source=source)
    spacing = as_voxel_size(voxel_size_nm, source=source)
    roles = find_roles(classes, pore=opts["pore"], active=opts["active"], binder=opts["binder"])
    counts = fr.phase_counts(lab, len(classes))
    n_meas = int(counts[1:].sum())
    if n_meas == 0:
        raise InputError(f"{source}: no voxel belongs to a class")
    if instances is not None:
        instances = np.asarray(instances)
        if instances.shape != lab.shape:
            raise InputError(f"instances shape {instances.shape} differs from labels shape {lab.shape}")
    ctx = Ctx(lab=lab, classes=list(classes), values=list(values), spacing=tuple(spacing), roles=roles, opts=opts,
              instances=instances, counts=counts)
    ctx.rep.update({
        "input": {"source": source, "shape": list(lab.shape), "voxel_size_nm": list(spacing), "classes": classes,
                  "values": values, "roles": {r: (classes[i - 1] if i else None) for r, i in roles.items()},
                  "measured_voxels": n_meas, "outside_voxels": int(lab.size - n_meas),
                  "volume_um3": ctx.volume_um3},
        "timings_s": {}, "timings_cpu_s": {}})
    return ctx


def tortuosity_row(phase: str, r: dict) -> dict:
    """One row of the tortuosity table (kept here for callers; see :func:`.steps_pores.tortuosity_row`)."""
    from seglearn.characterise.steps_pores import tortuosity_row as row

    return row(phase, r)
