"""Feature stacks over several inputs, computed chunk by chunk along z.

A feature spec is a plain dict (from a method config)::

    inputs: [SE2, InLens, SE2-InLens]     # detectors or differences "A-B"
    ilastik: {sigmas: [...], features: [gauss, ...], dims: 3} | null
    zevolution: {inputs: [SE2, InLens], presmooth: 1.0, tol: 6.0, ...} | null

Training needs the features of the labelled slices only (:func:`training_samples`); prediction
computes one z-chunk of features at a time and hands it to a callback (:func:`predict_volume`),
so memory stays bounded by ``max_chunk_mb``.
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.features import ilastik as il
from seglearn.features import zevolution as zev

log = logging.getLogger("seglearn")


def input_volume(channels: np.ndarray, detectors: Sequence[str], name: str) -> np.ndarray:
    """The ``(Z, Y, X)`` float32 volume of one input: a detector or a difference ``"A-B"``."""
    detectors = list(detectors)
    if name in detectors:
        return np.asarray(channels[detectors.index(name)], dtype=np.float32)
    if "-" in name:
        a, b = name.split("-", 1)
        if a in detectors and b in detectors:
            return (np.asarray(channels[detectors.index(a)], dtype=np.float32)
                    - np.asarray(channels[detectors.index(b)], dtype=np.float32))
    raise InputError(f"feature input {name!r}: not a detector of {detectors} nor a difference 'A-B' of two")


def _available(spec_inputs: Sequence[str], detectors: Sequence[str]) -> list[str]:
    """Inputs whose detectors exist (a one-detector dataset drops the difference and the other detector)."""
    out = []
    for name in spec_inputs:
        parts = name.split("-", 1) if name not in detectors else [name]
        if all(p in detectors for p in parts):
            out.append(name)
    if not out:
        raise InputError(f"feature inputs {list(spec_inputs)}: none available with detectors {list(detectors)}")
    return out


def _anisotropy(voxel_size_nm) -> float:
    if voxel_size_nm is None:
        return 1.0
    vz, vy = float(voxel_size_nm[0]), float(voxel_size_nm[1])
    return vy / vz if vz > 0 else 1.0


class FeatureStack:
    """The features a spec asks for on given channels, slice range by slice range.

    Parameters
    ----------
    channels : (C, Z, Y, X) ndarray
    detectors : list of str
    spec : mapping
        See the module docstring.
    voxel_size_nm : (z, y, x), optional
        Sets the z-sigma of 3D features (``sigma * y / z``).
    """

    def __init__(self, channels: np.ndarray, detectors: Sequence[str], spec: Mapping, voxel_size_nm=None):
        spec = dict(spec or {})
        unknown = set(spec) - {"inputs", "ilastik", "zevolution"}
        if unknown:
            raise InputError(f"feature spec: unknown key(s) {sorted(unknown)}; known: inputs, ilastik, zevolution")
        self.shape = tuple(channels.shape[1:])
        self.ilastik = dict(spec.get("ilastik") or {}) or None
        self.zevo = dict(spec.get("zevolution") or {}) or None
        if self.ilastik is None and self.zevo is None:
            raise InputError("feature spec: needs 'ilastik' and/or 'zevolution'")
        self.anisotropy = _anisotropy(voxel_size_nm)
        inputs = list(spec.get("inputs") or detectors)
        self.inputs = _available(inputs, detectors)
        z_inputs = list((self.zevo or {}).pop("inputs", None) or self.inputs) if self.zevo is not None else []
        self.z_inputs = _available(z_inputs, detectors) if self.zevo is not None else []
        names = set(self.inputs) | set(self.z_inputs)
        self.volumes = {n: input_volume(channels, detectors, n) for n in names}
        if self.ilastik is not None:
            self.il_kw = {"sigmas": tuple(float(s) for s in self.ilastik.get("sigmas", il.SIGMAS)),
                          "features": tuple(self.ilastik.get("features", il.FEATURES)),
                          "dims": int(self.ilastik.get("dims", 3))}
            il._check(self.il_kw["features"], self.il_kw["dims"])
        if self.zevo is not None:
            known = {"presmooth", "offsets", "windows", "tol", "settle_window", "max_settle", "context"}
            bad = set(self.zevo) - known
            if bad:
                raise InputError(f"feature spec zevolution: unknown key(s) {sorted(bad)}; known: {sorted(known)}")
            self.z_kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in self.zevo.items()}

    @property
    def names(self) -> list[str]:
        out: list[str] = []
        if self.ilastik is not None:
            for n in self.inputs:
                out += il.feature_names(f"{n}:", self.il_kw["sigmas"], self.il_kw["features"], self.il_kw["dims"])
        if self.zevo is not None:
            kw = {k: self.z_kw[k] for k in ("offsets", "windows", "context") if k in self.z_kw}
            for n in self.z_inputs:
                out += zev.feature_names(f"{n}:", **kw)
        return out

    @property
    def n_features(self) -> int:
        return len(self.names)

    def _parts(self, z0: int, z1: int):
        if self.ilastik is not None:
            for n in self.inputs:
                yield il.ilastik_features(self.volumes[n], z0, z1, anisotropy=self.anisotropy, **self.il_kw)
        if self.zevo is not None:
            for n in self.z_inputs:
                yield zev.zevolution_features(self.volumes[n], z0, z1, **self.z_kw)

    def compute(self, z0: int, z1: int) -> np.ndarray:
        """Features of slices ``[z0, z1)``: ``(F, z1 - z0, Y, X)`` float32."""
        return np.concatenate(list(self._parts(z0, z1)), axis=0)

    def compute_samples(self, z0: int, z1: int) -> np.ndarray:
        """Features of slices ``[z0, z1)`` as samples ``(N, F)`` float32, C-ordered (no transposed copy)."""
        out = np.empty((z1 - z0,) + tuple(self.shape[1:]) + (self.n_features,), dtype=np.float32)
        i = 0
        for part in self._parts(z0, z1):
            out[..., i:i + part.shape[0]] = np.moveaxis(part, 0, -1)
            i += part.shape[0]
        return out.reshape(-1, self.n_features)

    def chunk_slices(self, max_chunk_mb: float = 1024.0) -> int:
        """Slices per chunk so that one chunk's features (and one input's temporaries) fit ``max_chunk_mb``."""
        per_slice = self.n_features * self.shape[1] * self.shape[2] * 4 * 1.5
        return int(max(1, min(self.shape[0], max_chunk_mb * 2**20 // max(per_slice, 1))))


def _runs(slices: Sequence[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for z in sorted(slices):
        if runs and runs[-1][1] == z:
            runs[-1] = (runs[-1][0], z + 1)
        else:
            runs.append((z, z + 1))
    return runs


def training_samples(stack: FeatureStack, labels: np.ndarray, *, max_chunk_mb: float = 1024.0,
                     max_samples: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, F)`` float32 and labels ``(N,)`` of the labelled voxels (labelled slices only)."""
    if labels.shape != stack.shape:
        raise InputError(f"training labels of shape {labels.shape}, expected the images' shape {stack.shape}")
    slices = np.nonzero(labels.reshape(labels.shape[0], -1).max(axis=1))[0].tolist()
    if not slices:
        raise InputError("training labels hold no labelled voxel (all 0)")
    step = stack.chunk_slices(max_chunk_mb)
    xs, ys = [], []
    for a, b in _runs(slices):
        for z0 in range(a, b, step):
            z1 = min(z0 + step, b)
            lab = labels[z0:z1]
            sel = lab > 0
            f = stack.compute(z0, z1)
            xs.append(f[:, sel].T.copy())
            ys.append(lab[sel])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if max_samples and len(y) > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), max_samples, replace=False))
        x, y = x[keep], y[keep]
    return x, y


def predict_volume(stack: FeatureStack, predict: Callable[[np.ndarray], np.ndarray], *,
                   max_chunk_mb: float = 1024.0, slices: Sequence[int] | None = None,
                   progress: bool = True) -> np.ndarray:
    """Labels ``(Z, Y, X)`` uint8 from ``predict((N, F) features) -> (N,) labels``, chunk by chunk.

    ``slices`` restricts the work to some slices (others stay 0).
    """
    z_n, y_n, x_n = stack.shape
    out = np.zeros(stack.shape, dtype=np.uint8)
    step = stack.chunk_slices(max_chunk_mb)
    runs = _runs(slices) if slices is not None else [(0, z_n)]
    chunks = [(z0, min(z0 + step, b)) for a, b in runs for z0 in range(a, b, step)]
    it = chunks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(chunks, desc="predict", unit="chunk", leave=False, disable=None)
    for z0, z1 in it:
        x = stack.compute_samples(z0, z1)
        out[z0:z1] = np.asarray(predict(x)).reshape(z1 - z0, y_n, x_n)
    return out
