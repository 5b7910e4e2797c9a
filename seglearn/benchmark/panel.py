"""PNG panel: the test slice as each method labels it, beside the truth."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from seglearn.io.atomic import atomic_path
from seglearn.io.preview import label_colours, overlay


def write_panel(path: str | os.PathLike, image: np.ndarray, truth: np.ndarray,
                predictions: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str], *,
                ncols: int = 4, overwrite: bool = False, title: str | None = None) -> None:
    """Grid of the grey image, the truth and one overlay per method on one slice.

    Parameters
    ----------
    image : (Y, X) ndarray
    truth : (Y, X) uint8
    predictions : sequence of (title, (Y, X) uint8)
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    k = len(class_names)
    panels = [("image", image, None), ("truth", image, truth)] + [(n, image, p) for n, p in predictions]
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    h, w = image.shape
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows * h / w + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img, lab) in zip(axes.ravel(), panels):
        if lab is None:
            lo, hi = np.percentile(img, [0.5, 99.5])
            ax.imshow(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(overlay(img, np.asarray(lab), k, alpha=0.6))
        ax.set_title(name, fontsize=9)
    colours = label_colours(k)[1:] / 255.0
    fig.legend(handles=[Patch(color=colours[i], label=f"{i + 1} {class_names[i]}") for i in range(k)],
               loc="lower center", ncol=min(k, 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
