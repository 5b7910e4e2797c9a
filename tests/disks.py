"""Small label images of touching disks, shared by the instance tests."""

from __future__ import annotations

import numpy as np


def disks(shape=(64, 64), spec=((16, 16, 10), (40, 40, 12), (18, 44, 8))) -> np.ndarray:
    """``(Y, X)`` int32 labels ``1..len(spec)``, one disk ``(cy, cx, r)`` each (later ones on top)."""
    from skimage.draw import disk

    lbl = np.zeros(shape, np.int32)
    for k, (cy, cx, r) in enumerate(spec, 1):
        rr, cc = disk((cy, cx), r, shape=shape)
        lbl[rr, cc] = k
    return lbl
