"""Test-time augmentation: average a network's probabilities over in-plane flips and rotations.

The transforms act on the last two axes (Y, X) of a tile batch, so they leave the z context of
2.5D and 3D networks alone (FIB-SEM physics is not symmetric along z: shine-through comes from
behind the face). ``flips`` = identity, x flip, y flip, both (4 passes); ``dihedral`` adds the
four transposed versions (8 passes, the in-plane symmetry group of the square grid).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from seglearn.errors import InputError

#: (transpose, flip_y, flip_x) per pass
MODES: dict[str, list[tuple[bool, bool, bool]]] = {
    "none": [(False, False, False)],
    "flips": [(False, fy, fx) for fy in (False, True) for fx in (False, True)],
    "dihedral": [(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)],
}


def check_mode(mode: str | None) -> str:
    """``mode`` (``None`` = ``"none"``) checked against :data:`MODES`."""
    mode = "none" if mode in (None, False, "") else str(mode)
    if mode not in MODES:
        raise InputError(f"tta must be one of {sorted(MODES)}, got {mode!r}")
    return mode


def _forward(a: np.ndarray, t: bool, fy: bool, fx: bool) -> np.ndarray:
    if t:
        a = np.swapaxes(a, -1, -2)
    if fy:
        a = a[..., ::-1, :]
    if fx:
        a = a[..., ::-1]
    return a


def _backward(a: np.ndarray, t: bool, fy: bool, fx: bool) -> np.ndarray:
    if fx:
        a = a[..., ::-1]
    if fy:
        a = a[..., ::-1, :]
    if t:
        a = np.swapaxes(a, -1, -2)
    return a


def tta_net_fn(fn: Callable[[np.ndarray], np.ndarray], mode: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap ``fn`` (``(B, C, Z, Y, X)`` -> probabilities ``(B, K, z, Y, X)``) with test-time augmentation.

    Parameters
    ----------
    fn : callable
        A tile function as made by :func:`seglearn.segment.api.torch_net_fn`.
    mode : {"none", "flips", "dihedral"} or None

    Returns
    -------
    callable
        ``fn`` itself for ``"none"``; else a function returning the mean of the back-transformed
        probabilities over the passes of :data:`MODES` ``[mode]``.
    """
    passes = MODES[check_mode(mode)]
    if len(passes) == 1:
        return fn

    def averaged(batch: np.ndarray) -> np.ndarray:
        total = None
        for t, fy, fx in passes:
            p = _backward(fn(np.ascontiguousarray(_forward(batch, t, fy, fx))), t, fy, fx)
            total = p.astype(np.float32, copy=True) if total is None else total + p
        return total / len(passes)

    return averaged
