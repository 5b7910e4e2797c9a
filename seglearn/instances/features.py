"""Per-particle features in physical units (seed 004, part 3): size, shape, position, intensity
per detector and the contact network."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from seglearn.io.atomic import atomic_path

log = logging.getLogger("seglearn")

COLUMNS_DOC = {
    "id": "particle id in instances.tif",
    "volume_um3": "voxel count x voxel volume",
    "equivalent_diameter_um": "diameter of the sphere of the same volume",
    "surface_area_um2": "area of the marching-cubes surface of the particle envelope",
    "sphericity": "pi^(1/3) (6 V)^(2/3) / A (1 for a sphere)",
    "axis_1_um, axis_2_um, axis_3_um": "principal axis lengths (longest first) of the ellipsoid with the same second moments",
    "aspect_ratio": "axis_1 / axis_3",
    "centroid_z_um, centroid_y_um, centroid_x_um": "centre of mass",
    "bbox_z0..bbox_x1": "bounding box in voxels, [start, stop)",
    "touches_border": "the particle reaches the volume border (size features are truncated)",
    "mean_<detector>, std_<detector>": "grey value statistics inside the particle",
    "n_neighbours": "number of particles it touches (face-connected voxels)",
}


def contact_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs of particle ids that touch through a voxel face.

    Parameters
    ----------
    labels : (Z, Y, X) or (Y, X) int ndarray

    Returns
    -------
    (n, 2) int64 ndarray
        Unique pairs ``(a, b)`` with ``a < b``.
    """
    labels = np.asarray(labels)
    found = []
    for axis in range(labels.ndim):
        a = np.take(labels, np.arange(labels.shape[axis] - 1), axis=axis).astype(np.int64).ravel()
        b = np.take(labels, np.arange(1, labels.shape[axis]), axis=axis).astype(np.int64).ravel()
        m = (a > 0) & (b > 0) & (a != b)
        if m.any():
            found.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _surface_area(mask: np.ndarray, spacing: Sequence[float]) -> float:
    from skimage.measure import marching_cubes, mesh_surface_area

    padded = np.pad(mask.astype(np.float32), 1)
    if padded.ndim == 2:
        padded = np.stack([np.zeros_like(padded), padded, np.zeros_like(padded)])
    try:
        verts, faces, _, _ = marching_cubes(padded, 0.5, spacing=tuple(spacing))
    except (ValueError, RuntimeError):
        return float("nan")
    return float(mesh_surface_area(verts, faces))


def particle_features(labels: np.ndarray, images: np.ndarray | None = None, *,
                      voxel_size_nm: Sequence[float] = (1.0, 1.0, 1.0),
                      detectors: Sequence[str] | None = None, progress: bool = True):
    """One row of features per particle.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        Particle ids, 0 = none.
    images : (C, Z, Y, X) ndarray, optional
        Detector images for the intensity columns.
    voxel_size_nm : (z, y, x)
    detectors : sequence of str, optional
        Channel names (default ``ch0, ch1, ...``).

    Returns
    -------
    pandas.DataFrame
        Columns described in :data:`COLUMNS_DOC`; lengths in µm.
    """
    import pandas as pd
    from scipy import ndimage as ndi
    from tqdm.auto import tqdm

    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    sp = np.asarray(voxel_size_nm, float) / 1000.0  # µm
    objs = ndi.find_objects(labels.astype(np.int64) if labels.dtype == np.uint64 else labels)
    pairs = contact_pairs(labels)
    n_max = len(objs)
    neighbours = np.bincount(pairs.ravel(), minlength=n_max + 1) if len(pairs) else np.zeros(n_max + 1, int)
    if images is not None:
        images = np.asarray(images)
        detectors = list(detectors) if detectors is not None else [f"ch{i}" for i in range(images.shape[0])]
    rows = []
    for i, sl in enumerate(tqdm(objs, desc="features", disable=not progress, leave=False), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        n = int(mask.sum())
        coords = np.argwhere(mask).astype(float) + [s.start for s in sl]
        phys = coords * sp
        vol = n * float(np.prod(sp))
        area = _surface_area(mask, sp)
        cov = np.cov(phys.T) if n > 1 else np.zeros((3, 3))
        ev = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
        axes = 2 * np.sqrt(5 * ev)  # full axis lengths of the solid ellipsoid with these moments
        row = {"id": i, "n_voxels": n, "volume_um3": vol,
               "equivalent_diameter_um": (6 * vol / np.pi) ** (1 / 3),
               "surface_area_um2": area,
               "sphericity": float(np.pi ** (1 / 3) * (6 * vol) ** (2 / 3) / area) if area > 0 else float("nan"),
               "axis_1_um": axes[0], "axis_2_um": axes[1], "axis_3_um": axes[2],
               "aspect_ratio": float(axes[0] / axes[2]) if axes[2] > 0 else float("nan")}
        c = phys.mean(axis=0)
        row.update({"centroid_z_um": c[0], "centroid_y_um": c[1], "centroid_x_um": c[2]})
        for ax, s in zip("zyx", sl):
            row[f"bbox_{ax}0"], row[f"bbox_{ax}1"] = int(s.start), int(s.stop)
        row["touches_border"] = bool(any(s.start == 0 or s.stop == dim for s, dim in zip(sl, labels.shape)))
        if images is not None:
            for name, ch in zip(detectors, images):
                v = ch[sl][mask].astype(np.float64)
                row[f"mean_{name}"], row[f"std_{name}"] = float(v.mean()), float(v.std())
        row["n_neighbours"] = int(neighbours[i])
        rows.append(row)
    if not rows:
        cols = ["id", "n_voxels", "volume_um3", "equivalent_diameter_um", "surface_area_um2", "sphericity",
                "axis_1_um", "axis_2_um", "axis_3_um", "aspect_ratio", "centroid_z_um", "centroid_y_um",
                "centroid_x_um"] + [f"bbox_{a}{e}" for a in "zyx" for e in "01"] + ["touches_border"]
        cols += [f"{s}_{d}" for d in (detectors or []) for s in ("mean", "std")] + ["n_neighbours"]
        return pd.DataFrame(columns=cols)
    return pd.DataFrame(rows)


def write_features(path: str | os.PathLike, table, *, overwrite: bool = False) -> None:
    """Write the feature table as CSV, atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
