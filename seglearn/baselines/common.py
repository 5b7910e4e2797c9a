"""Helpers shared by the baseline methods: picking a detector, class order from labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.errors import InputError


def channel(channels: np.ndarray, detectors: Sequence[str], detector: str | None) -> np.ndarray:
    """The ``(Z, Y, X)`` stack of ``detector`` (the first detector when None)."""
    detectors = list(detectors)
    if channels.ndim != 4 or channels.shape[0] != len(detectors):
        raise InputError(f"channels of shape {channels.shape}: expected (C, Z, Y, X) with C = {len(detectors)} detectors")
    if detector is None:
        return channels[0]
    if detector not in detectors:
        raise InputError(f"detector {detector!r} not in the dataset's detectors {detectors}")
    return channels[detectors.index(detector)]


def need_labels(train_labels: np.ndarray | None, method: str) -> np.ndarray:
    if train_labels is None or not np.any(train_labels):
        raise InputError(f"{method}: needs training labels (labels/train.tif) or explicit parameters")
    return np.asarray(train_labels)


def range_classes(bins: np.ndarray, train_labels: np.ndarray | None, n_ranges: int,
                  default: Sequence[int]) -> list[int]:
    """Class of each grey-value range ``0..n_ranges-1``: the majority training label, else ``default``."""
    if train_labels is None or not np.any(train_labels):
        return [int(c) for c in default]
    sel = train_labels > 0
    k = int(train_labels.max())
    counts = np.zeros((n_ranges, k + 1), dtype=np.int64)
    np.add.at(counts, (bins[sel].astype(np.int64), train_labels[sel].astype(np.int64)), 1)
    # normalise per class so a rare class can still win its range
    frac = counts[:, 1:] / np.maximum(counts[:, 1:].sum(axis=0, keepdims=True), 1)
    out = [int(np.argmax(f)) + 1 if f.sum() > 0 else int(default[i]) for i, f in enumerate(frac)]
    return out
