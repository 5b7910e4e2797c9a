"""Build a whole synthetic dataset: microstructure, detector images, annotations."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seglearn.data.layout import DEFAULT_CLASSES, write_dataset
from seglearn.io.tiff import read_stack
from seglearn.synth.annotate import make_annotations
from seglearn.synth.config import PhantomConfig
from seglearn.synth.forward import render
from seglearn.synth.forward_b import render_b
from seglearn.synth.microstructure import generate_microstructure, microstructure_from_volume

log = logging.getLogger("seglearn")


@dataclass
class Phantom:
    """A synthetic dataset in memory.

    Attributes
    ----------
    images : dict of str to (Z, Y, X) ndarray
    truth : (Z, Y, X) uint8, ids 1 pore, 2 carbon-binder, 3 active material
        (0 in the fiducial band, rows ``info["fiducial_rows"]``, when ``config.fiducial > 0``)
    instances : (Z, Y, X) uint32
    train, test : (Z, Y, X) uint8
    info : dict
        ``test_slice``, ``train_slices``, ``fractions`` (of the sample voxels), ``drift_px`` (the
        per-slice drift ``(Z, 2)`` when ``config.drift_px > 0``), ``fiducial_rows`` (``[0, H]``
        when ``config.fiducial > 0``), ...
    """

    images: dict
    truth: np.ndarray
    instances: np.ndarray
    train: np.ndarray
    test: np.ndarray
    config: PhantomConfig
    info: dict = field(default_factory=dict)

    def channels(self) -> np.ndarray:
        """``(C, Z, Y, X)`` stack of the detector images in config order."""
        return np.stack([self.images[d] for d in self.config.detectors])


def make_phantom(cfg: PhantomConfig | dict | None = None) -> Phantom:
    """Draw a phantom; deterministic for a given config (``cfg.seed``).

    Examples
    --------
    >>> ph = make_phantom({"shape": [32, 64, 64], "seed": 1})
    >>> ph.channels().shape
    (2, 32, 64, 64)
    """
    if not isinstance(cfg, PhantomConfig):
        cfg = PhantomConfig.from_dict(cfg)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    if cfg.source:
        vol, _ = read_stack(cfg.source)
        vol = vol[: cfg.shape[0], : cfg.shape[1], : cfg.shape[2]]
        truth, inst = microstructure_from_volume(vol, cfg, str(cfg.source))
        cfg.shape = tuple(truth.shape)
        cfg.validate()
    else:
        truth, inst = generate_microstructure(cfg, rng)
    t1 = time.perf_counter()
    if cfg.family == "b":
        images, shifts = render_b(truth, inst, cfg, rng)
    else:
        images, shifts = render(truth, inst, cfg, rng)
    if cfg.fiducial > 0:  # the cap band holds no sample: unlabelled, unscored, no scribbles
        truth[:, : cfg.fiducial] = 0
        inst[:, : cfg.fiducial] = 0
    t2 = time.perf_counter()
    test_slice = cfg.test_slice if cfg.test_slice is not None else truth.shape[0] // 2
    train, test, info = make_annotations(truth, 3, test_slice=test_slice, gap=cfg.test_gap,
                                         n_train=cfg.n_train_slices, coverage=cfg.scribble_coverage,
                                         erosion=cfg.scribble_erosion_px, rng=rng)
    fr = np.bincount(truth.ravel(), minlength=4)[1:] / max(int(np.count_nonzero(truth)), 1)
    info.update({"fractions": {c: float(f) for c, f in zip(DEFAULT_CLASSES, fr)},
                 "n_particles": int(inst.max()), "seconds": {"microstructure": t1 - t0, "render": t2 - t1,
                                                             "annotate": time.perf_counter() - t2}})
    if shifts is not None:
        info["drift_px"] = shifts.round(4).tolist()
    if cfg.fiducial > 0:
        info["fiducial_rows"] = [0, int(cfg.fiducial)]
    log.info("phantom %s: fractions pore %.3f, carbon-binder %.3f, active %.3f; %d particles",
             "x".join(map(str, truth.shape)), *fr, info["n_particles"])
    return Phantom(images=images, truth=truth, instances=inst, train=train, test=test, config=cfg, info=info)


def write_phantom(out: str | Path, cfg: PhantomConfig | dict | None = None, *, overwrite: bool = False,
                  name: str = "phantom") -> Phantom:
    """Draw a phantom and write it in the dataset layout (``labels/truth.tif`` included)."""
    ph = make_phantom(cfg)
    extra = {"synthetic": True, "test_slice": ph.info["test_slice"], "train_slices": ph.info["train_slices"],
             "phantom": ph.config.to_dict()}
    if "fiducial_rows" in ph.info:
        extra["fiducial_rows"] = ph.info["fiducial_rows"]
    write_dataset(out, ph.images, classes=DEFAULT_CLASSES, voxel_size_nm=ph.config.voxel_size_nm, name=name,
                  train=ph.train, test=ph.test, instances=ph.instances, truth=ph.truth, extra=extra,
                  overwrite=overwrite)
    if "drift_px" in ph.info:
        lines = ["slice,dy,dx"] + [f"{z},{dy},{dx}" for z, (dy, dx) in enumerate(ph.info["drift_px"])]
        (Path(out) / "drift.csv").write_text("\n".join(lines) + "\n")
    return ph
