"""The one rule for a plausible voxel size, wherever it comes from (``dataset.yaml``, a command line, a file).

seglearn's voxel sizes are in nanometres. A value under :data:`MIN_NM` is almost always micrometres typed
where nanometres were meant (0.02 for 20 nm): given explicitly it is refused; a file's calibration outside
``MIN_NM..MAX_NM`` (a 72 dpi print resolution read as 0.35 mm) is not taken as a calibration.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "\\u00B5m": 1e3, "micron": 1e3,
            "micrometer": 1e3, "mm": 1e6, "millimeter": 1e6, "cm": 1e7, "m": 1e9, "pixel": None}

#: the smallest voxel size (nm) taken as meant: below it the value was most likely given in µm
MIN_NM = 0.5
#: the largest (nm): 1 mm voxels are no tomogram this toolkit segments (a print resolution tag, e.g. 72 dpi)
MAX_NM = 1.0e6


def plausible(vs) -> bool:
    """Whether ``(z, y, x)`` are finite and all within ``MIN_NM..MAX_NM``."""
    return all(math.isfinite(float(v)) and MIN_NM <= float(v) <= MAX_NM for v in vs)


def check_voxel_size(vs, where: str) -> tuple[float, float, float]:
    """``vs`` as 3 floats in nm, or one line naming ``where``: not 3 positive finite numbers, or outside
    ``MIN_NM..MAX_NM`` (with the likely cause)."""
    try:
        out = tuple(float(v) for v in vs)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: voxel size must be 3 numbers (z, y, x) in nm, got {vs!r}") from exc
    if len(out) != 3 or not all(math.isfinite(v) and v > 0 for v in out):
        raise InputError(f"{where}: voxel size must be 3 positive finite numbers (z, y, x) in nm, got {vs!r}")
    if min(out) < MIN_NM:
        raise InputError(f"{where}: voxel size {list(out)} nm is below {MIN_NM:g} nm; voxel sizes are in nanometres "
                         f"(given in µm? {list(out)} µm = {[round(v * 1e3, 6) for v in out]} nm)")
    if max(out) > MAX_NM:
        raise InputError(f"{where}: voxel size {list(out)} nm is above {MAX_NM:g} nm (1 mm); voxel sizes are in "
                         f"nanometres")
    return out


def _unit_scale(unit: str | None) -> float | None:
    if unit is None:
        return None
    return _UNIT_NM.get(str(unit).strip().lower().replace("\\u00b5", "µ"), None)


def read_voxel_size_nm(tif) -> tuple[float, float, float] | None:
    """Voxel size ``(z, y, x)`` in nm from ImageJ or OME metadata of an open ``TiffFile``.

    Resolution tags in pixels per inch are a print / screen resolution (72, 96, 300 dpi: what image editors
    write), not a calibration, and are ignored; so is any size outside
    :data:`seglearn.io.voxel.MIN_NM`..:data:`~seglearn.io.voxel.MAX_NM` (logged).
    """
    vs = _voxel_size_nm(tif)
    if vs is not None and not plausible(vs):
        log.warning("%s: its metadata gives a voxel size of %s nm, not a tomogram's: ignored", tif.filename,
                    [float(f"{v:.6g}") for v in vs])
        return None
    return vs


def _voxel_size_nm(tif) -> tuple[float, float, float] | None:
    """:func:`read_voxel_size_nm` before the plausibility check."""
    try:
        shaped = tif.shaped_metadata[0] if tif.is_shaped and tif.shaped_metadata else None
        if shaped and "voxel_size_nm" in shaped:
            z, y, x = (float(v) for v in shaped["voxel_size_nm"])
            return (z, y, x)
        if tif.is_ome and tif.ome_metadata:
            root = ET.fromstring(tif.ome_metadata)
            px = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            out = []
            for ax in "ZYX":
                val = px.get(f"PhysicalSize{ax}")
                scale = _unit_scale(px.get(f"PhysicalSize{ax}Unit", "µm"))
                out.append(float(val) * scale if val is not None and scale else None)
            if out[1] and out[2]:
                return (out[0] or out[2], out[1], out[2])
        page = tif.pages[0]
        ij = tif.imagej_metadata or {}
        scale = _unit_scale(ij.get("unit")) if ij else None
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        if xres is None or yres is None:
            return None
        if scale is None:
            unit_tag = page.tags.get("ResolutionUnit")
            unit_val = int(unit_tag.value) if unit_tag is not None else 1
            scale = {3: 1e7}.get(unit_val)  # centimetres; inches (2) are dots per inch, not a calibration
        if scale is None:
            return None
        xn, xd = xres.value
        yn, yd = yres.value
        if not xn or not yn:
            return None
        x = xd / xn * scale
        y = yd / yn * scale
        z = float(ij.get("spacing", 0.0)) * scale if ij.get("spacing") else x
        if abs(x - y) < 1e-9 and abs(x - scale) < 1e-9 and not ij.get("spacing"):
            return None  # resolution 1 pixel per unit: no real calibration
        return (z, y, x)
    except (StopIteration, ValueError, TypeError, ET.ParseError, KeyError):
        return None
