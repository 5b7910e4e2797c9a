"""npe2 reader and writer (thin wrappers of :mod:`seglearn.napari.layers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from seglearn.errors import InputError, SeglearnError
from seglearn.napari.layers import (
    dataset_layer_data,
    is_dataset,
    is_prediction,
    prediction_layer_data,
    save_labels,
)


def get_reader(path: str | list) -> Callable[[Any], list] | None:
    """A reader for a dataset folder (or its ``dataset.yaml``) or a ``predict.py`` output folder, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.name in ("dataset.yaml", "summary.json"):
        p = p.parent
    if is_dataset(p):
        return lambda _path: dataset_layer_data(p)
    if is_prediction(p):
        return lambda _path: prediction_layer_data(p)
    return None


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Save a Labels layer as ``DATASET/labels/train.tif`` (see :func:`~seglearn.napari.layers.save_labels`).

    A refused write raises :class:`~seglearn.errors.SeglearnError` with the reason: napari takes a
    ``ValueError`` (which :class:`~seglearn.errors.InputError` is) from a writer for "not a valid
    writer" and would hide the message.
    """
    try:
        return [str(save_labels(path, data))]
    except InputError as exc:
        raise SeglearnError(str(exc)) from exc
