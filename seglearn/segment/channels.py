"""Input channels of the segmenter: detectors plus derived differences, and their normalisation.

A derived channel is named ``"A-B"`` (detector A minus detector B, computed on the raw grey
values); ``derived="auto"`` adds ``SE2-InLens`` when both detectors are present, the most useful
input for finding carbon-binder in FIB-SEM (seed 002). Every channel is mapped to ``[0, 1]`` (clipped) by
robust percentiles fitted on the training volume (:mod:`seglearn.io.normalise`, ``model.percentiles``);
the ranges go into the checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.io.normalise import apply_normalisation, fit_normalisation  # noqa: F401  (the channels' normaliser)

AUTO_DERIVED = (("SE2", "InLens"),)


def resolve_derived(detectors: Sequence[str], derived) -> list[str]:
    """Names of the derived channels for ``detectors``.

    Parameters
    ----------
    detectors : sequence of str
    derived : "auto", None, or sequence of "A-B" str
        ``"auto"``: ``SE2-InLens`` when both exist; None or ``[]``: none.

    Returns
    -------
    list of str
    """
    if derived is None or derived == "none":
        return []
    if isinstance(derived, str) and derived == "auto":
        return [f"{a}-{b}" for a, b in AUTO_DERIVED if a in detectors and b in detectors]
    if isinstance(derived, str):
        derived = [derived]
    out = []
    for name in derived:
        parts = str(name).split("-")
        if len(parts) != 2 or parts[0] not in detectors or parts[1] not in detectors:
            raise InputError(f"derived channel {name!r}: expected 'A-B' with A and B among the detectors {list(detectors)}")
        out.append(str(name))
    return out


def compute_channels(images: np.ndarray, detectors: Sequence[str], derived: Sequence[str],
                     smooth: Sequence[float] | None = None) -> np.ndarray:
    """Stack the detector images and the derived channels as float32.

    Parameters
    ----------
    images : (C, Z, Y, X) ndarray
        Raw detector images in the order of ``detectors``.
    detectors : sequence of str
    derived : sequence of "A-B" str
    smooth : sequence of float, optional
        In-plane Gaussian ``sigma`` (px) per detector, applied before the differences (0 = none;
        fine-tuning sets it for data noisier than the base model's phantoms,
        :mod:`seglearn.pretrain.noise`).

    Returns
    -------
    (C + len(derived), Z, Y, X) float32 ndarray
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != len(detectors):
        raise InputError(f"expected images of shape (C={len(detectors)}, Z, Y, X) for detectors {list(detectors)}, "
                         f"got shape {images.shape}")
    out = np.empty((len(detectors) + len(derived), *images.shape[1:]), dtype=np.float32)
    out[: len(detectors)] = images
    if smooth is not None and any(float(v) > 0 for v in smooth):
        from scipy import ndimage as ndi

        if len(smooth) != len(detectors):
            raise InputError(f"smoothing has {len(smooth)} sigma(s), expected one per detector {list(detectors)}")
        for i, sig in enumerate(smooth):
            if float(sig) > 0:
                out[i] = ndi.gaussian_filter(out[i], (0.0, float(sig), float(sig)))
    for i, name in enumerate(derived):
        a, b = name.split("-")
        np.subtract(out[detectors.index(a)], out[detectors.index(b)], out=out[len(detectors) + i])
    return out
