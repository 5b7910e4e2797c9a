"""Colour PNG previews of a slice: grey image, label overlay and a legend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from seglearn.io.atomic import atomic_path

_PALETTE = np.array([
    [0, 0, 0], [31, 119, 180], [44, 160, 44], [255, 187, 0], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [23, 190, 207],
], dtype=np.uint8)


def label_colours(n_classes: int) -> np.ndarray:
    """RGB colours ``(K + 1, 3)`` uint8 for ids ``0..K`` (0 black = unlabelled)."""
    reps = int(np.ceil((n_classes + 1) / len(_PALETTE)))
    return np.tile(_PALETTE, (reps, 1))[: n_classes + 1]


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0, 1)
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay(image: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float = 0.45) -> np.ndarray:
    """Blend ``labels`` (Y, X) over the grey ``image`` (Y, X); returns (Y, X, 3) uint8."""
    grey = _grey(image)[..., None] * 255
    colours = label_colours(n_classes).astype(np.float32)[np.clip(labels, 0, n_classes)]
    mask = (labels > 0)[..., None]
    out = np.where(mask, (1 - alpha) * grey + alpha * colours, grey)
    return out.astype(np.uint8)


def write_preview(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
                  class_names: Sequence[str], *, overwrite: bool = True, title: str | None = None,
                  dpi: int = 110) -> Path:
    """Save a row of panels (title, grey image (Y, X), labels (Y, X) or None) with a legend.

    Parameters
    ----------
    path : path-like
        Output PNG, written atomically.
    panels : sequence of (str, (Y, X) ndarray, (Y, X) int ndarray or None)
        Each panel shows the image, overlaid with its labels when given.
    class_names : sequence of str
        Names for ids ``1..K``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    k = len(class_names)
    n = len(panels)
    h, w = np.asarray(panels[0][1]).shape[:2]
    fig_w = min(4.0 * n, 24)
    fig, axes = plt.subplots(1, n, figsize=(fig_w, fig_w / n * h / w + 0.8), squeeze=False)
    for ax, (name, image, labels) in zip(axes[0], panels):
        if labels is None:
            ax.imshow(_grey(image), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(overlay(image, np.asarray(labels), k))
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    colours = label_colours(k)[1:] / 255.0
    handles = [Patch(color=colours[i], label=f"{i + 1} {class_names[i]}") for i in range(k)]
    fig.legend(handles=handles, loc="lower center", ncol=min(k, 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)
