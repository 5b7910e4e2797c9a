"""Training data: normalised channels, patches centred near labelled voxels, validation labels."""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from seglearn.data import Dataset
from seglearn.data.layout import warn_missing_classes
from seglearn.errors import InputError
from seglearn.segment.augment import augment_patch, build_augment
from seglearn.segment.channels import apply_normalisation, compute_channels, fit_normalisation, resolve_derived

log = logging.getLogger("seglearn")


def _window(n: int, start: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``start..start+size`` clipped into ``[0, n)`` (edge replicate) and a mask of the inside ones."""
    idx = np.arange(start, start + size)
    return np.clip(idx, 0, n - 1), (idx >= 0) & (idx < n)


class PatchDataset(TorchDataset):
    """Random patches, most of them holding a labelled voxel.

    Parameters
    ----------
    x : (C, Z, Y, X) float32 ndarray
        Normalised channels.
    labels : (Z, Y, X) uint8 ndarray
        0 = unlabelled.
    patch : (pz, py, px) ints
        Output (label) patch size; the input has ``halo`` extra slices on each side in z.
    halo : int
    n_items : int
        Patches per epoch.
    p_labelled : float
        Share of patches centred on a random labelled voxel (the rest are uniform).
    augment : mapping or None
        Probabilities for :func:`~seglearn.segment.augment.build_augment`.
    seed : int
    """

    def __init__(self, x: np.ndarray, labels: np.ndarray, *, patch: Sequence[int], halo: int, n_items: int,
                 p_labelled: float = 0.9, augment: Mapping | None = None, seed: int = 0):
        self.x, self.labels = x, labels
        self.patch = tuple(int(p) for p in patch)
        self.halo, self.n_items, self.p_labelled, self.seed = int(halo), int(n_items), float(p_labelled), int(seed)
        self.coords = np.flatnonzero(labels)
        self.aug = build_augment(augment)
        self.epoch = 0

    def __len__(self) -> int:
        return self.n_items

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        shape = self.labels.shape
        if rng.random() < self.p_labelled and len(self.coords):
            centre = np.unravel_index(self.coords[rng.integers(len(self.coords))], shape)
            starts = [int(c) - int(rng.integers(p)) for c, p in zip(centre, self.patch)]
        else:
            starts = [int(rng.integers(max(n - p, 0) + 1)) for n, p in zip(shape, self.patch)]
        # keep the patch inside the volume where it fits
        starts = [min(max(s, 0), max(n - p, 0)) for s, n, p in zip(starts, shape, self.patch)]
        zi, _ = _window(shape[0], starts[0] - self.halo, self.patch[0] + 2 * self.halo)
        zo, zin = _window(shape[0], starts[0], self.patch[0])
        yi, yin = _window(shape[1], starts[1], self.patch[1])
        xi, xin = _window(shape[2], starts[2], self.patch[2])
        x = self.x[:, zi][:, :, yi][:, :, :, xi]
        y = self.labels[np.ix_(zo, yi, xi)].astype(np.int64) - 1
        y[~(zin[:, None, None] & yin[None, :, None] & xin[None, None, :])] = -1
        x, y = augment_patch(self.aug, x, y, seed=int(rng.integers(2**31)))
        return x, y

    def __getitem__(self, i: int):
        x, y = self.sample(i)
        return torch.from_numpy(x), torch.from_numpy(y)


class _One(TorchDataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return torch.zeros(1)


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sparse labels into train and validation by whole strokes (connected components).

    Each class keeps at least one stroke for training. Returns ``(train, val)``; ``val`` is all 0
    when there are too few strokes.
    """
    from skimage.measure import label as cc

    comps, n = cc(labels > 0, return_num=True, connectivity=labels.ndim)
    val = np.zeros_like(labels)
    if n < 2 or fraction <= 0:
        return labels, val
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(1, n + 1))
    cls_of = np.zeros(n + 1, dtype=np.int64)
    nz = comps > 0
    cls_of[comps[nz]] = labels[nz]
    remaining = np.bincount(cls_of[1:], minlength=int(labels.max()) + 1)
    n_val, target = 0, max(1, int(round(fraction * n)))
    chosen = np.zeros(n + 1, dtype=bool)
    for c in order:
        if n_val >= target:
            break
        k = cls_of[c]
        if remaining[k] > 1:
            chosen[c] = True
            remaining[k] -= 1
            n_val += 1
    mask = chosen[comps]
    val[mask] = labels[mask]
    train = labels.copy()
    train[mask] = 0
    return train, val


class SegDataModule(L.LightningDataModule):
    """Patches of a :class:`~seglearn.data.Dataset` for training, its test labels for validation.

    Parameters
    ----------
    dataset : Dataset
        Needs ``train`` labels; ``test`` labels (if any) are used for validation, otherwise a
        ``val_fraction`` share of the training strokes is held out.
    detectors : sequence of str or None
        Detectors used as input (default: all).
    derived : "auto", None or list of "A-B"
    percentiles : (low, high)
    patch, halo, batch_size, steps_per_epoch, p_labelled, augment, seed : see :class:`PatchDataset`
    """

    def __init__(self, dataset: Dataset, *, detectors: Sequence[str] | None = None, derived="auto",
                 percentiles: Sequence[float] = (0.1, 99.9), patch: Sequence[int] = (1, 128, 128), halo: int = 0,
                 batch_size: int = 8, steps_per_epoch: int = 100, p_labelled: float = 0.9,
                 augment: Mapping | None = None, val_fraction: float = 0.2, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.ds = dataset
        dets = list(detectors) if detectors else list(dataset.detectors)
        missing = [d for d in dets if d not in dataset.detectors]
        if missing:
            raise InputError(f"{dataset.root}: data.detectors names {missing}, the dataset has {dataset.detectors}")
        if dataset.train is None or not np.any(dataset.train):
            raise InputError(f"{dataset.root}: no training labels (labels/train.tif is missing or all 0)")
        self.detectors = dets
        self.derived = resolve_derived(dets, derived)
        self.percentiles = [float(p) for p in percentiles]
        self.patch, self.halo = [int(p) for p in patch], int(halo)
        self.batch_size, self.steps_per_epoch = int(batch_size), int(steps_per_epoch)
        self.p_labelled, self.augment, self.val_fraction = float(p_labelled), augment, float(val_fraction)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.x: np.ndarray | None = None

    @property
    def channel_names(self) -> list[str]:
        return self.detectors + self.derived

    def prepare_arrays(self) -> None:
        """Compute channels, normalisation and the train/validation labels (once)."""
        if self.x is not None:
            return
        ds = self.ds
        raw = ds.images[[ds.detectors.index(d) for d in self.detectors]]
        x = compute_channels(raw, self.detectors, self.derived)
        self.ranges = fit_normalisation(x, self.percentiles, seed=self.seed)
        self.x = apply_normalisation(x, self.ranges)
        if ds.test is not None and np.any(ds.test):
            self.train_labels, self.val_labels, self.val_source = ds.train, ds.test, "test"
        else:
            self.train_labels, self.val_labels = holdout_split(ds.train, self.val_fraction, self.seed)
            self.val_source = "holdout"
            if not np.any(self.val_labels):
                log.warning("too few labelled strokes to hold some out: validating on the training labels")
                self.val_labels, self.val_source = ds.train, "train"
        k = ds.n_classes
        warn_missing_classes(ds.train, ds.classes, f"{ds.root}: labels/train.tif", "the model cannot learn them")
        warn_missing_classes(self.val_labels, ds.classes, f"{ds.root}: validation labels ({self.val_source})",
                             "the validation awe does not see them")
        counts = np.bincount(self.train_labels.ravel(), minlength=k + 1)[1:k + 1].astype(np.float64)
        self.class_counts = counts
        zs = np.flatnonzero(np.any(self.val_labels, axis=(1, 2)))
        self.val_z = zs
        log.info("channels %s, %d labelled training voxels %s, validation on %s (%d voxels on %d slices)",
                 self.channel_names, int(counts.sum()), counts.astype(int).tolist(), self.val_source,
                 int(np.count_nonzero(self.val_labels)), len(zs))
        self.train_set = PatchDataset(self.x, self.train_labels, patch=self.patch, halo=self.halo,
                                      n_items=self.steps_per_epoch * self.batch_size, p_labelled=self.p_labelled,
                                      augment=self.augment, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_arrays()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          drop_last=True, persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_One(), batch_size=1)
