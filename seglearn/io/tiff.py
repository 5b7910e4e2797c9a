"""TIFF / PNG / OME-Zarr / slice-folder reading with voxel sizes (writing: :mod:`seglearn.io.tiff_write`).

Readers return ``(C, Z, Y, X)`` (:func:`read_image`) or ``(Z, Y, X)`` (:func:`read_stack`);
:func:`open_stack` reads a block of slices at a time so stacks larger than memory work.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.omezarr import OmeZarrReader, is_ome_zarr
from seglearn.io.voxel import read_voxel_size_nm

log = logging.getLogger("seglearn")

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_Z_AXES = "ZTIQ"
_C_AXES = "CS"


def _natural_key(path: Path) -> tuple:
    """Sort key using the last number in the file name (``...BSE-00010.tif`` after ``-00009``)."""
    nums = re.findall(r"\d+", path.stem)
    return (int(nums[-1]) if nums else -1, path.name)


def list_slice_files(folder: Path) -> list[Path]:
    """Per-slice image files in ``folder``, sorted by the number in their names."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    if not files:
        raise InputError(f"{folder}: folder holds no .tif/.tiff/.png slice images")
    return sorted(files, key=_natural_key)


def _to_czyx(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Rearrange an array with tifffile axis letters into ``(C, Z, Y, X)``."""
    if len(axes) != data.ndim:
        axes = {2: "YX", 3: "ZYX", 4: "CZYX"}.get(data.ndim, "")
        if not axes:
            raise InputError(f"{path}: expected a 2D image or 3D stack, got {data.ndim}D array of shape {data.shape}")
    keep = [i for i, a in enumerate(axes) if data.shape[i] > 1 or a in "YX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{path}: image has no Y/X axes (axes {axes!r}, shape {data.shape})")
    zs = [a for a in axes if a in _Z_AXES]
    cs = [a for a in axes if a in _C_AXES]
    other = [a for a in axes if a not in _Z_AXES + _C_AXES + "YX"]
    if len(zs) > 1 or len(cs) > 1 or other:
        raise InputError(f"{path}: cannot read axes {axes!r} (shape {data.shape}) as (C, Z, Y, X)")
    src = [axes.index(cs[0])] if cs else []
    src += [axes.index(zs[0])] if zs else []
    src += [axes.index("Y"), axes.index("X")]
    data = np.transpose(data, src)
    if not cs:
        data = data[None]
    if not zs:
        data = data[:, None]
    return data


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file does not exist")


def check_fits_memory(path, shape: Sequence[int], dtype) -> None:
    """Refuse to read ``shape`` voxels of ``dtype`` (as a file's header declares them) when they need
    more than the memory available now, before any allocation (a 2 KB file may declare 230 GB)."""
    nbytes = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if nbytes > available:
        raise InputError(f"{path}: the header declares {tuple(int(s) for s in shape)} voxels of {np.dtype(dtype)} "
                         f"({nbytes / 1e9:.1f} GB), more than the {available / 1e9:.1f} GB of memory available; "
                         f"crop the file or check its header")


class _TiffWarnings(logging.Handler):
    """Collect tifffile's warnings (it logs, rather than raises, on truncated or corrupt files)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "_TiffWarnings":
        lg = logging.getLogger("tifffile")
        self._propagate = lg.propagate
        lg.addHandler(self)
        lg.propagate = False
        return self

    def __exit__(self, *exc) -> None:
        lg = logging.getLogger("tifffile")
        lg.removeHandler(self)
        lg.propagate = self._propagate

    def check(self, path: Path) -> None:
        bad = [m for m in self.messages if any(w in m.lower() for w in ("corrupt", "invalid", "truncat", "failed"))]
        if bad:
            raise InputError(f"{path}: truncated or corrupted TIFF ({bad[0].split('>')[-1].strip()})")


def _read_tiff(path: Path) -> tuple[np.ndarray, dict]:
    import tifffile

    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes), expected a TIFF image")
    try:
        with _TiffWarnings() as warn, tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_fits_memory(path, series.shape, series.dtype)
            data = series.asarray()
            axes = series.axes
            if axes == "SYX" and data.shape[0] in (3, 4) and not tif.is_imagej:
                # tifffile < 2026 stored any (3|4, Y, X) array as planar RGB: read it as a stack
                axes = "ZYX"
            voxel = read_voxel_size_nm(tif)
            warn.check(path)
    except InputError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, EOFError, KeyError) as exc:
        raise InputError(f"{path}: not a readable TIFF ({exc})") from exc
    return _to_czyx(data, axes, path), {"voxel_size_nm": voxel, "path": str(path)}


def _read_png(path: Path) -> tuple[np.ndarray, dict]:
    import imageio.v3 as iio

    try:
        data = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for a bad file
        raise InputError(f"{path}: not a readable PNG ({exc})") from exc
    axes = "YXS" if data.ndim == 3 else "YX"
    return _to_czyx(data, axes, path), {"voxel_size_nm": None, "path": str(path)}


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a TIFF (multi-page, BigTIFF, ImageJ hyperstack), PNG, OME-Zarr image or folder of slices.

    Parameters
    ----------
    path : path-like
        A ``.tif``/``.tiff``/``.png`` file, or a folder of per-slice images sorted by the number
        in their names (``...BSE-00001.tif`` ...).

    Returns
    -------
    image : (C, Z, Y, X) ndarray
        The data in its stored dtype.
    meta : dict
        ``voxel_size_nm``: ``(z, y, x)`` from ImageJ/OME metadata, or None; ``path``; ``dtype``: the
        stored voxel type (``bool`` for a 1-bit file, which is returned as uint8 0 / 1).
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir() and is_ome_zarr(path):
        r = OmeZarrReader(path)
        return r.read(0, r.shape[0])[None], {"voxel_size_nm": r.voxel_size_nm, "path": str(path),
                                            "dtype": str(r.stored_dtype)}
    if path.is_dir():
        files = list_slice_files(path)
        slices = [read_image(f) for f in files]
        shapes = {s.shape for s, _ in slices}
        if len(shapes) != 1:
            raise InputError(f"{path}: slice images differ in shape {sorted(shapes)}")
        image = np.concatenate([s for s, _ in slices], axis=1)
        return image, {"voxel_size_nm": slices[0][1]["voxel_size_nm"], "path": str(path),
                       "dtype": slices[0][1]["dtype"]}
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".btf", ".tf8"):
        image, meta = _read_tiff(path)
    elif suffix == ".png":
        image, meta = _read_png(path)
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r}; expected .tif, .tiff, .png or a folder")
    meta["dtype"] = str(image.dtype)  # as stored: bool images are refused where they would feed a network
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if image.shape[-1] < 2 or image.shape[-2] < 2:
        raise InputError(f"{path}: expected an image of at least 2 x 2 pixels, got shape (C,Z,Y,X) = {image.shape}")
    if image.dtype.kind not in "uif":
        raise InputError(f"{path}: expected integer or float voxels, got dtype {image.dtype}")
    return image, meta


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a single-channel stack as ``(Z, Y, X)`` (see :func:`read_image`)."""
    image, meta = read_image(path)
    if image.shape[0] != 1:
        raise InputError(f"{path}: expected one grey channel, got {image.shape[0]} (shape C,Z,Y,X = {image.shape}): "
                         f"{_channels_hint(image.shape)}")
    return image[0], meta


def _channels_hint(shape) -> str:
    """Why a stack meant as ``(Z, Y, X)`` may have been read with channels."""
    if shape[0] in (3, 4):
        return ("a colour (RGB / RGBA) image? convert it to grey; a stack only 3 or 4 pixels wide is stored as colour "
                "samples unless written with photometric='minisblack'")
    return ("a hyperstack whose slices are stored as channels (e.g. tifffile.imwrite(..., imagej=True) of a 3D array)? "
            "save it with axes 'ZYX'")


class StackReader:
    """Read a ``(Z, Y, X)`` stack a block of slices at a time without loading it whole.

    Works for multi-page TIFFs with one page per slice (compressed or not, BigTIFF too) and for
    folders of slice images; other layouts fall back to reading the file once.

    Attributes
    ----------
    shape : tuple of int
        ``(Z, Y, X)``.
    dtype : numpy.dtype
    stored_dtype : numpy.dtype
        The file's voxel type (``bool`` for 1-bit files, which :attr:`dtype` may give as uint8).
    voxel_size_nm : tuple of float or None
    """

    def __init__(self, path: str | os.PathLike):
        import tifffile

        self.path = Path(path)
        _check_exists(self.path)
        self._files: list[Path] | None = None
        self._tif = None
        self._full: np.ndarray | None = None
        self.voxel_size_nm = None
        if self.path.is_dir():
            self._files = list_slice_files(self.path)
            first, meta = read_stack(self._files[0])
            if first.shape[0] != 1:
                raise InputError(f"{self._files[0]}: expected one 2D slice per file, got shape {first.shape}")
            self.shape = (len(self._files), *first.shape[1:])
            self.dtype = first.dtype
            self.stored_dtype = np.dtype(meta["dtype"])
            self.voxel_size_nm = meta["voxel_size_nm"]
            return
        if self.path.suffix.lower() in (".tif", ".tiff", ".btf"):
            if self.path.stat().st_size == 0:
                raise InputError(f"{self.path}: file is empty (0 bytes), expected a TIFF image")
            try:
                with _TiffWarnings() as warn:
                    tif = tifffile.TiffFile(self.path)
                    series = tif.series[0]
                    axes = series.axes
                    shape = series.shape
                    n_pages = len(series.pages) if hasattr(series, "pages") else 0
                    self.voxel_size_nm = read_voxel_size_nm(tif)
                try:
                    warn.check(self.path)
                except InputError:
                    tif.close()
                    raise
            except InputError:
                raise
            except (tifffile.TiffFileError, ValueError, OSError, IndexError, EOFError, KeyError) as exc:
                raise InputError(f"{self.path}: not a readable TIFF ({exc})") from exc
            if shape[-1] < 2 or shape[-2] < 2:
                tif.close()
                raise InputError(f"{self.path}: expected an image of at least 2 x 2 pixels, got shape {tuple(shape)}")
            squeezed = "".join(a for a, s in zip(axes, shape) if s > 1 or a in "YX")
            if squeezed in ("YX", "ZYX", "IYX", "TYX", "QYX") and n_pages == int(np.prod(shape[:-2])):
                self._tif = tif
                self._series = series
                self.shape = (max(n_pages, 1), shape[-2], shape[-1])
                self.dtype = self.stored_dtype = np.dtype(series.dtype)
                if self.dtype.kind not in "uifb":
                    self.close()
                    raise InputError(f"{self.path}: expected integer or float voxels, got dtype {self.dtype}")
                return
            tif.close()
        full, meta = read_stack(self.path)
        self._full = full
        self.shape = full.shape
        self.dtype = full.dtype
        self.stored_dtype = np.dtype(meta["dtype"])
        self.voxel_size_nm = meta["voxel_size_nm"]

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Slices ``z0:z1`` as a ``(z1 - z0, Y, X)`` array."""
        z0, z1 = max(0, z0), min(self.shape[0], z1)
        if self._full is not None:
            return self._full[z0:z1]
        if self._files is not None:
            slices = [read_stack(f)[0] for f in self._files[z0:z1]]
            for f, sl in zip(self._files[z0:z1], slices):
                if sl.shape[1:] != self.shape[1:]:
                    raise InputError(f"{f}: slice of shape {sl.shape[1:]}, expected {self.shape[1:]} like "
                                     f"{self._files[0].name}")
            return np.concatenate(slices, axis=0)
        pages = self._series.pages
        check_fits_memory(self.path, (z1 - z0, *self.shape[1:]), self.dtype)
        try:
            return np.stack([pages[i].asarray() for i in range(z0, z1)])
        except (ValueError, OSError, IndexError, EOFError) as exc:
            raise InputError(f"{self.path}: slice read failed between {z0} and {z1} ({exc})") from exc

    def blocks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z0, block)`` pairs covering the stack in blocks of ``size`` slices."""
        for z0 in range(0, self.shape[0], size):
            yield z0, self.read(z0, z0 + size)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> "StackReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stack(path: str | os.PathLike) -> StackReader | OmeZarrReader:
    """Open a ``(Z, Y, X)`` stack for block-wise reading (:class:`StackReader`, or
    :class:`~seglearn.io.omezarr.OmeZarrReader` for an OME-Zarr image)."""
    if Path(path).is_dir() and is_ome_zarr(path):
        return OmeZarrReader(path)
    return StackReader(path)
