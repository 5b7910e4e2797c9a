"""Finding the requested ions' files in an export folder and loading them as one stack."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io import read_image
from seglearn.tofsims.ascii import IonImage, read_ascii

log = logging.getLogger("seglearn")

ASCII_SUFFIXES = (".txt", ".asc", ".ascii", ".dat", ".csv")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class IonStack:
    """The selected ions' counts, in the order they were requested.

    Attributes
    ----------
    counts : (N, Z, Y, X) float64 ndarray
        One map (or depth profile) per ion.
    names : list of str
        The requested ion names.
    files : list of str
        The file each ion was read from.
    fov_um : (float, float) or None
        Field of view ``(y, x)`` in µm from the headers, if any.
    """

    counts: np.ndarray
    names: list[str]
    files: list[str]
    fov_um: tuple[float, float] | None = None


def ion_files(folder: str | os.PathLike) -> list[Path]:
    """ASCII and TIFF ion-map files in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder of ion images (SurfaceLab ASCII .txt or .tif), "
                         "found no such folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in ASCII_SUFFIXES + TIFF_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: folder holds no ion images (.txt/.asc/.dat/.csv or .tif)")
    return files


def _ion_token(path: Path) -> str:
    """The ion part of a file name: after the last ' - ' or '_' (``Sample 1 - Ni+.txt`` -> ``Ni+``)."""
    stem = path.stem
    for sep in (" - ", "_", " "):
        if sep in stem:
            return stem.rsplit(sep, 1)[1].strip()
    return stem


def match_ion(name: str, files: Sequence[Path]) -> Path:
    """The one file for ion ``name``.

    A file matches exactly when the ion part of its name (after the last ``' - '``, ``'_'`` or
    space) equals ``name``; otherwise files whose name contains ``name`` are candidates. Exactly
    one match is required.

    Raises
    ------
    InputError
        When no file or several files match; the message lists them.
    """
    exact = [f for f in files if _ion_token(f) == name or f.stem == name]
    if len(exact) == 1:
        return exact[0]
    cands = exact or [f for f in files if name in f.stem]
    if len(cands) == 1:
        return cands[0]
    folder = files[0].parent if files else Path(".")
    if not cands:
        raise InputError(f"{folder}: no ion file matches {name!r}; files: {', '.join(f.name for f in files)}")
    raise InputError(f"{folder}: ion {name!r} matches {len(cands)} files ({', '.join(f.name for f in cands)}); "
                     "give a name that matches exactly one")


def _read_tiff_ion(path: Path) -> IonImage:
    image, meta = read_image(path)
    if image.shape[0] != 1:
        raise InputError(f"{path}: expected one ion map (Y, X) or depth profile (Z, Y, X), "
                         f"got {image.shape[0]} channels (C, Z, Y, X = {image.shape})")
    fov = None
    vox = meta.get("voxel_size_nm")
    if vox is not None:
        fov = (vox[1] * image.shape[2] / 1e3, vox[2] * image.shape[3] / 1e3)
    counts = image[0].astype(np.float64)
    if np.any(counts < 0):
        raise InputError(f"{path}: negative counts (min {counts.min():g}); expected counts >= 0")
    return IonImage(counts=counts, name=None, fov_um=fov, path=str(path))


def read_ion_file(path: str | os.PathLike) -> IonImage:
    """Read one ion map: SurfaceLab ASCII text or a TIFF (2D map or depth-profile stack)."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff_ion(path)
    return read_ascii(path)


def load_ions(folder: str | os.PathLike, names: Sequence[str]) -> IonStack:
    """Read the ions ``names`` from ``folder`` into one ``(N, Z, Y, X)`` stack.

    Parameters
    ----------
    folder : path-like
        A SurfaceLab export folder (one file per ion) or a folder of TIFF ion maps.
    names : sequence of str
        The ions of interest, each matched to exactly one file (see :func:`match_ion`).

    Raises
    ------
    InputError
        No names, a duplicate name, an ambiguous or missing match, maps of different sizes.
    """
    names = [str(n) for n in names]
    if not names:
        raise InputError(f"{folder}: no ions requested; give ions=[Ni+,C2H-,...]")
    if len(set(names)) != len(names):
        raise InputError(f"{folder}: ions {names} name the same ion twice")
    files = ion_files(folder)
    chosen = [match_ion(n, files) for n in names]
    dup = {f for f in chosen if chosen.count(f) > 1}
    if dup:
        raise InputError(f"{folder}: several requested ions match the same file(s) {sorted(f.name for f in dup)}")
    images = [read_ion_file(f) for f in chosen]
    for n, f in zip(names, chosen):
        log.info("ion %s <- %s", n, f.name)
    shapes = {im.counts.shape for im in images}
    if len(shapes) != 1:
        listing = ", ".join(f"{Path(im.path).name} {im.counts.shape}" for im in images)
        raise InputError(f"{folder}: ion maps differ in size (Z, Y, X): {listing}")
    fovs = [im.fov_um for im in images if im.fov_um is not None]
    fov = fovs[0] if fovs else None
    if any(not np.allclose(f, fov, rtol=1e-3) for f in fovs):
        log.warning("ion files give different fields of view %s; using %s", sorted(set(fovs)), fov)
    return IonStack(counts=np.stack([im.counts for im in images]), names=names,
                    files=[str(f) for f in chosen], fov_um=fov)
