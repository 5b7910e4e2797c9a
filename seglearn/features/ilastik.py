"""ilastik-style pixel features, computed for a range of slices of a volume (z-chunk + halo).

Per scale ``sigma`` (in-plane voxels; along z it is scaled by the voxel anisotropy in 3D):

``gauss``  Gaussian smoothing
``log``    Laplacian of Gaussian (sum of the second derivatives)
``ggm``    Gaussian gradient magnitude
``dog``    difference of Gaussians ``G(sigma) - G(0.66 sigma)``
``ste``    structure-tensor eigenvalues (gradient at ``sigma``, tensor smoothed at ``sigma / 2``)
``hoge``   Hessian-of-Gaussian eigenvalues

Eigenvalues are sorted largest first (2 in 2D, 3 in 3D). The result for slices ``[z0, z1)``
equals the same slices of the features of the whole volume: the halo along z is the filters'
support and is used only by the z-passes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from seglearn.errors import InputError
from seglearn.features.filters import eigvals_sym2, eigvals_sym3, gaussian_derivatives, kernel_radius, TRUNCATE

SIGMAS = (0.3, 0.7, 1.0, 1.6, 3.5, 5.0, 10.0)
FEATURES = ("gauss", "log", "ggm", "dog", "ste", "hoge")
DOG_RATIO = 0.66
ST_OUTER = 0.5


def scale_sigma(sigma: float, dims: int, anisotropy: float) -> tuple[float, float, float]:
    """Per-axis sigma ``(z, y, x)``: ``z`` is 0 in 2D and ``sigma * anisotropy`` in 3D.

    ``anisotropy`` is ``voxel_y / voxel_z`` (< 1 when slices are thicker than pixels).
    """
    return (float(sigma) * anisotropy if dims == 3 else 0.0, float(sigma), float(sigma))


def n_eig(dims: int) -> int:
    return 3 if dims == 3 else 2


def feature_names(prefix: str, sigmas: Sequence[float], features: Sequence[str], dims: int) -> list[str]:
    """Names of the features :func:`ilastik_features` returns, in order."""
    names = []
    for s in sigmas:
        for f in features:
            if f in ("ste", "hoge"):
                names += [f"{prefix}{f}{i}_s{s:g}" for i in range(n_eig(dims))]
            else:
                names.append(f"{prefix}{f}_s{s:g}")
    return names


def halo(sigmas: Sequence[float], features: Sequence[str], dims: int, anisotropy: float) -> int:
    """Slices of context along z that :func:`ilastik_features` needs on each side."""
    if dims == 2:
        return 0
    h = 0
    for s in sigmas:
        sz = scale_sigma(s, dims, anisotropy)[0]
        r = kernel_radius(sz) + 1
        if "ste" in features:
            r += kernel_radius(sz * ST_OUTER)
        h = max(h, r)
    return h


def _check(features: Sequence[str], dims: int) -> None:
    bad = [f for f in features if f not in FEATURES]
    if bad:
        raise InputError(f"unknown ilastik feature(s) {bad}; known: {list(FEATURES)}")
    if dims not in (2, 3):
        raise InputError(f"feature dims must be 2 or 3, got {dims}")


def ilastik_features(volume: np.ndarray, z0: int = 0, z1: int | None = None, *,
                     sigmas: Sequence[float] = SIGMAS, features: Sequence[str] = FEATURES,
                     dims: int = 3, anisotropy: float = 1.0) -> np.ndarray:
    """Features of slices ``[z0, z1)`` of one grey volume.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        One input (a detector, or a difference of detectors); cast to float32.
    z0, z1 : int
        Slice range to return (default: all).
    sigmas, features, dims, anisotropy
        See the module docstring and :func:`scale_sigma`.

    Returns
    -------
    (F, z1 - z0, Y, X) float32 ndarray
        In the order of :func:`feature_names`.
    """
    _check(features, dims)
    z_n = volume.shape[0]
    z1 = z_n if z1 is None else z1
    if not 0 <= z0 < z1 <= z_n:
        raise InputError(f"slice range [{z0}, {z1}) outside a volume of {z_n} slices")
    n = z1 - z0
    out = []
    for s in sigmas:
        sig = scale_sigma(s, dims, anisotropy)
        r_in = kernel_radius(sig[0]) + 1 if dims == 3 else 0
        r_out = kernel_radius(sig[0] * ST_OUTER) if (dims == 3 and "ste" in features) else 0
        b0, b1 = max(z0 - r_in - r_out, 0), min(z1 + r_in + r_out, z_n)
        block = np.asarray(volume[b0:b1], dtype=np.float32)
        crop = (z0 - b0, z0 - b0 + n)
        need: set[tuple[int, int, int]] = set()
        want_grad = any(f in features for f in ("ggm", "ste"))
        want_hess = any(f in features for f in ("log", "hoge"))
        if any(f in features for f in ("gauss", "dog")):
            need.add((0, 0, 0))
        axes = range(3) if dims == 3 else range(1, 3)
        unit = [tuple(int(i == a) for i in range(3)) for a in axes]
        if want_grad and "ggm" in features:
            need.update(unit)
        if want_hess:
            for i, a in enumerate(axes):
                for b in list(axes)[i:]:
                    need.add(tuple(int(k == a) + int(k == b) for k in range(3)))
        d = gaussian_derivatives(block, sig, sorted(need), crop=crop) if need else {}
        for f in features:
            if f == "gauss":
                out.append(d[(0, 0, 0)])
            elif f == "log":
                out.append(sum(d[tuple(2 * int(k == a) for k in range(3))] for a in axes).astype(np.float32))
            elif f == "ggm":
                out.append(np.sqrt(sum(d[u] ** 2 for u in unit)).astype(np.float32))
            elif f == "dog":
                small = tuple(v * DOG_RATIO for v in sig)
                g2 = gaussian_derivatives(block, small, [(0, 0, 0)], crop=crop)[(0, 0, 0)]
                out.append(d[(0, 0, 0)] - g2)
            elif f == "ste":
                out.extend(_structure_eigs(block, sig, axes, unit, z0 - b0, n, r_out))
            elif f == "hoge":
                h = {}
                for i, a in enumerate(axes):
                    for b in list(axes)[i:]:
                        h[(a, b)] = d[tuple(int(k == a) + int(k == b) for k in range(3))]
                out.extend(_eigs(h, axes))
    return np.stack(out) if out else np.zeros((0, n) + volume.shape[1:], np.float32)


def _eigs(t: dict, axes) -> tuple:
    ax = list(axes)
    if len(ax) == 3:
        return eigvals_sym3(t[(0, 0)], t[(0, 1)], t[(0, 2)], t[(1, 1)], t[(1, 2)], t[(2, 2)])
    return eigvals_sym2(t[(1, 1)], t[(1, 2)], t[(2, 2)])


def _structure_eigs(block, sig, axes, unit, start, n, r_out):
    """Structure tensor: products of Gaussian gradients, smoothed at ``ST_OUTER * sigma``."""
    keep = (max(start - r_out, 0), min(start + n + r_out, block.shape[0]))
    grads = gaussian_derivatives(block, sig, unit, crop=keep)
    g = {a: grads[u] for a, u in zip(axes, unit)}
    outer = tuple(v * ST_OUTER for v in sig)
    inner_crop = (start - keep[0], start - keep[0] + n)
    t = {}
    ax = list(axes)
    for i, a in enumerate(ax):
        for b in ax[i:]:
            t[(a, b)] = gaussian_derivatives(g[a] * g[b], outer, [(0, 0, 0)], crop=inner_crop)[(0, 0, 0)]
    return _eigs(t, axes)
