"""Three-phase electrode microstructures: NMC-like secondary particles, carbon-binder, pores.

Class ids: 1 pore, 2 carbon-binder (CBD), 3 active material (AM). Geometry is drawn in
physical units (nm) and sampled on the anisotropic grid ``voxel_size_nm = (z, y, x)``.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.synth.config import PhantomConfig
from seglearn.synth.fields import smooth_noise

log = logging.getLogger("seglearn")

PORE, CBD, AM = 1, 2, 3


def _place_particles(cfg: PhantomConfig, rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """Random sequential addition of spheres (centre nm, radius nm), touching allowed."""
    extent = np.array(cfg.shape, dtype=float) * np.array(cfg.voxel_size_nm)
    r_mean = cfg.particle_radius_nm
    sigma = np.sqrt(np.log(1 + cfg.particle_radius_cv**2))
    mu = np.log(r_mean) - sigma**2 / 2
    volume = float(np.prod(extent))
    # overlap and the border eat some volume: aim a bit higher, the caller trims by fraction
    target = cfg.am_fraction * volume * 1.15
    centres: list[np.ndarray] = []
    radii: list[float] = []
    placed, tries = 0.0, 0
    while placed < target and tries < 20000:
        tries += 1
        r = float(np.clip(rng.lognormal(mu, sigma), 0.4 * r_mean, 2.5 * r_mean))
        c = rng.uniform(-0.5 * r, extent + 0.5 * r)
        if centres:
            d = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(d < cfg.particle_min_gap * (np.asarray(radii) + r)):
                continue
        centres.append(c)
        radii.append(r)
        inside = np.prod(np.clip((np.minimum(c + r, extent) - np.maximum(c - r, 0)) / (2 * r), 0, 1))
        placed += 4.0 / 3.0 * np.pi * r**3 * 0.85 * inside
    return list(zip(centres, radii))


def _rasterise(cfg: PhantomConfig, particles, rng: np.random.Generator) -> np.ndarray:
    """Instance ids (uint32, 0 = none) from rough spheres; a voxel goes to its nearest surface."""
    shape = cfg.shape
    vs = np.asarray(cfg.voxel_size_nm, dtype=np.float32)
    best = np.full(shape, np.inf, dtype=np.float32)
    inst = np.zeros(shape, dtype=np.uint32)
    for idx, (c, r) in enumerate(particles, start=1):
        rmax = r * (1 + 3 * cfg.surface_roughness)
        lo = np.maximum(np.floor((c - rmax) / vs).astype(int), 0)
        hi = np.minimum(np.ceil((c + rmax) / vs).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = (np.arange(lo[i], hi[i], dtype=np.float32) * vs[i] + vs[i] / 2 - c[i] for i in range(3))
        dz, dy, dx = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
        dist = np.sqrt(dz**2 + dy**2 + dx**2) + 1e-6
        # smooth random surface: a few cosine bumps over directions
        rough = np.zeros_like(dist)
        for _ in range(4):
            v = rng.standard_normal(3)
            v /= np.linalg.norm(v)
            freq = rng.uniform(1.5, 4.0)
            phase = rng.uniform(0, 2 * np.pi)
            cosang = (dz * v[0] + dy * v[1] + dx * v[2]) / dist
            rough += np.cos(freq * np.arccos(np.clip(cosang, -1, 1)) + phase)
        reff = r * (1 + cfg.surface_roughness * rough / 2.0)
        nd = dist / reff
        sl = tuple(slice(lo[i], hi[i]) for i in range(3))
        take = (nd < 1.0) & (nd < best[sl])
        best[sl][take] = nd[take]
        inst[sl][take] = idx
    return inst


def _carve_particles(cfg: PhantomConfig, labels: np.ndarray, inst: np.ndarray, particles,
                     rng: np.random.Generator) -> None:
    """Inner pores and cracks inside particles (set to pore, instance ids kept)."""
    vs = np.asarray(cfg.voxel_size_nm, dtype=np.float32)
    shape = np.array(labels.shape)
    for idx, (c, r) in enumerate(particles, start=1):
        n_pores = rng.poisson(cfg.inner_pores_per_particle * (r / cfg.particle_radius_nm) ** 2)
        for _ in range(n_pores):
            u = rng.standard_normal(3)
            u /= np.linalg.norm(u)
            pc = c + u * r * rng.uniform(0.0, 0.7)
            pr = cfg.inner_pore_radius_nm * rng.uniform(0.6, 1.6)
            lo = np.maximum(np.floor((pc - pr) / vs).astype(int), 0)
            hi = np.minimum(np.ceil((pc + pr) / vs).astype(int) + 1, shape)
            if np.any(hi <= lo):
                continue
            zz, yy, xx = (np.arange(lo[i], hi[i]) * vs[i] + vs[i] / 2 - pc[i] for i in range(3))
            dz, dy, dx = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
            sl = tuple(slice(lo[i], hi[i]) for i in range(3))
            hole = (dz**2 + dy**2 + dx**2 < pr**2) & (inst[sl] == idx)
            labels[sl][hole] = PORE
        if rng.random() < cfg.crack_probability:
            n = rng.standard_normal(3)
            n /= np.linalg.norm(n)
            lo = np.maximum(np.floor((c - r) / vs).astype(int), 0)
            hi = np.minimum(np.ceil((c + r) / vs).astype(int) + 1, shape)
            if np.any(hi <= lo):
                continue
            zz, yy, xx = (np.arange(lo[i], hi[i]) * vs[i] + vs[i] / 2 - c[i] for i in range(3))
            dz, dy, dx = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
            off = rng.uniform(-0.3, 0.3) * r
            plane = np.abs(dz * n[0] + dy * n[1] + dx * n[2] - off)
            rad = np.sqrt(dz**2 + dy**2 + dx**2)
            width = cfg.crack_width_nm * (1.0 - rad / (1.2 * r)).clip(0.2, 1.0)
            sl = tuple(slice(lo[i], hi[i]) for i in range(3))
            crack = (plane < width / 2 + vs.min() / 2) & (rad < 0.85 * r) & (inst[sl] == idx)
            labels[sl][crack] = PORE


def _add_cbd(cfg: PhantomConfig, labels: np.ndarray, rng: np.random.Generator) -> None:
    """Carbon-binder: a finely porous coating around particles that bridges the necks."""
    vs = np.asarray(cfg.voxel_size_nm, dtype=np.float32)
    solid = labels == AM
    dist = ndi.distance_transform_edt(~solid, sampling=vs).astype(np.float32)
    corr = np.maximum(120.0 / vs, 1.0)  # ~120 nm correlation length
    g = smooth_noise(labels.shape, corr, rng)
    free = labels == PORE
    # pores inside particles (cracks, inner pores) are not coated: only the outer pore space
    outer = ndi.binary_opening(free, iterations=1) | free
    score = dist / np.exp(cfg.cbd_patchiness * g)
    cand = outer & ~solid
    n_target = int(round(cfg.cbd_fraction / max(1e-6, 1 - cfg.cbd_porosity) * labels.size))
    vals = score[cand]
    if n_target <= 0 or vals.size == 0:
        return
    thr = np.partition(vals, min(n_target, vals.size - 1))[min(n_target, vals.size - 1)]
    cbd = cand & (score <= thr)
    # fine porosity inside the binder network
    fine = smooth_noise(labels.shape, np.maximum(20.0 / vs, 0.6), rng)
    cut = np.quantile(fine[cbd], cfg.cbd_porosity) if cbd.any() and cfg.cbd_porosity > 0 else -np.inf
    cbd &= fine > cut
    labels[cbd] = CBD


def generate_microstructure(cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a three-phase microstructure.

    Returns
    -------
    labels : (Z, Y, X) uint8
        1 pore, 2 carbon-binder, 3 active material.
    instances : (Z, Y, X) uint32
        Particle ids (the particle envelope, inner pores and cracks included), 0 = none.
    """
    particles = _place_particles(cfg, rng)
    inst = _rasterise(cfg, particles, rng)
    # trim particles (largest ids last) until the AM fraction is close to the target
    labels = np.where(inst > 0, AM, PORE).astype(np.uint8)
    frac = (labels == AM).mean()
    if frac > cfg.am_fraction * 1.04:
        sizes = np.bincount(inst.ravel())
        order = rng.permutation(np.arange(1, len(sizes)))
        excess = int((frac - cfg.am_fraction) * labels.size)
        drop = []
        for pid in order:
            if excess <= 0:
                break
            if sizes[pid] and sizes[pid] <= 2 * excess:
                drop.append(pid)
                excess -= sizes[pid]
        if drop:
            remove = np.isin(inst, drop)
            inst[remove] = 0
            labels[remove] = PORE
    # relabel ids consecutively
    ids = np.unique(inst)
    ids = ids[ids > 0]
    lut = np.zeros(int(inst.max()) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    inst = lut[inst]
    kept = [particles[i - 1] for i in ids]
    _carve_particles(cfg, labels, inst, kept, rng)
    _add_cbd(cfg, labels, rng)
    return labels, inst


def microstructure_from_volume(volume: np.ndarray, cfg: PhantomConfig, path: str = "source") -> tuple[np.ndarray, np.ndarray]:
    """Map a segmented volume (grey values of pore, CBD, AM) to ids 1..3 and find particles.

    Parameters
    ----------
    volume : (Z, Y, X) int ndarray
        Segmented volume; by default its sorted distinct values are taken as pore, AM, CBD when
        there are three values ordered as in taufactor's electrode (0 pore, 85 NMC, 170 CBD);
        give ``source_classes`` (pore, cbd, am values) to say otherwise.
    """
    values = np.unique(volume)
    if cfg.source_classes is not None:
        pore_v, cbd_v, am_v = cfg.source_classes
    elif len(values) == 3:
        pore_v, am_v, cbd_v = values  # taufactor/ImageRep/MATBOX order: pore, active, binder
    elif len(values) == 2:
        pore_v, am_v = values
        cbd_v = None
    else:
        raise InputError(f"{path}: expected a segmented volume with 2 or 3 values, found {len(values)}")
    labels = np.full(volume.shape, PORE, dtype=np.uint8)
    labels[volume == am_v] = AM
    if cbd_v is not None:
        labels[volume == cbd_v] = CBD
    from skimage.segmentation import watershed

    am = labels == AM
    dist = ndi.distance_transform_edt(am)
    peaks = ndi.maximum_filter(dist, size=9) == dist
    markers, _ = ndi.label(peaks & (dist > 3))
    inst = watershed(-dist, markers, mask=am).astype(np.uint32)
    return labels, inst
