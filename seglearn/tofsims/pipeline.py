"""The ToF-SIMS pipeline: ion stack -> phase map -> numbers and files.

:func:`process` is pure (numpy in, :class:`Result` out); :func:`write_outputs` writes the files;
:func:`run` does both from a folder and a config (see ``configs/tofsims.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.errors import InputError
from seglearn.io import atomic_path, check_writable, write_preview, write_volume
from seglearn.io.outset import OutputSet
from seglearn.paths import load_config
from seglearn.tofsims import fusion, measure, preprocess
from seglearn.tofsims.ions import IonStack, load_ions
from seglearn.tofsims.particles import watershed_particles

log = logging.getLogger("seglearn")

SLICEGAN_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)

#: keys of ``configs/tofsims.yaml`` that name the run, not a setting of :func:`process`
_RUN_KEYS = ("input", "ions", "output", "overwrite", "hydra")


def defaults() -> dict:
    """The settings of :func:`process` as ``configs/tofsims.yaml`` gives them (their one home)."""
    return {k: v for k, v in load_config("tofsims.yaml").items() if k not in _RUN_KEYS}


@dataclass
class Result:
    """Everything the pipeline computed for one ion stack.

    Attributes
    ----------
    names : list of str
        Ion (phase) names; fused ids ``1..K`` follow this order.
    mains : list of str
        The main phases; ``phases`` ids ``1..M`` follow this order.
    norm : (K, Z, Y, X) float ndarray
        8-bit-scaled ion maps after clean-up and cropping.
    valid : (Z, Y, X) bool ndarray
    labels : (Z, Y, X) uint8 ndarray
        Fused map, ids ``1..K``; 0 = unassigned (below noise) or outside.
    phases : (Z, Y, X) uint8 ndarray
        Main phases only, ids ``1..M``: interphase, unassigned and outside pixels take the
        nearest main phase (the SliceGAN image and ``labels_0based`` come from it).
    binary : (K, Z, Y, X) bool ndarray
    particles : (Z, Y, X) uint32 ndarray
        Watershed particles of the particle phase.
    pixel_um : float or None
    stats : dict
        Fractions, interfaces, particle size distribution, settings.
    """

    names: list[str]
    mains: list[str]
    norm: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    phases: np.ndarray
    binary: np.ndarray
    particles: np.ndarray
    pixel_um: float | None
    stats: dict = field(default_factory=dict)
    particle_rows: list = field(default_factory=list)


def _merge(params: Mapping[str, Any] | None) -> dict:
    base = defaults()
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in (params or {}).items():
        if k in ("nmf", "particles") and v is not None:
            unknown = set(v) - set(base[k])
            if unknown:
                raise InputError(f"unknown {k} setting(s) {sorted(unknown)}; known: {sorted(base[k])}")
            out[k].update(v)
        else:
            out[k] = v
    return out


def _index(name: str | None, names: Sequence[str], what: str, default: int | None = 0) -> int | None:
    if name is None:
        return default
    if name not in names:
        raise InputError(f"{what} {name!r} is not one of the ions {list(names)}")
    return list(names).index(name)


def fill_mains(labels: np.ndarray, main_ids: Sequence[int], norm: np.ndarray) -> np.ndarray:
    """Map fused ids to main-phase ids ``1..M``; other pixels take the nearest main pixel's phase (per scan).

    A scan with no main pixel at all falls back to the argmax over the main ions.
    """
    lut = np.zeros(max(int(labels.max(initial=0)), max(main_ids)) + 1, dtype=np.uint8)
    for m, i in enumerate(main_ids):
        lut[i] = m + 1
    mapped = lut[labels]
    out = np.empty_like(mapped)
    for z in range(mapped.shape[0]):
        plane = mapped[z]
        if not plane.any():
            sub = norm[[i - 1 for i in main_ids], z]
            out[z] = (np.argmax(sub, axis=0) + 1).astype(np.uint8)
            continue
        if plane.all():
            out[z] = plane
            continue
        _, (ri, ci) = ndi.distance_transform_edt(plane == 0, return_indices=True)
        out[z] = plane[ri, ci]
    return out


def slicegan_rgb(phases: np.ndarray) -> np.ndarray:
    """SliceGAN's colour image: phase 1 pure red, 2 pure green, 3 pure blue; ``(Z, Y, X, 3)`` uint8."""
    if phases.max(initial=0) > 3:
        raise InputError(f"SliceGAN colour images hold at most 3 phases, got {int(phases.max())}")
    lut = np.concatenate([np.zeros((1, 3), np.uint8), SLICEGAN_COLOURS])
    return lut[phases]


def _pixel_size(fov_um, stack: IonStack, nx: int) -> float | None:
    """Pixel size (um) from ``fov_um=`` or else the file header; None (lengths in pixels) without either."""
    pixel_um = None
    if fov_um is not None:
        pixel_um = float(fov_um) / nx
        if stack.fov_um is not None and not np.isclose(stack.fov_um[1], float(fov_um), rtol=1e-3):
            log.warning("fov_um=%g overrides the %g um field of view in the file header", fov_um, stack.fov_um[1])
    elif stack.fov_um is not None:
        pixel_um = stack.fov_um[1] / nx
    if pixel_um is None:
        log.warning("no field of view (header or fov_um): lengths are in pixels")
    return pixel_um


def _clean(counts: np.ndarray, p: dict, names: Sequence[str]):
    """Current collector removed, rotated, cropped: ``(counts, valid, box)``."""
    _, nz, ny, nx = counts.shape
    valid = np.ones((nz, ny, nx), dtype=bool)
    valid = preprocess.remove_current_collector(counts, valid, threshold=p["cc_threshold"],
                                                ion=_index(p["cc_ion"], names, "cc_ion", default=None))
    counts, valid = preprocess.rotate(counts, valid, float(p["angle_deg"] or 0.0))
    box = preprocess.crop_box(valid, counts, mode=str(p["crop"]), rows=p["crop_rows"], cols=p["crop_cols"])
    counts, valid = preprocess.crop(counts, valid, box)
    log.info("kept rows %d:%d, cols %d:%d of %d x %d", box[0].start, box[0].stop, box[1].start, box[1].stop, ny, nx)
    return counts, valid, box


def _fuse(norm: np.ndarray, valid: np.ndarray, p: dict, am_index) -> tuple[np.ndarray, dict]:
    """The fused label map (``method=argmax`` or ``nmf``) and the factorisation's record."""
    method = str(p["method"])
    if method == "argmax":
        return fusion.fuse_argmax(norm, valid, noise_threshold=float(p["noise_threshold"]),
                                  advantage=float(p["advantage"]), am_index=am_index, boost=float(p["boost"])), {}
    if method == "nmf":
        boosted = np.clip(norm * (1.0 + float(p["boost"])), 0, 255) if p["boost"] else norm
        return fusion.fuse_nmf(boosted, valid, noise_threshold=float(p["noise_threshold"]),
                               advantage=float(p["advantage"]), am_index=am_index,
                               n_components=p["nmf"]["n_components"],
                               max_pixels=int(p["nmf"]["max_pixels"]), seed=int(p["nmf"]["seed"]))
    raise InputError(f"method must be 'argmax' or 'nmf', got {method!r}")


def _particles(binary: np.ndarray, pp: dict, pidx: int, shape) -> np.ndarray:
    if not pp["enabled"]:
        return np.zeros(shape, dtype=np.uint32)
    return watershed_particles(binary[pidx], opening_radius=int(pp["opening_radius"]),
                               min_distance_px=int(pp["min_distance_px"]), peak_fraction=float(pp["peak_fraction"]),
                               min_area_px=int(pp["min_area_px"]), compactness=float(pp["compactness"]))


def _stats(stack: IonStack, p: dict, names: list, mains: list, labels, phases, valid, box, pixel_um, rows,
           pidx: int) -> dict:
    """Fractions, interfaces, particle sizes and the settings of one run."""
    n_valid = int(valid.sum())
    pp = p["particles"]
    return {
        "ions": names, "mains": mains, "files": list(stack.files), "method": str(p["method"]),
        "shape_zyx": list(labels.shape), "crop_rows": [box[0].start, box[0].stop],
        "crop_cols": [box[1].start, box[1].stop], "pixel_um": pixel_um,
        "length_unit": "um" if pixel_um else "px",
        "valid_fraction": n_valid / labels.size,
        "unassigned_fraction": float(((labels == 0) & valid).sum() / max(n_valid, 1)),
        "fractions": measure.phase_fractions(labels, names),
        "fractions_mains": measure.phase_fractions(phases, mains),
        "interfaces": measure.interface_lengths(labels, names, pixel_um=pixel_um),
        "interfaces_mains": measure.interface_lengths(phases, mains, pixel_um=pixel_um),
        "particle_phase": names[pidx],
        "particle_sizes": measure.size_distribution(rows, bins=int(pp["bins"]),
                                                    exclude_border=bool(pp["exclude_border"])),
        "settings": {kk: vv for kk, vv in p.items()},
    }


def process(stack: IonStack, params: Mapping[str, Any] | None = None) -> Result:
    """Run clean-up, fusion, binary maps, particles and measurements on an ion stack.

    Parameters
    ----------
    stack : IonStack
        ``counts`` ``(K, Z, Y, X)``; the first ion is the active material unless ``am`` says otherwise.
    params : mapping
        Keys of ``configs/tofsims.yaml`` (``ions``/``input``/``output`` are ignored here); missing
        keys take the YAML's values (:func:`defaults`).

    Returns
    -------
    Result
    """
    p = _merge(params)
    names = list(stack.names)
    counts = np.asarray(stack.counts, dtype=np.float64)
    mains = list(p["mains"]) if p["mains"] else list(names)
    for m in mains:
        _index(m, names, "main phase")
    main_ids = [names.index(m) + 1 for m in mains]
    am_index = _index(p["am"], names, "active material")
    pixel_um = _pixel_size(p["fov_um"], stack, counts.shape[3])
    counts, valid, box = _clean(counts, p, names)
    t0 = time.perf_counter()
    norm = fusion.normalise(counts, valid, percentile=float(p["norm_percentile"]),
                            smooth_sigma=float(p["smooth_sigma"]), per_slice=bool(p["per_slice"]))
    labels, extra = _fuse(norm, valid, p, am_index)
    phases = fill_mains(labels, main_ids, norm)
    t_fusion = time.perf_counter() - t0
    binary = fusion.binary_maps(norm, p["binary_thresholds"]) & valid[None]
    t0 = time.perf_counter()
    pidx = _index(p["particles"]["phase"], names, "particle phase", default=am_index if am_index is not None else 0)
    particles = _particles(binary, p["particles"], pidx, labels.shape)
    rows = measure.particle_table(particles, pixel_um=pixel_um)
    t_particles = time.perf_counter() - t0
    stats = _stats(stack, p, names, mains, labels, phases, valid, box, pixel_um, rows, pidx)
    stats["seconds"] = {"fusion": t_fusion, "particles": t_particles}
    if extra:
        stats["nmf"] = extra
    return Result(names=names, mains=mains, norm=norm, valid=valid, labels=labels, phases=phases, binary=binary,
                  particles=particles, pixel_um=pixel_um, stats=stats, particle_rows=rows)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+\-.]+", "_", name)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]], overwrite: bool) -> None:
    import csv

    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def output_names(names: Sequence[str]) -> list[str]:
    """The files :func:`write_outputs` writes for ions ``names`` (besides the SliceGAN image)."""
    return (["labels.tif", "phases.tif", "labels_0based.tif", "particles.tif", "fractions.csv",
             "interfaces.csv", "particles.csv", "summary.json", "preview.png"]
            + [f"binary_{_safe(n)}.tif" for n in names])


def check_outputs(out: str | os.PathLike, names: Sequence[str], *, overwrite: bool = False) -> None:
    """Refuse early (before any work) when an output exists and ``overwrite`` is false."""
    out = Path(out)
    for name in output_names(names) + ["slicegan_rgb.png"]:
        check_writable(out / name, overwrite=overwrite)


def write_outputs(result: Result, out: str | os.PathLike, *, overwrite: bool = False,
                  final: str | os.PathLike | None = None) -> dict[str, str]:
    """Write the files of a :class:`Result` into folder ``out`` (see ``docs/tofsims.md``).

    Parameters
    ----------
    final : path-like, optional
        Where ``out`` will be published (``out`` is then a temporary folder): the paths recorded
        in ``summary.json`` and returned name that folder.

    Returns
    -------
    dict
        What was written, name -> path.
    """
    import imageio.v3 as iio

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = result
    vox = (r.pixel_um * 1e3,) * 3 if r.pixel_um else None
    files: dict[str, str] = {}
    check_outputs(out, r.names, overwrite=overwrite)

    def vol(name: str, data: np.ndarray) -> None:
        files[name] = str(write_volume(out / name, data, voxel_size_nm=vox, overwrite=overwrite))

    vol("labels.tif", r.labels)
    vol("phases.tif", r.phases)
    vol("labels_0based.tif", (r.phases - 1).astype(np.uint8))
    vol("particles.tif", r.particles)
    for i, n in enumerate(r.names):
        vol(f"binary_{_safe(n)}.tif", r.binary[i].astype(np.uint8) * 255)
    if len(r.mains) <= 3:
        rgb = slicegan_rgb(r.phases)
        if rgb.shape[0] == 1:
            targets = [(out / "slicegan_rgb.png", rgb[0])]
        else:
            (out / "slicegan").mkdir(exist_ok=True)
            targets = [(out / "slicegan" / f"slicegan_rgb_z{z:04d}.png", rgb[z]) for z in range(rgb.shape[0])]
        for path, img in targets:
            with atomic_path(path, overwrite=overwrite) as tmp:
                iio.imwrite(tmp, img, extension=".png")
        files["slicegan_rgb"] = str(targets[0][0] if len(targets) == 1 else out / "slicegan")
    else:
        log.warning("%d main phases: no SliceGAN colour image (3 at most); use labels_0based.tif", len(r.mains))
    s = r.stats
    unit = s["length_unit"]
    _write_csv(out / "fractions.csv", ["phase", "fraction_of_labelled", "main_phase_fraction"],
               [[n, s["fractions"][n], s["fractions_mains"].get(n, "")] for n in r.names], overwrite)
    area = float(r.valid.sum()) * (r.pixel_um ** 2 if r.pixel_um else 1.0)
    _write_csv(out / "interfaces.csv", ["pair", f"length_{unit}", f"length_per_area_1/{unit}", "mains_only"],
               [[k, v, v / area if area else 0.0, False] for k, v in s["interfaces"].items()]
               + [[k, v, v / area if area else 0.0, True] for k, v in s["interfaces_mains"].items()], overwrite)
    _write_csv(out / "particles.csv", list(measure.PARTICLE_COLUMNS),
               [[row[c] for c in measure.PARTICLE_COLUMNS] for row in r.particle_rows], overwrite)
    for name in ("fractions.csv", "interfaces.csv", "particles.csv"):
        files[name] = str(out / name)
    z = int(np.argmax(r.valid.sum(axis=(1, 2))))
    total = r.norm[:, z].sum(axis=0)
    panels = [("total ions (8-bit sum)", total, None), (f"fused ({s['method']})", total, r.labels[z])]
    panels += [(f"{n}", r.norm[i, z], None) for i, n in enumerate(r.names[:4])]
    files["preview.png"] = str(write_preview(out / "preview.png", panels, r.names, overwrite=overwrite,
                                             title=f"ToF-SIMS scan {z}"))
    files["summary.json"] = str(out / "summary.json")
    if final is not None:
        files = {k: str(Path(final) / Path(v).relative_to(out)) for k, v in files.items()}
    summary = dict(s, outputs=files)
    with atomic_path(out / "summary.json", overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default))
    return files


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run(params: Mapping[str, Any]) -> dict:
    """Read ``params['input']`` (ions ``params['ions']``), process, write to ``params['output']``.

    Returns
    -------
    dict
        The summary (fractions, interfaces, particle sizes, outputs).
    """
    params = dict(params)
    for key in ("input", "output", "ions"):
        if params.get(key) in (None, "", "???"):
            raise InputError(f"tofsims: '{key}' is required "
                             "(python tofsims.py input=FOLDER ions=[Ni+,C2H-] output=DIR)")
    ions = params.pop("ions")
    if isinstance(ions, str):
        ions = [s.strip() for s in ions.split(",") if s.strip()]
    inp, out = params.pop("input"), params.pop("output")
    overwrite = bool(params.pop("overwrite", load_config("tofsims.yaml")["overwrite"]))
    # claimed (a second run is refused), written into a temporary sibling, published by rename
    with OutputSet(out, replace=overwrite, inputs=[inp]) as tmp:
        stack = load_ions(inp, ions)
        log.info("read %d ions %s, %d scan(s) of %d x %d pixels", len(ions), ions, *stack.counts.shape[1:])
        result = process(stack, params)
        files = write_outputs(result, tmp, overwrite=True, final=out)
    s = result.stats
    log.info("fractions: %s", ", ".join(f"{k} {v:.3f}" for k, v in s["fractions"].items()))
    log.info("wrote %d outputs to %s", len(files), out)
    return dict(s, outputs=files)
