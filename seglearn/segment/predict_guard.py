"""What predict.py decides about its input and output without the network: where a default output goes
(never over another input's folder), whether the stack looks stored with z last, whether the result is
nearly one class or mostly unsure (what a mask given as an image, an inverted contrast or grey values far from
the model's give)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from seglearn.errors import InputError
from seglearn.io.outset import PREDICTION_MARKER as MARKER

log = logging.getLogger("seglearn")


def _same_input(a, b) -> bool:
    """Whether two ``input`` descriptions (a path, or a list's ``str``) name the same input."""
    if str(a) == str(b):
        return True
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def default_output(name: str, where: str | None) -> tuple[Path, bool]:
    """``(folder, replace)`` of an output not given: ``outputs/<name>``, replaced when it holds an earlier
    prediction of the same input; when it holds anything else (another input of the same name, a user's
    folder), the first free or same-input ``outputs/<name>-2``, ``-3``, ... instead (logged)."""
    for i in range(1, 1000):
        out = Path("outputs") / (name if i == 1 else f"{name}-{i}")
        if not out.exists():
            return out, False
        try:
            earlier = json.loads((out / "summary.json").read_text())
        except (ValueError, OSError):
            earlier = {}
        if earlier.get(MARKER) and (where is None or _same_input(earlier.get("input"), where)):
            return out, True
        if i == 1:
            log.info("outputs/%s holds %s: writing to a new folder beside it (output= chooses one)", name,
                     f"the prediction of {earlier.get('input')}" if earlier.get(MARKER) else "other files")
    raise InputError(f"outputs/{name}: 999 folders of that name exist; give output=")


#: a stack is taken for one stored (Y, X, Z) when an in-plane side is under THIN_PX and at most 1 / DEEP of the
#: number of slices
THIN_PX, DEEP = 64, 4


def warn_axis_order(shape, where: str) -> bool:
    """Warn (and return True) when a stack looks stored as ``(Y, X, Z)``: an in-plane side under :data:`THIN_PX`
    and at most ``1 / DEEP`` of the number of slices (96 slices of 96 x 16 px is more likely 16 slices stored
    z last)."""
    z, y, x = (int(v) for v in shape)
    thin = min(y, x)
    if thin < THIN_PX and thin * DEEP <= z:
        log.warning("%s: %d slices of %d x %d px; is the stack stored (Y, X, Z)? seglearn reads (Z, Y, X)",
                    where, z, y, x)
        return True
    return False


#: a prediction with more than this share of its segmented voxels in one class is named in a warning
ONE_CLASS = 0.98


def one_class_warning(fractions: dict, where: str) -> str | None:
    """The warning (logged, and returned for summary.json) when one class takes more than :data:`ONE_CLASS`
    of the segmented voxels, else None: a 0/1 mask given as an image, or grey values the model does not
    expect, are segmented as one class (100 % pore) with exit code 0."""
    if len(fractions) < 2:
        return None
    name, share = max(fractions.items(), key=lambda kv: kv[1])
    if share <= ONE_CLASS:
        return None
    msg = (f"{where}: {100 * share:.1f} % of the segmented voxels are {name}: is the input what the model expects "
           f"(grey values, contrast, detector order; see summary.json's intensity record)?")
    log.warning(msg)
    return msg


#: a prediction unsure (normalised entropy > 0.5) on more than this share of its segmented voxels is named in a
#: warning: 6-12 % on data/demo and on phantoms of either family, 24-30 % with the contrast inverted
#: (benchmarks/input_sanity.py, table in docs/unet.md)
UNSURE = 0.2


def unsure_warning(share: float, where: str) -> str | None:
    """The warning (logged, and returned for summary.json) when the model is unsure on more than :data:`UNSURE`
    of the segmented voxels, else None."""
    if share <= UNSURE:
        return None
    msg = (f"{where}: the model is unsure (normalised entropy > 0.5) on {100 * share:.0f} % of the segmented voxels; "
           f"is the input what it expects (contrast inverted? grey values far from its training data's?), or does "
           f"it need fine-tuning on scribbles of this volume?")
    log.warning(msg)
    return msg
