"""2D microstructure numbers of a ToF-SIMS phase map: fractions, interface lengths, particle shapes.

Small and self-contained on purpose; ``seglearn.characterise`` offers the 3D versions. Label
maps are ``(Z, Y, X)`` with ids ``1..K`` and 0 = not counted; depth scans are measured one by one
(``per_slice``) and summed.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def phase_fractions(labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Area fraction of each id ``1..K`` among the labelled (non-zero) pixels.

    Returns
    -------
    dict
        ``name -> fraction`` (sums to 1 when any pixel is labelled).
    """
    k = len(names)
    counts = np.bincount(labels.ravel(), minlength=k + 1)[1:k + 1].astype(np.float64)
    total = counts.sum()
    return {n: (float(c / total) if total else 0.0) for n, c in zip(names, counts)}


def interface_lengths(labels: np.ndarray, names: Sequence[str], *, pixel_um: float | None = None) -> dict[str, float]:
    """Length of the boundary between each pair of phases, in µm (pixels when ``pixel_um`` is None).

    Counted in each depth scan as the number of 4-connected neighbour pairs (horizontal and
    vertical pixel edges) with ids ``a != b``, both non-zero, times the pixel size. This edge
    count overestimates the length of a smooth diagonal boundary by up to 4/pi (Cauchy-Crofton);
    it is the usual voxel-face measure.

    Returns
    -------
    dict
        ``"a|b" -> length`` for every pair ``a < b`` in the order of ``names``.
    """
    k = len(names)
    lab = labels.astype(np.int64)
    table = np.zeros((k + 1, k + 1), dtype=np.int64)
    for a, b in ((lab[:, :, 1:], lab[:, :, :-1]), (lab[:, 1:, :], lab[:, :-1, :])):
        diff = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[diff], b[diff])
        hi = np.maximum(a[diff], b[diff])
        np.add.at(table, (lo, hi), 1)
    scale = float(pixel_um) if pixel_um else 1.0
    return {f"{names[i - 1]}|{names[j - 1]}": float(table[i, j] * scale)
            for i in range(1, k + 1) for j in range(i + 1, k + 1)}


PARTICLE_COLUMNS = ("slice", "label", "area_px", "area_um2", "equivalent_diameter_um", "major_axis_um",
                    "minor_axis_um", "aspect_ratio", "touches_border")


def particle_table(instances: np.ndarray, *, pixel_um: float | None = None) -> list[dict]:
    """Size and shape of each particle (2D, per depth scan) with :func:`skimage.measure.regionprops`.

    Parameters
    ----------
    instances : (Z, Y, X) int ndarray
        Particle ids (0 = background), unique within each scan.
    pixel_um : float, optional
        Pixel size; lengths are in pixels when None (the ``_um`` columns then hold pixels).

    Returns
    -------
    list of dict
        One row per particle with :data:`PARTICLE_COLUMNS`; ``aspect_ratio`` = major / minor axis
        of the fitted ellipse (>= 1; inf for one-pixel-wide particles).
    """
    from skimage.measure import regionprops

    s = float(pixel_um) if pixel_um else 1.0
    rows = []
    for z, plane in enumerate(instances):
        ny, nx = plane.shape
        for rp in regionprops(plane.astype(np.int64)):
            r0, c0, r1, c1 = rp.bbox
            major = float(rp.axis_major_length)
            minor = float(rp.axis_minor_length)
            rows.append({
                "slice": z, "label": int(rp.label), "area_px": int(rp.area),
                "area_um2": float(rp.area * s * s),
                "equivalent_diameter_um": float(rp.equivalent_diameter_area * s),
                "major_axis_um": major * s, "minor_axis_um": minor * s,
                "aspect_ratio": float(major / minor) if minor > 0 else float("inf"),
                "touches_border": bool(r0 == 0 or c0 == 0 or r1 == ny or c1 == nx),
            })
    return rows


def size_distribution(rows: Sequence[dict], *, bins: int = 10, exclude_border: bool = True) -> dict:
    """Histogram of equivalent diameters and aspect-ratio statistics of a :func:`particle_table`."""
    use = [r for r in rows if not (exclude_border and r["touches_border"])]
    d = np.array([r["equivalent_diameter_um"] for r in use], dtype=np.float64)
    ar = np.array([r["aspect_ratio"] for r in use], dtype=np.float64)
    ar = ar[np.isfinite(ar)]
    if d.size == 0:
        return {"n": 0, "bin_edges_um": [], "counts": [], "d50_um": None, "mean_diameter_um": None,
                "mean_aspect_ratio": None, "median_aspect_ratio": None}
    hist, edges = np.histogram(d, bins=bins)
    area = np.array([r["area_um2"] for r in use])
    order = np.argsort(d)
    cum = np.cumsum(area[order]) / area.sum()
    return {"n": int(d.size), "bin_edges_um": edges.tolist(), "counts": hist.tolist(),
            "d50_um": float(d[order][np.searchsorted(cum, 0.5)]),  # area-weighted median diameter
            "mean_diameter_um": float(d.mean()),
            "mean_aspect_ratio": float(ar.mean()) if ar.size else None,
            "median_aspect_ratio": float(np.median(ar)) if ar.size else None}
