"""Continuous size distributions (local thickness / granulometry) and sphere intrusion.

Both sweep a ball radius ``r`` over one phase; at each radius the ball centres are the erosion of the
phase by the ball and the covered voxels their dilation (exact Euclidean balls, see
:func:`~seglearn.characterise.morph.dilate`):

- *opening* (continuous size distribution, c-PSD, Münch & Holzer 2008): the phase voxels covered
  by some ball of radius ``r`` that fits in the phase, ``dilate(erode(phase, r), r)``. A voxel's local
  thickness is ``2 r`` for the largest such ``r`` (the diameter of the largest inscribed ball
  holding it). The opened fraction against ``r`` is the granulometry curve.
- *intrusion* (simulated mercury intrusion, MIP-PSD): the same balls, but only those whose centres
  connect to an inlet (a face of the box or any seed mask), i.e. spheres pushed in from outside.

``r50`` of each curve is the radius at which half the phase volume is covered; constrictivity is
``beta = (r50_intrusion / r50_opening) ** 2`` (Stenzel et al. 2016; seed 002: the bottleneck of
pore paths). Local thickness of a digital shape is within one voxel of the continuous value.
"""

from __future__ import annotations

import logging

import numpy as np

from seglearn.characterise.morph import connected_to, dilate, erode, face_mask, radii_grid

log = logging.getLogger("seglearn")


def _r50(radii: np.ndarray, covered: np.ndarray) -> float | None:
    """Largest radius at which at least half the phase is covered (linear interpolation)."""
    if len(radii) == 0 or covered[0] < 0.5:
        return None
    below = np.nonzero(covered < 0.5)[0]
    if len(below) == 0:
        return float(radii[-1])
    i = below[0]
    r0, r1, c0, c1 = radii[i - 1], radii[i], covered[i - 1], covered[i]
    return float(r0 + (c0 - 0.5) / max(c0 - c1, 1e-12) * (r1 - r0))


def size_distribution(mask: np.ndarray, spacing_nm=(1.0, 1.0, 1.0), *, radii_nm=None, n_linear: int | None = None,
                      growth: float | None = None, max_radius_nm: float | None = None,
                      inlet: np.ndarray | None = None, progress: bool = False) -> dict:
    """Local thickness, granulometry and (with ``inlet``) the intrusion curve of one phase.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
        The phase.
    spacing_nm : (z, y, x) floats
    radii_nm : sequence of float, optional
        Radii to try; without them (then ``n_linear`` and ``growth`` are needed: ``sizes:`` of
        configs/characterise.yaml) one-voxel steps for ``n_linear`` voxels, then steps of
        ``growth``, until no ball fits (or ``max_radius_nm``, default half the largest box side).
    inlet : (Z, Y, X) bool ndarray, optional
        Where intruding spheres come from (e.g. :func:`~seglearn.characterise.morph.face_mask`).
    progress : bool
        Show a progress bar over radii.

    Returns
    -------
    dict
        ``radius_nm`` (m,); ``opened`` (m,) fraction of the phase covered by balls of radius >= r;
        ``intruded`` (m,) or None; ``local_thickness_nm`` (Z, Y, X) float32 diameters (0 outside);
        ``r50_opening_nm``, ``r50_intrusion_nm``, ``constrictivity``; ``mean_diameter_nm`` (volume-
        weighted mean local thickness).
    """
    mask = np.asarray(mask, bool)
    spacing = tuple(float(s) for s in spacing_nm)
    lt = np.zeros(mask.shape, np.float32)
    if not mask.any():
        return {"radius_nm": np.zeros(0), "opened": np.zeros(0), "intruded": None, "local_thickness_nm": lt,
                "r50_opening_nm": None, "r50_intrusion_nm": None, "constrictivity": None,
                "mean_diameter_nm": None}
    if radii_nm is None and (n_linear is None or growth is None):
        raise ValueError("size_distribution: give radii_nm, or n_linear and growth")
    top = max_radius_nm or 0.5 * max(n * s for n, s in zip(mask.shape, spacing))
    radii = (np.sort(np.asarray(radii_nm, float)) if radii_nm is not None
             else radii_grid(top, spacing, n_linear=n_linear, growth=growth))
    radii, intruded = _sweep(mask, radii[radii > 0], spacing, lt, inlet, progress)
    vals = lt[mask]
    # opened fraction from the local thickness, so the curve is monotone (a digital ball of radius
    # r + 1 is not always covered by balls of radius r)
    opened = np.array([(vals >= np.float32(2 * r)).mean() for r in radii])
    if intruded is not None:
        intruded = np.minimum.accumulate(np.minimum(intruded, opened))
    r50o = _r50(radii, opened)
    r50i = _r50(radii, intruded) if intruded is not None else None
    beta = None
    if intruded is not None:
        beta = float((r50i / r50o) ** 2) if (r50i is not None and r50o) else 0.0
    return {"radius_nm": radii, "opened": opened, "intruded": intruded, "local_thickness_nm": lt,
            "r50_opening_nm": r50o, "r50_intrusion_nm": r50i, "constrictivity": beta,
            "mean_diameter_nm": float(vals.mean()) if vals.size else None}


def _sweep(mask, radii, spacing, lt, inlet, progress):
    """Open ``mask`` by each radius in turn, writing ``lt``; the radii up to the first empty one, the intrusion."""
    total = int(mask.sum())
    intruded = np.zeros(len(radii)) if inlet is not None else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(radii), desc="size distribution", unit="radius", leave=False)
    used = len(radii)
    for i, r in enumerate(radii):
        centres = erode(mask, r, spacing)
        if not centres.any():
            used = i
            break
        cover = dilate(centres, r, spacing) & mask
        lt[cover] = 2 * r
        if inlet is not None:
            reach = connected_to(centres, inlet)
            if reach.sum() == centres.sum():
                intruded[i] = cover.sum() / total
            elif reach.any():
                intruded[i] = (dilate(reach, r, spacing) & mask).sum() / total
        del cover, centres
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    # keep the first empty radius as the end of the curve (covered fraction 0)
    radii = radii[: min(used + 1, len(radii))]
    return radii, (None if intruded is None else intruded[: len(radii)])


def sample_box(shape, axis: int, max_voxels: int | None) -> tuple[slice, ...]:
    """The sampled column of a volume: its whole extent along ``axis``, a central square window across.

    The whole volume when it has at most ``max_voxels`` voxels (or ``max_voxels`` is None).
    """
    shape = tuple(int(n) for n in shape)
    if not max_voxels or int(np.prod(shape)) <= int(max_voxels):
        return tuple(slice(0, n) for n in shape)
    other = [a for a in range(3) if a != axis]
    w = max(1, int(np.sqrt(float(max_voxels) / shape[axis])))
    box = [slice(0, n) for n in shape]
    for a in other:
        width = min(w, shape[a])
        lo = (shape[a] - width) // 2
        box[a] = slice(lo, lo + width)
    return tuple(box)


def sampled_size_distribution(labels: np.ndarray, phase: int, spacing_nm, *, n_linear: int, growth: float,
                              inlet: str | None, max_voxels: int | None, progress: bool = False) -> dict:
    """:func:`size_distribution` of one phase of ``labels`` on the sampled column of :func:`sample_box`.

    The column spans the whole volume along the inlet face's axis (z for ``z0`` and without an
    inlet), so intrusion still comes from the real face; across it a central window keeps the
    volume at ``max_voxels``. Its faces are open like the box's. The error this adds is measured in
    docs/characterise.md. Returns the dict of :func:`size_distribution` without the local thickness,
    with ``box`` (the column's ``[start, stop]`` per axis).
    """
    axis = "zyx".index(inlet[0]) if inlet and inlet != "all" else 0
    box = sample_box(labels.shape, axis, max_voxels)
    mask = np.ascontiguousarray(labels[box] == phase)
    seeds = face_mask(mask.shape, inlet) if inlet else None
    r = size_distribution(mask, spacing_nm, n_linear=n_linear, growth=growth, inlet=seeds, progress=progress,
                          max_radius_nm=0.5 * max(n * float(s) for n, s in zip(labels.shape, spacing_nm)))
    r.pop("local_thickness_nm")
    r["box"] = [[b.start, b.stop] for b in box]
    return r


def thickness_histogram(local_thickness: np.ndarray, mask: np.ndarray, radii_nm: np.ndarray) -> dict:
    """Volume fraction of the phase per local-thickness diameter ``2 r`` (the c-PSD density)."""
    vals = local_thickness[mask]
    diam = 2 * np.asarray(radii_nm)
    frac = np.array([(vals == d).sum() for d in diam.astype(np.float32)], float) / max(vals.size, 1)
    return {"diameter_nm": diam, "volume_fraction": frac}
