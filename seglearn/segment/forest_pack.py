"""A fitted random forest as plain arrays (checkpoint tensors) and its class probabilities.

:func:`seglearn.pretrain.blend.pack` turns a fitted scikit-learn forest into a few int32 / float32
arrays that ``torch.load(weights_only=True)`` reads back (:data:`ARRAYS`); :func:`check`
validates arrays read from a file (every index in range and every child after its parent, so a
traversal always ends); :func:`proba` averages the leaves' class fractions over the trees, as
``RandomForestClassifier.predict_proba`` does (in float32 sums, numba where installed, numpy
otherwise).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np

from seglearn.errors import InputError

#: the arrays of a packed forest and their dtypes
ARRAYS = {"feature": np.int32, "threshold": np.float32, "left": np.int32, "right": np.int32,
          "leaf_row": np.int32, "roots": np.int32, "leaf_value": np.float32}

try:  # optional: without numba the numpy traversal below is used
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def check(arrays: Mapping[str, np.ndarray], n_features: int, n_classes: int, where: str = "checkpoint") -> dict:
    """The arrays of a packed forest as contiguous numpy arrays, after checking that they are one.

    Raises
    ------
    InputError
        A missing array, wrong dtype or shape, an index out of range, or a child not after its parent.
    """
    missing = sorted(set(ARRAYS) - set(arrays))
    if missing:
        raise InputError(f"{where}: blend forest lacks the arrays {missing}")
    a = {k: np.ascontiguousarray(np.asarray(arrays[k]), dtype=t) for k, t in ARRAYS.items()}
    n = len(a["feature"])
    if n == 0 or any(a[k].shape != (n,) for k in ("threshold", "left", "right", "leaf_row")):
        raise InputError(f"{where}: blend forest node arrays differ in length or are empty")
    node = np.arange(n)
    leaf = (a["left"] == node) & (a["right"] == node)
    n_leaves = len(a["leaf_value"])
    bounds = np.append(a["roots"], n)
    ok = (a["roots"].ndim == 1 and len(a["roots"]) > 0 and a["roots"][0] == 0 and bool(np.all(np.diff(bounds) > 0))
          and a["leaf_value"].shape == (n_leaves, n_classes) and bool(np.all(np.isfinite(a["leaf_value"]))))
    if ok:
        tree_end = bounds[np.searchsorted(a["roots"], node, side="right")]
        inner = ~leaf
        ok = (bool(np.all((a["feature"] >= 0) & (a["feature"] < n_features)))
              and bool(np.all((a["leaf_row"][leaf] >= 0) & (a["leaf_row"][leaf] < n_leaves)))
              and all(bool(np.all((c[inner] > node[inner]) & (c[inner] < tree_end[inner])))
                      for c in (a["left"], a["right"])))
    if not ok:
        raise InputError(f"{where}: blend forest arrays are inconsistent (indices out of range, or a child not "
                         f"after its parent in its tree)")
    return a


if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _proba_kernel(x, feature, threshold, left, right, leaf_row, roots, leaf_value, out):  # pragma: no cover
        """Mean leaf fractions over the trees ``(N, K)`` into ``out``; tree-major over blocks of samples."""
        n, n_trees, k_n = x.shape[0], roots.shape[0], leaf_value.shape[1]
        for a0 in range(0, n, 1024):
            a1 = min(a0 + 1024, n)
            acc = np.zeros((a1 - a0, k_n), np.float32)
            for t in range(n_trees):
                for i in range(a0, a1):
                    c = roots[t]
                    while True:
                        nxt = right[c] if x[i, feature[c]] > threshold[c] else left[c]
                        if nxt == c:
                            break
                        c = nxt
                    row = leaf_row[c]
                    for j in range(k_n):
                        acc[i - a0, j] += leaf_value[row, j]
            for i in range(a1 - a0):
                for j in range(k_n):
                    out[a0 + i, j] = acc[i, j] / n_trees


def _proba_numpy(x: np.ndarray, a: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.zeros((len(x), a["leaf_value"].shape[1]), np.float32)
    rows = np.arange(len(x))
    for root in a["roots"]:
        cur = np.full(len(x), root, np.int64)
        while True:
            nxt = np.where(x[rows, a["feature"][cur]] > a["threshold"][cur], a["right"][cur], a["left"][cur])
            if np.array_equal(nxt, cur):
                break
            cur = nxt
        out += a["leaf_value"][a["leaf_row"][cur]]
    return out / len(a["roots"])


def proba(arrays: Mapping[str, np.ndarray], x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Class probabilities ``(N, K)`` float32 of the samples ``x`` ``(N, F)`` (arrays checked by :func:`check`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not HAVE_NUMBA:  # pragma: no cover
        return _proba_numpy(x, arrays)
    out = np.empty((len(x), arrays["leaf_value"].shape[1]), np.float32)
    args = tuple(arrays[k] for k in ("feature", "threshold", "left", "right", "leaf_row", "roots", "leaf_value"))
    threads = max(1, min(int(threads), -(-len(x) // 1024)))
    if threads == 1:
        _proba_kernel(x, *args, out)
        return out
    step = -(-len(x) // (4 * threads * 1024)) * 1024  # the kernel releases the GIL
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda s: _proba_kernel(x[s:s + step], *args, out[s:s + step]), range(0, len(x), step)))
    return out


def nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the packed arrays (what the checkpoint grows by)."""
    return int(sum(np.asarray(v).nbytes for v in arrays.values()))
