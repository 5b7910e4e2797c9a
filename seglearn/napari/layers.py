"""What the napari plugin shows and saves, as plain functions (no napari, no Qt).

A *layer tuple* is napari's ``(data, kwargs, layer_type)``; the reader returns a list of them
and the tests check them without a viewer. Every layer made from a dataset carries
``metadata["seglearn"]`` (``root``, ``role``, ``classes``) so the writer and the widget find
their way back to the dataset folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from seglearn.data import load_dataset
from seglearn.data.layout import _find_image, read_meta
from seglearn.errors import InputError
from seglearn.io import open_stack, read_stack, write_volume
from seglearn.io.omezarr import _attrs
from seglearn.io.preview import label_colours

LayerTuple = tuple  # (data, kwargs, layer_type)


def is_dataset(path: str | os.PathLike) -> bool:
    """A folder in seglearn's dataset layout (it holds ``dataset.yaml``)."""
    return Path(path).is_dir() and (Path(path) / "dataset.yaml").is_file()


def is_prediction(path: str | os.PathLike) -> bool:
    """A ``predict.py`` output folder (``summary.json`` and ``labels.tif`` or ``labels.ome.zarr``)."""
    p = Path(path)
    return p.is_dir() and (p / "summary.json").is_file() and ((p / "labels.tif").is_file()
                                                              or (p / "labels.ome.zarr").is_dir())


def _levels(path: Path) -> list:
    """The resolution levels of an OME-Zarr image, finest first, as lazy zarr arrays (napari multiscale)."""
    import zarr

    attrs = _attrs(path)
    if attrs is None:
        raise InputError(f"{path}: not an OME-Zarr image (no multiscales metadata)")
    return [zarr.open_array(str(path / d["path"]), mode="r") for d in attrs["multiscales"][0]["datasets"]]


def dataset_root(path: str | os.PathLike) -> Path | None:
    """The dataset folder of a path: the folder itself, its ``dataset.yaml``, or ``DATASET/labels/*.tif``."""
    p = Path(path)
    for cand in (p, p.with_suffix("") if p.suffix == ".tif" else None, p.parent, p.parent.parent):
        if cand is not None and is_dataset(cand):
            return cand
    return None


def class_colours(classes: Sequence[str], meta: dict | None = None) -> dict:
    """RGBA colours (floats in [0, 1]) of label ids: ``0`` and unknown ids transparent, ``1..K`` by class.

    ``dataset.yaml`` may give ``colours:`` as a list (in class order) or a mapping class name ->
    colour (``"#rrggbb"`` or ``[r, g, b]`` in 0..255); missing ones come from seglearn's palette
    (the colours of ``preview.png``).
    """
    pal = label_colours(len(classes)).astype(float) / 255.0
    given = (meta or {}).get("colours") or {}
    if isinstance(given, list):
        given = dict(zip(classes, given))
    out: dict = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i, name in enumerate(classes, start=1):
        c = given.get(name)
        if isinstance(c, str) and c.startswith("#") and len(c) == 7:
            rgb = tuple(int(c[j:j + 2], 16) / 255.0 for j in (1, 3, 5))
        elif isinstance(c, (list, tuple)) and len(c) == 3:
            rgb = tuple(float(v) / 255.0 for v in c)
        elif c is None:
            rgb = tuple(pal[i])
        else:
            raise InputError(f"dataset.yaml: colour of class {name!r} must be '#rrggbb' or [r, g, b], got {c!r}")
        out[i] = (*rgb, 1.0)
    return out


def _contrast(vol: np.ndarray) -> list[float]:
    sample = vol[:: max(1, vol.shape[0] // 8)]
    lo, hi = np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0)
    return [float(lo), float(hi) if hi > lo else float(lo) + 1.0]


def _tag(root: Path, role: str, classes: Sequence[str], **extra) -> dict:
    return {"seglearn": {"root": str(root), "role": role, "classes": list(classes), **extra}}


def difference_channel(ds) -> tuple[str, np.ndarray] | None:
    """``("SE2-InLens", SE2 - InLens as float32)`` when the dataset has both detectors, else None."""
    if "SE2" in ds.detectors and "InLens" in ds.detectors:
        return "SE2-InLens", ds.channel("SE2").astype(np.float32) - ds.channel("InLens").astype(np.float32)
    return None


def dataset_layer_data(root: str | os.PathLike) -> list[LayerTuple]:
    """Layers of a dataset folder: one image per detector (+ SE2-InLens), train / test labels.

    Returns
    -------
    list of (data, kwargs, layer_type)
        Images ``(Z, Y, X)`` scaled by ``voxel_size_nm`` (z, y, x); ``labels/train.tif`` as an
        editable Labels layer ("train labels", zeros when the file is missing) and
        ``labels/test.tif`` when present, coloured by class.
    """
    ds = load_dataset(root, labels=("train", "test"))
    root = Path(root)
    scale = tuple(float(v) for v in ds.voxel_size_nm)
    layers: list[LayerTuple] = []
    chans = [(d, ds.channel(d)) for d in ds.detectors]
    diff = difference_channel(ds)
    if diff is not None:
        chans.append(diff)
    for i, (name, vol) in enumerate(chans):
        layers.append((vol, {"name": name, "scale": scale, "colormap": "gray", "blending": "additive" if i else
                             "translucent_no_depth", "contrast_limits": _contrast(vol), "visible": i == 0,
                             "metadata": _tag(root, "image", ds.classes, detector=name)}, "image"))
    colours = class_colours(ds.classes, ds.extra)
    train = ds.train if ds.train is not None else np.zeros(ds.shape, np.uint8)
    for role, vol in (("train", train), ("test", ds.test)):
        if vol is None:
            continue
        layers.append((vol, {"name": f"{role} labels", "scale": scale, "colormap": colours, "opacity": 0.6,
                             "visible": role == "train",
                             "metadata": _tag(root, role, ds.classes, voxel_size_nm=list(scale))}, "labels"))
    return layers


def prediction_layer_data(folder: str | os.PathLike) -> list[LayerTuple]:
    """Layers of a ``predict.py`` output: labels, probabilities (one image per class) and uncertainty.

    The uncertainty is ``uncertainty.tif`` when present, else the normalised entropy of
    ``probabilities.tif`` (:func:`seglearn.suggest.normalised_entropy`); without probabilities
    only the labels are shown.
    """
    from seglearn.suggest import normalised_entropy  # the inference stack (scipy): not when the reader loads

    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder / 'summary.json'}: not readable JSON ({exc})") from exc
    classes = list(summary.get("classes") or [])
    vs = summary.get("voxel_size_nm") or [1.0, 1.0, 1.0]
    scale = tuple(float(v) for v in vs)
    if (folder / "labels.ome.zarr").is_dir():  # multiscale and lazy: napari reads the level it shows
        return _ome_zarr_prediction(folder, classes, scale)
    labels, _ = read_stack(folder / "labels.tif")
    if not classes:
        classes = [f"class{i + 1}" for i in range(max(int(labels.max()), 2))]
    tag = _tag(folder, "prediction", classes)
    layers: list[LayerTuple] = [(labels.astype(np.uint8, copy=False),
                                 {"name": "prediction", "scale": scale, "colormap": class_colours(classes),
                                  "opacity": 0.5, "metadata": tag}, "labels")]
    probs = None
    if (folder / "probabilities.tif").is_file():
        import tifffile

        probs = np.moveaxis(tifffile.imread(folder / "probabilities.tif").astype(np.float32), 1, 0)  # (K, Z, Y, X)
        if probs.shape[0] != len(classes) or probs.shape[1:] != labels.shape:
            raise InputError(f"{folder / 'probabilities.tif'}: shape {probs.shape} (K, Z, Y, X) does not fit "
                             f"labels.tif {labels.shape} with {len(classes)} classes")
        layers.append((probs, {"name": [f"P({c})" for c in classes], "channel_axis": 0, "scale": scale,
                               "colormap": "magma", "contrast_limits": [0.0, 1.0], "visible": False,
                               "metadata": tag}, "image"))
    unc = None
    if (folder / "uncertainty.tif").is_file():
        unc = read_stack(folder / "uncertainty.tif")[0].astype(np.float32)
    elif probs is not None:
        unc = normalised_entropy(probs)
    if unc is not None:
        layers.append((unc, uncertainty_kwargs(scale, tag), "image"))
    return layers


def _ome_zarr_prediction(folder: Path, classes: list, scale: tuple) -> list[LayerTuple]:
    """Layers of an ``output_format=ome-zarr`` prediction: multiscale labels (and probabilities per class)."""
    tag = _tag(folder, "prediction", classes)
    labels = _levels(folder / "labels.ome.zarr")
    layers: list[LayerTuple] = [(labels if len(labels) > 1 else labels[0],  # napari refuses a one-level pyramid
                                 {"name": "prediction", "scale": scale, "colormap": class_colours(classes),
                                  "opacity": 0.5, "metadata": tag, "multiscale": len(labels) > 1}, "labels")]
    if (folder / "probabilities.ome.zarr").is_dir():
        probs = _levels(folder / "probabilities.ome.zarr")
        layers.append((probs if len(probs) > 1 else probs[0],
                       {"name": [f"P({c})" for c in classes], "channel_axis": 0, "scale": scale, "colormap": "magma",
                        "contrast_limits": [0.0, 1.0], "visible": False, "metadata": tag,
                        "multiscale": len(probs) > 1}, "image"))
    return layers


def uncertainty_kwargs(scale, metadata: dict | None = None) -> dict:
    """Layer kwargs of an uncertainty map in [0, 1] (the same in the reader and the widget)."""
    return {"name": "uncertainty", "scale": tuple(scale), "colormap": "inferno", "contrast_limits": [0.0, 1.0],
            "opacity": 0.6, "blending": "additive", "metadata": metadata or {}}


def check_labels(data, shape: Sequence[int], n_classes: int, where: str) -> np.ndarray:
    """Labels as ``(Z, Y, X)`` uint8 with ids ``0..K``, or InputError naming ``where``.

    Parameters
    ----------
    data : array-like
        A Labels layer's data.
    shape : (Z, Y, X)
        The dataset's image shape.
    n_classes : int
        ``K``.
    """
    a = np.asarray(data)
    if a.ndim == 2 and len(shape) == 3 and shape[0] == 1:
        a = a[None]
    if tuple(a.shape) != tuple(shape):
        raise InputError(f"{where}: labels of shape {tuple(a.shape)}, expected the images' shape {tuple(shape)}")
    if a.dtype.kind not in "iub":
        raise InputError(f"{where}: labels must be integers, got dtype {a.dtype}")
    if a.size and int(a.min()) < 0:
        raise InputError(f"{where}: labels must be >= 0, found {int(a.min())}")
    vmax = int(a.max()) if a.size else 0
    if vmax > n_classes:
        raise InputError(f"{where}: label id {vmax} > number of classes {n_classes}; expected 0 (unlabelled) or "
                         f"1..{n_classes} (classes in dataset.yaml)")
    return a.astype(np.uint8, copy=False)


def label_target(path: str | os.PathLike) -> Path:
    """Where a Labels layer saved to ``path`` goes: ``DATASET/labels/train.tif`` for a dataset folder
    (or the folder's name + ``.tif``, as napari's save dialog appends it), else ``path`` itself when it
    is ``DATASET/labels/train.tif`` or ``test.tif``."""
    p = Path(path)
    for folder in (p, p.with_suffix("") if p.suffix in (".tif", ".tiff") else None):
        if folder is not None and is_dataset(folder):
            return folder / "labels" / "train.tif"
    if p.name in ("train.tif", "test.tif") and p.parent.name == "labels" and is_dataset(p.parent.parent):
        return p
    raise InputError(f"{p}: save seglearn labels to a dataset folder (holding dataset.yaml) or to "
                     f"DATASET/labels/train.tif; got neither")


def save_labels(path: str | os.PathLike, data) -> Path:
    """Write a Labels layer into a dataset, validated against its images and classes.

    Replaces an existing ``train.tif`` / ``test.tif`` (saving is the user's explicit request),
    atomically: a reader never sees a half-written file.

    Returns
    -------
    Path
        The file written.
    """
    target = label_target(path)
    root = target.parent.parent
    meta = read_meta(root)
    shape = image_shape(root, meta["detectors"][0])
    labels = check_labels(data, shape, len(meta["classes"]), str(target))
    # write_volume goes through seglearn.io.atomic_path (temporary name, then rename)
    return write_volume(target, labels, voxel_size_nm=meta["voxel_size_nm"], overwrite=True, compression="zlib")


def image_shape(root: Path, detector: str) -> tuple[int, int, int]:
    """``(Z, Y, X)`` of a detector's stack, read from the file header only."""
    p = _find_image(Path(root) / "images", detector)
    if p is None:
        raise InputError(f"{Path(root) / 'images' / (detector + '.tif')}: detector {detector!r} has no image")
    with open_stack(p) as reader:
        return tuple(int(v) for v in reader.shape)  # type: ignore[return-value]
