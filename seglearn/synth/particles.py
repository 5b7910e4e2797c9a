"""A nano-CT-like particle phantom with the difficulty knobs of issue 29.

``python -m seglearn.synth.particles out=DIR seed=N [key=value ...]`` writes a dataset that
``python train.py model=stardist data.root=DIR`` and ``python predict.py input=DIR`` read: one grey
channel ``images/CT.tif``, ``labels/instances.tif`` (particle envelopes, cracks inside the particle
they cut) and ``labels/truth.tif`` (1 pore, 2 particle). Defaults: ``configs/particles.yaml`` (the
issue's hard case).

Geometry is drawn in physical units (nm) and sampled on the ``voxel_size_nm`` grid: log-normal
radii (``particle_radius_cv``), random sequential addition up to ``solid_fraction`` with centre
distances of at least ``particle_min_gap * (r1 + r2)`` (below 1: particles pressed into each other),
each voxel given to the particle it lies deepest in (flat contacts). The image is a particle grey
per particle, cracks (planes of ``crack_width_nm`` through cracked particles) and the voxels where
two particles touch darkened by ``contact_contrast``, blurred by a physical Gaussian PSF and noised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi

from seglearn.data.layout import write_dataset
from seglearn.errors import InputError
from seglearn.instances.fusion import relabel_sequential
from seglearn.io.outset import OutputSet
from seglearn.log import command, setup_logging
from seglearn.options import (
    BOOL,
    NONNEG,
    POS,
    PROB,
    SEED,
    TEXT,
    check_options,
    integer,
    integers,
    number,
    numbers,
    one_of,
)
from seglearn.paths import load_config

log = logging.getLogger("seglearn")

CONFIG = "particles.yaml"
DETECTOR = "CT"
CLASSES = ("pore", "particle")
#: largest factor by which the radii are inflated to reach ``solid_fraction``
MAX_INFLATE = 1.5

#: option rules (types and ranges; the defaults live in ``configs/particles.yaml``)
RULES = {
    "out": TEXT, "overwrite": BOOL, "name": TEXT, "seed": SEED, "shape": integers(3, 1),
    "voxel_size_nm": numbers(3, 0, lo_open=True), "particle_radius_nm": POS, "particle_radius_cv": NONNEG,
    "solid_fraction": number(0, 0.95, lo_open=True), "particle_min_gap": number(0.3, None),
    "surface_roughness": number(0, 0.5), "min_voxels": integer(1), "crack_probability": PROB,
    "cracks_per_particle": integer(1), "crack_width_nm": NONNEG, "crack_extent": PROB, "particle_grey": number(),
    "particle_grey_cv": NONNEG, "background_grey": number(), "contact_contrast": PROB, "blur_nm": NONNEG,
    "noise": NONNEG, "bit_depth": one_of(8, 16),
}


@dataclass
class Particles:
    """A particle phantom in memory.

    Attributes
    ----------
    image : (Z, Y, X) uint8 or uint16
        The CT grey values.
    instances : (Z, Y, X) uint32
        Particle ids 1..n (envelopes: cracks belong to their particle), 0 = pore.
    solid : (Z, Y, X) bool
        Particle material (instances minus cracks).
    params : dict
        The parameters used (defaults filled in).
    info : dict
        ``n_particles``, ``solid_fraction``, ``contact_fraction`` (share of particle voxels on a contact),
        ``cracked`` (number of cracked particles).
    """

    image: np.ndarray
    instances: np.ndarray
    solid: np.ndarray
    params: dict
    info: dict = field(default_factory=dict)


def particle_params(overrides: Mapping[str, Any] | None = None) -> dict:
    """The defaults of ``configs/particles.yaml`` updated by ``overrides``, checked.

    Raises
    ------
    InputError
        An unknown key or a value out of range (one line naming the option).
    """
    p = load_config(CONFIG)
    p.pop("hydra", None)
    unknown = sorted(set(overrides or {}) - set(p))
    if unknown:
        raise InputError(f"particles: unknown option {unknown[0]!r}; expected one of {sorted(RULES)}")
    p.update(dict(overrides or {}))
    check_options({k: v for k, v in p.items() if k != "out" or v != "???"}, RULES, "particles")
    p["shape"] = [int(s) for s in p["shape"]]
    p["voxel_size_nm"] = [float(v) for v in p["voxel_size_nm"]]
    return p


def place_spheres(p: Mapping, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential addition of spheres in the volume (nm).

    Returns
    -------
    centres : (n, 3) float, nm (z, y, x)
    radii : (n,) float, nm
    """
    extent = np.asarray(p["shape"], float) * np.asarray(p["voxel_size_nm"], float)
    r_mean, cv = float(p["particle_radius_nm"]), float(p["particle_radius_cv"])
    sigma = np.sqrt(np.log1p(cv**2))
    mu = np.log(r_mean) - sigma**2 / 2
    target = float(p["solid_fraction"]) * float(np.prod(extent))
    centres = np.zeros((0, 3))
    radii = np.zeros(0)
    placed = 0.0
    gap = float(p["particle_min_gap"])
    while placed < target:
        # a radius is drawn first and then given up to 500 places: a jammed volume stops the
        # filling instead of taking only small particles (which would skew the size distribution)
        r = float(np.clip(rng.lognormal(mu, sigma), 0.5 * r_mean, 2.5 * r_mean)) if cv > 0 else r_mean
        cand = rng.uniform(-0.4 * r, extent + 0.4 * r, size=(500, 3))
        if len(radii):
            from scipy.spatial.distance import cdist

            ok = np.all(cdist(cand, centres) >= gap * (radii + r), axis=1)
            if not ok.any():
                break
            c = cand[int(np.argmax(ok))]
        else:
            c = cand[0]
        centres = np.vstack([centres, c])
        radii = np.append(radii, r)
        inside = np.prod(np.clip((np.minimum(c + r, extent) - np.maximum(c - r, 0)) / (2 * r), 0, 1))
        # pressed particles share their overlap: count a little less than the sphere
        placed += 4.0 / 3.0 * np.pi * r**3 * inside * min(1.0, gap) ** 1.5
    return centres, radii


def _box(c: np.ndarray, r: float, vs: np.ndarray, shape) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """The voxel box around a sphere and the voxel-centre offsets (nm) along each axis."""
    lo = np.maximum(np.floor((c - r) / vs).astype(int), 0)
    hi = np.minimum(np.ceil((c + r) / vs).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    offs = [np.arange(lo[i], hi[i], dtype=np.float32) * vs[i] + vs[i] / 2 - c[i] for i in range(3)]
    return tuple(slice(lo[i], hi[i]) for i in range(3)), offs


def rasterise(p: Mapping, centres: np.ndarray, radii: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Instance ids (uint32) and the inflation factor applied to the radii.

    Every voxel goes to the rough sphere it lies deepest in (smallest ``d / r``), so overlapping
    spheres meet at flat contacts. When the placed spheres fill less than ``solid_fraction`` (random
    sequential addition jams near 0.38 for hard spheres), all radii are inflated by one factor
    (at most ``MAX_INFLATE``) until they do: the particles are pressed together as by calendering.
    """
    shape = tuple(p["shape"])
    vs = np.asarray(p["voxel_size_nm"], np.float32)
    rough_amp = float(p["surface_roughness"])
    best = np.full(shape, np.inf, np.float32)
    inst = np.zeros(shape, np.uint32)
    for idx, (c, r) in enumerate(zip(centres, radii), start=1):
        box = _box(c, r * MAX_INFLATE * (1 + 2 * rough_amp), vs, shape)
        if box is None:
            continue
        sl, (zz, yy, xx) = box
        dz, dy, dx = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
        dist = np.sqrt(dz**2 + dy**2 + dx**2) + 1e-6
        rough = np.zeros_like(dist)
        for _ in range(3 if rough_amp > 0 else 0):  # smooth bumps over directions
            v = rng.standard_normal(3)
            v /= np.linalg.norm(v)
            cosang = np.clip((dz * v[0] + dy * v[1] + dx * v[2]) / dist, -1, 1)
            rough += np.cos(rng.uniform(1.5, 3.5) * np.arccos(cosang) + rng.uniform(0, 2 * np.pi))
        nd = dist / (r * (1 + rough_amp * rough / 2))
        take = (nd < MAX_INFLATE) & (nd < best[sl])
        best[sl][take] = nd[take]
        inst[sl][take] = idx
    inside = best[np.isfinite(best)]
    want = int(round(float(p["solid_fraction"]) * best.size))
    f = float(np.partition(inside, want)[want]) if want < inside.size else MAX_INFLATE
    f = max(f, 1.0)  # never shrink: a volume filled before jamming keeps its spheres
    inst[best >= f] = 0
    return inst, f


def carve_cracks(p: Mapping, inst: np.ndarray, centres: np.ndarray, radii: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Crack voxels (bool) inside cracked particles and how many particles were cracked."""
    vs = np.asarray(p["voxel_size_nm"], np.float32)
    crack = np.zeros(inst.shape, bool)
    half = max(float(p["crack_width_nm"]) / 2, float(vs.min()) / 2) if p["crack_width_nm"] > 0 else 0.0
    n_cracked = 0
    if half <= 0:
        return crack, 0
    for idx, (c, r) in enumerate(zip(centres, radii), start=1):
        if rng.random() >= float(p["crack_probability"]):
            continue
        box = _box(c, r, vs, inst.shape)
        if box is None:
            continue
        sl, (zz, yy, xx) = box
        dz, dy, dx = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
        rad = np.sqrt(dz**2 + dy**2 + dx**2)
        mine = inst[sl] == idx
        hit = np.zeros(mine.shape, bool)
        for _ in range(int(rng.integers(1, int(p["cracks_per_particle"]) + 1))):
            n = rng.standard_normal(3)
            n /= np.linalg.norm(n)
            plane = np.abs(dz * n[0] + dy * n[1] + dx * n[2] - rng.uniform(-0.25, 0.25) * r)
            hit |= (plane < half) & (rad < float(p["crack_extent"]) * r)
        hit &= mine
        if hit.any():
            crack[sl] |= hit
            n_cracked += 1
    return crack, n_cracked


def contact_voxels(inst: np.ndarray) -> np.ndarray:
    """Particle voxels with a face neighbour in another particle (bool, both sides of a contact)."""
    out = np.zeros(inst.shape, bool)
    for axis in range(inst.ndim):
        a = np.take(inst, np.arange(inst.shape[axis] - 1), axis=axis)
        b = np.take(inst, np.arange(1, inst.shape[axis]), axis=axis)
        m = (a > 0) & (b > 0) & (a != b)
        lo = [slice(None)] * inst.ndim
        hi = [slice(None)] * inst.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= m
        out[tuple(hi)] |= m
    return out


def _drop_small(inst: np.ndarray, min_voxels: int) -> np.ndarray:
    sizes = np.bincount(inst.ravel())
    small = sizes < min_voxels
    small[0] = False
    inst = np.where(small[inst], 0, inst)
    return relabel_sequential(inst)


def render(p: Mapping, inst: np.ndarray, crack: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """The CT grey image (uint8 / uint16) and the share of particle voxels on a contact."""
    vs = np.asarray(p["voxel_size_nm"], float)
    fg, bg = float(p["particle_grey"]), float(p["background_grey"])
    grey = np.r_[bg, fg * (1 + float(p["particle_grey_cv"]) * rng.standard_normal(int(inst.max())))].astype(np.float32)
    img = grey[inst]
    contact = contact_voxels(inst) & ~crack
    img[contact] -= float(p["contact_contrast"]) * (img[contact] - bg)
    img[crack] = bg
    if p["blur_nm"] > 0:
        img = ndi.gaussian_filter(img, float(p["blur_nm"]) / vs, mode="nearest")
    img += float(p["noise"]) * abs(fg - bg) * rng.standard_normal(img.shape).astype(np.float32)
    top = 255 if int(p["bit_depth"]) == 8 else 65535
    lo, hi = min(fg, bg) - 0.5 * abs(fg - bg), max(fg, bg) + 0.5 * abs(fg - bg)
    out = np.clip((img - lo) / (hi - lo), 0, 1) * top
    frac = float(contact.sum()) / max(int(np.count_nonzero(inst)), 1)
    return np.round(out).astype(np.uint8 if top == 255 else np.uint16), frac


def make_particles(overrides: Mapping[str, Any] | None = None) -> Particles:
    """Draw a particle phantom; deterministic for a given ``seed``.

    Parameters
    ----------
    overrides : mapping
        Keys of ``configs/particles.yaml`` (``out`` / ``overwrite`` / ``name`` are ignored here).

    Examples
    --------
    >>> ph = make_particles({"shape": [16, 32, 32], "seed": 1})
    >>> ph.image.shape, ph.instances.dtype.name
    ((16, 32, 32), 'uint32')
    """
    p = particle_params(overrides)
    rng = np.random.default_rng(int(p["seed"]))
    centres, radii = place_spheres(p, rng)
    inst, inflate = rasterise(p, centres, radii, rng)
    crack, n_cracked = carve_cracks(p, inst, centres, radii * inflate, rng)
    # ids of particles that were drawn but lie (almost) outside the volume go; cracks keep their particle
    keep = _drop_small(inst, int(p["min_voxels"]))
    crack &= keep > 0
    image, contact_frac = render(p, keep, crack, rng)
    solid = (keep > 0) & ~crack
    info = {"n_particles": int(keep.max()), "solid_fraction": round(float(solid.mean()), 4), "inflation": round(inflate, 3),
            "contact_fraction": round(contact_frac, 4), "cracked": int(n_cracked)}
    log.info("particles %s: %d particles, solid fraction %.3f, %d cracked, %.1f %% of particle voxels on a contact",
             "x".join(map(str, keep.shape)), info["n_particles"], info["solid_fraction"], n_cracked,
             100 * contact_frac)
    return Particles(image=image, instances=keep, solid=solid, params=p, info=info)


def write_particles(out: str | Path, overrides: Mapping[str, Any] | None = None, *, overwrite: bool = False,
                    name: str | None = None) -> Particles:
    """Draw a particle phantom and write it in the dataset layout (``images/CT.tif``, ``labels/instances.tif``,
    ``labels/truth.tif``, ``dataset.yaml`` with the parameters under ``phantom``)."""
    ph = make_particles(overrides)
    p = {k: v for k, v in ph.params.items() if k not in ("out", "overwrite", "name")}
    truth = np.where(ph.solid, 2, 1).astype(np.uint8)
    write_dataset(out, {DETECTOR: ph.image}, classes=CLASSES, voxel_size_nm=p["voxel_size_nm"],
                  name=name or Path(out).name, instances=ph.instances, truth=truth,
                  extra={"synthetic": True, "phantom_kind": "particles", "phantom": p, **ph.info},
                  overwrite=overwrite)
    return ph


def run(cfg) -> None:
    """The command: write the phantom described by ``cfg`` (``configs/particles.yaml``)."""
    from omegaconf import OmegaConf

    setup_logging()
    params = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    params.pop("hydra", None)
    out, overwrite, name = params.pop("out"), bool(params.pop("overwrite")), params.pop("name", None)
    particle_params(params)  # check everything before claiming the folder
    with OutputSet(out, replace=overwrite) as tmp:
        ph = write_particles(tmp, params, overwrite=True, name=name or Path(out).name)
    log.info("wrote %s (%d particles)", out, ph.info["n_particles"])


def main() -> None:
    """``python -m seglearn.synth.particles out=DIR ...`` (Hydra overrides)."""
    command("particles")(run)()


if __name__ == "__main__":
    main()
