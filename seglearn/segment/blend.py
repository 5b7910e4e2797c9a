"""A fine-tuned network's forest blend applied at prediction: ``w * P_net + (1 - w) * P_forest``.

The forest is fitted and ``w`` chosen by fine-tuning (:mod:`seglearn.pretrain.blend`); the checkpoint
carries the packed forest as plain tensors (top-level ``blend`` entry) and ``meta["blend"]``.
:class:`Blend` recomputes the forest's probabilities block by block (with the features' z-halo)
wherever the network predicts (:meth:`seglearn.segment.api.Segmenter.iter_proba`).
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

import numpy as np

from seglearn.errors import InputError
from seglearn.features import ilastik as il
from seglearn.features import zevolution as zev
from seglearn.features.stack import FeatureStack, _anisotropy
from seglearn.segment import forest_pack


def z_halo(spec: Mapping, voxel_size_nm=None) -> int:
    """Slices of context the features of ``spec`` need on each side of a block (exact results)."""
    h = 0
    if spec.get("ilastik"):
        s = spec["ilastik"]
        h = il.halo(s.get("sigmas", il.SIGMAS), s.get("features", il.FEATURES), int(s.get("dims", 3)),
                    _anisotropy(voxel_size_nm))
    if spec.get("zevolution"):
        s = spec["zevolution"]
        h = max(h, zev.halo(s.get("offsets", zev.OFFSETS), s.get("windows", zev.WINDOWS), s.get("max_settle", 16),
                            s.get("settle_window", 2)))
    return int(h)


class Blend:
    """A packed forest, its feature spec and the network's weight ``w``.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        :func:`seglearn.segment.forest_pack.pack` output (checked here).
    meta : mapping
        ``weight``, ``features`` (spec), ``detectors``, ``n_features``, ``n_classes``, ``voxel_size_nm``,
        ``max_chunk_mb``.
    """

    def __init__(self, arrays: Mapping, meta: Mapping, *, threads: int = 0, where: str = "checkpoint"):
        self.meta = dict(meta)
        self.weight = float(meta["weight"])
        if not 0.0 <= self.weight < 1.0:
            raise InputError(f"{where}: meta blend.weight = {self.weight}: expected a number in [0, 1)")
        self.detectors = list(meta["detectors"])
        self.spec = dict(meta["features"])
        self.arrays = forest_pack.check(arrays, int(meta["n_features"]), int(meta["n_classes"]), where)
        self.halo = z_halo(self.spec, meta.get("voxel_size_nm"))
        self.threads = int(threads) or _cpus()

    def forest_proba(self, read: Callable[[int, int], np.ndarray], n: int, z0: int, z1: int) -> np.ndarray:
        """Forest probabilities ``(K, z1 - z0, Y, X)`` of slices ``[z0, z1)`` of an ``n``-slice volume.

        ``read(a, b)`` returns the raw detectors ``(C, b - a, Y, X)`` in :attr:`detectors` order; the
        block is read with :attr:`halo` slices on each side, so the result equals the same slices of
        the whole volume's.
        """
        a, b = max(0, z0 - self.halo), min(n, z1 + self.halo)
        stack = FeatureStack(np.asarray(read(a, b)), self.detectors, self.spec, self.meta.get("voxel_size_nm"))
        if stack.n_features != int(self.meta["n_features"]):
            raise InputError(f"blend forest: {stack.n_features} features, the forest was fitted on "
                             f"{self.meta['n_features']}")
        step = stack.chunk_slices(float(self.meta.get("max_chunk_mb", 1024.0)))
        k = int(self.meta["n_classes"])
        out = np.empty((k, z1 - z0, *stack.shape[1:]), np.float32)
        for s in range(z0, z1, step):
            e = min(s + step, z1)
            p = forest_pack.proba(self.arrays, stack.compute_samples(s - a, e - a), threads=self.threads)
            out[:, s - z0:e - z0] = p.T.reshape(k, e - s, *stack.shape[1:])
        return out

    def apply(self, p_net: np.ndarray, p_forest: np.ndarray) -> np.ndarray:
        """``w * p_net + (1 - w) * p_forest`` (same shapes, float32)."""
        return (self.weight * p_net + (1.0 - self.weight) * p_forest).astype(np.float32)

    def to_checkpoint(self) -> tuple[dict, dict]:
        """``(tensors, meta)`` for the checkpoint's top-level ``blend`` entry and ``meta["blend"]``."""
        import torch  # deferred: the forest itself is numpy

        return {k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()}, dict(self.meta)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def from_checkpoint(ck: Mapping, *, where: str = "checkpoint") -> Blend | None:
    """The :class:`Blend` a loaded checkpoint carries, or None (no forest stored: the network alone).

    Raises
    ------
    InputError
        ``meta["blend"]`` or the ``blend`` tensors are malformed or disagree.
    """
    meta = (ck.get("meta") or {}).get("blend")
    tensors = ck.get("blend")
    if meta is None and tensors is None:
        return None
    w = meta.get("weight") if isinstance(meta, dict) else None
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
        raise InputError(f"{where}: checkpoint meta blend.weight = {str(w)[:40]}: expected a number in [0, 1]")
    if w == 1.0:
        return None
    if not isinstance(tensors, dict) or not all(hasattr(v, "numpy") for v in tensors.values()):
        raise InputError(f"{where}: meta blend.weight = {w} but the checkpoint holds no blend forest tensors")
    try:
        return Blend({k: v.numpy() for k, v in tensors.items()}, meta, where=where)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: checkpoint meta blend is malformed ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:80] if str(exc) else ''})") from exc


def context_from_checkpoint(ck: Mapping, *, where: str = "checkpoint") -> Blend | None:
    """The auto-context forest of a loaded checkpoint (``meta["autocontext"]``, its tensors the top-level
    ``blend`` entry; :mod:`seglearn.pretrain.autocontext`), or None: its probabilities are extra network inputs.

    Raises
    ------
    InputError
        ``meta["autocontext"]`` without forest tensors, or malformed.
    """
    meta = (ck.get("meta") or {}).get("autocontext")
    if meta is None:
        return None
    tensors = ck.get("blend")
    if not isinstance(meta, dict) or not isinstance(tensors, dict) or not all(hasattr(v, "numpy")
                                                                             for v in tensors.values()):
        raise InputError(f"{where}: meta autocontext is set but the checkpoint holds no forest tensors")
    try:
        return Blend({k: v.numpy() for k, v in tensors.items()}, {**meta, "weight": 0.0}, where=where)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{where}: checkpoint meta autocontext is malformed ({type(exc).__name__})") from exc
