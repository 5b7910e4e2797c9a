"""Per-particle sizes and aspect ratios from an instance volume (``skimage.measure.regionprops``)."""

from __future__ import annotations

import numpy as np


def particle_table(instances: np.ndarray, spacing_nm=(1.0, 1.0, 1.0), *, exclude_border: bool = False,
                   min_voxels: int = 1) -> dict:
    """Size and shape of every particle.

    Parameters
    ----------
    instances : (Z, Y, X) int ndarray
        0 = background, one id per particle.
    spacing_nm : (z, y, x) floats
    exclude_border : bool
        Leave out particles cut by the box.
    min_voxels : int
        Smaller particles are left out.

    Returns
    -------
    dict of (n,) ndarrays
        ``id``, ``voxels``, ``volume_um3``, ``equivalent_diameter_um`` (sphere of the same volume),
        ``major_axis_um``, ``minor_axis_um`` (of the inertia ellipsoid), ``aspect_ratio``
        (major / minor, 1 for a sphere), ``centroid_z_um``, ``centroid_y_um``, ``centroid_x_um``,
        ``touches_border``.
    """
    from skimage.measure import regionprops

    inst = np.asarray(instances)
    if inst.dtype.kind not in "ui":
        inst = inst.astype(np.int64)
    spacing = tuple(float(s) for s in spacing_nm)
    vox_um3 = float(np.prod(spacing)) / 1e9
    cols: dict[str, list] = {k: [] for k in ("id", "voxels", "volume_um3", "equivalent_diameter_um",
                                              "major_axis_um", "minor_axis_um", "aspect_ratio",
                                              "centroid_z_um", "centroid_y_um", "centroid_x_um",
                                              "touches_border")}
    shape = inst.shape
    for rp in regionprops(inst, spacing=spacing):
        n = int(rp.num_pixels) if hasattr(rp, "num_pixels") else int(rp.area / (vox_um3 * 1e9))
        if n < min_voxels:
            continue
        bb = rp.bbox
        border = any(bb[a] == 0 or bb[a + 3] == shape[a] for a in range(3))
        if exclude_border and border:
            continue
        vol = n * vox_um3
        try:
            ev = np.sort(np.linalg.eigvalsh(rp.inertia_tensor))[::-1]
            # axis lengths of the solid ellipsoid with this inertia tensor
            ev = np.clip(ev, 0, None)
            a2 = 2.5 * np.clip(ev[1] + ev[2] - ev[0], 0, None)
            c2 = 2.5 * np.clip(ev[0] + ev[1] - ev[2], 0, None)
            major, minor = 2 * np.sqrt(c2) / 1e3, 2 * np.sqrt(a2) / 1e3
        except (ValueError, np.linalg.LinAlgError):
            major = minor = float("nan")
        # a single voxel or a flat particle has a zero axis: use one voxel as the smallest size
        minor = max(minor, min(spacing) / 1e3)
        major = max(major, minor)
        cz, cy, cx = (float(c) / 1e3 for c in rp.centroid)
        for k, v in (("id", rp.label), ("voxels", n), ("volume_um3", vol),
                     ("equivalent_diameter_um", (6 * vol / np.pi) ** (1 / 3)), ("major_axis_um", major),
                     ("minor_axis_um", minor), ("aspect_ratio", major / minor), ("centroid_z_um", cz),
                     ("centroid_y_um", cy), ("centroid_x_um", cx), ("touches_border", border)):
            cols[k].append(v)
    return {k: np.asarray(v) for k, v in cols.items()}
