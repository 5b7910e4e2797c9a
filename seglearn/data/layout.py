"""Load, validate and write datasets in seglearn's folder layout.

::

    DATASET/
      dataset.yaml            name, detectors, classes, voxel_size_nm: [z, y, x]
      images/<detector>.tif   one (Z, Y, X) stack per detector, same shape, any numeric dtype
      labels/train.tif        (Z, Y, X) uint8, 0 = unlabelled, 1..K sparse hand labels
      labels/test.tif         (Z, Y, X) uint8, 0 = not scored, 1..K dense test slices (optional)
      labels/instances.tif    (Z, Y, X) uint32 particle ids, 0 = none (optional)
      labels/truth.tif        (Z, Y, X) uint8 dense ground truth (synthetic data only, optional)
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from seglearn.errors import InputError, OutputExistsError
from seglearn.io.intensity import check_dtype
from seglearn.io.tiff import read_stack
from seglearn.io.tiff_write import write_volume
from seglearn.io.voxel import check_voxel_size

log = logging.getLogger("seglearn")

DEFAULT_CLASSES = ("pore", "carbon_binder", "active_material")
LABEL_FILES = ("train", "test", "instances", "truth")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _find_image(images_dir: Path, detector: str) -> Path | None:
    for suffix in (".tif", ".tiff", ".png", ".ome.zarr", ".zarr"):
        p = images_dir / f"{detector}{suffix}"
        if p.exists():
            return p
    folder = images_dir / detector
    return folder if folder.is_dir() else None


@dataclass
class Dataset:
    """A dataset in memory: detector stacks, label volumes and metadata.

    Attributes
    ----------
    root : Path
    name : str
    detectors : list of str
        Channel order of :attr:`images`.
    classes : list of str
        Names of class ids ``1..K``.
    voxel_size_nm : (z, y, x) tuple of float
    images : (C, Z, Y, X) ndarray
        One channel per detector, stored dtype.
    train, test, truth : (Z, Y, X) uint8 ndarray or None
    instances : (Z, Y, X) uint32 ndarray or None
    """

    root: Path
    name: str
    detectors: list[str]
    classes: list[str]
    voxel_size_nm: tuple[float, float, float]
    images: np.ndarray
    train: np.ndarray | None = None
    test: np.ndarray | None = None
    instances: np.ndarray | None = None
    truth: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def channel(self, detector: str) -> np.ndarray:
        """The ``(Z, Y, X)`` stack of one detector."""
        if detector not in self.detectors:
            raise InputError(f"{self.root}: no detector {detector!r} (has {self.detectors})")
        return self.images[self.detectors.index(detector)]


def read_meta(root: str | os.PathLike) -> dict:
    """Read and validate ``dataset.yaml``; returns a dict with every key filled in."""
    import yaml

    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: dataset folder does not exist")
    if root.is_file():
        raise InputError(f"{root}: expected a dataset folder holding dataset.yaml, got a file")
    meta_path = root / "dataset.yaml"
    if not meta_path.exists():
        raise InputError(f"{meta_path}: missing; a dataset folder needs dataset.yaml (see README)")
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{meta_path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a mapping of keys, got {type(meta).__name__}")
    missing = [k for k in ("detectors", "classes") if k not in meta]
    if missing:
        raise InputError(f"{meta_path}: missing key(s) {missing}; expected name, detectors, classes, voxel_size_nm")
    detectors = meta["detectors"]
    if isinstance(detectors, str):
        detectors = [detectors]
    if not isinstance(detectors, list) or not detectors or not all(isinstance(d, str) and _NAME_RE.match(d) for d in detectors):
        raise InputError(f"{meta_path}: 'detectors' must be a non-empty list of file stems, got {meta['detectors']!r}")
    if len(set(detectors)) != len(detectors):
        raise InputError(f"{meta_path}: 'detectors' lists a name twice: {detectors}")
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        raise InputError(f"{meta_path}: 'classes' must be a list of at least 2 names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise InputError(f"{meta_path}: 'classes' names a class twice: {classes}")
    if len(classes) > 255:
        raise InputError(f"{meta_path}: at most 255 classes fit uint8 labels, got {len(classes)}")
    vs = meta.get("voxel_size_nm", [1.0, 1.0, 1.0])
    if isinstance(vs, (int, float)):
        vs = [vs] * 3
    if not isinstance(vs, list) or len(vs) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and 0 < v < float("inf") for v in vs):
        raise InputError(f"{meta_path}: 'voxel_size_nm' must be [z, y, x] positive finite numbers, got {vs!r}")
    vs = check_voxel_size(vs, f"{meta_path}: voxel_size_nm")
    return {"name": str(meta.get("name", root.name)), "detectors": list(detectors), "classes": list(classes),
            "voxel_size_nm": vs, **{k: v for k, v in meta.items()
                                                          if k not in ("name", "detectors", "classes", "voxel_size_nm")}}


def declared_voxel_size(root: str | os.PathLike) -> tuple[float, float, float] | None:
    """The voxel size ``dataset.yaml`` declares, or None where it has none (:func:`read_meta` then
    assumes 1 nm, which must not be written on outputs as if measured)."""
    import yaml

    meta = read_meta(root)
    declared = yaml.safe_load((Path(root) / "dataset.yaml").read_text()) or {}
    return meta["voxel_size_nm"] if "voxel_size_nm" in declared else None


def labels_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """Ids ``1..K`` of the most probable class of ``probs`` ``(K, ...)``, 0 (outside) where every class is
    equally probable: what prediction writes on blank slices, which it leaves unsegmented."""
    labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
    labels[probs.max(axis=0) == probs.min(axis=0)] = 0
    return labels


def check_label_values(vol: np.ndarray, path, n_max: int | None) -> None:
    """Refuse labels that are not integers in ``0..n_max`` (0 = unlabelled; ``n_max`` None: any >= 0).

    Parameters
    ----------
    vol : (Z, Y, X) ndarray
        The labels, or a block of them.
    path : path-like
        Named in the message.
    n_max : int or None
        The number of classes K.
    """
    if vol.dtype.kind == "f":
        if not np.all(np.isfinite(vol)) or np.any(vol != np.round(vol)):
            raise InputError(f"{path}: labels must be integers, got non-integer float values")
    elif vol.dtype.kind not in "uib":
        raise InputError(f"{path}: labels must be integers, got dtype {vol.dtype}")
    if vol.size and vol.min() < 0:
        raise InputError(f"{path}: labels must be >= 0, found {int(vol.min())}")
    vmax = int(vol.max()) if vol.size else 0
    if n_max is not None and vmax > n_max:
        raise InputError(f"{path}: label value {vmax} > number of classes {n_max}; expected 0 (unlabelled) or 1..{n_max}")


def check_label_stack(reader, path, n_max: int, chunk: int = 64) -> np.ndarray:
    """:func:`check_label_values` over an open stack (:func:`seglearn.io.open_stack`), block by block; returns
    the voxel count of each id ``0..n_max``."""
    counts = np.zeros(n_max + 1, np.int64)
    for _, block in reader.blocks(chunk):
        check_label_values(block, path, n_max)
        counts += np.bincount(np.asarray(block, np.int64).ravel(), minlength=n_max + 1)[:n_max + 1]
    return counts


def warn_missing_classes(labels_or_counts: np.ndarray, classes: Sequence[str], where: str, consequence: str,
                         *, counts: bool = False) -> list[str]:
    """Log one warning naming the classes without a single labelled voxel in ``labels_or_counts`` (ids
    ``1..K``; or, with ``counts``, the voxel count of each id ``0..K``) and ``consequence``; returns them."""
    k = len(classes)
    c = np.asarray(labels_or_counts) if counts else np.bincount(np.asarray(labels_or_counts).ravel(),
                                                                   minlength=k + 1)
    missing = [name for i, name in enumerate(classes) if i + 1 >= len(c) or c[i + 1] == 0]
    if missing:
        log.warning("%s: no voxel of %s (of %d classes); %s", where, ", ".join(missing), k, consequence)
    return missing


def _read_labels(path: Path, shape: tuple, n_max: int, *, kind: str) -> np.ndarray:
    vol, _ = read_stack(path)
    if vol.shape != shape:
        raise InputError(f"{path}: labels of shape {vol.shape}, expected the images' shape {shape}")
    check_label_values(vol, path, None if kind == "instances" else n_max)
    if kind == "instances":
        return vol.astype(np.uint32, copy=False)
    return vol.astype(np.uint8, copy=False)


def load_dataset(root: str | os.PathLike, *, labels: Sequence[str] = LABEL_FILES,
                 require: Sequence[str] = ()) -> Dataset:
    """Load and validate a dataset folder.

    Parameters
    ----------
    root : path-like
        The dataset folder.
    labels : sequence of str
        Which label files to read when present (``train``, ``test``, ``instances``, ``truth``).
    require : sequence of str
        Label files that must exist (e.g. ``("train",)`` for training).

    Returns
    -------
    Dataset

    Raises
    ------
    InputError
        Missing files, detectors of different shapes, label values > K, labels of another shape.
    """
    root = Path(root)
    meta = read_meta(root)
    images_dir = root / "images"
    stacks, shapes = [], {}
    voxel = meta["voxel_size_nm"]
    for det in meta["detectors"]:
        p = _find_image(images_dir, det)
        if p is None:
            found = sorted(q.name for q in images_dir.iterdir()) if images_dir.is_dir() else []
            raise InputError(f"{images_dir / (det + '.tif')}: detector {det!r} listed in dataset.yaml has no image (found {found})")
        vol, m = read_stack(p)
        check_dtype(m.get("dtype", vol.dtype), str(p))  # a bool mask is not an image (read_stack gives it as 0 / 1)
        if vol.dtype.kind == "f" and not np.all(np.isfinite(vol)):
            raise InputError(f"{p}: image holds NaN or Inf voxels; replace them before use")
        shapes[p.name] = vol.shape
        stacks.append(vol)
    if len(set(shapes.values())) > 1:
        raise InputError(f"{images_dir}: detector stacks differ in shape: {shapes}")
    dtypes = {s.dtype for s in stacks}
    dtype = stacks[0].dtype if len(dtypes) == 1 else np.float32
    images = np.stack([s.astype(dtype, copy=False) for s in stacks])
    shape = images.shape[1:]
    out = {}
    for name in labels:
        p = root / "labels" / f"{name}.tif"
        if p.exists():
            out[name] = _read_labels(p, shape, len(meta["classes"]), kind=name)
        elif name in require:
            raise InputError(f"{p}: missing; this command needs {name} labels")
    for name in require:
        if name not in labels:
            raise InputError(f"{root}: required label file {name!r} is not a known label file {LABEL_FILES}")
    if "train" in require and not np.any(out["train"]):
        raise InputError(f"{root / 'labels' / 'train.tif'}: holds no labelled voxel (all 0); label a few strokes first")
    extra = {k: v for k, v in meta.items() if k not in ("name", "detectors", "classes", "voxel_size_nm")}
    return Dataset(root=root, name=meta["name"], detectors=meta["detectors"], classes=meta["classes"],
                   voxel_size_nm=voxel, images=images, extra=extra, **out)


def write_dataset(root: str | os.PathLike, images: Mapping[str, np.ndarray], *,
                  classes: Sequence[str] = DEFAULT_CLASSES, voxel_size_nm=(1.0, 1.0, 1.0),
                  name: str | None = None, train: np.ndarray | None = None, test: np.ndarray | None = None,
                  instances: np.ndarray | None = None, truth: np.ndarray | None = None,
                  extra: Mapping | None = None, overwrite: bool = False) -> Path:
    """Write a dataset folder in the layout above.

    Parameters
    ----------
    root : path-like
        Output folder; refused if it already holds a dataset.yaml unless ``overwrite``.
    images : mapping of str to (Z, Y, X) ndarray
        One stack per detector, in channel order.
    classes, voxel_size_nm, name
        Written to dataset.yaml.
    train, test, truth : (Z, Y, X) ndarray, optional
        Written as uint8.
    instances : (Z, Y, X) ndarray, optional
        Written as uint32.
    extra : mapping, optional
        More keys for dataset.yaml (e.g. the phantom's parameters).
    """
    import yaml

    root = Path(root)
    if (root / "dataset.yaml").exists() and not overwrite:
        raise OutputExistsError(f"{root}: already holds a dataset; pass overwrite=true to replace it")
    shapes = {k: np.shape(v) for k, v in images.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(f"{root}: detector stacks differ in shape: {shapes}")
    vs = [float(v) for v in voxel_size_nm]
    for det, vol in images.items():
        write_volume(root / "images" / f"{det}.tif", vol, voxel_size_nm=vs, overwrite=True)
    for key, vol, dtype in (("train", train, np.uint8), ("test", test, np.uint8),
                            ("instances", instances, np.uint32), ("truth", truth, np.uint8)):
        if vol is not None:
            write_volume(root / "labels" / f"{key}.tif", np.asarray(vol).astype(dtype), voxel_size_nm=vs,
                         overwrite=True, compression="zlib")
    meta = {"name": name or root.name, "detectors": list(images), "classes": list(classes), "voxel_size_nm": vs}
    if extra:
        meta.update(extra)
    tmp = root / ".dataset.yaml.tmp"
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
    os.replace(tmp, root / "dataset.yaml")
    return root
