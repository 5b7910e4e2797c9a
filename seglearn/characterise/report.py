"""Write a characterisation: ``report.json``, CSV tables, PNG plots and one self-contained HTML page.

Every file is written atomically; an existing ``report.json`` is never replaced without
``overwrite=True``.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from seglearn.characterise.intervals_report import interval_html
from seglearn.characterise.plots import make_plots
from seglearn.characterise.render import fmt, table
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


# ------------------------------------------------------------------------------------------ html

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
            parts.append(f"<h2>{title}</h2>{table(tables[key], cols)}{extra}")
    cov = rep.get("cbd_coverage_of_am")
    if cov:
        parts.append("<h2>Carbon-binder coverage of the active material</h2><p>Fraction of the active-material "
                     "surface touching carbon-binder: " + ", ".join(f"{k} {fmt(v)}" for k, v in cov.items()) + "</p>")
    sd = rep.get("size_distribution")
    if sd and sd["phases"]:
        rows = [{"phase": n, **{k: v for k, v in p.items() if not isinstance(v, list)}} for n, p in sd["phases"].items()]
        parts.append(f"<h2>Size distributions and constrictivity</h2>{table(rows)}"
                     f"{img('size_distribution.png', 'size distribution')}{img('intrusion.png', 'intrusion')}")
    geo = rep.get("geodesic_tortuosity")
    if geo and geo["results"]:
        rows = [{k: v for k, v in r.items() if k != "percentiles"} for r in geo["results"]]
        parts.append(f"<h2>Geodesic tortuosity ({html.escape(geo['phase'])} from {geo['face']})</h2>{table(rows)}"
                     f"{img('geodesic_tortuosity.png', 'geodesic tortuosity')}")
    ip = rep.get("inner_pores")
    if ip:
        parts.append(f"<h2>Inner pores (rolling ball r = {ip['radius_um']:g} µm)</h2>"
                     f"{table([{k: v for k, v in ip.items() if k != 'solid'}])}{img('local_fraction.png', 'local fraction')}")
    sec = rep.get("sections")
    if sec:
        rows = [{"estimate": "3D", **sec["volume"]}]
        rows += [{"estimate": f"{p} mean", **sec["mean"][p]} for p in sec["mean"]]
        rows += [{"estimate": f"{p} std", **sec["std"][p]} for p in sec["std"]]
        parts.append(f"<h2>2D sections vs 3D</h2>{table(rows)}{img('sections.png', 'sections')}")
    if tables.get("representative_volume"):
        rv = rep["representative_volume"]
        parts.append(f"<h2>Representative volume</h2><p>Smallest cube edge (voxels) with std ≤ {rv['tolerance']:g}: "
                     + ", ".join(f"{c} {fmt(v)}" for c, v in rv["rve_edge_voxels"].items()) + "</p>"
                     + table(tables["representative_volume"]) + img("representative_volume.png", "rve"))
    if rep.get("particles"):
        p = rep["particles"]
        parts.append(f"<h2>Particles ({p['count']}, from {p['source']})</h2>"
                     + table([{"quantity": k, **(v or {})} for k, v in p.items() if isinstance(v, dict) or v is None])
                     + img("particles.png", "particles"))
    if rep.get("intervals"):
        parts.append(interval_html(rep, tables, img))
    if rep.get("not_run"):
        parts.append("<h2>Steps not run (memory budget)</h2>"
                     + table([{"step": k, "why": v} for k, v in rep["not_run"].items()]))
    parts.append("<h2>Timings (s)</h2>" + table([rep.get("timings_s", {})]))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#eee}img{max-width:100%;display:block;margin:.5em 0}.note{color:#666;font-size:12px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>seglearn microstructure report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
