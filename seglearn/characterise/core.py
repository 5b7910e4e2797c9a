"""Measure a label volume: the options and the steps run under the memory budget.

The measuring core of :func:`seglearn.characterise.characterise` (:mod:`.pipeline` adds the
intervals and the report files): the options, whose defaults are ``configs/characterise.yaml``
(:func:`default_options`), and the steps, cut into tasks (:mod:`.steps`, :mod:`.steps_pores`) run on
``parallel.workers`` processes under ``parallel.memory_gb`` (:mod:`.parallel`). Lengths in the
result are in µm, areas in µm², volumes in µm³, specific surface areas in µm⁻¹.
"""

from __future__ import annotations

import copy
import logging
import resource
import time
from typing import Any, Callable, Sequence

import numpy as np

import seglearn.characterise.fractions as fr
from seglearn.characterise.context import Ctx
from seglearn.characterise.labels import as_voxel_size, find_roles, map_labels
from seglearn.characterise.parallel import run_tasks
from seglearn.characterise.steps import PLANS as VOLUME_PLANS
from seglearn.characterise.steps_pores import PLANS as PORE_PLANS
from seglearn.errors import InputError
from seglearn.paths import load_config

log = logging.getLogger("seglearn")

STEPS = ("fractions", "depth", "interfaces", "sizes", "tortuosity", "geodesic", "inner_pores",
         "sections", "rve", "particles")
#: keys of configs/characterise.yaml that are not options of characterise() (the CLI's input side)
_NOT_OPTIONS = ("input", "probabilities", "instances", "output", "voxel_size_nm", "classes", "hydra")


_PLANS: dict[str, Callable[[Ctx], tuple]] = {**VOLUME_PLANS, **PORE_PLANS}


def default_options() -> dict[str, Any]:
    """The options of :func:`characterise` with their defaults, read from ``configs/characterise.yaml``."""
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


class Clock:
    """Wall and CPU seconds (this process and its finished workers) since it was made."""

    def __init__(self):
        self.t, self.c, self.k = time.perf_counter(), time.process_time(), _children_cpu()

    def wall(self) -> float:
        return round(time.perf_counter() - self.t, 3)

    def cpu(self) -> float:
        return round(time.process_time() - self.c + _children_cpu() - self.k, 3)


def run(labels: np.ndarray, voxel_size_nm, classes: Sequence[str] | None, instances: np.ndarray | None,
        opts: dict) -> Ctx:
    """Every step of ``opts["steps"]`` on ``labels``; returns the context holding the report.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        Class ids or grey values (:func:`seglearn.characterise.labels.map_labels`).
    voxel_size_nm : float or (z, y, x)
    classes : sequence of str or None
    instances : (Z, Y, X) int ndarray or None
    opts : dict
        Merged options (:func:`merge_options`).

    Returns
    -------
    Ctx
        ``rep`` (the report without ``timings_s.total``), ``tables`` (CSV rows), ``arrays`` (plot data).
    """
    ctx = _context(labels, voxel_size_nm, classes, instances, opts)
    ctx.rep["parallel"] = _run_steps(ctx, [s for s in STEPS if s in opts["steps"]])
    return ctx


def measure(labels: np.ndarray, voxel_size_nm, classes: Sequence[str] | None = None,
            instances: np.ndarray | None = None, *, tables_out: dict | None = None, **options) -> dict:
    """The report of :func:`seglearn.characterise.characterise` without intervals and files.

    What the intervals measure on each drawn segmentation (:mod:`seglearn.characterise.intervals`);
    ``tables_out`` is filled with the CSV tables (name -> rows). Options as for ``characterise``.
    """
    clock = Clock()
    ctx = run(labels, voxel_size_nm, classes, instances, merge_options(options))
    ctx.rep["timings_s"]["total"] = clock.wall()
    ctx.rep["timings_cpu_s"]["total"] = clock.cpu()
    if tables_out is not None:
        tables_out.update(ctx.tables)
    return ctx.rep


def _run_steps(ctx, steps: list) -> dict:
    """Plan, run (:func:`.parallel.run_tasks`) and combine the steps into ``ctx.rep``; returns the run info."""
    plans = {s: _PLANS[s](ctx) for s in steps}
    tasks = [t for s in steps for t in plans[s][0]]
    par = ctx.opts["parallel"]
    workers = int(par["workers"]) if ctx.lab.size >= int(par["min_voxels"]) else 1
    log.info("characterise: %d tasks of %d steps on up to %d processes", len(tasks), len(steps), workers)
    info = run_tasks(tasks, workers=workers, memory_gb=par["memory_gb"])
    info["tasks"] = [{"task": t.name or t.step, "wall_s": round(t.wall_s, 2), "cpu_s": round(t.cpu_s, 2)}
                     for t in tasks if t.refused is None and t.cost > 0]  # the schedule's critical path
    for s in steps:
        mine = plans[s][0]
        refused = [t.refused for t in mine if t.refused and not t.optional]
        if refused:  # bounded: the step is reported as not run, never computed past the budget
            ctx.rep.setdefault("not_run", {})[s] = refused[0]
            ctx.tables.setdefault("not_run", []).append({"step": s, "status": f"not run: {refused[0]}"})
        else:  # an optional task refused gives its place in the step's results to {"not_run": why}
            for t in mine:
                if t.refused:
                    ctx.rep.setdefault("not_run", {})[t.name] = t.refused
                    ctx.tables.setdefault("not_run", []).append({"step": t.name, "status": f"not run: {t.refused}"})
            plans[s][1]([{"not_run": t.refused} if t.refused else t.result for t in mine])
        ctx.rep["timings_s"][s] = round(sum(t.wall_s for t in mine), 3)
        ctx.rep["timings_cpu_s"][s] = round(sum(t.cpu_s for t in mine), 3)
        log.info("characterise: %s done in %.1f s (%.1f s CPU)", s, ctx.rep["timings_s"][s],
                 ctx.rep["timings_cpu_s"][s])
    return info


def _context(labels, voxel_size_nm, classes, instances, opts):
    """The mapped label volume, roles, counts and the report's ``input`` section."""
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
