"""Reading and writing SurfaceLab (IONTOF) ASCII image exports.

One text file holds one secondary-ion image (or a depth profile of images). Lines starting with
``#`` are header lines; ``# Key: value`` pairs are parsed, the rest are comments. The data follow
in one of two layouts, detected automatically:

* **matrix**: one text row per image row, counts separated by whitespace, commas, semicolons or
  tabs; a depth profile repeats the block after a ``# Scan: k`` (or ``# Plane: k``) line;
* **columns**: ``x y counts`` (or ``x y z counts`` for a depth profile), one pixel per line,
  0-based integer pixel coordinates.

Header keys understood (case-insensitive): ``Ion`` / ``Mass`` / ``Peak`` (the ion's name),
``Image size`` / ``Number of pixels`` / ``Pixels`` (``W x H`` or one number for square images),
``Field of view`` (``FX [x FY] um``; ``um``, ``µm``, ``nm`` and ``mm`` accepted),
``Number of scans`` / ``Scans`` / ``Planes``. See ``docs/tofsims.md`` for an example.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglearn.errors import InputError
from seglearn.io.atomic import atomic_path

_SPLIT = re.compile(r"[\s,;]+")
_UNIT_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "nm": 1e-3, "mm": 1e3}
_SCAN_KEYS = ("scan", "plane", "layer", "slice")


@dataclass
class IonImage:
    """One ion's counts with what its header said.

    Attributes
    ----------
    counts : (Z, Y, X) float64 ndarray
        Counts per pixel; Z > 1 for a depth profile.
    name : str or None
        Ion name from the header (``# Ion: Ni+``), if any.
    fov_um : (float, float) or None
        Field of view ``(y, x)`` in µm from the header, if any.
    path : str
        The file read.
    header : dict
        All ``key: value`` header pairs (keys lower-cased).
    """

    counts: np.ndarray
    name: str | None = None
    fov_um: tuple[float, float] | None = None
    path: str = ""
    header: dict = field(default_factory=dict)


def _parse_size(value: str, path: Path, line: int) -> tuple[int, int]:
    nums = re.findall(r"\d+", value)
    if len(nums) == 1:
        return int(nums[0]), int(nums[0])
    if len(nums) >= 2:
        w, h = int(nums[0]), int(nums[1])  # "W x H" as SurfaceLab writes it
        return h, w
    raise InputError(f"{path}:{line}: image size {value!r} is not 'W x H' pixels")


def _parse_fov(value: str, path: Path, line: int) -> tuple[float, float]:
    nums = re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", value)
    unit = re.search(r"(µm|μm|um|microns?|nm|mm)", value.lower())
    scale = _UNIT_UM[unit.group(1)] if unit else 1.0
    if not nums:
        raise InputError(f"{path}:{line}: field of view {value!r} has no number")
    fx = float(nums[0]) * scale
    fy = float(nums[1]) * scale if len(nums) > 1 else fx
    if fx <= 0 or fy <= 0:
        raise InputError(f"{path}:{line}: field of view must be positive, got {value!r}")
    return fy, fx


def _numbers(text: str, path: Path, line: int) -> list[float]:
    out = []
    for tok in _SPLIT.split(text.strip()):
        if not tok:
            continue
        try:
            out.append(float(tok))
        except ValueError:
            raise InputError(f"{path}:{line}: non-numeric value {tok!r}") from None
    return out


def read_ascii(path: str | os.PathLike) -> IonImage:
    """Read one SurfaceLab ASCII image export (matrix or ``x y [z] counts`` columns).

    Parameters
    ----------
    path : path-like
        The text file.

    Returns
    -------
    IonImage
        ``counts`` is ``(Z, Y, X)`` float64.

    Raises
    ------
    InputError
        Naming the file and line: ragged matrix rows, non-numeric values, negative or
        out-of-range coordinates, a size or scan count that differs from the header, no data.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file does not exist")
    header: dict[str, str] = {}
    size: tuple[int, int] | None = None
    fov: tuple[float, float] | None = None
    n_scans: int | None = None
    blocks: list[list[tuple[int, list[float]]]] = [[]]
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text:
                continue
            if text.startswith("#"):
                body = text.lstrip("#").strip()
                if ":" not in body:
                    continue
                key, value = (s.strip() for s in body.split(":", 1))
                key_l = key.lower()
                header[key_l] = value
                if key_l in ("image size", "number of pixels", "pixels", "image size (pixels)"):
                    size = _parse_size(value, path, lineno)
                elif key_l.startswith("field of view"):
                    fov = _parse_fov(f"{value} {key_l}", path, lineno)  # the unit may sit in the key
                elif key_l in ("number of scans", "scans", "number of planes", "planes"):
                    n_scans = int(_numbers(value, path, lineno)[0])
                elif key_l in _SCAN_KEYS and blocks[-1]:
                    blocks.append([])
                continue
            blocks[-1].append((lineno, _numbers(text, path, lineno)))
    blocks = [b for b in blocks if b]
    if not blocks:
        raise InputError(f"{path}: no data rows after the '#' header")
    name = header.get("ion") or header.get("mass") or header.get("peak")
    widths = {len(v) for b in blocks for _, v in b}
    first_line, first = blocks[0][0]
    is_columns = _looks_like_columns(blocks, widths, size)
    if is_columns:
        counts = _from_columns(blocks[0], size, n_scans, path)
    else:
        counts = _from_matrix(blocks, size, path)
        if n_scans is not None and counts.shape[0] != n_scans:
            raise InputError(f"{path}: header says {n_scans} scans, found {counts.shape[0]} matrix blocks")
    if np.any(counts < 0):
        raise InputError(f"{path}: negative counts (min {counts.min():g}); expected counts >= 0")
    return IonImage(counts=counts, name=name.split()[0] if name else None, fov_um=fov, path=str(path), header=header)


def _looks_like_columns(blocks, widths, size) -> bool:
    """``x y [scan] counts`` columns rather than a matrix?

    With an image size in the header: 3 or 4 values per line, not the header's width, and more
    lines than image rows. Without one: integer coordinates that tile the image exactly.
    """
    if len(blocks) != 1 or len(widths) != 1:
        return False
    width = next(iter(widths))
    rows = blocks[0]
    if width not in (3, 4):
        return False
    if size is not None:
        return width != size[1] and len(rows) > size[0]
    coords = np.array([r[:-1] for _, r in rows])
    if np.any(coords < 0) or np.any(coords != np.round(coords)):
        return False
    return len(rows) == int(np.prod(coords.max(axis=0) + 1)) and len(rows) > width


def _from_matrix(blocks, size, path: Path) -> np.ndarray:
    planes = []
    for block in blocks:
        width = len(block[0][1])
        for lineno, row in block:
            if len(row) != width:
                raise InputError(f"{path}:{lineno}: ragged matrix row with {len(row)} values, "
                                 f"expected {width} like the first row (line {block[0][0]})")
        plane = np.array([r for _, r in block], dtype=np.float64)
        if size is not None and plane.shape != size:
            raise InputError(f"{path}:{block[0][0]}: matrix is {plane.shape[1]} x {plane.shape[0]} (W x H) "
                             f"but the header says image size {size[1]} x {size[0]}")
        planes.append(plane)
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise InputError(f"{path}: scans differ in size {sorted(shapes)}")
    return np.stack(planes)


def _from_columns(block, size, n_scans, path: Path) -> np.ndarray:
    arr = np.array([r for _, r in block], dtype=np.float64)
    lines = np.array([ln for ln, _ in block])
    coords = arr[:, :-1]
    bad = np.nonzero((coords < 0) | (coords != np.round(coords)))[0]
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{path}:{lines[i]}: pixel coordinates must be non-negative integers, got "
                         f"{' '.join(f'{v:g}' for v in arr[i, :-1])}")
    coords = coords.astype(np.int64)
    x, y = coords[:, 0], coords[:, 1]
    z = coords[:, 2] if coords.shape[1] == 3 else np.zeros_like(x)
    ny, nx = size if size is not None else (int(y.max()) + 1, int(x.max()) + 1)
    nz = n_scans if n_scans is not None else int(z.max()) + 1
    for axis, vals, lim in (("x", x, nx), ("y", y, ny), ("scan", z, nz)):
        over = np.nonzero(vals >= lim)[0]
        if over.size:
            i = int(over[0])
            raise InputError(f"{path}:{lines[i]}: {axis} = {vals[i]} is outside the image size from the header "
                             f"({nx} x {ny} pixels, {nz} scans)")
    counts = np.zeros((nz, ny, nx), dtype=np.float64)
    seen = np.zeros((nz, ny, nx), dtype=bool)
    flat = np.ravel_multi_index((z, y, x), counts.shape)
    order = np.argsort(flat, kind="stable")
    repeat = order[1:][flat[order][1:] == flat[order][:-1]]  # every occurrence after the first
    if repeat.size:
        i = int(repeat.min())
        raise InputError(f"{path}:{lines[i]}: pixel ({x[i]}, {y[i]}) appears more than once")
    counts.flat[flat] = arr[:, -1]
    seen.flat[flat] = True
    if not seen.all():
        missing = int((~seen).sum())
        raise InputError(f"{path}: {missing} of {seen.size} pixels missing from the x y counts columns "
                         f"(image size {nx} x {ny}, {nz} scans)")
    return counts


def write_ascii(path: str | os.PathLike, counts: np.ndarray, *, name: str, fov_um: float | None = None,
                layout: str = "matrix", overwrite: bool = False, extra: dict | None = None) -> Path:
    """Write counts in the SurfaceLab ASCII layout read by :func:`read_ascii`.

    Parameters
    ----------
    path : path-like
        Output text file, written atomically.
    counts : (Y, X) or (Z, Y, X) ndarray
        Non-negative counts (integers are written without decimals).
    name : str
        Ion name for the ``# Ion:`` header.
    fov_um : float, optional
        Field of view (square pixels) in µm.
    layout : {"matrix", "columns"}
    extra : dict, optional
        More ``# key: value`` header lines.
    """
    counts = np.asarray(counts)
    if counts.ndim == 2:
        counts = counts[None]
    nz, ny, nx = counts.shape
    is_int = np.issubdtype(counts.dtype, np.integer) or np.all(counts == np.round(counts))
    fmt = "%d" if is_int else "%.6g"
    lines = ["# IONTOF SurfaceLab ASCII image export", f"# Ion: {name}", f"# Image size: {nx} x {ny} pixels"]
    if fov_um is not None:
        lines.append(f"# Field of view: {fov_um:g} x {fov_um * ny / nx:g} um")
    lines.append(f"# Number of scans: {nz}")
    lines.append(f"# Total counts: {int(round(float(counts.sum())))}")
    for k, v in (extra or {}).items():
        lines.append(f"# {k}: {v}")
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
        if layout == "matrix":
            for z in range(nz):
                if nz > 1:
                    fh.write(f"# Scan: {z}\n")
                np.savetxt(fh, counts[z], fmt=fmt, delimiter="\t")
        elif layout == "columns":
            fh.write("# x\ty\t" + ("scan\t" if nz > 1 else "") + "counts\n")
            zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
            cols = [xx.ravel(), yy.ravel()] + ([zz.ravel()] if nz > 1 else []) + [counts.ravel()]
            np.savetxt(fh, np.column_stack(cols), fmt=["%d"] * (len(cols) - 1) + [fmt], delimiter="\t")
        else:
            raise InputError(f"{path}: unknown ASCII layout {layout!r}; expected 'matrix' or 'columns'")
    return Path(path)
