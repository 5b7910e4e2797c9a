"""``characterise(labels, voxel_size_nm, classes)``: every microstructure number of one label volume,
with 95 % intervals when class probabilities are given, and the report files.

The numbers come from :func:`.core.run` (steps in worker processes under a memory budget), the
intervals from :mod:`.intervals` (which measures drawn segmentations with :func:`.core.measure`),
the files from :mod:`.report`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.characterise.core import Clock, merge_options, run
from seglearn.characterise.intervals import characterise_intervals
from seglearn.characterise.report import write_report


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
        See :func:`.core.default_options` / ``configs/characterise.yaml`` (e.g. ``steps=["fractions"]``,
        ``tortuosity={"directions": ["z", "x"]}``, ``parallel={"workers": 1}``).

    Returns
    -------
    dict
        The content of ``report.json`` (plain lists and numbers); ``timings_s`` / ``timings_cpu_s``
        per step (a step's tasks summed, over every worker) and ``total`` (CPU: this process and
        its workers), ``parallel`` (workers used, their peak resident memory), ``not_run`` (steps
        refused by the memory budget, and why).

    Examples
    --------
    >>> rep = characterise(pred, (20, 10, 10), ["pore", "carbon_binder", "active_material"],
    ...                    out_dir="out/characterise")  # doctest: +SKIP
    """
    opts = merge_options(options)
    clock = Clock()
    ctx = run(labels, voxel_size_nm, classes, instances, opts)
    rep = ctx.rep
    if probabilities is not None and int(opts["intervals"]["n_samples"]) > 0:
        part = Clock()
        characterise_intervals(rep, ctx.tables, ctx.lab, probabilities, ctx.spacing, ctx.classes, opts,
                               instances=ctx.instances, roles=ctx.roles)
        rep["timings_s"]["intervals"], rep["timings_cpu_s"]["intervals"] = part.wall(), part.cpu()
    rep["timings_s"]["total"], rep["timings_cpu_s"]["total"] = clock.wall(), clock.cpu()
    if tables_out is not None:
        tables_out.update(ctx.tables)
    if out_dir is not None:
        rep["outputs"] = write_report(out_dir, rep, ctx.tables, ctx.arrays, plots=opts["plots"], html=opts["html"],
                                      overwrite=bool(opts["overwrite"]))
    return rep
