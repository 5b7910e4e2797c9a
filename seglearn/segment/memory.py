"""How many slices (and rows) prediction holds at once, from a byte budget.

Prediction streams the volume a block of slices at a time; what a block costs grows with the
slice size, the detectors, the channels and the classes. :func:`plan_blocks` turns the byte
budget of ``predict.py`` (``memory_budget_gib``) into ``block_slices`` and, when even one slice
does not fit, into bands of rows predicted one after the other (with a margin of context each
side, so the seams see what a whole slice would). The cost model was measured with resident-set
peaks of :meth:`~seglearn.segment.api.Segmenter.iter_proba` on the shipped checkpoints (2026-12-04,
``benchmarks/predict_memory.py``): per voxel of a block about ``16 * channels + 24 * classes`` bytes
plus twice the raw input, per voxel of the 2.5D halo about ``8 * channels`` bytes, and a fixed part
for the network's activations on one batch of tiles.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from seglearn.segment.tiling import BAND_MARGIN

log = logging.getLogger("seglearn")

#: activations of one batch of tiles, gradients off (measured ~100-150 MiB for the shipped 2.5D nets)
ACTIVATION_BYTES = 192 * 2**20


@dataclass(frozen=True)
class BlockPlan:
    """``block_slices`` and ``band_rows`` (None: whole slices) that keep prediction within ``budget``."""

    block_slices: int
    band_rows: int | None
    bytes_per_slice: int  #: of a block slice (whole slices), or of one band with its margins and the slice's output
    fixed: int  #: in use before prediction + activations + the 2.5D halo of a block
    budget: int
    base: int

    def describe(self) -> dict:
        return {"block_slices": self.block_slices, "band_rows": self.band_rows,
                "budget_gib": round(self.budget / 2**30, 3), "base_gib": round(self.base / 2**30, 3),
                "estimated_peak_gib": round(self.estimate() / 2**30, 3)}

    def estimate(self) -> int:
        """Estimated peak resident bytes."""
        return int(self.fixed + self.block_slices * self.bytes_per_slice)


def voxel_bytes(*, n_raw: int, raw_itemsize: int, n_channels: int, n_classes: int) -> int:
    """Bytes held per voxel of a block while it is predicted (cost model above)."""
    return 16 * n_channels + 24 * n_classes + 2 * raw_itemsize * n_raw + 8


def current_rss() -> int:
    """This process's resident memory in bytes (Linux ``/proc``; 0 where unknown)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def plan_blocks(shape, *, n_raw: int, raw_itemsize: int, n_channels: int, n_classes: int, halo: int,
                budget_bytes: int, base_bytes: int | None = None, margin: int = BAND_MARGIN) -> BlockPlan:
    """The largest block of slices (or band of rows) whose prediction fits ``budget_bytes``.

    Parameters
    ----------
    shape : (Z, Y, X)
    n_raw, raw_itemsize : int
        Detectors read and bytes per raw voxel.
    n_channels, n_classes : int
        Network input channels (detectors + derived) and classes.
    halo : int
        2.5D context slices on each side (read and normalised with every block).
    budget_bytes : int
        Peak resident memory to stay under.
    base_bytes : int, optional
        Memory already in use (interpreter, torch, the model); default: this process's now.
    margin : int
        Rows of context above and below a band.

    Returns
    -------
    BlockPlan

    When not even a band of 64 rows fits (the budget is below what the process already holds), the
    smallest plan is returned with a warning: its :meth:`BlockPlan.estimate` then exceeds the budget.
    """
    z, y, x = (int(v) for v in shape)
    base = current_rss() if base_bytes is None else int(base_bytes)
    per_voxel = voxel_bytes(n_raw=n_raw, raw_itemsize=raw_itemsize, n_channels=n_channels, n_classes=n_classes)
    halo_voxel = 8 * n_channels + raw_itemsize * n_raw
    avail = int(budget_bytes) - base - ACTIVATION_BYTES
    plane = y * x
    halo_cost = 2 * halo * plane * halo_voxel
    per_slice = plane * per_voxel
    if avail >= per_slice + halo_cost:
        block = max(1, min(z, (avail - halo_cost) // per_slice))
        return BlockPlan(int(block), None, int(per_slice), base + ACTIVATION_BYTES + halo_cost, int(budget_bytes), base)
    # one slice does not fit: bands of rows of one slice at a time, each with its margins, stitched into
    # the slice's probabilities (float32) and labels
    out_slice = plane * (4 * n_classes + 9)
    per_row = x * (per_voxel + 2 * halo * halo_voxel)
    rows = (avail - out_slice) // max(per_row, 1) - 2 * margin
    if rows < 64:  # the budget cannot be kept: the smallest plan, said loudly (the estimate records it)
        need = base + ACTIVATION_BYTES + out_slice + (64 + 2 * margin) * per_row
        log.warning("memory_budget_gib=%.2f is too small for slices of %d x %d (at least %.2f GiB, of which %.2f GiB "
                    "is in use before prediction); predicting with the smallest blocks", budget_bytes / 2**30, y, x,
                    math.ceil(need / 2**30 * 100) / 100, base / 2**30)
        if per_slice + halo_cost <= 2 * (64 + 2 * margin) * per_row:
            return BlockPlan(1, None, int(per_slice), base + ACTIVATION_BYTES + halo_cost, int(budget_bytes), base)
        rows = 64
    rows = int(min(y, rows // 32 * 32))
    return BlockPlan(1, rows, int(out_slice + (rows + 2 * margin) * per_row), base + ACTIVATION_BYTES,
                     int(budget_bytes), base)
