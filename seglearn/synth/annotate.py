"""Annotations as users make them: sparse scribbles on a few slices, one dense test slice."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger("seglearn")


def choose_slices(z_n: int, test_slice: int, gap: int, n_train: int) -> tuple[list[int], int]:
    """Evenly spaced training slices at least ``gap + 1`` slices away from the test slice.

    The gap shrinks (to ``z_n // 4``, then less) when the stack is too short; returns the
    training slices and the gap used.
    """
    for g in (gap, max(z_n // 4, 1), max(z_n // 8, 1), 0):
        allowed = [z for z in range(z_n) if abs(z - test_slice) > g]
        if len(allowed) >= max(1, n_train):
            idx = np.linspace(0, len(allowed) - 1, max(1, n_train)).round().astype(int)
            return sorted({allowed[i] for i in idx}), g
    return [z for z in range(z_n) if z != test_slice][:n_train], 0


def _stroke(mask: np.ndarray, rng: np.random.Generator, length: int) -> list[tuple[int, int]]:
    """A smooth random walk that stays inside ``mask``."""
    ys, xs = np.nonzero(mask)
    i = rng.integers(len(ys))
    y, x = float(ys[i]), float(xs[i])
    ang = rng.uniform(0, 2 * np.pi)
    pts = []
    for _ in range(length):
        iy, ix = int(round(y)), int(round(x))
        if not (0 <= iy < mask.shape[0] and 0 <= ix < mask.shape[1]) or not mask[iy, ix]:
            break
        pts.append((iy, ix))
        ang += rng.normal(0, 0.35)
        y += np.sin(ang)
        x += np.cos(ang)
    return pts


def scribble_slice(truth2d: np.ndarray, n_classes: int, coverage: float, erosion: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Sparse strokes inside each class region of one slice, as a user paints them.

    Strokes sit inside regions (an eroded mask), so boundaries stay unlabelled, like real
    scribbles. Each class gets an equal share of ``coverage`` when it has room.

    Returns
    -------
    (Y, X) uint8
        0 unlabelled, 1..K strokes.
    """
    out = np.zeros(truth2d.shape, dtype=np.uint8)
    quota = coverage * truth2d.size / n_classes
    for k in range(1, n_classes + 1):
        region = truth2d == k
        mask = ndi.binary_erosion(region, iterations=erosion) if erosion > 0 else region
        if mask.sum() < 10:
            mask = ndi.binary_erosion(region, iterations=1) if region.sum() > 20 else region
        if not mask.any():
            continue
        done, tries = 0, 0
        while done < quota and tries < 400:
            tries += 1
            pts = _stroke(mask, rng, int(rng.integers(15, 60)))
            if len(pts) < 3:
                continue
            for y, x in pts:
                ys = slice(max(y - 0, 0), y + 1)
                xs = slice(max(x - 0, 0), x + 2)
                sel = mask[ys, xs] & (out[ys, xs] == 0)
                out[ys, xs][sel] = k
                done += int(sel.sum())
    return out


def make_annotations(truth: np.ndarray, n_classes: int, *, test_slice: int, gap: int, n_train: int,
                     coverage: float, erosion: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Training scribbles and a dense test slice from a dense truth ``(Z, Y, X)``.

    Returns
    -------
    train : (Z, Y, X) uint8
    test : (Z, Y, X) uint8
        The truth on ``test_slice``, 0 elsewhere.
    info : dict
        ``train_slices``, ``test_slice``, ``test_gap``, ``coverage`` (measured).
    """
    z_n = truth.shape[0]
    slices, g = choose_slices(z_n, test_slice, gap, n_train)
    if g < gap:
        log.info("stack of %d slices: training slices kept %d (not %d) slices from the test slice", z_n, g, gap)
    train = np.zeros(truth.shape, dtype=np.uint8)
    for z in slices:
        train[z] = scribble_slice(truth[z], n_classes, coverage, erosion, rng)
    test = np.zeros(truth.shape, dtype=np.uint8)
    test[test_slice] = truth[test_slice]
    measured = float((train[slices] > 0).mean()) if slices else 0.0
    return train, test, {"train_slices": [int(s) for s in slices], "test_slice": int(test_slice),
                         "test_gap": int(g), "coverage": measured}
