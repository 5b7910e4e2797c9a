"""Inner pores of particles by a rolling ball, and the local solid fraction against depth in a particle.

Seed 002 section 3.7.1: every void voxel that a ball of radius ``r`` (0.15 µm there) rolling in from
outside cannot reach is an inner pore of the particle; the particle is its solid plus its inner pores,
and its solid fraction is solid / particle. "Outside" is the faces of the box: ball centres must
connect to them through the void. The local solid fraction is then measured in shells at distance
``delta .. delta + step`` from the particle boundary (Fig. 6a), with its cumulative version.
"""

from __future__ import annotations

import numpy as np

from seglearn.characterise.morph import connected_to, dilate, distance_inside, face_mask


def inner_pores(solid: np.ndarray, radius_nm: float, spacing_nm=(1.0, 1.0, 1.0), *,
                outside: np.ndarray | None = None) -> dict:
    """Split the void into what a rolling ball of ``radius_nm`` reaches and the inner pores.

    Parameters
    ----------
    solid : (Z, Y, X) bool ndarray
        The particle material (e.g. the active material).
    radius_nm : float
        Ball radius.
    spacing_nm : (z, y, x) floats
    outside : (Z, Y, X) bool ndarray, optional
        Where the ball comes from (default: the six faces of the box).

    Returns
    -------
    dict
        ``inner`` (Z, Y, X) bool; ``particle`` = solid | inner; ``solid_fraction`` of the particle;
        ``inner_fraction_of_void``.
    """
    solid = np.asarray(solid, bool)
    void = ~solid
    seeds = face_mask(solid.shape, "all") if outside is None else np.asarray(outside, bool)
    # a ball of radius r centred at c fits in the void when every solid voxel is at >= r from c
    centres = distance_inside(void, spacing_nm) >= radius_nm
    reach = connected_to(centres, seeds)
    reached = dilate(reach, radius_nm, spacing_nm) & void if radius_nm > 0 else void
    if radius_nm <= 0:
        reached = connected_to(void, seeds)
    inner = void & ~reached
    particle = solid | inner
    n_p = int(particle.sum())
    return {"inner": inner, "particle": particle,
            "solid_fraction": float(solid.sum() / n_p) if n_p else None,
            "inner_fraction_of_void": float(inner.sum() / max(int(void.sum()), 1))}


def fraction_vs_boundary_distance(solid: np.ndarray, particle: np.ndarray, spacing_nm=(1.0, 1.0, 1.0), *,
                                  step_nm: float | None = None, max_nm: float | None = None) -> dict:
    """Local solid fraction in shells at distance ``delta`` from the particle boundary (seed 002 Fig. 6a).

    Parameters
    ----------
    solid, particle : (Z, Y, X) bool ndarray
        The solid and the particle (solid plus inner pores) it lies in.
    step_nm : float, optional
        Shell thickness (default: the finest voxel size).
    max_nm : float, optional
        Largest distance (default: the deepest voxel).

    Returns
    -------
    dict
        ``delta_nm`` (n,) shell starts; ``local`` (n,) solid fraction in ``[delta, delta + step)``;
        ``cumulative`` (n,) solid fraction of all particle voxels closer than ``delta + step``;
        ``voxels`` (n,) particle voxels per shell.
    """
    particle = np.asarray(particle, bool)
    solid = np.asarray(solid, bool) & particle
    step = float(step_nm or min(spacing_nm))
    if not particle.any():
        return {"delta_nm": np.zeros(0), "local": np.zeros(0), "cumulative": np.zeros(0), "voxels": np.zeros(0, int)}
    d = distance_inside(particle, spacing_nm)
    # distance from the boundary surface: the outermost voxel layer is at half a voxel
    vals = d[particle]
    if not np.isfinite(vals).all():
        vals = np.where(np.isfinite(vals), vals, 0.0)
    depth = np.maximum(vals - 0.5 * min(spacing_nm), 0.0)
    top = float(max_nm) if max_nm else float(depth.max()) + step
    nb = max(1, int(np.ceil(top / step)))
    idx = np.minimum((depth / step).astype(np.int64), nb)
    tot = np.bincount(idx, minlength=nb + 1)[:nb]
    sol = np.bincount(idx, weights=solid[particle].astype(float), minlength=nb + 1)[:nb]
    with np.errstate(invalid="ignore", divide="ignore"):
        local = np.where(tot > 0, sol / np.maximum(tot, 1), np.nan)
        cum = np.cumsum(sol) / np.maximum(np.cumsum(tot), 1)
    return {"delta_nm": np.arange(nb) * step, "local": local, "cumulative": cum, "voxels": tot}
