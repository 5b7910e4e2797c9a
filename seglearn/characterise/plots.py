"""PNG plots of a characterisation report (matplotlib, Agg): one function per plot."""

from __future__ import annotations

import numpy as np

from seglearn.characterise.intervals_report import band, bounds_text, interval_plot, particle_title
from seglearn.characterise.render import fig_png


def make_plots(rep: dict, tables: dict, arrays: dict) -> dict[str, bytes]:
    """PNG bytes of each plot the report has data for, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    out: dict[str, bytes] = {}
    for plot in (_plot_depth, _plot_sizes, _plot_geodesic, _plot_local_fraction, _plot_sections, _plot_rve,
                 _plot_particles):
        out.update(plot(rep, tables, arrays))
    if rep.get("intervals"):
        out["intervals.png"] = interval_plot(rep)
    return out


def _axes(figsize=(5.5, 3.6), ncols=1, **kw):
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize, **kw)


def _plot_depth(rep, tables, arrays) -> dict:
    depth = rep.get("fractions_by_depth")
    if not (depth and depth["regions"]):
        return {}
    fig, ax = _axes()
    mid = [(r["start_um"] + r["stop_um"]) / 2 for r in depth["regions"]]
    for c in rep["input"]["classes"]:
        y = [r[f"fraction_{c}"] for r in depth["regions"]]
        line, = ax.plot(mid, y, "o-", label=c)
        if all(r.get(f"fraction_{c}_low") is not None for r in depth["regions"]):  # 95 % intervals
            bounds = [[r[f"fraction_{c}_low"], r[f"fraction_{c}_high"]] for r in depth["regions"]]
            err = np.abs(np.array(bounds).T - y)
            ax.errorbar(mid, y, yerr=err, fmt="none", ecolor=line.get_color(), capsize=3)
    ax.set_xlabel(f"depth along {depth['axis']} (µm)")
    ax.set_ylabel("volume fraction")
    ax.set_title("Volume fraction per depth region")
    ax.legend(fontsize=8)
    return {"fractions_by_depth.png": fig_png(fig)}


def _plot_sizes(rep, tables, arrays) -> dict:
    sd = rep.get("size_distribution")
    if not (sd and sd["phases"]):
        return {}
    out = {}
    fig, ax = _axes()
    for name, p in sd["phases"].items():
        line, = ax.plot(2 * np.asarray(p["radius_um"]), p["opened"], "o-", ms=3, label=f"{name}")
        rows = [r for r in tables.get("size_distribution") or [] if r["phase"] == name
                and r.get("opened_fraction_low") is not None]
        if rows:  # 95 % band of the curve
            ax.fill_between([r["diameter_um"] for r in rows], [r["opened_fraction_low"] for r in rows],
                            [r["opened_fraction_high"] for r in rows], color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("diameter (µm)")
    ax.set_ylabel("volume fraction with local thickness ≥ d")
    ax.set_title("Continuous size distribution (granulometry)")
    ax.legend(fontsize=8)
    out["size_distribution.png"] = fig_png(fig)
    if any(p["intruded"] is not None for p in sd["phases"].values()):
        fig, ax = _axes()
        for name, p in sd["phases"].items():
            if p["intruded"] is None:
                continue
            line, = ax.plot(p["radius_um"], p["intruded"], "o-", ms=3,
                            label=f"{name} (β = {p['constrictivity']:.2f}{bounds_text(p, 'constrictivity', '.2f')})"
                            if p["constrictivity"] is not None else name)
            rows = [r for r in tables.get("size_distribution") or [] if r["phase"] == name]
            band(ax, [r["radius_um"] for r in rows], rows, "intruded_fraction", line.get_color())
            ax.plot(p["radius_um"], p["opened"], ":", color=line.get_color())
        ax.set_xlabel("sphere radius r (µm)")
        ax.set_ylabel("fraction of the phase filled")
        ax.set_title(f"Intrusion from {sd['inlet']} (solid) vs opening (dotted)")
        ax.legend(fontsize=8)
        out["intrusion.png"] = fig_png(fig)
    return out


def _plot_geodesic(rep, tables, arrays) -> dict:
    geo = rep.get("geodesic_tortuosity")
    if not (geo and geo["results"] and arrays):
        return {}
    fig, ax = _axes()
    for r in geo["results"]:
        vals = arrays.get(f"geodesic_{r['d_um']:.4g}")
        if vals is not None and len(vals):
            ax.hist(vals, bins=50, range=(1, max(2.0, float(np.percentile(vals, 99.5)))), histtype="step",
                    density=True, label=f"d = {r['d_um']:.3g} µm (mean {r['mean']:.3f}{bounds_text(r, 'mean', '.3f')})")
    ax.set_xlabel("geodesic tortuosity τ")
    ax.set_ylabel("density")
    ax.set_title(f"Geodesic tortuosity of {geo['phase']} from {geo['face']}")
    ax.legend(fontsize=8)
    return {"geodesic_tortuosity.png": fig_png(fig)}


def _plot_local_fraction(rep, tables, arrays) -> dict:
    lf = tables.get("local_fraction")
    if not lf:
        return {}
    fig, ax = _axes()
    d = [r["delta_um"] for r in lf]
    for col, label in (("local_solid_fraction", "in [δ, δ + step)"), ("cumulative_solid_fraction", "closer than δ + step")):
        line, = ax.plot(d, [np.nan if r[col] is None else r[col] for r in lf], label=label)
        band(ax, d, lf, col, line.get_color())  # 95 % interval (with probabilities)
    ax.set_xlabel("distance to the particle boundary δ (µm)")
    ax.set_ylabel("solid volume fraction")
    ax.set_title("Local solid fraction vs distance to the boundary")
    ax.legend(fontsize=8)
    return {"local_fraction.png": fig_png(fig)}


def _plot_sections(rep, tables, arrays) -> dict:
    sec = tables.get("sections")
    if not sec:
        return {}
    fig, axes = _axes((11, 3.4), 3, sharey=True)
    for ax, plane in zip(axes, ("xy", "xz", "yz")):
        rows = [r for r in sec if r["plane"] == plane]
        for c in rep["input"]["classes"]:
            line, = ax.plot([r["slice"] for r in rows],
                            [np.nan if r[f"fraction_{c}"] is None else r[f"fraction_{c}"] for r in rows], lw=1,
                            label=c)
            band(ax, [r["slice"] for r in rows], rows, f"fraction_{c}", line.get_color())
            ax.axhline(rep["sections"]["volume"][c], color=line.get_color(), ls="--", lw=0.8)
        ax.set_title(f"{plane} sections (dashed: 3D)")
        ax.set_xlabel("slice")
    axes[0].set_ylabel("volume fraction")
    axes[0].legend(fontsize=7)
    return {"sections.png": fig_png(fig)}


def _plot_rve(rep, tables, arrays) -> dict:
    rv = rep.get("representative_volume")
    if not rv:
        return {}
    fig, ax = _axes()
    for c in rep["input"]["classes"]:
        line, = ax.plot(rv["edge_um"], rv["std"][c], "o-", ms=3, label=c)
        band(ax, rv["edge_um"], tables.get("representative_volume") or [], f"std_{c}", line.get_color())
    ax.axhline(rv["tolerance"], color="k", ls=":", lw=0.8, label="tolerance")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("sub-volume edge (µm)")
    ax.set_ylabel("std of the fraction")
    ax.set_title("Representative volume: spread vs sub-volume size")
    ax.legend(fontsize=8)
    return {"representative_volume.png": fig_png(fig)}


def _plot_particles(rep, tables, arrays) -> dict:
    parts = tables.get("particles")
    if not parts:
        return {}
    fig, axes = _axes((9, 3.4), 2)
    axes[0].hist([r["equivalent_diameter_um"] for r in parts], bins=30)
    axes[0].set_xlabel("equivalent diameter (µm)")
    axes[0].set_ylabel("particles")
    axes[1].hist([r["aspect_ratio"] for r in parts], bins=30)
    axes[1].set_xlabel("aspect ratio (major / minor)")
    if particle_title(rep):
        fig.suptitle(particle_title(rep), fontsize=9)
    return {"particles.png": fig_png(fig)}
