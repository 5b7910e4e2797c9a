"""Which numbers of a characterisation get an interval, by path, and where the bounds are written.

Every number ``characterise`` reports is named by a path: table cells by table, row key and
column (``fractions/pore/fraction``, ``tortuosity/pore/z/tau``, ``sections/xy/12/fraction_pore``),
the numbers outside the tables by their place in ``report.json`` (``inner_pores/inner_fraction_of_void``,
``sections/std/xy/pore``, ``particles/equivalent_diameter_um/mean``,
``representative_volume/rve_edge_voxels/pore``, ``geodesic_tortuosity/0.64/mean``). :func:`flatten`
gives every path with its value; :func:`annotate` writes ``<name>_low`` / ``<name>_high`` next to
each number of a table row or of a dict of named quantities (not into dicts keyed by class name,
whose keys other code iterates). docs/characterise.md, "Uncertainty intervals".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: key columns that identify a row of a table across samples; other numeric columns get intervals
KEYS = {"fractions": ("phase",), "fractions_by_depth": ("region",), "interfaces": ("phase_a", "phase_b"),
        "surface": ("phase",), "size_distribution": ("phase", "radius_um"), "tortuosity": ("phase", "direction"),
        "sections": ("plane", "slice"), "representative_volume": ("edge_voxels",), "local_fraction": ("delta_um",),
        "particles": ("id",)}
#: columns that describe a row or a setting, not a measured number
SKIP = {"id", "value", "region", "start_um", "stop_um", "radius_um", "diameter_um", "iterations", "seconds",
        "flux_spread", "percolating", "converged", "plane", "slice", "edge_voxels", "delta_um", "touches_border"}
#: numbers outside the tables: report key -> (path prefix, keys that are settings, class-keyed: no bounds written)
REPORT = {"cbd_coverage_of_am": ("cbd_coverage_of_am", (), False),
          "inner_pores": ("inner_pores", ("radius_um", "solid"), False),
          "sections": ("sections", (), True),
          "particles": ("particles", ("source",), False)}
SD_SETTINGS = ("radius_um", "opened", "intruded", "sampled_box")
GEO_SETTINGS = ("d_um", "sampled_box", "percentiles")


def is_fraction(path: str) -> bool:
    """Whether the number at ``path`` is a fraction in [0, 1] (volume fractions of every kind, CBD coverage)."""
    return "fraction" in path.rsplit("/", 1)[-1] or path.startswith(("sections/volume/", "cbd_coverage_of_am/"))


def _num(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def row_key(table: str, row: dict) -> str:
    """The row's identity across samples (``pore/z``, ``xy/12``)."""
    return "/".join(f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k]) for k in KEYS[table])


def _tables_used(rep: dict, tables: dict) -> list[str]:
    """Tables whose rows are the same things in every sample (particles: only given instances, not components)."""
    out = [t for t in KEYS if tables.get(t)]
    if "particles" in out and (rep.get("particles") or {}).get("source") != "instances":
        out.remove("particles")
    return out


def _walk(obj: Any, path: str, skip: tuple, visit) -> None:
    """``visit(parent, key, path, value)`` for every number (or None) in nested dicts; lists are not entered."""
    if not isinstance(obj, dict):
        return
    for k, v in list(obj.items()):  # annotate() adds <k>_low / <k>_high while walking
        if k in skip or str(k).endswith(("_low", "_high")):
            continue
        if isinstance(v, dict):
            _walk(v, f"{path}/{k}", (), visit)
        elif v is None or _num(v):
            visit(obj, k, f"{path}/{k}", v)


def _places(rep: dict, tables: dict, visit) -> None:
    """Every number that gets an interval, as ``visit(parent, key, path, value, bounds_here)``."""
    for t in _tables_used(rep, tables):
        for row in tables[t]:
            key = row_key(t, row)
            for col, v in list(row.items()):
                if col not in SKIP and col not in KEYS[t] and not col.endswith(("_low", "_high")) \
                        and (v is None or _num(v)):
                    visit(row, col, f"{t}/{key}/{col}", v, True)
    for name, (prefix, skip, by_class) in REPORT.items():
        _walk(rep.get(name), prefix, skip, lambda p, k, path, v, b=not by_class: visit(p, k, path, v, b))
    rv = rep.get("representative_volume") or {}
    _walk(rv.get("rve_edge_voxels"), "representative_volume/rve_edge_voxels", (),
          lambda p, k, path, v: visit(p, k, path, v, False))
    for name, p in ((rep.get("size_distribution") or {}).get("phases") or {}).items():
        _walk(p, f"size_distribution/{name}", SD_SETTINGS, lambda q, k, path, v: visit(q, k, path, v, True))
    for r in (rep.get("geodesic_tortuosity") or {}).get("results") or []:
        d = f"geodesic_tortuosity/{r['d_um']:.4g}"
        _walk(r, d, GEO_SETTINGS, lambda q, k, path, v: visit(q, k, path, v, True))
        _walk({f"p{k}": v for k, v in (r.get("percentiles") or {}).items()}, d, (),
              lambda q, k, path, v: visit(q, k, path, v, False))


def flatten(rep: dict, tables: dict) -> dict[str, float | None]:
    """Every number that gets an interval, by path; not finite values (a phase that does not percolate) are None."""
    flat: dict[str, Any] = {}

    def visit(parent, key, path, v, bounds_here):
        flat[path] = v

    _places(rep, tables, visit)
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in flat.items()}


def annotate(rep: dict, tables: dict, ivs: dict[str, dict]) -> None:
    """Write ``<key>_low`` / ``<key>_high`` beside every number that has an interval in ``ivs`` (by path).

    Table rows and dicts of named quantities get the bounds in place; dicts keyed by class name
    (``sections``, ``rve_edge_voxels``) and the geodesic percentiles keep theirs in ``ivs`` only.
    """
    def visit(parent, key, path, v, bounds_here):
        iv = ivs.get(path)
        if iv is not None and bounds_here:
            parent[f"{key}_low"], parent[f"{key}_high"] = iv["low"], iv["high"]

    _places(rep, tables, visit)


def report_paths(rep: dict) -> set[str]:
    """Paths of the numbers outside the per-row tables (the HTML lists these in its interval table)."""
    out: set[str] = set()
    _places(rep, {}, lambda parent, key, path, v, here: out.add(path))
    return out
