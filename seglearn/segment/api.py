"""Function-level access to a trained U-Net: load a checkpoint and predict arrays (training on arrays:
:func:`seglearn.segment.train.fit_segmenter`).

Examples
--------
>>> seg = load_segmenter("checkpoints/demo.ckpt")            # doctest: +SKIP
>>> labels = seg.predict(images, ["SE2", "InLens"])         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from seglearn.ckpt import load_checkpoint
from seglearn.data.layout import labels_from_probabilities
from seglearn.errors import InputError
from seglearn.io.intensity import apply_map
from seglearn.precision import resolve_bf16
from seglearn.segment.blend import context_from_checkpoint, from_checkpoint
from seglearn.segment.calibrate import temperature_of
from seglearn.segment.channels import apply_normalisation, compute_channels
from seglearn.segment.infer import KIND, inference_kwargs, resolve_device, torch_net_fn
from seglearn.segment.tiling import predict_banded
from seglearn.segment.tta import check_mode, tta_net_fn

log = logging.getLogger("seglearn")

class Segmenter:
    """A trained U-Net with everything needed to predict: channels, normalisation, tiling.

    Attributes
    ----------
    detectors : list of str
        Detectors the model needs, in its channel order.
    derived : list of str
        Derived channels (``"A-B"``) computed from them.
    classes : list of str
        Names of the class ids ``1..K``.
    mode : str
    voxel_size_nm : list of float or None
    meta : dict
        The checkpoint's metadata.
    """

    def __init__(self, net, meta: Mapping, *, device: str = "auto", bf16: bool | str | None = None, blend=None,
                 context=None):
        import torch

        from seglearn.segment.net import inference_copy  # torch: deferred

        self.meta = dict(meta)
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        # bf16 by default where the device runs it natively (AMX / AVX512-BF16 CPUs, CUDA): 4x faster
        # on this CPU, labels agree with fp32 on > 99.9 % of voxels (docs/bench_perf.md)
        self.bf16 = resolve_bf16(bf16, self.device)
        #: the network actually run: BN folded, channels-last, weights in bf16 when :attr:`bf16`
        self.fast_net = inference_copy(self.net, dtype=torch.bfloat16 if self.bf16 else torch.float32,
                                       channels_last=self.device.type in ("cpu", "cuda"), device=self.device)
        self.detectors = list(meta["detectors"])
        self.derived = list(meta.get("derived", []))
        self.classes = list(meta["classes"])
        self.mode = net.mode
        self.voxel_size_nm = meta.get("voxel_size_nm")
        #: the image channels' (auto-context's forest channels, last, are probabilities read as they are)
        self.ranges = [list(r) for r in meta["normalisation"]["ranges"]]
        if context is not None:
            self.ranges = self.ranges[:len(self.ranges) - int(context.meta["n_classes"])]
        #: in-plane Gaussian sigma per detector applied before the network (set by noise-matched fine-tuning)
        self.smooth = meta["normalisation"].get("smooth")
        #: per-detector ``gain`` / ``offset`` putting this volume's raw values on the model's scale
        #: (:func:`seglearn.io.intensity.fit_to_model`); None = read as they are
        self.input_map = meta["normalisation"].get("input_map")
        #: a forest whose probabilities are blended with the network's (:class:`seglearn.segment.blend.Blend`), or None
        self.blend = blend
        #: auto-context: a forest whose probabilities are extra input channels (:mod:`seglearn.pretrain.autocontext`), or None
        self.context = context
        #: softmax temperature fitted on held-out labels (``meta["calibration"]``); 1.0 for older checkpoints
        self.temperature = temperature_of(self.meta)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def tta_mode(self, tta: str | None = None) -> str:
        """The test-time augmentation to use: ``tta``, else the checkpoint's ``inference.tta``, else none."""
        return check_mode(tta if tta is not None else self.meta.get("inference", {}).get("tta"))

    def channel_order(self, detectors: Sequence[str], where: str = "input") -> list[int]:
        """Indices into ``detectors`` of the detectors this model needs, in its order.

        Raises
        ------
        InputError
            When a needed detector is missing.
        """
        detectors = list(detectors)
        missing = [d for d in self.detectors if d not in detectors]
        if missing:
            raise InputError(f"{where}: the checkpoint needs detectors {self.detectors}, got {detectors} "
                             f"(missing {missing})")
        return [detectors.index(d) for d in self.detectors]

    def prepare(self, raw: np.ndarray, *, with_context: bool = True) -> np.ndarray:
        """Raw detector images ``(C, z, Y, X)`` in :attr:`detectors` order -> normalised channels (with
        :attr:`context` and ``with_context``, the forest's probabilities of ``raw`` seen as a whole volume
        appended: right only when ``raw`` is the whole volume, see :meth:`context_proba`)."""
        raw = apply_map(raw, self.input_map)
        x = apply_normalisation(compute_channels(raw, self.detectors, self.derived, self.smooth), self.ranges)
        if self.context is None or not with_context:
            return x
        return np.concatenate([x, self.context.forest_proba(lambda a, b: raw[:, a:b], raw.shape[1], 0, raw.shape[1])])

    def context_proba(self, read_raw: Callable[[int, int], np.ndarray], n: int, a: int, b: int) -> np.ndarray | None:
        """Auto-context's forest channels ``(K, b - a, Y, X)`` of slices ``[a, b)`` of an ``n``-slice volume,
        computed with the features' z-halo read through ``read_raw`` (as :meth:`iter_proba` does); None
        without :attr:`context`."""
        if self.context is None:
            return None
        return self.context.forest_proba(lambda a0, b0: apply_map(read_raw(a0, b0), self.input_map), n, a, b)

    def _inputs(self, read_raw: Callable[[int, int], np.ndarray], n: int, a: int, b: int, memo: dict,
                rows: tuple[int, int] | None = None) -> np.ndarray:
        """The network's input of slices ``[a, b)`` of an ``n``-slice volume (rows ``rows`` only); with
        :attr:`context` its forest channels are computed with the features' z-halo (kept in ``memo``)."""
        def read(a0: int, b0: int) -> np.ndarray:
            r = apply_map(read_raw(a0, b0), self.input_map)
            return r if rows is None else r[..., rows[0]:rows[1], :]

        x = apply_normalisation(compute_channels(read(a, b), self.detectors, self.derived, self.smooth), self.ranges)
        if self.context is None:
            return x
        p = self.context.forest_proba(read, n, a, b)
        if rows is None:
            memo.clear()
            memo[(a, b)] = p
        return np.concatenate([x, p])

    def iter_proba(self, read_raw: Callable[[int, int], np.ndarray], shape: Sequence[int], *,
                   block_slices: int | None = None, tile=None, overlap=None, border=None, batch_size=None,
                   progress: bool = False, blocks: Sequence[int] | None = None,
                   tta: str | None = None, band_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Probabilities block by block of slices, reading the input on demand.

        Parameters
        ----------
        read_raw : callable
            ``read_raw(z0, z1)`` -> raw ``(C, z1 - z0, Y, X)`` in :attr:`detectors` order.
        shape : (Z, Y, X)
        block_slices : int, optional
            Slices per block (default: the whole volume at once).
        blocks : sequence of int, optional
            Indices of the blocks to predict (block ``i`` is slices ``i * block_slices`` onwards);
            default all. Distributed prediction gives each process its share.
        tta : {"none", "flips", "dihedral"}, optional
            Test-time augmentation (:mod:`seglearn.segment.tta`; 4 or 8 passes per tile); default the
            checkpoint's ``inference.tta``, else none.
        band_rows : int, optional
            Predict each block in bands of this many rows (plus a margin of context each side),
            for slices too large to hold whole (:func:`seglearn.segment.memory.plan_blocks`).

        Yields
        ------
        z0 : int
        probs : (K, zb, Y, X) float32 ndarray
        """
        n = int(shape[0])
        kw = inference_kwargs(self.meta, self.net, tile=tile, overlap=overlap, border=border, batch_size=batch_size)
        context = 0
        if self.mode == "3d" and block_slices and block_slices < n:
            context = max(kw["tile"][0] // 2, 1)
        fn = tta_net_fn(torch_net_fn(self.fast_net, self.device, temperature=self.temperature), self.tta_mode(tta))
        block = int(block_slices) if block_slices else n
        starts = list(range(0, n, block))
        if blocks is not None:
            starts = [starts[i] for i in sorted(set(int(b) for b in blocks))]
        many = block < n
        bar = None
        if progress and many:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(min(n, z0 + block) - z0 for z0 in starts), desc="predict", unit="slice")
        memo: dict = {}  # auto-context: the forest channels of the last block, reused by the blend
        reuse = self.context is not None and self.blend is not None and _same_forest(self.context, self.blend)
        try:
            for z0 in starts:
                z1 = min(n, z0 + block)
                probs = predict_banded(fn, lambda a, b: self._inputs(read_raw, n, a, b, memo), n, z0, z1,
                                       halo_z=self.net.halo, context_z=context, progress=progress and not many,
                                       band_rows=band_rows, height=int(shape[1]),
                                       prepare_band=lambda a, b, y0, y1: self._inputs(read_raw, n, a, b, memo, (y0, y1)),
                                       **kw)
                if self.blend is not None:  # the forest reads the detectors on the network's grey scale
                    hit = [(a, p) for (a, b), p in memo.items() if a <= z0 and z1 <= b]
                    if reuse and hit:
                        forest = hit[0][1][:, z0 - hit[0][0]:z1 - hit[0][0]]
                    else:
                        forest = self.blend.forest_proba(lambda a, b: apply_map(read_raw(a, b), self.input_map), n,
                                                         z0, z1)
                    probs = self.blend.apply(probs, forest)
                yield z0, probs
                if bar is not None:
                    bar.update(z1 - z0)
        finally:
            if bar is not None:
                bar.close()

    def predict_proba(self, images: np.ndarray, detectors: Sequence[str], **kwargs) -> np.ndarray:
        """Class probabilities of a volume held in memory.

        Parameters
        ----------
        images : (C, Z, Y, X) ndarray
            Raw detector images (any numeric dtype), one channel per name in ``detectors``.
        detectors : sequence of str
            Names of the channels of ``images``; must include :attr:`detectors`.
        **kwargs
            ``tile``, ``overlap``, ``border``, ``batch_size``, ``block_slices``, ``progress``, ``tta``.

        Returns
        -------
        (K, Z, Y, X) float32 ndarray
        """
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[0] != len(detectors):
            raise InputError(f"images of shape {images.shape} do not match detectors {list(detectors)}: "
                             f"expected (C={len(detectors)}, Z, Y, X)")
        idx = self.channel_order(detectors, "images")
        sel = images[idx]
        parts = [p for _, p in self.iter_proba(lambda a, b: sel[:, a:b], sel.shape[1:], **kwargs)]
        return np.concatenate(parts, axis=1)

    def predict(self, images: np.ndarray, detectors: Sequence[str], **kwargs) -> np.ndarray:
        """Labels ``(Z, Y, X)`` uint8 with ids ``1..K``, 0 on blank slices (:func:`labels_from`; see
        :meth:`predict_proba`)."""
        images = np.asarray(images)
        probs = self.predict_proba(images, detectors, **kwargs)
        raw = images[self.channel_order(detectors, "images")] if images.ndim == 4 else images[None]
        return labels_from(probs, raw)[0]


def labels_from(probs: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Labels ``(zb, Y, X)`` of probabilities ``(K, zb, Y, X)``: the argmax as ids ``1..K``, except on blank
    slices of the raw detectors ``raw`` ``(C, zb, Y, X)`` (every detector a single grey value: before the milling reached
    the sample, a dropped frame), which get 0 (not segmented) and uniform probabilities (``probs`` is changed
    in place). Returns the labels and the blank slices' indices in the block."""
    raw = np.asarray(raw)
    flat = raw.reshape(raw.shape[0], raw.shape[1], -1)
    blank = np.flatnonzero(np.all(flat.max(axis=2) == flat.min(axis=2), axis=0))
    if blank.size:
        probs[:, blank] = 1.0 / probs.shape[0]
    return labels_from_probabilities(probs), [int(z) for z in blank]


def segmenter_from_checkpoint(ckpt: Mapping, *, device: str = "auto", bf16: bool | None = None) -> Segmenter:
    """A :class:`Segmenter` from a loaded checkpoint dict (see :func:`seglearn.ckpt.load_checkpoint`)."""
    from seglearn.segment.net import build_net  # torch: deferred

    meta = ckpt["meta"]
    net = build_net(meta["net"])
    state = {k[4:] if k.startswith("net.") else k: v for k, v in ckpt["state_dict"].items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"checkpoint weights do not fit its network config (missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]})")
    return Segmenter(net, meta, device=device, bf16=bf16, blend=from_checkpoint(ckpt),
                     context=context_from_checkpoint(ckpt))


def _same_forest(a, b) -> bool:
    """Two :class:`~seglearn.segment.blend.Blend` forests with the same trees and features (the auto-context
    forest and the blend's are the same fit)."""
    return a.spec == b.spec and a.detectors == b.detectors and all(np.array_equal(a.arrays[k], b.arrays[k])
                                                                   for k in a.arrays)


def load_segmenter(ckpt_path: str | os.PathLike, *, device: str = "auto", bf16: bool | None = None) -> Segmenter:
    """Load a U-Net checkpoint (``best.ckpt``, ``last.ckpt`` or a shipped one) for prediction.

    Parameters
    ----------
    ckpt_path : path-like
    device : str
        ``auto`` (CUDA, MPS, else CPU), ``cpu``, ``cuda``, ...
    bf16 : bool or "auto", optional
        Predict in bfloat16; default (None / ``"auto"``): where the device runs bf16 natively
        (CUDA GPUs with bf16, CPUs with AMX or AVX512-BF16). ``False`` gives fp32.

    Returns
    -------
    Segmenter
    """
    return segmenter_from_checkpoint(load_checkpoint(ckpt_path, kind=KIND), device=device, bf16=bf16)
