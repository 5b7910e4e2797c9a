"""An endless stream of densely labelled synthetic patches, drawn on the fly.

Each worker keeps a small in-memory cache of randomised phantoms (``cache`` of them, a few MB
each) and replaces the oldest after every ``reuse`` patches, so nothing is ever written to disk.
Patches are 2.5D: ``(C, 1 + 2 halo, P, P)`` inputs with the ``(1, P, P)`` dense truth of the
centre slice (class ids ``1..3``).
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np

from seglearn.io.intensity import DETECTOR_RANGE  # the base models' 8-bit detector range (defined in the io layer)
from seglearn.pretrain.randomise import Randomiser
from seglearn.segment.channels import apply_normalisation, compute_channels

log = logging.getLogger("seglearn")

#: fixed normalisation of the base models: 8-bit detectors (DETECTOR_RANGE) to [0, 1], differences from [-128, 128]
DIFF_RANGE = [-128.0, 128.0]


def base_ranges(detectors: Sequence[str], derived: Sequence[str]) -> list[list[float]]:
    """Normalisation ranges of a base model's channels (fixed: the base model never refits them)."""
    return [list(DETECTOR_RANGE) for _ in detectors] + [list(DIFF_RANGE) for _ in derived]


def to_channels(images: np.ndarray, detectors: Sequence[str], derived: Sequence[str]) -> np.ndarray:
    """Raw ``(C, Z, Y, X)`` detector images -> normalised ``(C + D, Z, Y, X)`` float32 channels."""
    return apply_normalisation(compute_channels(images, list(detectors), list(derived)),
                               base_ranges(detectors, derived))


def match_contrast(images: np.ndarray, truth: np.ndarray, target: np.ndarray, rng: np.random.Generator, *,
                   jitter: float = 4.0) -> np.ndarray:
    """Map each synthetic detector image monotonically so its class medians land on ``target``.

    A piecewise-linear grey-value map per detector through ``(0, 0)``, the synthetic phantom's
    median grey value of each class (from its dense truth) -> the target median, and
    ``(255, 255)``: a global, monotone acquisition change, so the physics of the phantom (shine-
    through, glow, noise, stripes) is kept while its contrast becomes the user's.

    Parameters
    ----------
    images : (C, Z, Y, X) uint8
        Synthetic detector images.
    truth : (Z, Y, X) uint8
        Its classes ``1..K``.
    target : (C, K) float
        The user's median grey value (0..255) of class ``k`` on detector ``c``, estimated from the
        scribbles; NaN rows leave that detector unchanged.
    jitter : float
        Standard deviation (grey values) of a random offset added to each target, so the network
        does not learn one exact contrast.

    Returns
    -------
    (C, Z, Y, X) uint8
        Detectors whose class order differs between phantom and target are left as they are.
    """
    out = images.copy()
    for c in range(images.shape[0]):
        tgt = np.asarray(target[c], dtype=np.float64)
        if not np.all(np.isfinite(tgt)):
            continue
        src = np.array([np.median(images[c][truth == k + 1]) if (truth == k + 1).any() else np.nan
                        for k in range(len(tgt))], dtype=np.float64)
        ok = np.isfinite(src)
        if ok.sum() < 2:
            continue
        src, tgt = src[ok], np.clip(tgt[ok] + rng.normal(0.0, jitter, ok.sum()), 1.0, 254.0)
        order = np.argsort(src)
        src, tgt = src[order], tgt[order]
        if np.any(np.diff(src) <= 0) or np.any(np.diff(tgt) <= 0):
            continue
        lut = np.interp(np.arange(256), np.r_[0.0, src, 255.0], np.r_[0.0, tgt, 255.0])
        out[c] = np.round(lut).astype(np.uint8)[images[c]]
    return out


def augment_patch(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random in-plane rot90/flips of ``x (C, Z, P, P)`` and ``y (Z', P, P)`` together."""
    k = int(rng.integers(4))
    x, y = np.rot90(x, k, axes=(2, 3)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[..., ::-1], y[..., ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


class PhantomPatchStream:
    """Iterator of ``(x, y)`` synthetic patches (also usable as a torch ``IterableDataset``).

    Parameters
    ----------
    randomiser : Randomiser
    derived : sequence of "A-B"
        Derived channels appended to the detectors.
    patch : int
        In-plane size P (at most the phantom's Y and X).
    halo : int
        2.5D context slices on each side.
    cache, reuse : int
        Phantoms kept in memory; patches cut before the oldest phantom is replaced.
    seed : int
    match : (C, K) ndarray, optional
        Class medians (0..255) per detector of the data to adapt to; a share ``p_match`` of the
        phantoms gets its contrast mapped onto them (:func:`match_contrast`).
    """

    def __init__(self, randomiser: Randomiser, *, derived: Sequence[str] = (), patch: int = 96, halo: int = 2,
                 cache: int = 4, reuse: int = 24, seed: int = 0, match: np.ndarray | None = None,
                 p_match: float = 0.0):
        self.randomiser = randomiser
        self.derived = list(derived)
        self.patch, self.halo = int(patch), int(halo)
        self.cache, self.reuse, self.seed = int(cache), int(reuse), int(seed)
        self.match = None if match is None else np.asarray(match, dtype=np.float64)
        self.p_match = float(p_match) if match is not None else 0.0
        z, yy, xx = randomiser.shape
        if self.patch > min(yy, xx) or z < 2 * self.halo + 1:
            raise ValueError(f"patch {self.patch} / halo {self.halo} do not fit phantoms of shape {tuple(randomiser.shape)}")

    def _phantom(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        images, truth, _ = self.randomiser.draw(rng)
        if self.p_match > 0 and rng.random() < self.p_match:
            images = match_contrast(images, truth, self.match, rng)
        return to_channels(images, self.randomiser.detectors, self.derived), truth

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        seed = self.seed
        try:  # a different stream per data-loader worker
            import torch.utils.data as tud

            info = tud.get_worker_info()
            if info is not None:
                seed = seed * 1000 + info.id + 1
        except ImportError:  # pragma: no cover
            pass
        rng = np.random.default_rng(seed)
        pool: list[tuple[np.ndarray, np.ndarray]] = []
        n = 0
        while True:
            if len(pool) < self.cache or n % self.reuse == 0:
                if len(pool) >= self.cache:
                    pool.pop(0)
                pool.append(self._phantom(rng))
            n += 1
            x, t = pool[int(rng.integers(len(pool)))]
            z_n, y_n, x_n = t.shape
            h, p = self.halo, self.patch
            z = int(rng.integers(h, z_n - h))
            oy, ox = int(rng.integers(0, y_n - p + 1)), int(rng.integers(0, x_n - p + 1))
            xp = x[:, z - h:z + h + 1, oy:oy + p, ox:ox + p]
            yp = t[z:z + 1, oy:oy + p, ox:ox + p]
            xp, yp = augment_patch(xp, yp, rng)
            yield xp.astype(np.float32), yp.astype(np.int64)


def torch_stream(stream: PhantomPatchStream):
    """``stream`` wrapped as a ``torch.utils.data.IterableDataset``."""
    import torch.utils.data as tud

    class _DS(tud.IterableDataset):
        def __iter__(self):
            return iter(stream)

    return _DS()
