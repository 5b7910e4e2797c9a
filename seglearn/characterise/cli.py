"""Run :func:`~seglearn.characterise.characterise` on a label file from the Hydra config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from seglearn.characterise.labels import resolve_voxel_size
from seglearn.characterise.pipeline import characterise
from seglearn.data.layout import labels_from_probabilities
from seglearn.errors import InputError
from seglearn.io import read_stack
from seglearn.io.outset import PREDICTION_MARKER, OutputSet
from seglearn.io.voxel import read_voxel_size_nm
from seglearn.log import setup_logging
from seglearn.options import CHARACTERISE, check_options

log = logging.getLogger("seglearn")

#: voxels (drawn with a fixed seed) whose class probabilities are checked when a file is read, and the
#: tolerance of the check: a sample keeps it cheap for large volumes (float16 files sum to 1 within ~1e-3)
PROB_SAMPLE_VOXELS = 4096
PROB_TOLERANCE = 1e-2
#: what a probabilities file must hold (predict.py's probabilities.tif), said in every refusal
PROB_LAYOUT = "probabilities of shape (Z, K, Y, X), K = 2..255 classes, values in [0, 1] summing to 1 over K"

_PASSED = ("values", "pore", "active", "binder", "steps", "depth", "interfaces", "sizes", "tortuosity",
           "geodesic", "inner_pores", "rve", "particles", "plots", "html", "progress", "intervals", "parallel")


def read_probabilities(params: dict) -> tuple:
    """``probabilities=`` (or ``input=`` a prediction folder holding probabilities.tif): probabilities.

    Returns ``(probs (K, Z, Y, X) float32, path, voxel_size_nm or None, class names or None)``, or
    ``(None, None, None, None)`` when neither is given. The class names come from the folder's
    ``summary.json`` (predict.py) when present.
    """

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
    check_probabilities(arr, path)
    probs = np.moveaxis(arr, 1, 0).astype(np.float32)
    classes = _summary_beside(path).get("classes")
    return probs, path, vs, classes


def check_probabilities(arr: np.ndarray, path) -> None:
    """Refuse, in one line naming ``path``, an array that is not :data:`PROB_LAYOUT`.

    Values and sums are checked on :data:`PROB_SAMPLE_VOXELS` voxels; when the first or last axis
    holds probabilities instead of axis 1, the message asks "class axis last?" (or first).

    Parameters
    ----------
    arr : ndarray
        The file's array, expected ``(Z, K, Y, X)``.
    path : path-like
        The file, named in the message.
    """
    if arr.ndim != 4:
        raise InputError(f"{path}: expected {PROB_LAYOUT}; got shape {arr.shape}")
    problem = _prob_problem(arr, 1)
    if problem:
        raise InputError(f"{path}: expected {PROB_LAYOUT}; got shape {arr.shape}: {problem}{_other_class_axis(arr)}")


def _prob_problem(arr: np.ndarray, axis: int) -> str | None:
    """What is wrong with ``axis`` of ``arr`` as the class axis (sampled voxels), or None."""
    k = arr.shape[axis]
    if not 2 <= k <= 255:
        return f"K = {k} classes is outside 2..255"
    view = np.moveaxis(arr, axis, -1)
    n_vox = int(np.prod(view.shape[:-1]))
    pick = np.random.default_rng(0).integers(0, n_vox, min(n_vox, PROB_SAMPLE_VOXELS))
    sample = view[np.unravel_index(pick, view.shape[:-1])].astype(np.float64)  # (n, K)
    if not np.all(np.isfinite(sample)):
        return "NaN or infinite values"
    if sample.min() < -PROB_TOLERANCE:
        return f"negative values (down to {sample.min():.3g}): log-probabilities or logits?"
    if sample.max() > 1 + PROB_TOLERANCE:
        return f"values up to {sample.max():.3g}"
    sums = sample.sum(axis=1)
    if np.abs(sums - 1).max() > PROB_TOLERANCE:
        return f"sums over K from {sums.min():.3g} to {sums.max():.3g} on {len(sums)} sampled voxels"
    return None


def _other_class_axis(arr: np.ndarray) -> str:
    """``" (class axis last? ...)"`` when the last (or first) axis holds probabilities; else empty."""
    for axis, where in ((3, "last"), (0, "first")):
        if arr.shape[axis] <= 255 and _prob_problem(arr, axis) is None:
            return f" (class axis {where}? write the file as (Z, K, Y, X))"
    return ""


def _from_probabilities(params: dict, probs: np.ndarray, p_src: Path, p_classes) -> np.ndarray:
    """The argmax labels of ``probs`` (K, Z, Y, X); sets ``classes``, ``values`` and ``output`` of ``params``."""
    k = len(probs)
    params["classes"] = params.get("classes") or p_classes or [f"class_{i}" for i in range(1, k + 1)]
    names = list(params["classes"])
    if len(names) != k:
        found = (probs.shape[1], k) + probs.shape[2:]
        raise InputError(f"{p_src}: {len(names)} class names {names} for the {k} classes of probabilities of shape "
                         f"{found}; expected (Z, K, Y, X) with K = {len(names)}")
    params["values"] = list(range(1, k + 1))
    if params.get("output") is None and params.get("input") not in (None, "???"):
        params["output"] = str(Path(str(params["input"])) / "characterise_intervals")
    return labels_from_probabilities(probs)  # 0 (outside) where uniform: predict.py's blank slices


def _summary_beside(path: Path) -> dict:
    """The ``summary.json`` beside ``path`` (predict.py writes one), or ``{}`` without a readable one."""
    try:
        return json.loads((path.parent / "summary.json").read_text())
    except (ValueError, OSError):
        return {}


def _prediction_ids(params: dict, src: Path) -> None:
    """A predict.py output (a ``summary.json`` with its marker beside ``src``): its values are ids ``1..K`` (0 =
    unsegmented, e.g. blank slices), whatever values occur, unless ``values=`` says otherwise."""
    rec = _summary_beside(src) if params.get("values") is None else {}
    if not rec.get(PREDICTION_MARKER) or not rec.get("classes"):
        return
    params["classes"] = params.get("classes") or list(rec["classes"])
    params["values"] = list(range(1, len(params["classes"]) + 1))
    log.info("%s: a predict.py output: values read as ids 1..%d (%s), 0 outside", src, len(params["classes"]),
             ", ".join(params["classes"]))


def run(cfg) -> dict:
    """Read ``cfg.input`` (and ``cfg.instances``), resolve the voxel size and write the report.

    The voxel size is ``voxel_size_nm`` when given (a different calibration in the file is named in a
    warning), else the file's, else the run is refused. Returns the report dict.
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
        raw, meta = _from_probabilities(params, probs, p_src, p_classes), {"voxel_size_nm": p_vs}
    else:
        if params.get("input") in (None, "???"):
            raise InputError("input: missing; give input=labels.tif (or probabilities=OUT/probabilities.tif)")
        src = Path(str(params["input"]))
        raw, meta = read_stack(src)
        _prediction_ids(params, src)
    vs = resolve_voxel_size(meta.get("voxel_size_nm"), params.get("voxel_size_nm"), source=str(src))
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
    main = "report.html" if "report.html" in (rep.get("outputs") or []) else "report.json"
    log.info("report: %s", Path(out) / main)
    return rep
