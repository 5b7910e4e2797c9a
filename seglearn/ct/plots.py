"""Figures of the CT user study, after seed 003 Figs. 1/2, 4, 5 and 8."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from seglearn.io import atomic_path

COMPARE = ("S2", "cWS", "MLX10", "MLX25")


def _cov(m: str) -> float:
    return float(re.sub(r"\D", "", m) or 0)


def _bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def _save(fig, path: Path, overwrite: bool) -> str:
    import matplotlib.pyplot as plt

    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _fig4(plt, summary: dict, cases: list, out: Path, overwrite: bool) -> list[str]:
    """Fig. 4: ML coverage sweep (std and image subtraction) per dataset/filter."""
    covs = sorted({m for d, f in cases for m in summary[d][f] if m.startswith("MLX")}, key=_cov)
    if not covs:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    series_s = {f"{d} {f}": [summary[d][f].get(m, {}).get("std", np.nan) for m in covs] for d, f in cases}
    series_p = {f"{d} {f}": [summary[d][f].get(m, {}).get("pct_differ", np.nan) for m in covs] for d, f in cases}
    _bars(axes[0], covs, series_s, "std of AM volume fraction")
    _bars(axes[1], covs, series_p, "mean % voxels differing (pairs)")
    axes[0].set_title("a) ML coverage sweep: user std")
    axes[1].set_title("b) image subtraction")
    return [_save(fig, out / "fig4_ml_coverage.png", overwrite)]


def _fig5(plt, summary: dict, cases: list, methods: list, out: Path, overwrite: bool) -> str:
    """Fig. 5: S2 / cWS vs MLX10 / MLX25, every dataset and filter."""
    groups = [f"{d}\n{f}" for d, f in cases]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    _bars(axes[0], groups, {m: [summary[d][f].get(m, {}).get("std", np.nan) for d, f in cases] for m in methods},
          "std of AM volume fraction")
    _bars(axes[1], groups, {m: [summary[d][f].get(m, {}).get("pct_differ", np.nan) for d, f in cases] for m in methods},
          "mean % voxels differing (pairs)")
    axes[0].set_title("a) user variation")
    axes[1].set_title("b) image subtraction")
    return _save(fig, out / "fig5_ml_vs_unsupervised.png", overwrite)


def _fig8(plt, summary: dict, cases: list, methods: list, real: dict | None, out: Path, overwrite: bool) -> str:
    """Fig. 8: raw data of each dataset, with distance to the true fraction (and real CT IoU)."""
    raw = [(d, "raw") for d in summary if "raw" in summary[d]] or cases
    n_pan = 4 if real and real.get("methods") else 3
    fig, axes = plt.subplots(1, n_pan, figsize=(4.6 * n_pan, 3.8))
    fig.subplots_adjust(wspace=0.35)
    for ax, key, lab in zip(axes, ("std", "pct_differ", "distance_to_true"),
                            ("std of AM volume fraction", "mean % voxels differing", "|mean - true| AM fraction")):
        _bars(ax, [d for d, _ in raw], {m: [summary[d][f].get(m, {}).get(key, np.nan) for d, f in raw] for m in methods},
              lab)
    axes[0].set_title("a) std (raw data)")
    axes[1].set_title("b) image subtraction")
    axes[2].set_title("c) distance to truth")
    if n_pan == 4:
        rm = [m for m in ("S2", "cWS", "MLX10", "MLX25") if m in real["methods"]]
        vals = [real["methods"][m]["iou_users"] for m in rm]
        axes[3].boxplot(vals)
        axes[3].set_xticks(range(1, len(rm) + 1))
        axes[3].set_xticklabels(rm)
        axes[3].set_ylabel("binary IoU vs mask")
        axes[3].set_title("d) real CT slice (users)")
    return _save(fig, out / "fig8_datasets.png", overwrite)


def _slices(plt, previews: dict, out: Path, overwrite: bool) -> list[str]:
    """Figs. 1/2: central slices of the first dataset, per user, and two users' difference."""
    key = next(iter(previews), None)
    if key is None:
        return []
    pv = previews[key]
    show = [m for m in ("S2", "cWS", "MLX25") if m in pv] or [m for m in pv if m.startswith("MLX")][:1]
    n_u = len(pv[show[0]]) if show else 0
    cols = max(3, n_u + 1)
    fig, axes = plt.subplots(1 + len(show), cols, figsize=(2.6 * cols, 2.6 * (1 + len(show))))
    axes = np.atleast_2d(axes)
    for a in axes.ravel():
        a.axis("off")
    axes[0, 0].imshow(pv["image"], cmap="gray")
    axes[0, 0].set_title(f"{key[0]} {key[1]}", fontsize=8)
    axes[0, 1].imshow(pv["truth"], cmap="gray")
    axes[0, 1].set_title("truth (AM white)", fontsize=8)
    for r, m in enumerate(show, start=1):
        for c, s in enumerate(pv[m]):
            axes[r, c].imshow(s, cmap="gray")
            axes[r, c].set_title(f"{m} user {c + 1}", fontsize=8)
        if len(pv[m]) >= 2:
            axes[r, n_u].imshow(pv[m][0] != pv[m][1], cmap="magma")
            axes[r, n_u].set_title(f"{m} |user1 - user2|", fontsize=8)
    return [_save(fig, out / "slices.png", overwrite)]


def write_figures(summary: dict, previews: dict, out: Path, *, overwrite: bool = False, real: dict | None = None) -> list[str]:
    """Write ``fig4_ml_coverage.png``, ``fig5_ml_vs_unsupervised.png``, ``fig8_datasets.png`` and ``slices.png``.

    Parameters
    ----------
    summary : dict
        dataset -> filter -> method -> statistics (see :func:`seglearn.ct.study.run`).
    previews : dict
        (dataset, filter) -> {"image", "truth", method: [slice per user]}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    cases = [(d, f) for d, fs in summary.items() for f in fs]
    methods = [m for m in COMPARE if any(m in summary[d][f] for d, f in cases)]
    methods += sorted({m for d, f in cases for m in summary[d][f] if m.startswith("UNet")})
    files = _fig4(plt, summary, cases, out, overwrite)
    files.append(_fig5(plt, summary, cases, methods, out, overwrite))
    files.append(_fig8(plt, summary, cases, methods, real, out, overwrite))
    return files + _slices(plt, previews, out, overwrite)
