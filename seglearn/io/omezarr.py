"""OME-Zarr (NGFF 0.4) images: read a ``(Z, Y, X)`` stack block by block, write one as a multiscale pyramid.

Large tomograms are opened in napari (napari-ome-zarr) and Fiji (MoBIE / BigDataViewer) as OME-Zarr
multiscale pyramids with the voxel size in the metadata. NGFF 0.4 on a Zarr v2 store is written, the
version those viewers read today; reading accepts 0.4 and 0.5. Level 0 is written block by block as
prediction produces it; :meth:`OmeZarrWriter.finish` then builds each coarser level from the one
below, one block of slices at a time, so memory stays bounded by the block, not the volume. Levels
halve y and x (z is the milling direction, usually already the coarsest); labels are subsampled
(every second voxel, so ids stay ids), grey values and probabilities averaged. The metadata is
written by the ``ome-zarr`` package.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.voxel import plausible

log = logging.getLogger("seglearn")

AXES_ZYX = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
AXES_CZYX = [{"name": "c", "type": "channel"}] + AXES_ZYX


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Zarr group holding OME ``multiscales`` metadata."""
    return _attrs(Path(path)) is not None


def _attrs(path: Path) -> dict | None:
    """The group's attributes when it is an OME-Zarr image (v2 ``.zattrs`` or v3 ``zarr.json``), else None."""
    if not path.is_dir():
        return None
    for name in (".zattrs", "zarr.json"):
        f = path / name
        if f.is_file():
            try:
                attrs = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{f}: not readable JSON ({exc})") from exc
            attrs = attrs.get("attributes", attrs)
            attrs = attrs.get("ome", attrs)  # NGFF 0.5 nests everything under "ome"
            if "multiscales" in attrs:
                return attrs
    return None


class OmeZarrReader:
    """Read level 0 of an OME-Zarr image as a ``(Z, Y, X)`` stack, a block of slices at a time.

    Parameters
    ----------
    path : path-like
        The image group (``NAME.ome.zarr``).
    channel : int or str, optional
        For a ``(C, Z, Y, X)`` image: the channel index or its ``omero`` label; required then.

    Attributes
    ----------
    shape : (Z, Y, X) tuple of int
    dtype, stored_dtype : numpy.dtype
    voxel_size_nm : (z, y, x) tuple of float or None
        From level 0's ``scale`` transform, converted to nm from the axes' units.
    channels : list of str
        Channel labels (``omero``), ``[]`` for a ``(Z, Y, X)`` image.
    """

    def __init__(self, path: str | os.PathLike, channel: int | str | None = None):
        import zarr

        self.path = Path(path)
        attrs = _attrs(self.path)
        if attrs is None:
            raise InputError(f"{self.path}: not an OME-Zarr image (no multiscales metadata)")
        ms = attrs["multiscales"][0]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", ["z", "y", "x"])]
        units = {a["name"]: a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict)}
        if axes not in (["z", "y", "x"], ["c", "z", "y", "x"], ["y", "x"]):
            raise InputError(f"{self.path}: expected OME-Zarr axes zyx, czyx or yx, got {''.join(axes)}")
        level0 = ms["datasets"][0]
        try:
            self._arr = zarr.open_array(str(self.path / level0["path"]), mode="r")
        except Exception as exc:  # zarr raises several types for a broken store
            raise InputError(f"{self.path / level0['path']}: not a readable Zarr array ({exc})") from exc
        self.channels = [c.get("label", str(i)) for i, c in
                         enumerate((attrs.get("omero") or {}).get("channels", []))] if axes[0] == "c" else []
        self._c = None
        if axes[0] == "c":
            if channel is None:
                raise InputError(f"{self.path}: holds {self._arr.shape[0]} channels {self.channels}; name one")
            self._c = self.channels.index(channel) if isinstance(channel, str) and channel in self.channels \
                else int(channel) if str(channel).lstrip("-").isdigit() else None
            if self._c is None or not 0 <= self._c < self._arr.shape[0]:
                raise InputError(f"{self.path}: no channel {channel!r}; it has {self.channels}")
        shape = self._arr.shape[1:] if self._c is not None else self._arr.shape
        self.shape = tuple(int(v) for v in ((1, *shape) if len(shape) == 2 else shape))
        self.dtype = self.stored_dtype = np.dtype(self._arr.dtype)
        if self.dtype.kind not in "uifb":
            raise InputError(f"{self.path}: expected integer or float voxels, got dtype {self.dtype}")
        self.voxel_size_nm = _voxel_nm(level0, axes, units)

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0:z1`` as a ``(z1 - z0, Y, X)`` array."""
        z0, z1 = max(0, z0), min(self.shape[0], z1)
        if self._arr.ndim == 2:
            return np.asarray(self._arr[:])[None][z0:z1]
        block = self._arr[self._c, z0:z1] if self._c is not None else self._arr[z0:z1]
        return np.asarray(block)

    def blocks(self, size: int):
        """Yield ``(z0, block)`` pairs covering the stack in blocks of ``size`` slices."""
        for z0 in range(0, self.shape[0], size):
            yield z0, self.read(z0, z0 + size)

    def close(self) -> None:
        """Nothing to release (Zarr opens chunks on demand); here for :class:`~seglearn.io.StackReader`'s API."""

    def __enter__(self) -> "OmeZarrReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_TO_NM = {None: None, "": None, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6, "angstrom": 0.1,
          "meter": 1e9, "picometer": 1e-3}


def _voxel_nm(level0: dict, axes: list[str], units: dict) -> tuple[float, float, float] | None:
    scale = next((t["scale"] for t in level0.get("coordinateTransformations", []) if t.get("type") == "scale"), None)
    if scale is None:
        return None
    named = dict(zip(axes, scale))
    out = []
    for a in "zyx":
        if a not in named:
            out.append(1.0 if a == "z" else None)  # a 2D image: z spacing is irrelevant
            continue
        f = _TO_NM.get(units.get(a), None)
        if f is None:
            return None  # no (or an unknown) unit: the scale is not a physical size
        out.append(float(named[a]) * f)
    if None in out:
        return None
    if not plausible(out):  # the same rule as a TIFF's calibration (seglearn.io.voxel)
        log.warning("OME-Zarr scale gives a voxel size of %s nm, not a tomogram's: ignored", out)
        return None
    return tuple(out)


def pyramid_shapes(shape: Sequence[int], *, min_size: int = 256, max_levels: int = 6) -> list[tuple[int, ...]]:
    """``(Z, Y, X)`` of each level: y and x halved (rounded up) until the larger is <= ``min_size``."""
    shapes = [tuple(int(v) for v in shape)]
    while len(shapes) < max_levels and max(shapes[-1][1:]) > min_size:
        z, y, x = shapes[-1]
        shapes.append((z, (y + 1) // 2, (x + 1) // 2))
    return shapes


class OmeZarrWriter:
    """Write a ``(Z, Y, X)`` (or ``(C, Z, Y, X)``) volume as a multiscale OME-Zarr, level 0 a block at a time.

    Parameters
    ----------
    path : path-like
        The group to create (``NAME.ome.zarr``); must not exist (the caller handles overwriting
        and atomic renaming).
    shape : (Z, Y, X) or (C, Z, Y, X)
    dtype : numpy dtype
    voxel_size_nm : (z, y, x), optional
        Written as level 0's ``scale`` in nanometres; when unknown, scale 1 with no unit (not a size).
    labels : bool
        Subsample coarser levels (ids stay ids) instead of averaging.
    chunks : (z, y, x)
        Chunk shape of every level (clipped to the level's shape).
    channel_names : sequence of str, optional
        ``omero`` channel labels of a ``(C, Z, Y, X)`` volume (e.g. class names of probabilities).
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype, *, voxel_size_nm=None,
                 labels: bool = False, chunks: Sequence[int] = (8, 256, 256),
                 channel_names: Sequence[str] | None = None, min_size: int = 256):
        import zarr

        self.path = Path(path)
        self.channels = len(shape) == 4
        zyx = tuple(int(v) for v in shape[-3:])
        self.levels = pyramid_shapes(zyx, min_size=min_size)
        self.labels, self.dtype = bool(labels), np.dtype(dtype)
        self.calibrated = voxel_size_nm is not None
        self.voxel = [float(v) for v in voxel_size_nm] if self.calibrated else [1.0, 1.0, 1.0]
        self.channel_names = list(channel_names or [])
        self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=2)
        lead = (int(shape[0]),) if self.channels else ()
        self.arrays = []
        for i, lv in enumerate(self.levels):
            ch = tuple(min(c, s) for c, s in zip(chunks, lv))
            self.arrays.append(self.group.create_array(str(i), shape=lead + lv, chunks=(1,) * len(lead) + ch,
                                                       dtype=self.dtype, fill_value=0))
        self.z_chunk = int(min(chunks[0], zyx[0]))

    def write(self, z0: int, block: np.ndarray) -> None:
        """Level 0 slices ``z0 : z0 + len(block)`` (``(z, Y, X)``, or ``(C, z, Y, X)``)."""
        if self.channels:
            self.arrays[0][:, z0:z0 + block.shape[1]] = block
        else:
            self.arrays[0][z0:z0 + block.shape[0]] = block

    def finish(self, block_slices: int | None = None) -> Path:
        """Build the coarser levels from level 0, block by block, and write the NGFF metadata."""
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import write_multiscales_metadata

        step = int(block_slices or max(self.z_chunk, 1))
        for i in range(1, len(self.levels)):
            src, dst = self.arrays[i - 1], self.arrays[i]
            for z0 in range(0, self.levels[i][0], step):
                z1 = min(z0 + step, self.levels[i][0])
                block = np.asarray(src[:, z0:z1] if self.channels else src[z0:z1])
                dst[..., z0:z1, :, :] = self._halve(block)
        datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": (
            [1.0] if self.channels else []) + [self.voxel[0], self.voxel[1] * 2 ** i, self.voxel[2] * 2 ** i]}]}
            for i in range(len(self.levels))]
        extra = {}
        if self.channels and self.channel_names:
            extra["metadata"] = {"omero": {"channels": [{"label": str(n), "active": True} for n in self.channel_names]}}
        axes = AXES_CZYX if self.channels else AXES_ZYX
        if not self.calibrated:  # scale 1 without a unit: readers (ours included) see "no voxel size", not 1 nm
            axes = [{k: v for k, v in a.items() if k != "unit"} for a in axes]
        write_multiscales_metadata(self.group, datasets, fmt=FormatV04(), axes=axes, name=self.path.name, **extra)
        if self.labels and not self.channels:
            self.group.attrs["image-label"] = {"version": "0.4", "source": {}}
        return self.path

    def _halve(self, block: np.ndarray) -> np.ndarray:
        """Halve the last two axes: subsample labels, average grey values (odd sizes keep their last row)."""
        if self.labels:
            return block[..., ::2, ::2]
        y, x = block.shape[-2:]
        pad = [(0, 0)] * (block.ndim - 2) + [(0, y % 2), (0, x % 2)]
        b = np.pad(block.astype(np.float32), pad, mode="edge")
        out = b.reshape(*b.shape[:-2], b.shape[-2] // 2, 2, b.shape[-1] // 2, 2).mean(axis=(-3, -1))
        return np.rint(out).astype(self.dtype) if self.dtype.kind in "iu" else out.astype(self.dtype)


def write_ome_zarr(path: str | os.PathLike, volume: np.ndarray, *, voxel_size_nm=None, labels: bool = False,
                   chunks: Sequence[int] = (8, 256, 256), channel_names: Sequence[str] | None = None) -> Path:
    """Write an in-memory ``(Z, Y, X)`` / ``(C, Z, Y, X)`` volume as a multiscale OME-Zarr (see :class:`OmeZarrWriter`)."""
    w = OmeZarrWriter(path, volume.shape, volume.dtype, voxel_size_nm=voxel_size_nm, labels=labels, chunks=chunks,
                      channel_names=channel_names)
    step = w.z_chunk
    for z0 in range(0, volume.shape[-3], step):
        w.write(z0, volume[..., z0:z0 + step, :, :])
    return w.finish()
