"""The uncertainty intervals in the plots and the HTML report (:mod:`seglearn.characterise.intervals`).

:func:`band` shades a curve's 95 % interval in the report's plots, :func:`interval_plot` draws
``intervals.png`` (fractions, specific surface areas, τ, and the other results relative to
their value), :func:`interval_html` the HTML section listing every number outside the tables
(the tables carry theirs in ``_low`` / ``_high`` columns).
"""

from __future__ import annotations

import html
import re

import numpy as np

from seglearn.characterise.intervals_numbers import report_paths
from seglearn.characterise.render import fig_png as _fig_png, table as _table

#: the results outside the tables drawn in the fourth panel of intervals.png, relative to their value
OTHER = re.compile(r"^(cbd_coverage_of_am/.*|size_distribution/[^/]+/(constrictivity|r50_opening_um|r50_intrusion_um)"
                   r"|geodesic_tortuosity/[^/]+/mean|inner_pores/(inner_fraction_of_void|particle_solid_fraction)"
                   r"|particles/(count|equivalent_diameter_um/mean|aspect_ratio/mean))$")


def band(ax, x, rows: list[dict], col: str, color, alpha: float = 0.2) -> None:
    """Shade the interval of ``col`` over ``x`` from the rows' ``<col>_low`` / ``<col>_high`` (nothing without them)."""
    lo = [r.get(f"{col}_low") for r in rows]
    hi = [r.get(f"{col}_high") for r in rows]
    if not rows or all(v is None for v in lo):
        return
    nan = float("nan")
    ax.fill_between(x, [nan if v is None else v for v in lo], [nan if v is None else v for v in hi], color=color,
                    alpha=alpha, lw=0)


def bounds_text(q: dict, key: str, fmt: str = ".3g") -> str:
    """`` [low, high]`` of ``q[key]`` when ``q`` carries its bounds, else ``""`` (for legends and titles)."""
    lo, hi = q.get(f"{key}_low"), q.get(f"{key}_high")
    return "" if lo is None or hi is None else f" [{lo:{fmt}}, {hi:{fmt}}]"


def _panel(ax, names: list[str], ivs: list[dict | None], title: str, relative: bool = False) -> None:
    for i, iv in enumerate(ivs):
        if not iv or iv["value"] is None:
            continue
        s = abs(iv["value"]) if relative and iv["value"] else 1.0
        ax.plot(iv["value"] / s, i, "o", color="C0")
        if iv["low"] is not None:
            ax.plot([iv["low"] / s, iv["high"] / s], [i, i], "-", color="C0", lw=2)
            ax.plot([iv["low"] / s, iv["high"] / s], [i, i], "|", color="C0", ms=10)
    if relative:
        ax.axvline(1.0, color="k", lw=0.6, ls=":")
    ax.set_yticks(range(len(names)), names, fontsize=7 if relative else 8)
    ax.set_ylim(-0.7, max(len(names), 1) - 0.3)
    ax.set_title(title, fontsize=9)


def interval_plot(rep: dict) -> bytes:
    """``intervals.png``: fractions, SSA and τ per phase, and the other results relative to their value."""
    import matplotlib.pyplot as plt

    vals = rep["intervals"]["values"]
    classes = rep["input"]["classes"]
    dirs = sorted({k.split("/")[2] for k in vals if k.startswith("tortuosity/") and k.endswith("/tau")})
    ssa = []
    for c in classes:
        k = f"surface/{c}/ssa_mesh_per_um"
        ssa.append(k if k in vals and vals[k]["value"] is not None else f"surface/{c}/ssa_faces_per_um")
    other = [k for k in vals if OTHER.match(k)]
    fig, axes = plt.subplots(1, 4, figsize=(15, max(3.4, 0.22 * len(other) + 1)))
    _panel(axes[0], classes, [vals.get(f"fractions/{c}/fraction") for c in classes], "volume fraction")
    _panel(axes[1], classes, [vals.get(k) for k in ssa], "specific surface area (µm⁻¹, mesh or faces)")
    _panel(axes[2], [f"{c} {d}" for c in classes for d in dirs],
           [vals.get(f"tortuosity/{c}/{d}/tau") for c in classes for d in dirs], "tortuosity factor τ")
    _panel(axes[3], other, [vals[k] for k in other], "other results (value = 1)", relative=True)
    fig.suptitle(f"Point estimate (argmax) and {100 * rep['intervals']['level']:g} % interval", fontsize=10)
    return _fig_png(fig)


def interval_html(rep: dict, tables: dict, img) -> str:
    """The HTML section of the intervals: method, ``intervals.png`` and every number outside the tables."""
    iv = rep["intervals"]
    mine = report_paths(rep)
    rows = [r for r in tables.get("intervals") or [] if r["number"] in mine]
    return (f"<h2>Uncertainty intervals ({100 * iv['level']:g} %)</h2><p>{html.escape(iv['method'])}: "
            f"{iv['n_samples']} segmentations drawn from the probabilities ({iv['n_samples_slow']} of them "
            f"also for meshes, sizes, τ, geodesic τ, inner pores and particles), noise correlated over "
            f"{' × '.join(f'{v:g}' for v in iv['correlation_length_voxels'])} voxels (z, y, x). "
            f"Every table above has <code>_low</code> / <code>_high</code> columns and the plots show the "
            f"intervals as bands or bars; value = the argmax segmentation (docs/characterise.md). The numbers "
            f"outside the tables are listed here; every interval is in <code>intervals.csv</code>.</p>"
            + img("intervals.png", "intervals")
            + _table(rows, ["number", "value", "low", "high", "mean", "std", "n", "n_missing"], limit=400))


def particle_title(rep: dict) -> str:
    """``count [low, high], mean diameter ... [low, high]`` for the particle plot's title ("" without intervals)."""
    p = rep.get("particles") or {}
    d = p.get("equivalent_diameter_um") or {}
    if p.get("count_low") is None:
        return ""
    return (f"{p['count']} particles{bounds_text(p, 'count', '.0f')}, mean diameter "
            f"{d.get('mean', np.nan):.3g}{bounds_text(d, 'mean')} µm")
