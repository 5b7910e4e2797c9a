"""Run :func:`~seglearn.characterise.characterise` on a label file from the Hydra config."""

from __future__ import annotations

import logging
from pathlib import Path

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

_PASSED = ("values", "pore", "active", "binder", "steps", "depth", "interfaces", "sizes", "tortuosity",
           "geodesic", "inner_pores", "rve", "particles", "plots", "html", "progress")


def run(cfg) -> dict:
    """Read ``cfg.input`` (and ``cfg.instances``), resolve the voxel size and write the report.

    The voxel size comes from the file's calibration, else ``voxel_size_nm``, else the run is
    refused. Returns the report dict.
    """
    from omegaconf import OmegaConf

    from seglearn.characterise.core import characterise
    from seglearn.characterise.labels import resolve_voxel_size
    from seglearn.cli import setup_logging
    from seglearn.io import read_stack

    setup_logging()
    params = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    src = Path(str(params["input"]))
    raw, meta = read_stack(src)
    vs = resolve_voxel_size(meta.get("voxel_size_nm"), params.get("voxel_size_nm"), source=str(src))
    if meta.get("voxel_size_nm") is not None and params.get("voxel_size_nm") is not None:
        log.info("using the voxel size of %s %s nm (voxel_size_nm=%s ignored)", src.name, vs,
                 params["voxel_size_nm"])
    instances = None
    if params.get("instances"):
        instances, _ = read_stack(params["instances"])
        if instances.shape != raw.shape:
            raise InputError(f"{params['instances']}: instance volume shape {instances.shape} differs from "
                             f"{src} shape {raw.shape}")
    out = params.get("output") or str(Path("outputs") / f"{src.stem}_characterise")
    options = {k: params[k] for k in _PASSED if k in params}
    rep = characterise(raw, vs, params.get("classes"), instances=instances, out_dir=out,
                       overwrite=bool(params.get("overwrite")), source=str(src), **options)
    fr = rep.get("fractions") or {}
    log.info("fractions: %s", ", ".join(f"{c} {v:.3f}" for c, v in fr.items()))
    log.info("report: %s", Path(out) / "report.html")
    return rep
