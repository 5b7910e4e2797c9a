"""Interface areas between phases: voxel-face counting and a smooth marching-cubes estimate.

Face counting sums the voxel faces shared by two different phases (exact for the voxel
surface, but 1.5 times the true area of a randomly oriented smooth surface). The marching-cubes
estimate meshes each phase's indicator, lightly smoothed (Gaussian, ``sigma`` voxels, 0.7 by
default: a digital sphere of radius 10-20 voxels then measures within 1 % of ``4 pi r^2``), and
gives every triangle to the phase found just outside it along its normal; the area of a pair is
the mean of what each side's mesh gives it. Only interfaces between voxel centres inside the
volume count, never the faces of the box.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("seglearn")


def face_area_matrix(labels: np.ndarray, n_classes: int, spacing_nm=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Interface area between every pair of classes by counting voxel faces.

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        Ids ``1..K``; faces touching 0 (outside) are not counted.
    n_classes : int
    spacing_nm : (z, y, x) floats
        Voxel size; a face normal to z has area ``y * x``.

    Returns
    -------
    (K, K) float ndarray
        Symmetric, in nm^2, zero diagonal.
    """
    labels = np.asarray(labels)
    k1 = n_classes + 1
    dz, dy, dx = (float(s) for s in spacing_nm)
    face = {0: dy * dx, 1: dz * dx, 2: dz * dy}
    counts = np.zeros((k1, k1), np.float64)
    nz = labels.shape[0]
    step = max(1, int(2**24 // max(1, labels[0].size)))  # blocks of ~16 M voxels bound the memory

    def add(a: np.ndarray, b: np.ndarray, face_nm2: float) -> None:
        diff = a != b
        if diff.any():
            pair = a[diff].astype(np.int64) * k1 + b[diff].astype(np.int64)
            counts.ravel()[:] += np.bincount(pair, minlength=k1 * k1) * face_nm2

    for z0 in range(0, nz, step):
        blk = labels[z0:min(nz, z0 + step + 1)]  # one more slice for the faces normal to z
        core = blk[:step]
        if len(blk) > 1:
            add(blk[:-1], blk[1:], face[0])
        add(core[:, :-1], core[:, 1:], face[1])
        add(core[:, :, :-1], core[:, :, 1:], face[2])
    counts = counts + counts.T
    area = counts[1:, 1:].copy()
    np.fill_diagonal(area, 0.0)
    return area


def _smoothed(mask: np.ndarray, sigma, spacing) -> np.ndarray:
    from scipy import ndimage as ndi

    m = mask.astype(np.float32)
    if sigma and sigma > 0:
        smin = min(spacing)
        m = ndi.gaussian_filter(m, [sigma * smin / s for s in spacing], mode="nearest")
    return m


_CHUNK = 1 << 21


def _assign(labels, k, verts, faces, normals, spacing, shape, probe):
    """Areas (nm^2) of triangles inside the box and the phase each one faces.

    Returns the areas and neighbour ids of the assigned triangles, and the area of triangles that
    still saw their own phase (thin features), left unassigned.
    """
    # corners taken one at a time (a (F, 3, 3) gather and its mean over the short axis cost twice as much)
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    sp32 = spacing.astype(np.float32)
    cen = (v0 + v1 + v2) / (3.0 * sp32)  # voxel coordinates
    inside = np.all((cen >= -0.5) & (cen <= shape - 0.5), axis=1)
    if not inside.all():
        v0, v1, v2, faces, cen = v0[inside], v1[inside], v2[inside], faces[inside], cen[inside]
    v1 -= v0
    v2 -= v0
    area = 0.5 * np.linalg.norm(np.cross(v1, v2), axis=1)
    del v0, v1, v2
    nrm = normals[faces[:, 0]] + normals[faces[:, 1]] + normals[faces[:, 2]]  # from high (inside) to low (outside)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    # normals are in nm space: a step of ``probe`` voxels of the finest axis, in voxel units
    step = nrm * np.float32(probe * spacing.min()) / sp32
    nb = np.zeros(len(area), np.int64)
    todo = np.ones(len(area), bool)
    flat = labels.reshape(-1)
    stride = np.array([shape[1] * shape[2], shape[2], 1], np.intp)
    idx = np.arange(len(area))
    for scale in (1.0, 1.5, 2.0):
        c, st = (cen, step) if len(idx) == len(area) else (cen[idx], step[idx])
        p = np.rint(c + np.float32(scale) * st).astype(np.intp)
        np.clip(p, 0, shape - 1, out=p)
        v = flat[p @ stride].astype(np.int64)
        good = v != k
        nb[idx[good]] = v[good]
        todo[idx[good]] = False
        idx = idx[~good]
        if not len(idx):
            break
    keep = ~todo
    return area[keep], nb[keep], float(area[todo].sum())


def mesh_area_matrix(labels: np.ndarray, n_classes: int, spacing_nm=(1.0, 1.0, 1.0), *,
                     sigma: float, probe: float = 1.0) -> dict:
    """Interface areas from marching-cubes meshes of each phase (``skimage.measure``).

    Parameters
    ----------
    labels : (Z, Y, X) int ndarray
        Ids ``1..K`` (0 = outside: triangles facing it are not given to any pair).
    n_classes : int
    spacing_nm : (z, y, x) floats
    sigma : float
        Gaussian smoothing of each phase indicator in voxels (of the finest axis) before meshing;
        0 meshes the binary mask (about 9 % more area than a smooth sphere).
    probe : float
        How far (voxels) along the outward normal the neighbouring phase is looked up.

    Returns
    -------
    dict
        ``pairs``: (K, K) nm^2 symmetric; ``surface``: (K,) nm^2, each phase's whole mesh area.
    """
    labels = np.asarray(labels)
    per_side = np.zeros((n_classes, n_classes + 1))  # [phase, neighbour id 0..K]
    surface = np.zeros(n_classes)
    for k in range(1, n_classes + 1):
        per_side[k - 1], surface[k - 1] = mesh_phase_areas(labels, k, n_classes, spacing_nm, sigma=sigma, probe=probe)
    return {"pairs": pair_areas(per_side), "surface": surface}


def pair_areas(per_side: np.ndarray) -> np.ndarray:
    """Symmetric ``(K, K)`` pair areas from each phase's areas by neighbour ``(K, K + 1)`` (ids 0..K)."""
    pair = per_side[:, 1:]
    pairs = 0.5 * (pair + pair.T)
    np.fill_diagonal(pairs, 0.0)
    return pairs


def mesh_phase_areas(labels: np.ndarray, k: int, n_classes: int, spacing_nm=(1.0, 1.0, 1.0), *,
                     sigma: float, probe: float = 1.0) -> tuple[np.ndarray, float]:
    """Marching-cubes mesh of phase ``k``: its area by neighbouring id ``(K + 1,)`` nm^2, and its whole area.

    One task of :func:`mesh_area_matrix` (phases can be meshed in parallel).
    """
    from skimage import measure

    spacing = np.asarray([float(s) for s in spacing_nm])
    shape = np.array(labels.shape)
    per_side = np.zeros(n_classes + 1)
    mask = labels == k
    if not mask.any() or mask.all() or min(labels.shape) < 2:
        return per_side, 0.0
    # one replicated voxel around the box so the mesh reaches the outer voxel faces like face
    # counting does; triangles outside the box (centroid beyond the outer faces) are dropped
    vol = np.pad(_smoothed(mask, sigma, spacing), 1, mode="edge")
    del mask
    try:
        verts, faces, normals, _ = measure.marching_cubes(vol, 0.5, spacing=tuple(spacing), allow_degenerate=False)
    except (ValueError, RuntimeError):  # no crossing of the level
        return per_side, 0.0
    del vol
    verts -= spacing
    lost = surface = 0.0
    for f0 in range(0, len(faces), _CHUNK):  # triangles in chunks bound the memory
        a, nb, own = _assign(labels, k, verts, faces[f0:f0 + _CHUNK], normals, spacing, shape, probe)
        surface += a.sum() + own
        lost += own
        per_side += np.bincount(nb, weights=a, minlength=n_classes + 1)
    if lost:
        log.debug("phase %d: %.2f %% of its mesh area found no neighbouring phase", k, 100 * lost / max(surface, 1e-12))
    return per_side, float(surface)
