"""What every step of a characterisation reads and writes (:class:`Ctx`), and the helpers the step
modules share (:mod:`.steps`, :mod:`.steps_pores`).

A step's plan is ``(tasks, combine)``: the :class:`~seglearn.characterise.parallel.Task` list it is
cut into and a ``combine(results)`` that writes their results into ``ctx.rep``, ``ctx.tables`` and
``ctx.arrays``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from seglearn.characterise.labels import class_id
from seglearn.characterise.parallel import Task


@dataclass
class Ctx:
    """What every step reads: the label volume, its classes and voxel size, the options."""

    lab: np.ndarray  # (Z, Y, X) ids 1..K, 0 = outside
    classes: list
    values: list
    spacing: tuple  # (z, y, x) nm
    roles: dict
    opts: dict
    instances: np.ndarray | None = None
    counts: np.ndarray = field(default=None)  # (K + 1,) voxels of ids 0..K
    rep: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.classes)

    @property
    def vox_um3(self) -> float:
        return float(np.prod(self.spacing)) / 1e9

    @property
    def volume_um3(self) -> float:
        return float(self.counts[1:].sum()) * self.vox_um3

    @property
    def all_ids(self) -> list:
        return list(range(1, self.k + 1))


Plan = tuple[list[Task], Callable[[list], None]]


def phase_ids(choice, classes: Sequence[str], default: Sequence[int]) -> list[int]:
    """Class ids of an option naming phases (``None``: ``default``)."""
    if choice is None:
        return list(default)
    if isinstance(choice, (str, int)):
        choice = [choice]
    return [class_id(classes, c) for c in choice]


def finite(x):
    """``float(x)``, or ``None`` for ``None``, NaN and infinity."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None
