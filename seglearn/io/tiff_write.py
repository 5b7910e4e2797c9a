"""Writing volumes as TIFF: atomic, ImageJ-compatible calibration for every dtype, streamed slice by slice.

Also :func:`choose_voxel_size`, which decides (and logs) the voxel size a command writes on its outputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.atomic import atomic_path

log = logging.getLogger("seglearn")

BIGTIFF_BYTES = 2**31 - 2**25  # leave room for tags


def choose_voxel_size(candidates: Sequence[tuple[str, object]], *, where: str = "input",
                      fallback: Sequence[str] = ("checkpoint",)) -> tuple[list[float] | None, str | None]:
    """The voxel size written on a command's outputs, and where it came from, logged.

    Parameters
    ----------
    candidates : sequence of (source, (z, y, x) or None)
        In order of precedence, e.g. ``[("option", ...), ("dataset.yaml", ...), ("input file", ...),
        ("checkpoint", ...)]``.
    where : str
        Names the input in the messages.
    fallback : sequence of str
        Sources that do not describe the input (the checkpoint's training voxel size): taking one
        is logged as a warning.

    Returns
    -------
    voxel_size_nm : list of 3 float or None
    source : str or None
    """
    given = [(src, [float(v) for v in val]) for src, val in candidates if val is not None]
    if not given:
        log.warning("%s: no voxel size in the input, dataset.yaml, voxel_size_nm= or the checkpoint: the outputs carry "
                    "no calibration", where)
        return None, None
    source, voxel = given[0]
    for other, val in given[1:]:
        if other not in fallback and not np.allclose(val, voxel, rtol=1e-3):
            log.warning("%s: the voxel size of the %s (%s nm) differs from that of the %s (%s nm); the %s's is used",
                        where, other, val, source, voxel, source)
    if source in fallback:
        log.warning("%s carries no voxel size (no calibration in the file, none in dataset.yaml, no voxel_size_nm=): "
                    "its outputs get the %s's %s nm, which may not be this volume's; pass voxel_size_nm=[z,y,x]",
                    where, source, voxel)
    else:
        log.info("voxel size %s nm, from the %s", voxel, source)
    return voxel, source


def calibration_kwargs(shape: Sequence[int], dtype, voxel_size_nm, *, axes: str = "ZYX",
                       compression: str | None = None) -> dict:
    """``tifffile.imwrite`` keyword arguments that store ``voxel_size_nm`` as ImageJ calibration.

    uint8 / uint16 / float32 ``ZYX`` volumes under 2 GiB are ImageJ hyperstacks. Other types (uint32
    instance ids, float16 probabilities), other axes and larger volumes get the same calibration
    in a plain (Big)TIFF: the ImageJ description (``spacing``, ``unit=um``, slices / channels) and
    the resolution tags in pixels per µm, as ImageJ writes them (Fiji and :func:`read_voxel_size_nm`
    read it), then tifffile's JSON description with the exact shape.

    Parameters
    ----------
    shape : sequence of int
        The array's shape, axes as ``axes``.
    dtype : numpy dtype
    voxel_size_nm : (z, y, x) floats or None
    axes : str
        ``ZYX`` or ``ZCYX``.
    """
    import tifffile

    dtype = np.dtype(dtype)
    big = int(np.prod(shape)) * dtype.itemsize > BIGTIFF_BYTES
    kwargs: dict = {"compression": compression} if compression else {}
    calib: dict = {}
    if voxel_size_nm is not None:
        z, y, x = (float(v) / 1e3 for v in voxel_size_nm)
        kwargs["resolution"] = (1.0 / x, 1.0 / y)
        calib = {"spacing": z, "unit": "um"}
    if dtype in (np.uint8, np.uint16, np.float32) and not big and axes == "ZYX":
        return {**kwargs, "imagej": True, "metadata": {**calib, "axes": axes}}
    # the ImageJ description comes first (Fiji reads it); tifffile's own JSON (exact shape) goes second
    kwargs.update(bigtiff=big, photometric="minisblack", metadata={"axes": axes},
                  description=tifffile.imagej_description(tuple(int(v) for v in shape), axes=axes, **calib))
    if voxel_size_nm is not None:
        kwargs["resolutionunit"] = "NONE"
    return kwargs


def write_volume(path: str | os.PathLike, volume: np.ndarray, *, voxel_size_nm=None,
                 overwrite: bool = False, compression: str | None = None) -> Path:
    """Write a ``(Z, Y, X)`` volume as an ImageJ-compatible TIFF, atomically.

    Parameters
    ----------
    path : path-like
        Output file; never replaced unless ``overwrite``.
    volume : (Z, Y, X) ndarray
        uint8/uint16/float32 are written as ImageJ hyperstacks; other dtypes (uint32 instance
        ids) and volumes over 2 GiB as (Big)TIFF with the same calibration (:func:`calibration_kwargs`).
    voxel_size_nm : (z, y, x) floats, optional
        Stored as ImageJ calibration in µm.
    """
    volume = np.asarray(volume)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise InputError(f"{path}: expected a (Z, Y, X) volume to write, got shape {volume.shape}")
    return write_volume_stream(path, iter(volume), shape=volume.shape, dtype=volume.dtype,
                               voxel_size_nm=voxel_size_nm, overwrite=overwrite, compression=compression)


def write_volume_stream(path: str | os.PathLike, slices: Iterable[np.ndarray], *, shape: Sequence[int],
                        dtype, voxel_size_nm=None, overwrite: bool = False,
                        compression: str | None = None) -> Path:
    """Write ``(Z, Y, X)`` slices from an iterator, so the volume never sits in memory whole.

    The file appears under its final name only once every slice is written.
    """
    import tifffile

    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    kwargs = calibration_kwargs(shape, dtype, voxel_size_nm, compression=compression)
    with atomic_path(path, overwrite=overwrite) as tmp:
        def pages() -> Iterator[np.ndarray]:
            n = 0
            for s in slices:
                s = np.asarray(s, dtype=dtype)
                if s.shape != shape[1:]:
                    raise InputError(f"{path}: slice {n} has shape {s.shape}, expected {shape[1:]}")
                n += 1
                yield s
            if n != shape[0]:
                raise InputError(f"{path}: got {n} slices, expected {shape[0]}")

        tifffile.imwrite(tmp, data=pages(), shape=shape, dtype=dtype, **kwargs)
    return Path(path)
