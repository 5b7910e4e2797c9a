"""Run :func:`~seglearn.characterise.characterise` on a label file from the Hydra config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from seglearn.characterise.labels import resolve_voxel_size
from seglearn.characterise.pipeline import characterise
from seglearn.errors import InputError
from seglearn.io import read_stack
from seglearn.io.outset import OutputSet
from seglearn.io.tiff import read_voxel_size_nm
from seglearn.log import setup_logging
from seglearn.options import CHARACTERISE, check_options

log = logging.getLogger("seglearn")

_PASSED = ("values", "pore", "active", "binder", "steps", "depth", "interfaces", "sizes", "tortuosity",
           "geodesic", "inner_pores", "rve", "particles", "plots", "html", "progress", "intervals", "parallel")


def read_probabilities(params: dict) -> tuple:
    """``probabilities=`` (or ``input=`` a prediction folder holding probabilities.tif): probabilities.

    Returns ``(probs (K, Z, Y, X) float32, path, voxel_size_nm or None, class names or None)``, or
    ``(None, None, None, None)`` when neither is given. The class names come from the folder's
    ``summary.json`` (predict.py) when present.
    """
    import json

    import tifffile

    src = params.get("probabilities")
    inp = params.get("input")
    if not src and inp not in (None, "???") and (Path(str(inp)) / "probabilities.tif").is_file():
        src = Path(str(inp)) / "probabilities.tif"  # a prediction folder
    if not src:
        return None, None, None, None
    path = Path(str(src))
    if path.is_dir():
        path = path / "probabilities.tif"
    if not path.is_file():
        raise InputError(f"probabilities={src}: expected predict.py's probabilities.tif (Z x K x Y x X), not found")
    with tifffile.TiffFile(path) as tif:
        arr = tif.asarray()
        vs = read_voxel_size_nm(tif)
    if arr.ndim != 4 or arr.shape[1] < 2:
        raise InputError(f"{path}: expected probabilities of shape (Z, K, Y, X) with K >= 2 classes, got {arr.shape}")
    probs = np.moveaxis(arr, 1, 0).astype(np.float32)
    classes = None
    summary = path.parent / "summary.json"
    if summary.is_file():
        classes = json.loads(summary.read_text()).get("classes")
    return probs, path, vs, classes


def run(cfg) -> dict:
    """Read ``cfg.input`` (and ``cfg.instances``), resolve the voxel size and write the report.

    The voxel size comes from the file's calibration, else ``voxel_size_nm``, else the run is
    refused. Returns the report dict.
    """
    from omegaconf import OmegaConf

    setup_logging()
    params = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)

    if params.get("probabilities") and params.get("input") in (None, "???"):
        params.pop("input", None)  # probabilities= alone: no label input needed
    check_options(params, CHARACTERISE, "characterise")
    probs, p_src, p_vs, p_classes = read_probabilities(params)
    if probs is not None:  # the labels are the argmax of the probabilities
        src = p_src
        raw, meta = (np.argmax(probs, axis=0) + 1).astype(np.uint8), {"voxel_size_nm": p_vs}
        params["classes"] = params.get("classes") or p_classes or [f"class_{i}" for i in range(1, len(probs) + 1)]
        if len(params["classes"]) != len(probs):
            raise InputError(f"classes={params['classes']}: {len(params['classes'])} names for the {len(probs)} "
                             f"classes of {p_src}")
        params["values"] = list(range(1, len(probs) + 1))
        if params.get("output") is None and params.get("input") not in (None, "???"):
            params["output"] = str(Path(str(params["input"])) / "characterise_intervals")
    else:
        if params.get("input") in (None, "???"):
            raise InputError("input: missing; give input=labels.tif (or probabilities=OUT/probabilities.tif)")
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

    # the folder is claimed (lock) and the report set appears complete, replacing an earlier one whole
    with OutputSet(out, replace=bool(params.get("overwrite")), inputs=[src, params.get("instances")]) as tmp:
        rep = characterise(raw, vs, params.get("classes"), instances=instances, out_dir=tmp, overwrite=True,
                           source=str(src), probabilities=probs, **options)
        if not (tmp / "report.json").is_file():
            raise InputError(f"{out}: characterisation ended without writing report.json")
    fr = rep.get("fractions") or {}
    log.info("fractions: %s", ", ".join(f"{c} {v:.3f}" for c, v in fr.items()))
    log.info("report: %s", Path(out) / "report.html")
    return rep
