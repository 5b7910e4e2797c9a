"""Self-training on the target's unlabelled voxels: choosing pseudo-labels (pure numpy, no model).

After a first fine-tuning round the network and the forest fitted on the same scribbles give class
probabilities on slices nobody labelled. Where the two agree with high confidence their label becomes a
pseudo-label for a second round (:func:`choose_pseudo_labels`):

- **agreement**: both arg-maxes name the same class;
- **confidence**: both give that class at least ``threshold``;
- **class balance**: no class keeps more than ``ratio`` times the candidates of the rarest class present
  (a per-class quota; the rest is dropped at random, voxels near agreed boundaries kept first);
- **boundaries**: a voxel within ``boundary_px`` (in-plane) of a class boundary that both models draw
  weighs ``boundary_weight`` times more (scribbles sit inside regions; boundaries are what they lack);
- **scribbles win**: a scribbled voxel (or one in ``exclude``, e.g. held-out validation labels) never
  gets a pseudo-label; 0 = no pseudo-label.

The second round trains on scribbles (weight 1) and pseudo-labels (weight ``weight``, times
``boundary_weight`` near agreed boundaries) together; :func:`encode` / :func:`decode` carry both in one
``uint16`` volume so that patches are cut and augmented like plain labels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from seglearn.errors import InputError

#: weight quantisation of :func:`encode` (a scribble's weight 1.0 is ``LEVELS``)
LEVELS = 255


def pseudo_slices(n_z: int, n: int, *, exclude: Sequence[int] = ()) -> list[int]:
    """``n`` slices spread evenly over ``0..n_z - 1``, none of ``exclude`` (fewer when not enough are left)."""
    free = np.array([z for z in range(int(n_z)) if z not in set(int(e) for e in exclude)], dtype=np.int64)
    if n <= 0 or free.size == 0:
        return []
    if n >= free.size:
        return [int(z) for z in free]
    pick = np.round(np.linspace(0, free.size - 1, int(n) + 2)[1:-1]).astype(np.int64)
    return sorted({int(free[i]) for i in pick})


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """In-plane class boundaries of ``labels (Z, Y, X)``: voxels with a 4-neighbour of another label."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, bool)
    for ax in (1, 2):
        d = np.diff(lab, axis=ax) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= d
        out[tuple(hi)] |= d
    return out


def near_agreed_boundary(lab_a: np.ndarray, lab_b: np.ndarray, radius: int) -> np.ndarray:
    """Voxels within ``radius`` px (in-plane) of a boundary that both label maps ``(Z, Y, X)`` draw."""
    both = boundary_mask(lab_a) & boundary_mask(lab_b) & (lab_a == lab_b)
    if radius <= 0 or not both.any():
        return both
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_dilation(both, structure=st, iterations=int(radius))


def choose_pseudo_labels(p_net: np.ndarray, p_forest: np.ndarray, scribbles: np.ndarray, *, threshold: float,
                         ratio: float, boundary_px: int, boundary_weight: float, weight: float,
                         exclude: np.ndarray | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pseudo-labels where the network and the forest agree with high confidence.

    Parameters
    ----------
    p_net, p_forest : (K, Z, Y, X) float
        Class probabilities of the two models (classes ``1..K`` in order) on the same slices.
    scribbles : (Z, Y, X) int
        The user's labels on those slices, ``1..K``; 0 = unlabelled. They are never overridden.
    threshold : float
        Both models must give the agreed class at least this probability.
    ratio : float
        Per-class quota: at most ``ratio`` times the candidates of the rarest class present.
    boundary_px : int
        In-plane distance to a boundary both models draw within which a voxel weighs more.
    boundary_weight : float
        Factor on the weight of those voxels.
    weight : float
        Weight of a pseudo-labelled voxel (a scribble weighs 1).
    exclude : (Z, Y, X) bool or int, optional
        Voxels that must stay unlabelled (non-zero), e.g. held-out validation labels.
    seed : int
        The random choice within a quota.

    Returns
    -------
    labels : (Z, Y, X) uint8
        ``1..K`` pseudo-labels, 0 elsewhere (scribbles and ``exclude`` included).
    weights : (Z, Y, X) float32
        0 where ``labels`` is 0.
    record : dict
        ``candidates`` and ``kept`` per class (voxel counts), ``near_boundary`` (kept voxels there),
        ``agree`` (share of voxels where the arg-maxes agree).
    """
    p_net, p_forest = np.asarray(p_net, np.float32), np.asarray(p_forest, np.float32)
    scribbles = np.asarray(scribbles)
    if p_net.shape != p_forest.shape or p_net.ndim != 4 or p_net.shape[1:] != scribbles.shape:
        raise InputError(f"choose_pseudo_labels: probabilities {p_net.shape} / {p_forest.shape} and scribbles "
                         f"{scribbles.shape} do not agree; expected (K, Z, Y, X) twice and (Z, Y, X)")
    if not 0.0 <= threshold <= 1.0 or ratio < 1.0 or weight < 0 or boundary_weight < 0:
        raise InputError(f"choose_pseudo_labels: threshold {threshold} (expected 0..1), ratio {ratio} (>= 1), "
                         f"weight {weight} and boundary_weight {boundary_weight} (>= 0)")
    k = p_net.shape[0]
    lab_n, lab_f = p_net.argmax(0), p_forest.argmax(0)
    agree = lab_n == lab_f
    conf = np.minimum(np.take_along_axis(p_net, lab_n[None], 0)[0], np.take_along_axis(p_forest, lab_n[None], 0)[0])
    cand = agree & (conf >= threshold) & (scribbles == 0)
    if exclude is not None:
        cand &= ~(np.asarray(exclude) != 0)
    near = near_agreed_boundary(lab_n, lab_f, int(boundary_px))
    counts = [int((cand & (lab_n == c)).sum()) for c in range(k)]
    present = [n for n in counts if n > 0]
    quota = int(np.ceil(ratio * min(present))) if present else 0
    rng = np.random.default_rng(seed)
    labels = np.zeros(scribbles.shape, np.uint8)
    kept = []
    for c in range(k):
        idx = np.flatnonzero(cand & (lab_n == c))
        if idx.size > quota:  # near-boundary voxels first, the rest at random
            at_edge = near.ravel()[idx]
            order = np.concatenate([rng.permutation(idx[at_edge]), rng.permutation(idx[~at_edge])])
            idx = order[:quota]
        labels.ravel()[idx] = c + 1
        kept.append(int(idx.size))
    weights = np.where(labels > 0, np.float32(weight), np.float32(0))
    weights[(labels > 0) & near] *= np.float32(boundary_weight)
    record = {"candidates": counts, "kept": kept, "near_boundary": int(((labels > 0) & near).sum()),
              "agree": round(float(agree.mean()), 4), "quota": quota}
    return labels, weights.astype(np.float32), record


def encode(scribbles: np.ndarray, pseudo: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scribbles (weight 1) and pseudo-labels with their weights in one ``(Z, Y, X)`` uint16 volume.

    ``code = label + 256 * round(weight / max_weight * LEVELS)`` with ``max_weight = max(1, weights.max())``
    (pass it to :func:`decode`); a scribble (weight 1) wins over a pseudo-label.
    """
    scribbles, pseudo = np.asarray(scribbles), np.asarray(pseudo)
    if scribbles.shape != pseudo.shape or pseudo.shape != np.shape(weights):
        raise InputError(f"encode: scribbles {scribbles.shape}, pseudo-labels {pseudo.shape} and weights "
                         f"{np.shape(weights)} differ")
    top = max(1.0, float(np.max(weights)) if np.size(weights) else 1.0)
    lab = np.where(scribbles > 0, scribbles, pseudo).astype(np.uint16)
    w = np.where(scribbles > 0, 1.0, np.asarray(weights, np.float64)) / top
    q = np.where(lab > 0, np.clip(np.round(w * LEVELS), 1, LEVELS), 0).astype(np.uint16)
    return (lab + (q << 8)).astype(np.uint16)


def decode(code: np.ndarray, max_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(labels uint8, weights float32)`` of an :func:`encode` d volume (``max_weight``: as encoded)."""
    code = np.asarray(code)
    top = max(1.0, float(max_weight))
    return (code & 0xFF).astype(np.uint8), ((code >> 8).astype(np.float32) / LEVELS * top).astype(np.float32)
