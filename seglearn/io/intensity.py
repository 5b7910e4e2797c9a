"""How raw grey values reach a network: one decision per volume, from robust statistics.

Every path that feeds a U-Net (``predict.py``, fine-tuning a base model, the benchmark's ``unet``
methods) asks :func:`fit_to_model` how the volume's raw values map onto the scale the model was
trained on. The decision is taken from statistics over up to :data:`N_SLICES` slices spread over
the whole stack (never from one slice; constant slices, e.g. a blank first slice, are left out):

- the volume's **scale**: ``8bit`` (uint8, or any integer / float type whose values all lie in
  0..255), ``unit`` (a float type whose values all lie in 0..1, as many tools export) or
  ``other`` (negative values, values beyond 255: 16-bit, signed data with an offset, ...);
- the model's scale: ``8bit`` for the base models and models fine-tuned from them (fixed 0..255
  ranges), else that of the data it was trained on (read from its normalisation ranges).

Same scale: identity. ``unit`` and ``8bit``: a factor 255. Anything else: each detector's robust
percentiles (the model's, default 0.1 and 99.9 %) are mapped linearly onto the model's ranges.
bool and complex stacks are refused with one line. The map is stored in the checkpoint dict as
``meta["normalisation"]["input_map"]`` (applied by :meth:`seglearn.segment.api.Segmenter.prepare`
through :func:`apply_map`) and the whole decision as ``meta["normalisation"]["intensity"]``, which
``predict.py`` writes to summary.json.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Sequence

import numpy as np

from seglearn.errors import InputError

log = logging.getLogger("seglearn")

#: slices sampled (evenly spread over z, first and last included) for the statistics
N_SLICES = 16
#: voxels per channel the percentiles are computed on (a fixed random subset of the sampled slices)
MAX_SAMPLES = 1_000_000
#: percentiles mapped onto a model's ranges when the scales differ (unless the model stores its own)
PERCENTILES = (0.1, 99.9)
EIGHT_BIT = (0.0, 255.0)


def check_dtype(dtype, where: str) -> None:
    """Refuse voxel types that are not grey values: bool (a mask) and complex; one line naming ``where``."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        raise InputError(f"{where}: holds a bool (1-bit) stack, expected grey values; a mask cannot be "
                         f"segmented (give the image itself, any integer or float type)")
    if dt.kind == "c":
        raise InputError(f"{where}: holds complex voxels ({dt}), expected real grey values; take the "
                         f"magnitude or the real part first")
    if dt.kind not in "uif":
        raise InputError(f"{where}: expected integer or float voxels, got dtype {dt}")


def sample_slices(n_z: int, n: int = N_SLICES) -> list[int]:
    """Up to ``n`` slice indices evenly spread over ``0..n_z - 1`` (both ends included)."""
    return sorted({int(round(v)) for v in np.linspace(0, n_z - 1, max(1, min(n, n_z)))})


def volume_statistics(read_raw: Callable[[int, int], np.ndarray], shape: Sequence[int], names: Sequence[str], *,
                      percentiles: Sequence[float] = PERCENTILES, n_slices: int = N_SLICES,
                      max_samples: int = MAX_SAMPLES, where: str = "input") -> dict:
    """Robust grey-value statistics of a volume from slices spread over z.

    Parameters
    ----------
    read_raw : callable
        ``read_raw(z0, z1)`` gives the raw ``(C, z1 - z0, Y, X)`` block.
    shape : (Z, Y, X)
    names : sequence of str
        Channel names (for the record and the messages).
    percentiles : (low, high)

    Returns
    -------
    dict
        ``dtype``, ``slices`` (sampled), ``blank_slices`` (per channel: constant slices left out of
        the percentiles), ``channels`` {name: ``min``, ``max``, ``p_lo``, ``p_hi``}, ``percentiles``.

    Raises
    ------
    InputError
        bool / complex voxels, NaN or Inf, or a channel holding one grey value in every sampled slice.
    """
    zs = sample_slices(int(shape[0]), n_slices)
    n_c = len(names)
    rng = np.random.default_rng(0)
    per_slice = max(1, max_samples // len(zs))
    pooled: list[list[np.ndarray]] = [[] for _ in range(n_c)]
    lo = np.full(n_c, np.inf)
    hi = np.full(n_c, -np.inf)
    blank: list[list[int]] = [[] for _ in range(n_c)]
    dtype = None
    for z in zs:
        block = np.asarray(read_raw(z, z + 1))
        check_dtype(block.dtype, where)
        dtype = block.dtype if dtype is None else np.result_type(dtype, block.dtype)
        for c in range(n_c):
            flat = block[c].ravel()
            if flat.dtype.kind == "f" and not np.all(np.isfinite(flat)):
                raise InputError(f"{where}: {names[c]} holds NaN or Inf voxels (slice {z}); replace them first")
            a, b = float(flat.min()), float(flat.max())
            lo[c], hi[c] = min(lo[c], a), max(hi[c], b)
            if a == b:
                blank[c].append(z)
                continue
            if flat.size > per_slice:
                flat = flat[rng.integers(0, flat.size, per_slice)]
            pooled[c].append(flat.astype(np.float64))
    channels = {}
    for c, name in enumerate(names):
        if not pooled[c]:
            raise InputError(f"{where}: {name} holds a single grey value ({lo[c]:g}) in all {len(zs)} sampled "
                             f"slices; there is nothing to segment")
        p_lo, p_hi = np.percentile(np.concatenate(pooled[c]), [float(percentiles[0]), float(percentiles[1])])
        channels[name] = {"min": lo[c], "max": hi[c], "p_lo": float(p_lo), "p_hi": float(p_hi)}
    return {"dtype": str(dtype), "slices": zs, "blank_slices": {n: b for n, b in zip(names, blank) if b},
            "channels": channels, "percentiles": [float(p) for p in percentiles]}


#: a float volume whose robust percentiles lie within this margin of 0..1 is on the unit scale, whatever a few
#: outlying voxels hold (one voxel at 1.0001 of an image exported as 0..1 must not make it "8-bit")
UNIT_MARGIN = 0.02


def input_scale(stats: dict) -> str:
    """``8bit``, ``unit`` or ``other`` for a volume's :func:`volume_statistics` (all channels together).

    A float volume is ``unit`` when all its values lie in 0..1, or when its robust percentiles (``p_lo``,
    ``p_hi``) do within :data:`UNIT_MARGIN`, its minimum is not below ``-UNIT_MARGIN`` and its upper
    percentile reaches half the range: a few hot voxels or a range of 0..1.01 do not turn a 0..1 export into
    8-bit grey values read as they are (almost black to the model), while small signed values (a CT
    attenuation map around 0.01 / µm) stay ``other`` and are mapped by their percentiles.
    """
    dt = np.dtype(stats["dtype"])
    chans = stats["channels"].values()
    lo, hi = min(ch["min"] for ch in chans), max(ch["max"] for ch in chans)
    if dt == np.uint8:
        return "8bit"
    if dt.kind == "f":
        r_lo, r_hi = min(ch["p_lo"] for ch in chans), max(ch["p_hi"] for ch in chans)
        robust = lo >= -UNIT_MARGIN and r_lo >= -UNIT_MARGIN and 0.5 <= r_hi <= 1.0 + UNIT_MARGIN
        if (lo >= 0.0 and hi <= 1.0) or robust:
            return "unit"
    return "8bit" if lo >= 0.0 and hi <= 255.0 else "other"


def model_reference(meta: dict) -> dict:
    """The grey scale a model reads: ``scale`` (``8bit`` / ``unit`` / ``other``), the detector
    ``ranges`` and the ``percentiles`` its ranges stand for.

    Base models and models fine-tuned from them read 0..255 (:func:`on_eight_bit_scale`);
    a model trained from scratch reads the scale of its training data, taken from its ranges (the
    training volume's percentiles) unless the checkpoint records ``normalisation.input_scale``.
    """
    norm = meta.get("normalisation") or {}
    n = len(meta.get("detectors") or [])
    ranges = [[float(v) for v in r] for r in (norm.get("ranges") or [])[:n]]
    pct = norm.get("percentiles") or PERCENTILES
    if on_eight_bit_scale(meta):
        return {"scale": "8bit", "ranges": [list(EIGHT_BIT)] * n, "percentiles": list(PERCENTILES)}
    scale = norm.get("input_scale")
    if scale not in ("8bit", "unit", "other"):
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        scale = "unit" if lo >= 0.0 and hi <= 1.0 else "8bit" if lo >= 0.0 and hi <= 255.0 else "other"
    return {"scale": scale, "ranges": ranges, "percentiles": [float(p) for p in pct]}


def decide(stats: dict, ref: dict, names: Sequence[str], where: str = "input") -> tuple[dict | None, str]:
    """The map of a volume onto a model's scale: ``({"gain": [...], "offset": [...]}, rule)``, or
    ``(None, rule)`` for the identity. ``gain`` and ``offset`` are per channel: ``v * gain + offset``."""
    scale, model = input_scale(stats), ref["scale"]
    n = len(names)
    if scale == model and scale != "other":
        return None, f"{scale} input on a {model} model: used as it is"
    if {scale, model} == {"unit", "8bit"}:
        g = 255.0 if scale == "unit" else 1.0 / 255.0
        return {"gain": [g] * n, "offset": [0.0] * n}, f"{scale} input on a {model} model: multiplied by {g:.6g}"
    gains, offsets = [], []
    for name, (lo, hi) in zip(names, ref["ranges"]):
        ch = stats["channels"][name]
        span = ch["p_hi"] - ch["p_lo"]
        if not span > 1e-12 * max(1.0, abs(ch["p_hi"])):
            raise InputError(f"{where}: {name} has no contrast between its {stats['percentiles'][0]} and "
                             f"{stats['percentiles'][1]} % percentiles ({ch['p_lo']:g}); nothing to segment")
        g = (hi - lo) / span
        gains.append(g)
        offsets.append(lo - g * ch["p_lo"])
    p = ref["percentiles"]
    return ({"gain": gains, "offset": offsets},
            f"{scale} input on a {model} model: {p[0]:g}-{p[1]:g} % percentiles of each detector mapped onto the "
            f"model's ranges")


def apply_map(raw: np.ndarray, input_map: dict | None) -> np.ndarray:
    """``raw`` ``(C, ...)`` on the model's scale: ``raw * gain + offset`` per channel, float32 (``raw``
    itself when ``input_map`` is None)."""
    if not input_map:
        return raw
    raw = np.asarray(raw)
    shape = (-1,) + (1,) * (raw.ndim - 1)
    g = np.asarray(input_map["gain"], np.float32).reshape(shape)
    o = np.asarray(input_map["offset"], np.float32).reshape(shape)
    out = raw.astype(np.float32)
    out *= g
    out += o
    return out


def _round(v: float) -> float:
    return float(f"{float(v):.6g}")


def fit_to_model(ck: dict, read_raw: Callable[[int, int], np.ndarray], shape: Sequence[int],
                 names: Sequence[str], *, where: str = "input") -> tuple[dict, dict]:
    """Decide how a volume's raw values map onto the scale of the model ``ck``.

    Parameters
    ----------
    ck : dict
        A loaded ``kind: unet`` checkpoint; not modified.
    read_raw : callable
        ``read_raw(z0, z1)`` gives the raw ``(C, z1 - z0, Y, X)`` block, channels as ``names``.
    shape : (Z, Y, X)
    names : sequence of str
        The model's detectors, in its order.
    where : str
        Names the input in messages.

    Returns
    -------
    ck : dict
        ``ck`` itself for the identity; else a copy whose ``meta.normalisation`` holds ``input_map``
        (or no longer holds the one an adapted checkpoint was saved with) and ``intensity`` (the record).
    record : dict
        ``dtype``, ``input_scale``, ``model_scale``, ``rule``, ``slices_sampled``, ``blank_slices``,
        ``statistics`` {detector: min, max, p_lo, p_hi}, ``percentiles``, ``map`` ({detector: gain,
        offset} or ``"identity"``).
    """
    meta = ck["meta"]
    ref = model_reference(meta)
    stats = volume_statistics(read_raw, shape, names, percentiles=ref["percentiles"], where=where)
    imap, rule = decide(stats, ref, names, where)
    record = {"dtype": stats["dtype"], "input_scale": input_scale(stats), "model_scale": ref["scale"], "rule": rule,
              "slices_sampled": len(stats["slices"]), "blank_slices": stats["blank_slices"],
              "percentiles": stats["percentiles"],
              "statistics": {n: {k: _round(v) for k, v in ch.items()} for n, ch in stats["channels"].items()},
              "map": "identity" if imap is None else
              {n: {"gain": _round(g), "offset": _round(o)} for n, g, o in zip(names, imap["gain"], imap["offset"])}}
    if stats["blank_slices"]:
        log.warning("%s: constant (blank) slices %s left out of the grey-value statistics", where,
                    sorted({z for b in stats["blank_slices"].values() for z in b}))
    if imap is None:
        log.info("%s: %s grey values (%s) read as they are by the model", where, record["input_scale"], record["dtype"])
        if "input_map" not in (meta.get("normalisation") or {}):
            return ck, record
    else:
        log.info("%s: %s grey values (%s): %s", where, record["input_scale"], record["dtype"], rule)
    meta = copy.deepcopy(meta)  # a map stored with an adapted checkpoint was another volume's: replaced
    meta["normalisation"].pop("input_map", None)
    if imap is not None:
        meta["normalisation"]["input_map"] = {"gain": [float(g) for g in imap["gain"]],
                                              "offset": [float(o) for o in imap["offset"]]}
    meta["normalisation"]["intensity"] = record
    return {**ck, "meta": meta}, record


def fit_array(ck: dict, images: np.ndarray, names: Sequence[str], *, where: str = "input") -> tuple[dict, dict]:
    """:func:`fit_to_model` for a ``(C, Z, Y, X)`` array held in memory, channels as ``names``."""
    images = np.asarray(images)
    return fit_to_model(ck, lambda a, b: images[:, a:b], images.shape[1:], names, where=where)


#: the fixed grey-value range of each detector channel of the base models (pretraining phantoms are 8-bit)
DETECTOR_RANGE = [0.0, 255.0]


def on_eight_bit_scale(meta: dict) -> bool:
    """Whether a model reads its detectors on the fixed 8-bit scale of the base models (0..255)."""
    norm = meta.get("normalisation") or {}
    n = len(meta.get("detectors") or [])
    return norm.get("method") == "fixed" and n > 0 and \
        [list(map(float, r)) for r in norm.get("ranges", [])[:n]] == [list(DETECTOR_RANGE)] * n
