"""Write a characterisation: ``report.json``, CSV tables, PNG plots and one self-contained HTML page.

Every file is written atomically; an existing ``report.json`` is never replaced without
``overwrite=True``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from seglearn.errors import OutputExistsError
from seglearn.io.atomic import atomic_path, check_writable

log = logging.getLogger("seglearn")


def _clean(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_csv(path: Path, rows: list[dict], overwrite: bool) -> None:
    import pandas as pd

    with atomic_path(path, overwrite=overwrite) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def write_report(out_dir, rep: dict, tables: dict[str, list[dict]], arrays: dict | None = None, *,
                 plots: bool = True, html: bool = True, overwrite: bool = False) -> list[str]:
    """Write ``rep`` and its tables into ``out_dir``; returns the file names written.

    Parameters
    ----------
    out_dir : path-like
    rep : dict
        The result of :func:`~seglearn.characterise.characterise`.
    tables : dict of str -> list of dict
        One CSV per entry (``<name>.csv``).
    arrays : dict, optional
        Extra data for the plots (geodesic tortuosity values per distance).
    plots, html : bool
        Write the PNG plots / ``report.html``.
    overwrite : bool
        Replace an earlier report in ``out_dir``.
    """
    out = Path(out_dir)
    if (out / "report.json").exists() and not overwrite:
        raise OutputExistsError(f"{out / 'report.json'}: a report already exists; pass overwrite=true to replace it")
    check_writable(out / "report.json", overwrite=overwrite)
    written: list[str] = []
    for name, rows in tables.items():
        if rows:
            _write_csv(out / f"{name}.csv", rows, overwrite)
            written.append(f"{name}.csv")
    images: dict[str, bytes] = {}
    if plots:
        images = make_plots(rep, tables, arrays or {})
        for name, png in images.items():
            with atomic_path(out / name, overwrite=overwrite) as tmp:
                tmp.write_bytes(png)
            written.append(name)
    if html:
        _write_text(out / "report.html", render_html(rep, tables, images), overwrite)
        written.append("report.html")
    written.append("report.json")
    doc = dict(rep)
    doc["outputs"] = written
    _write_text(out / "report.json", json.dumps(_clean(doc), indent=1), overwrite)
    log.info("characterise: wrote %s (%d files)", out, len(written))
    return written


# ----------------------------------------------------------------------------------------- plots

def _fig_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def make_plots(rep: dict, tables: dict, arrays: dict) -> dict[str, bytes]:
    """PNG bytes of each plot the report has data for, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = rep["input"]["classes"]
    out: dict[str, bytes] = {}
    depth = rep.get("fractions_by_depth")
    if depth and depth["regions"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        mid = [(r["start_um"] + r["stop_um"]) / 2 for r in depth["regions"]]
        for c in classes:
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
        out["fractions_by_depth.png"] = _fig_png(fig)
    sd = rep.get("size_distribution")
    if sd and sd["phases"]:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
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
        out["size_distribution.png"] = _fig_png(fig)
        if any(p["intruded"] is not None for p in sd["phases"].values()):
            fig, ax = plt.subplots(figsize=(5.5, 3.6))
            for name, p in sd["phases"].items():
                if p["intruded"] is None:
                    continue
                line, = ax.plot(p["radius_um"], p["intruded"], "o-", ms=3,
                                label=f"{name} (β = {p['constrictivity']:.2f})" if p["constrictivity"] is not None
                                else name)
                ax.plot(p["radius_um"], p["opened"], ":", color=line.get_color())
            ax.set_xlabel("sphere radius r (µm)")
            ax.set_ylabel("fraction of the phase filled")
            ax.set_title(f"Intrusion from {sd['inlet']} (solid) vs opening (dotted)")
            ax.legend(fontsize=8)
            out["intrusion.png"] = _fig_png(fig)
    geo = rep.get("geodesic_tortuosity")
    if geo and geo["results"] and arrays:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for r in geo["results"]:
            vals = arrays.get(f"geodesic_{r['d_um']:.4g}")
            if vals is not None and len(vals):
                ax.hist(vals, bins=50, range=(1, max(2.0, float(np.percentile(vals, 99.5)))), histtype="step",
                        density=True, label=f"d = {r['d_um']:.3g} µm (mean {r['mean']:.3f})")
        ax.set_xlabel("geodesic tortuosity τ")
        ax.set_ylabel("density")
        ax.set_title(f"Geodesic tortuosity of {geo['phase']} from {geo['face']}")
        ax.legend(fontsize=8)
        out["geodesic_tortuosity.png"] = _fig_png(fig)
    lf = tables.get("local_fraction")
    if lf:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        d = [r["delta_um"] for r in lf]
        ax.plot(d, [np.nan if r["local_solid_fraction"] is None else r["local_solid_fraction"] for r in lf],
                label="in [δ, δ + step)")
        ax.plot(d, [r["cumulative_solid_fraction"] for r in lf], label="closer than δ + step")
        ax.set_xlabel("distance to the particle boundary δ (µm)")
        ax.set_ylabel("solid volume fraction")
        ax.set_title("Local solid fraction vs distance to the boundary")
        ax.legend(fontsize=8)
        out["local_fraction.png"] = _fig_png(fig)
    sec = tables.get("sections")
    if sec:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
        for ax, plane in zip(axes, ("xy", "xz", "yz")):
            rows = [r for r in sec if r["plane"] == plane]
            for i, c in enumerate(classes):
                line, = ax.plot([r["slice"] for r in rows],
                                [np.nan if r[f"fraction_{c}"] is None else r[f"fraction_{c}"] for r in rows], lw=1,
                                label=c)
                ax.axhline(rep["sections"]["volume"][c], color=line.get_color(), ls="--", lw=0.8)
            ax.set_title(f"{plane} sections (dashed: 3D)")
            ax.set_xlabel("slice")
        axes[0].set_ylabel("volume fraction")
        axes[0].legend(fontsize=7)
        out["sections.png"] = _fig_png(fig)
    rv = rep.get("representative_volume")
    if rv:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for c in classes:
            ax.plot(rv["edge_um"], rv["std"][c], "o-", ms=3, label=c)
        ax.axhline(rv["tolerance"], color="k", ls=":", lw=0.8, label="tolerance")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("sub-volume edge (µm)")
        ax.set_ylabel("std of the fraction")
        ax.set_title("Representative volume: spread vs sub-volume size")
        ax.legend(fontsize=8)
        out["representative_volume.png"] = _fig_png(fig)
    parts = tables.get("particles")
    if parts:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        axes[0].hist([r["equivalent_diameter_um"] for r in parts], bins=30)
        axes[0].set_xlabel("equivalent diameter (µm)")
        axes[0].set_ylabel("particles")
        axes[1].hist([r["aspect_ratio"] for r in parts], bins=30)
        axes[1].set_xlabel("aspect ratio (major / minor)")
        out["particles.png"] = _fig_png(fig)
    if rep.get("intervals"):
        out["intervals.png"] = _interval_plot(rep)
    return out


def _interval_plot(rep: dict) -> bytes:
    """Fractions, specific surface areas and tortuosity factors per phase with their 95 % intervals."""
    import matplotlib.pyplot as plt

    vals = rep["intervals"]["values"]
    panels = [("volume fraction", "fractions/{}/fraction"), ("specific surface area (µm⁻¹, mesh or faces)", None),
              ("tortuosity factor τ", "tortuosity/{}/tau")]
    classes = rep["input"]["classes"]
    dirs = sorted({k.split("/")[2] for k in vals if k.startswith("tortuosity/") and k.endswith("/tau")})
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (title, pat) in zip(axes, panels):
        names, keys = [], []
        for c in classes:
            if pat is None:
                k = f"surface/{c}/ssa_mesh_per_um"
                keys.append(k if k in vals and vals[k]["value"] is not None else f"surface/{c}/ssa_faces_per_um")
                names.append(c)
            elif "tortuosity" in pat:
                for d in dirs:
                    keys.append(f"tortuosity/{c}/{d}/tau")
                    names.append(f"{c} {d}")
            else:
                keys.append(pat.format(c))
                names.append(c)
        for i, (n, k) in enumerate(zip(names, keys)):
            iv = vals.get(k)
            if not iv or iv["value"] is None:
                continue
            ax.plot(iv["value"], i, "o", color="C0")
            if iv["low"] is not None:
                ax.plot([iv["low"], iv["high"]], [i, i], "-", color="C0", lw=2)
                ax.plot([iv["low"], iv["high"]], [i, i], "|", color="C0", ms=10)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Point estimate (argmax) and {100 * rep['intervals']['level']:g} % interval", fontsize=10)
    return _fig_png(fig)


# ------------------------------------------------------------------------------------------ html

def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(rows: list[dict], cols: list[str] | None = None, limit: int = 60) -> str:
    if not rows:
        return "<p>–</p>"
    cols = cols or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    more = f"<p class=note>{len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def render_html(rep: dict, tables: dict, images: dict[str, bytes]) -> str:
    """One HTML page with every table and the plots embedded as base64 PNG."""
    inp = rep["input"]
    parts = [f"<h1>Microstructure report</h1><p>{html.escape(str(inp['source']))}: {' × '.join(map(str, inp['shape']))} voxels "
             f"(z, y, x) of {' × '.join(f'{v:g}' for v in inp['voxel_size_nm'])} nm, {inp['volume_um3']:.4g} µm³ measured; "
             f"classes {', '.join(f'{c} (value {v})' for c, v in zip(inp['classes'], inp['values']))}.</p>"]

    def img(name: str, alt: str) -> str:
        if name not in images:
            return ""
        b64 = base64.b64encode(images[name]).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'

    sections = [
        ("Volume fractions", "fractions", None, ""),
        ("Fractions and interfaces per depth region", "fractions_by_depth", None,
         img("fractions_by_depth.png", "fraction vs depth")),
        ("Interfaces", "interfaces", None, ""),
        ("Specific surface area", "surface", None, ""),
        ("Tortuosity factor (a solve stopped by a bound shows no value: see status)", "tortuosity", None, ""),
    ]
    for title, key, cols, extra in sections:
        if tables.get(key):
            parts.append(f"<h2>{title}</h2>{_table(tables[key], cols)}{extra}")
    cov = rep.get("cbd_coverage_of_am")
    if cov:
        parts.append("<h2>Carbon-binder coverage of the active material</h2><p>Fraction of the active-material "
                     "surface touching carbon-binder: " + ", ".join(f"{k} {_fmt(v)}" for k, v in cov.items()) + "</p>")
    sd = rep.get("size_distribution")
    if sd and sd["phases"]:
        rows = [{"phase": n, **{k: v for k, v in p.items() if not isinstance(v, list)}} for n, p in sd["phases"].items()]
        parts.append(f"<h2>Size distributions and constrictivity</h2>{_table(rows)}"
                     f"{img('size_distribution.png', 'size distribution')}{img('intrusion.png', 'intrusion')}")
    geo = rep.get("geodesic_tortuosity")
    if geo and geo["results"]:
        rows = [{k: v for k, v in r.items() if k != "percentiles"} for r in geo["results"]]
        parts.append(f"<h2>Geodesic tortuosity ({html.escape(geo['phase'])} from {geo['face']})</h2>{_table(rows)}"
                     f"{img('geodesic_tortuosity.png', 'geodesic tortuosity')}")
    ip = rep.get("inner_pores")
    if ip:
        parts.append(f"<h2>Inner pores (rolling ball r = {ip['radius_um']:g} µm)</h2>"
                     f"{_table([{k: v for k, v in ip.items() if k != 'solid'}])}{img('local_fraction.png', 'local fraction')}")
    sec = rep.get("sections")
    if sec:
        rows = [{"estimate": "3D", **sec["volume"]}]
        rows += [{"estimate": f"{p} mean", **sec["mean"][p]} for p in sec["mean"]]
        rows += [{"estimate": f"{p} std", **sec["std"][p]} for p in sec["std"]]
        parts.append(f"<h2>2D sections vs 3D</h2>{_table(rows)}{img('sections.png', 'sections')}")
    if tables.get("representative_volume"):
        rv = rep["representative_volume"]
        parts.append(f"<h2>Representative volume</h2><p>Smallest cube edge (voxels) with std ≤ {rv['tolerance']:g}: "
                     + ", ".join(f"{c} {_fmt(v)}" for c, v in rv["rve_edge_voxels"].items()) + "</p>"
                     + _table(tables["representative_volume"]) + img("representative_volume.png", "rve"))
    if rep.get("particles"):
        p = rep["particles"]
        parts.append(f"<h2>Particles ({p['count']}, from {p['source']})</h2>"
                     + _table([{"quantity": k, **(v or {})} for k, v in p.items() if isinstance(v, dict) or v is None])
                     + img("particles.png", "particles"))
    iv = rep.get("intervals")
    if iv:
        parts.append(f"<h2>Uncertainty intervals ({100 * iv['level']:g} %)</h2><p>{html.escape(iv['method'])}: "
                     f"{iv['n_samples']} segmentations drawn from the probabilities ({iv['n_samples_slow']} of them "
                     f"also for meshes, sizes and tortuosity), noise correlated over "
                     f"{' × '.join(f'{v:g}' for v in iv['correlation_length_voxels'])} voxels (z, y, x). "
                     f"Every table above has <code>_low</code> / <code>_high</code> columns; value = the argmax "
                     f"segmentation (docs/characterise.md).</p>"
                     + img("intervals.png", "intervals")
                     + _table(tables.get("intervals") or [], ["number", "value", "low", "high", "mean", "std", "n"],
                              limit=200))
    parts.append("<h2>Timings (s)</h2>" + _table([rep.get("timings_s", {})]))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#eee}img{max-width:100%;display:block;margin:.5em 0}.note{color:#666;font-size:12px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>seglearn microstructure report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
