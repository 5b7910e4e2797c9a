"""Faster ``predict`` of a fitted scikit-learn random forest (same trees, same labels).

The fitted trees are exported into compact contiguous arrays (one 16-byte record per node for
the whole forest: feature, float32 threshold, left, right; a leaf table of class fractions) and
traversed by a numba kernel: samples are processed in blocks that stay in cache while every tree
runs over them, 16 samples of a block walk a tree in lock-step with branch-free steps, and
pieces of whole blocks run in parallel threads (``n_jobs`` as in scikit-learn; the kernel
releases the GIL).

The result equals ``RandomForestClassifier.predict``: sklearn's ``predict`` is
``classes_[argmax(mean over trees of tree_.value[leaf])]`` with the leaf fractions accumulated
in float64 tree after tree; the kernel does the same, in tree order (sklearn with ``n_jobs > 1``
accumulates in thread-completion order, so with several jobs the two can differ only where two
classes tie up to float64 rounding). Thresholds are stored as the largest float32 not above
sklearn's float64 threshold, so ``x <= t`` decides every float32 sample exactly as sklearn does.
Chunks holding NaN go to ``clf.predict`` (sklearn routes NaN by ``missing_go_to_left``).

Without numba (or for a model the kernel does not cover) :func:`make_predictor` returns
``clf.predict``.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

ENGINES = ("auto", "sklearn", "compiled")

try:  # optional: without numba every engine falls back to sklearn
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by monkeypatching HAVE_NUMBA in the tests
    HAVE_NUMBA = False


NODE = np.dtype([("f", np.uint32), ("t", np.float32), ("l", np.uint32), ("r", np.uint32)])


class PackedForest(NamedTuple):
    """A fitted forest as flat arrays; node ids are global over the forest.

    A leaf is a node that loops onto itself (``f = 0``, ``t = +inf``, ``l = r = node``), so a
    traversal step is the same branch-free select everywhere and a sample that reached its leaf
    stays there.
    """

    nodes: np.ndarray  # (nodes,) NODE: feature, threshold (largest float32 <= sklearn's), left, right
    leaf_row: np.ndarray  # (nodes,) uint32: row of leaf_value (0 for inner nodes)
    roots: np.ndarray  # (trees,) uint32: root node of every tree
    min_depth: np.ndarray  # (trees,) int32: depth of the shallowest leaf (steps taken without checks)
    leaf_value: np.ndarray  # (leaves, classes) float64: tree_.value of every leaf (class fractions)
    classes: np.ndarray  # (classes,) clf.classes_
    n_features: int


def supported(clf) -> bool:
    """Whether :func:`pack_forest` can export ``clf`` (a fitted single-output forest classifier)."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return (isinstance(clf, (RandomForestClassifier, ExtraTreesClassifier)) and hasattr(clf, "estimators_")
            and getattr(clf, "n_outputs_", 0) == 1 and len(clf.estimators_) > 0)


def _float32_at_most(t: np.ndarray) -> np.ndarray:
    """Largest float32 ``<= t`` elementwise, so for float32 ``x``: ``x <= t  <=>  x <= result``."""
    t32 = t.astype(np.float32)
    up = t32.astype(np.float64) > t
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


def pack_forest(clf) -> PackedForest:
    """Export the trees of a fitted ``RandomForestClassifier`` into a :class:`PackedForest`."""
    if not supported(clf):
        raise InputError(f"cannot compile a {type(clf).__name__}: expected a fitted single-output "
                         "RandomForestClassifier or ExtraTreesClassifier")
    parts, rows, roots, mind, values = [], [], [], [], []
    base = leaf_base = 0
    for est in clf.estimators_:
        tr = est.tree_
        n = tr.node_count
        left = tr.children_left.astype(np.int64)
        leaf = left < 0
        own = np.arange(base, base + n)
        nd = np.empty(n, NODE)
        nd["f"] = np.where(leaf, 0, tr.feature)
        nd["t"] = np.where(leaf, np.float32(np.inf), _float32_at_most(np.where(leaf, 0.0, tr.threshold)))
        nd["l"] = np.where(leaf, own, left + base)
        nd["r"] = np.where(leaf, own, tr.children_right.astype(np.int64) + base)
        parts.append(nd)
        rows.append(np.where(leaf, np.cumsum(leaf) - 1 + leaf_base, 0))
        depth = tr.compute_node_depths() if hasattr(tr, "compute_node_depths") else None
        mind.append(0 if depth is None else int(depth[leaf].min()) - int(depth[0]))
        values.append(tr.value[leaf, 0, :])  # sklearn >= 1.4: class fractions, what predict_proba returns
        roots.append(base)
        base += n
        leaf_base += int(leaf.sum())
    if base >= 2**32:
        raise InputError(f"forest of {base} nodes is too large for the compiled engine (uint32 node ids)")
    leaf_value = np.ascontiguousarray(np.concatenate(values), dtype=np.float64)
    if leaf_value.shape[1] != len(clf.classes_):
        raise InputError(f"tree values have {leaf_value.shape[1]} classes, the forest {len(clf.classes_)}")
    return PackedForest(np.concatenate(parts), np.concatenate(rows).astype(np.uint32),
                        np.asarray(roots, np.uint32), np.asarray(mind, np.int32), leaf_value,
                        np.asarray(clf.classes_), int(clf.n_features_in_))


# Samples per block: one block's features (BLOCK x F float32) and sums stay in L1/L2 while every
# tree runs over them. Within a block LANES samples walk a tree together (independent chains of
# loads the CPU overlaps; a constant so that the lane loop unrolls into registers).
BLOCK = 1024
LANES = 16

if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _predict_index(x, nodes, leaf_row, roots, min_depth, leaf_value, out):  # pragma: no cover - compiled
        """Class index ``(N,)`` into ``out`` of the samples ``x`` ``(N, F)``; releases the GIL."""
        n = x.shape[0]
        nf = np.uint64(x.shape[1])
        n_trees = roots.shape[0]
        n_cls = leaf_value.shape[1]
        xf = x.ravel()
        n_blocks = (n + BLOCK - 1) // BLOCK
        for b in range(n_blocks):
            a0 = b * BLOCK
            a1 = min(a0 + BLOCK, n)
            acc = np.zeros((a1 - a0, n_cls), np.float64)
            cur = np.empty(LANES, np.uint32)
            for t in range(n_trees):
                root = roots[t]
                for s0 in range(a0, a1, LANES):
                    if s0 + LANES <= a1:  # LANES samples in lock-step, branch-free steps
                        for k in range(LANES):
                            cur[k] = root
                        for _ in range(min_depth[t]):
                            for k in range(LANES):
                                nd = nodes[cur[k]]
                                v = xf[np.uint64(s0 + k) * nf + np.uint64(nd.f)]
                                cur[k] = nd.r if v > nd.t else nd.l
                        moving = True
                        while moving:  # until all LANES sit on their (self-looping) leaves
                            moving = False
                            for k in range(LANES):
                                c = cur[k]
                                nd = nodes[c]
                                v = xf[np.uint64(s0 + k) * nf + np.uint64(nd.f)]
                                nxt = nd.r if v > nd.t else nd.l
                                cur[k] = nxt
                                moving |= nxt != c  # no short-circuit branch
                        kk = LANES
                    else:  # the block's last few samples, one at a time
                        kk = a1 - s0
                        for k in range(kk):
                            c = root
                            while True:
                                nd = nodes[c]
                                v = xf[np.uint64(s0 + k) * nf + np.uint64(nd.f)]
                                nxt = nd.r if v > nd.t else nd.l
                                if nxt == c:
                                    break
                                c = nxt
                            cur[k] = c
                    for k in range(kk):  # float64 sums in tree order, as sklearn's predict_proba
                        row = leaf_row[cur[k]]
                        for j in range(n_cls):
                            acc[s0 - a0 + k, j] += leaf_value[row, j]
            for i in range(a1 - a0):  # argmax of the mean (first maximum, as np.argmax)
                best = 0
                best_v = acc[i, 0] / n_trees
                for j in range(1, n_cls):
                    vj = acc[i, j] / n_trees
                    if vj > best_v:
                        best_v = vj
                        best = j
                out[a0 + i] = best


def _threads(n_jobs) -> int:
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs is None:
        return 1
    n_jobs = int(n_jobs)
    if n_jobs < 0:  # joblib's convention: -1 all, -2 all but one, ...
        n_jobs = avail + 1 + n_jobs
    return int(min(max(n_jobs, 1), avail))


def predict_packed(packed: PackedForest, x: np.ndarray, *, n_jobs=-1) -> np.ndarray:
    """Class labels ``(N,)`` of the samples ``x`` ``(N, F)`` (no NaN) with the compiled kernel."""
    if not HAVE_NUMBA:
        raise InputError("the compiled forest engine needs numba (pip install numba)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != packed.n_features:
        raise InputError(f"features of shape {x.shape}, expected (N, {packed.n_features})")
    idx = np.empty(len(x), np.int64)
    args = (packed.nodes, packed.leaf_row, packed.roots, packed.min_depth, packed.leaf_value)
    n_threads = min(_threads(n_jobs), -(-len(x) // BLOCK))
    if n_threads <= 1:
        _predict_index(x, *args, idx)
    else:  # the kernel releases the GIL: threads over contiguous pieces of whole blocks
        n_pieces = 4 * n_threads
        step = -(-len(x) // (n_pieces * BLOCK)) * BLOCK
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(lambda a: _predict_index(x[a:a + step], *args, idx[a:a + step]),
                          range(0, len(x), step)))
    return packed.classes.take(idx)


def check_engine(engine: str) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else a clear :class:`InputError`."""
    if engine not in ENGINES:
        raise InputError(f"forest engine {engine!r}, expected one of {', '.join(ENGINES)}")
    return engine


def resolve_engine(clf, engine: str = "auto") -> str:
    """``"compiled"`` or ``"sklearn"``: what ``engine`` means for ``clf`` here."""
    if check_engine(engine) == "sklearn":
        return "sklearn"
    ok = HAVE_NUMBA and supported(clf)
    if engine == "compiled" and not ok:
        why = "numba is not installed" if not HAVE_NUMBA else f"{type(clf).__name__} is not supported"
        log.warning("forest engine 'compiled' unavailable (%s); using sklearn's predict", why)
    return "compiled" if ok else "sklearn"


def make_predictor(clf, engine: str = "auto", n_jobs=-1):
    """A function ``(N, F) features -> (N,) labels`` equal to ``clf.predict``, compiled where possible."""
    if resolve_engine(clf, engine) == "sklearn":
        return clf.predict
    packed = pack_forest(clf)

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if np.isnan(x).any():  # sklearn sends NaN along missing_go_to_left; leave those to sklearn
            return clf.predict(x)
        return predict_packed(packed, x, n_jobs=n_jobs)

    return predict
