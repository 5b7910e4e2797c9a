"""Turn a label file into class ids ``1..K`` with names, roles and a voxel size.

Label files come with seglearn ids (``1..K``, ``0`` = outside) or with arbitrary grey values
(``0 / 85 / 170`` for pore / NMC / CBD in taufactor's electrode). The rule, in this order:

1. ``values=[v1, ..., vK]`` given: grey value ``vi`` is class ``i``; any other value is
   outside (0, not measured).
2. ``classes`` given with K names and the values are seglearn ids: all in ``0..K`` and either no
   0 or the largest equal to K (``{1, 2, 3}``, ``{0, 1, 2, 3}``, ``{0, 1, 3}`` for K = 3: 0 is
   outside, a missing id an absent class): ids are kept.
3. ``classes`` given with K names and the file holds exactly K other distinct values: the values
   in ascending order are classes ``1..K`` (``0/85/170`` -> 1, 2, 3). Values ``0..K-1`` could also
   be ids ``1..K`` with 0 outside and class K absent: the ascending reading is taken and a warning
   says so (``values=[1, ..., K]`` forces the other reading).
4. No ``classes``: the n distinct values in ascending order are classes ``1..n`` named
   ``value_<v>``; more than :data:`MAX_UNNAMED_VALUES` are refused (a grey image, not labels).

Anything else is refused with the values found. Roles (pore, active material, carbon-binder)
are found from the class names (``pore``/``void``; ``active``/``am``/``nmc``/``particle``...;
``binder``/``cbd``/``carbon``) unless named explicitly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.voxel import check_voxel_size

log = logging.getLogger("seglearn")

#: most distinct values a label volume may hold without ``classes=`` / ``values=`` (rule 4 above):
#: a label volume holds a few phase ids; more is taken for a grey image given by mistake
MAX_UNNAMED_VALUES = 16

_ROLE_PATTERNS = {
    "pore": r"(^|_)(pore|pores|void|porosity|electrolyte_pore|empty)($|_)",
    "active": r"(active|(^|_)am($|_)|nmc|lfp|lco|nca|graphite|particle|cam)",
    "binder": r"(binder|(^|_)cbd($|_)|carbon)",
}


@dataclass
class LabelInfo:
    """Class ids and what they mean.

    Attributes
    ----------
    labels : (Z, Y, X) uint8 ndarray
        Class ids ``1..K``; 0 = outside (not measured).
    classes : list of str
        Names of ids ``1..K``.
    values : list of int or float
        The original grey value of each class.
    roles : dict
        ``pore``, ``active``, ``binder``: class id (1-based) or None.
    """

    labels: np.ndarray
    classes: list[str]
    values: list
    roles: dict


def _distinct(raw: np.ndarray) -> np.ndarray:
    """The distinct values of ``raw``, sorted; 8- and 16-bit integers counted slab by slab (no sorted copy)."""
    if raw.dtype.kind not in "ui" or raw.dtype.itemsize > 2 or raw.ndim == 0 or raw.size == 0:
        return np.unique(raw)
    offset = 2 ** (8 * raw.dtype.itemsize - 1) if raw.dtype.kind == "i" else 0
    seen = np.zeros(2 ** (8 * raw.dtype.itemsize), bool)
    flat = raw.reshape(raw.shape[0], -1) if raw.ndim > 1 else raw.reshape(1, -1)
    step = max(1, 2**24 // max(1, flat.shape[1]))
    for i in range(0, flat.shape[0], step):
        seen[np.bincount((flat[i:i + step].astype(np.int32) + offset).ravel(), minlength=seen.size) > 0] = True
    return (np.nonzero(seen)[0] - offset).astype(raw.dtype)


def map_labels(raw: np.ndarray, classes: Sequence[str] | None = None, values: Sequence | None = None,
               *, source: str = "labels") -> tuple[np.ndarray, list[str], list]:
    """Map a label volume to class ids ``1..K`` (rule in the module docstring).

    Parameters
    ----------
    raw : (Z, Y, X) int or float ndarray
    classes : sequence of str, optional
    values : sequence, optional
        Grey value of each class, in class order.
    source : str
        Name used in error messages (the file).

    Returns
    -------
    labels : (Z, Y, X) uint8 ndarray
    classes : list of str
    values : list
    """
    raw = np.asarray(raw)
    if raw.ndim == 2:
        raw = raw[None]
    if raw.ndim != 3:
        raise InputError(f"{source}: expected a (Z, Y, X) label volume, got shape {raw.shape}")
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise InputError(f"{source}: label volume holds NaN or infinite values")
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes) or not classes:
            raise InputError(f"{source}: class names must be distinct and non-empty, got {classes}")
    if values is not None:
        return _map_values(raw, classes, list(values), source)
    found = _distinct(raw)
    n = len(found)
    if classes is None and n > MAX_UNNAMED_VALUES:
        raise InputError(f"{source}: {n} distinct values; a label volume holds a few phase ids — is this a grey "
                         f"image? (more than {MAX_UNNAMED_VALUES} need classes=[...] or values=[...])")
    if n > 255:
        raise InputError(f"{source}: {n} distinct values is not a label volume (at most 255 classes); "
                         "is this a grey-value image?")
    if classes is None:
        classes = [f"value_{_fmt(v)}" for v in found.tolist()]
    elif _are_ids(raw, found, len(classes)):
        return raw.astype(np.uint8, copy=False), classes, list(range(1, len(classes) + 1))
    else:
        _check_ascending(raw, found, classes, source)
    out = np.empty(raw.shape, np.uint8)
    flat, dst = raw.reshape(raw.shape[0], -1), out.reshape(raw.shape[0], -1)
    step = max(1, 2**24 // max(1, flat.shape[1]))  # slabs: searchsorted's int64 result stays small
    for i in range(0, flat.shape[0], step):
        dst[i:i + step] = np.searchsorted(found, flat[i:i + step]) + 1
    return out, classes, [_num(v) for v in found.tolist()]


def _map_values(raw: np.ndarray, classes: list | None, values: list, source: str) -> tuple:
    """Rule 1: grey value ``values[i]`` is class ``i + 1``, any other value outside."""
    if classes is None:
        classes = [f"value_{_fmt(v)}" for v in values]
    if len(values) != len(classes):
        raise InputError(f"{source}: {len(values)} values for {len(classes)} classes {classes}")
    if len(values) > 255:
        raise InputError(f"{source}: at most 255 classes, got {len(values)}")
    if raw.dtype == np.uint8 and values == list(range(1, len(values) + 1)) and raw.max() <= len(values):
        if not raw.any():
            raise InputError(f"{source}: none of the values {values} occur; the file holds [0]")
        return raw, classes, values  # already ids 1..K (0 outside): no copy of a large volume
    out = np.zeros(raw.shape, np.uint8)
    for i, v in enumerate(values):
        out[raw == v] = i + 1
    if not out.any():
        found = np.unique(raw)[:10].tolist()
        raise InputError(f"{source}: none of the values {values} occur; the file holds {found}")
    return out, classes, values


def _int_values(raw: np.ndarray, found: np.ndarray) -> set | None:
    """The distinct values as a set of ints, or None when some are not whole numbers."""
    if raw.dtype.kind in "ui" or bool(np.all(found == np.round(found))):
        return set(int(v) for v in found)
    return None


def _are_ids(raw: np.ndarray, found: np.ndarray, k: int) -> bool:
    """Rule 2: the values are seglearn ids ``1..K`` (0 outside) and cannot be read otherwise."""
    ids = _int_values(raw, found)
    return bool(ids) and ids <= set(range(k + 1)) and (0 not in ids or max(ids) == k)


def _check_ascending(raw: np.ndarray, found: np.ndarray, classes: list, source: str) -> None:
    """Rule 3: refuse a count that does not match the classes; warn when ``0..K-1`` could be ids with 0 outside."""
    k = len(classes)
    if len(found) != k:
        raise InputError(f"{source}: {len(found)} distinct values {found[:12].tolist()} do not match {k} classes "
                         f"{classes}; give values=[...] (one grey value per class)")
    if _int_values(raw, found) == set(range(k)):
        pairs = ", ".join(f"{v} -> {c}" for v, c in zip(range(k), classes))
        log.warning("%s: values 0..%d for %d classes read in ascending order (%s); if 0 means outside and %s is "
                    "absent, give values=%s", source, k - 1, k, pairs, classes[-1], list(range(1, k + 1)))


def _fmt(v) -> str:
    v = _num(v)
    return str(v).replace(".", "p").replace("-", "m")


def _num(v):
    f = float(v)
    return int(f) if f == int(f) else f


def find_roles(classes: Sequence[str], *, pore=None, active=None, binder=None) -> dict:
    """Class ids (1-based) of the pore, active-material and carbon-binder phases.

    Parameters
    ----------
    classes : sequence of str
    pore, active, binder : str or int, optional
        A class name or 1-based id; default: matched from the names (None when nothing matches).

    Returns
    -------
    dict
        ``{"pore": id or None, "active": id or None, "binder": id or None}``.
    """
    given = {"pore": pore, "active": active, "binder": binder}
    roles: dict = {}
    for role, choice in given.items():
        if choice is not None:
            roles[role] = class_id(classes, choice)
            continue
        hits = [i + 1 for i, c in enumerate(classes)
                if re.search(_ROLE_PATTERNS[role], c.lower()) and i + 1 not in roles.values()]
        roles[role] = hits[0] if hits else None
    return roles


def class_id(classes: Sequence[str], choice) -> int:
    """1-based id of a class given by name or id; refuses unknown ones."""
    if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
        if 1 <= int(choice) <= len(classes):
            return int(choice)
        raise InputError(f"class id {choice} is not in 1..{len(classes)} ({list(classes)})")
    if str(choice) in classes:
        return list(classes).index(str(choice)) + 1
    raise InputError(f"class {choice!r} is not one of {list(classes)}")


def resolve_voxel_size(from_file, from_config, *, source: str = "input") -> tuple[float, float, float]:
    """Voxel size ``(z, y, x)`` in nm: the config (what the user typed), else the file's calibration, else
    refuse; a file that says otherwise is named in a warning.

    Parameters
    ----------
    from_file : (z, y, x) or None
        From the TIFF metadata.
    from_config : float, (z, y, x) or None
        ``voxel_size_nm=`` of the command line / config (a single number means isotropic).
    """
    if from_config is not None:
        vs = as_voxel_size(from_config, source=source)
        if from_file is not None and not np.allclose(vs, [float(v) for v in from_file], rtol=1e-3):
            log.warning("%s: its calibration says %s nm; using voxel_size_nm=%s as given", source,
                        [float(f"{float(v):.6g}") for v in from_file], list(vs))
    elif from_file is not None:
        vs = tuple(float(v) for v in from_file)
    else:
        raise InputError(f"{source}: no voxel size in the file's metadata; give voxel_size_nm=<nm> "
                         "(one number, or [z, y, x])")
    return check_voxel_size(vs, source)


def as_voxel_size(value, *, source: str = "voxel_size_nm") -> tuple[float, float, float]:
    """``5`` -> ``(5, 5, 5)``; ``[z, y, x]`` kept; anything else refused
    (:func:`seglearn.io.voxel.check_voxel_size`)."""
    return check_voxel_size((value,) * 3 if np.ndim(value) == 0 else value, source)
