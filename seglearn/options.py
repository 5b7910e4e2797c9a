"""Declarative checks of the documented command-line options (issue 25).

Every option of ``configs/*.yaml`` that a command reads has a :class:`Rule` here (its type and
range, never its default: defaults live once, in the YAML). :func:`check_options` checks a
config against a table of rules where the config enters a command and raises
:class:`~seglearn.errors.InputError` naming the first bad option::

    predict: tile=[0, 64, 64]: expected null or 3 integers >= 1

Tables: :data:`PREDICT`, :data:`PREDICT_UNET`, :data:`TRAIN`, :data:`UNET`, :data:`STARDIST`,
:data:`PRETRAIN`, :data:`FINETUNE`, :data:`BENCHMARK`, :data:`CHARACTERISE`, :data:`PREPROCESS`,
:data:`TOFSIMS`, :data:`SYNTH`. A key missing from the config is not checked (it was not given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from seglearn.config import to_plain
from seglearn.errors import InputError

_MISSING = object()


@dataclass(frozen=True)
class Rule:
    """What a value must be: ``expected`` (said in the error) and a ``test``; ``a | b`` accepts either."""

    expected: str
    test: Callable[[Any], bool]

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError, OverflowError):
            return False

    def __or__(self, other: "Rule") -> "Rule":
        return Rule(f"{self.expected} or {other.expected}", lambda v: self(v) or other(v))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _bounds(lo, hi, lo_open: bool = False, hi_open: bool = False) -> tuple[str, Callable[[Any], bool]]:
    parts, tests = [], []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
        tests.append((lambda v: v > lo) if lo_open else (lambda v: v >= lo))
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
        tests.append((lambda v: v < hi) if hi_open else (lambda v: v <= hi))
    text = " and ".join(parts)
    return (f" {text}" if text else ""), (lambda v: all(t(v) for t in tests))


NULL = Rule("null", lambda v: v is None)
BOOL = Rule("true or false", lambda v: isinstance(v, bool))
TEXT = Rule("a text", lambda v: isinstance(v, str) and v != "")


def integer(lo=None, hi=None) -> Rule:
    """An integer (not a bool) in ``[lo, hi]``."""
    text, ok = _bounds(lo, hi)
    return Rule(f"an integer{text}", lambda v: _is_int(v) and ok(v))


def number(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """A finite number in the range (``lo_open`` / ``hi_open``: bound excluded)."""
    text, ok = _bounds(lo, hi, lo_open, hi_open)
    return Rule(f"a finite number{text}", lambda v: _is_num(v) and ok(v))


def one_of(*values) -> Rule:
    """One of ``values`` (compared as given: ``"auto"``, ``8`` ...)."""
    return Rule("one of " + ", ".join(str(v) for v in values),
                lambda v: not isinstance(v, bool) and v in values)


def _sized(v: Any, n) -> bool:
    return isinstance(v, (list, tuple)) and (n is None or len(v) in ((n,) if isinstance(n, int) else n))


def _count(n) -> str:
    if n is None:
        return "a list of"
    return f"{n}" if isinstance(n, int) else " or ".join(str(k) for k in n)


def integers(n=None, lo=None, hi=None) -> Rule:
    """A list of ``n`` integers (``n``: a length, a tuple of lengths, or None = any non-empty)."""
    text, ok = _bounds(lo, hi)
    return Rule(f"{_count(n)} integers{text}",
                lambda v: _sized(v, n) and len(v) > 0 and all(_is_int(x) and ok(x) for x in v))


def numbers(n=None, lo=None, hi=None, *, lo_open: bool = False, increasing: bool = False) -> Rule:
    """A list of ``n`` finite numbers in the range (``increasing``: strictly)."""
    text, ok = _bounds(lo, hi, lo_open)
    inc = ", increasing" if increasing else ""
    return Rule(f"{_count(n)} finite numbers{text}{inc}",
                lambda v: _sized(v, n) and len(v) > 0 and all(_is_num(x) and ok(x) for x in v)
                and (not increasing or all(a < b for a, b in zip(v, v[1:]))))


def names(choices=None, *, unique: bool = True) -> Rule:
    """A non-empty list of texts (from ``choices`` when given; ``unique``: no name twice)."""
    what = "names" if choices is None else "names from " + ", ".join(choices)
    return Rule(f"a list of {'distinct ' if unique else ''}{what}",
                lambda v: _sized(v, None) and len(v) > 0 and all(isinstance(x, str) and x for x in v)
                and (choices is None or all(x in choices for x in v)) and (not unique or len(set(v)) == len(v)))


def names_from(module: str, attr: str) -> Rule:
    """Like :func:`names`, the choices read (on first use) from ``module.attr`` where they are defined."""
    def test(v: Any) -> bool:
        import importlib

        return names(tuple(getattr(importlib.import_module(module), attr)))(v)

    return Rule(f"a list of distinct names from {module}.{attr}", test)


def _device_ok(v: Any) -> bool:
    import torch

    if not isinstance(v, str):
        return False
    if v == "auto":
        return True
    dev = torch.device(v)  # RuntimeError for an unknown type: caught below
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
    if dev.type == "mps":
        return torch.backends.mps.is_available()
    return False


def _device_rule() -> Rule:
    def test(v: Any) -> bool:
        try:
            return _device_ok(v)
        except RuntimeError:
            return False

    return Rule("auto, cpu, or cuda[:N] / mps where present on this machine", test)


DEVICE = _device_rule()
AUTO_BOOL = BOOL | one_of("auto")
PROB = number(0, 1)
SEED = integer(0, 2**32 - 1)
POS = number(0, lo_open=True)
NONNEG = number(0)
PERCENTILES = numbers(2, 0, 100, increasing=True)
SHARE = number(0, 1, hi_open=True)
TILE3 = NULL | integers(3, 1)

#: predict.py, any checkpoint kind (configs/predict.yaml; ``tta`` and ``adapt`` are checked by
#: :func:`seglearn.segment.tta.check_mode` and :func:`seglearn.pretrain.adapt.parse_predict_adapt`)
PREDICT = {
    "detectors": NULL | TEXT | names(), "overwrite": BOOL, "probabilities": BOOL, "uncertainty": BOOL, "preview": BOOL,
    "keep_zarr": BOOL, "device": DEVICE, "bf16": NULL | AUTO_BOOL, "batch_size": NULL | integer(1),
    "block_slices": NULL | integer(1) | one_of("auto"), "memory_budget_gib": number(0, lo_open=True),
    "output_format": one_of("tiff", "ome-zarr"), "labels_frame": one_of("auto", "raw", "registered"),
    "characterise": BOOL | names_from("seglearn.characterise.core", "STEPS"),
}
#: predict.py with a U-Net checkpoint: tiles are (z, y, x)
PREDICT_UNET = {"tile": TILE3, "overlap": NULL | integers(3, 0)}
#: predict.py with a StarDist checkpoint: tiles are (y, x); the ``instances`` group (configs/instances/)
PREDICT_STARDIST = {
    "tile": NULL | integers(2, 1),
    "instances.method": NULL | one_of("auto", "fusion", "linking", "2d"), "instances.prob_thresh": NULL | PROB,
    "instances.nms_thresh": NULL | PROB, "instances.fusion.fg_vote": NULL | PROB,
    "instances.fusion.foreground": NULL | one_of("polygons", "probability"), "instances.fusion.fg_prob": NULL | PROB,
    "instances.fusion.seed_thresh": NULL | PROB, "instances.fusion.h": NULL | NONNEG,
    "instances.fusion.sigma": NULL | NONNEG, "instances.fusion.min_size": NULL | integer(0),
    "instances.linking.max_distance": NULL | NONNEG, "instances.linking.min_slices": NULL | integer(1),
}

#: train.py, every model kind (configs/train.yaml, configs/data/, configs/trainer/)
TRAIN = {
    "seed": SEED, "overwrite": BOOL, "ckpt_path": NULL | TEXT, "init": NULL | TEXT, "out_dir": TEXT,
    "data.root": TEXT | NULL, "data.detectors": NULL | TEXT | names(), "data.val_fraction": SHARE,
    "data.num_workers": integer(0), "trainer.max_steps": integer(1) | one_of(-1),
    "trainer.max_epochs": integer(1) | one_of(-1), "trainer.log_every_n_steps": integer(1),
    "trainer.accelerator": one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "trainer.precision": one_of("auto", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
                                "64", "32", "16", "bf16", 64, 32, 16),
    "trainer.max_time": NULL | Rule("DD:HH:MM:SS", lambda v: isinstance(v, str) and len(v.split(":")) == 4
                                    and all(p.isdigit() for p in v.split(":"))),
    "trainer.deterministic": BOOL | one_of("warn"), "trainer.enable_progress_bar": BOOL,
}
_AUGMENT = ("flip", "rot90", "brightness_contrast", "gamma", "noise", "blur", "curtain", "gradient")
#: model=unet (configs/model/unet.yaml)
UNET = {
    "model.mode": one_of("2d", "2.5d", "3d"), "model.context": integer(0, 32), "model.net.base": integer(1, 1024),
    "model.net.depth": integer(0, 8), "model.net.dropout": SHARE, "model.channels_last": AUTO_BOOL,
    "model.patch": TILE3, "model.batch_size": integer(1), "model.steps_per_epoch": integer(1),
    "model.p_labelled": PROB, "model.percentiles": PERCENTILES, "model.loss.dice": NONNEG,
    "model.loss.class_weights": NULL | one_of("balanced") | numbers(None, 0),
    "model.optim.lr": POS, "model.optim.weight_decay": NONNEG, "model.early_stopping.patience": integer(0),
    "model.early_stopping.min_delta": NONNEG, **{f"model.augment.{k}": PROB for k in _AUGMENT},
    "model.inference.tile": TILE3, "model.inference.overlap": NULL | integers(3, 0),
    "model.inference.border": NULL | integer(0) | integers(3, 0), "model.inference.batch_size": integer(1),
    **{f"model.by_mode.{m}.{k}": integers(3, 1) for m in ("flat", "3d") for k in ("patch", "tile")},
    **{f"model.by_mode.{m}.overlap": integers(3, 0) for m in ("flat", "3d")},
}
#: model=stardist (configs/model/stardist.yaml)
STARDIST = {
    "model.n_rays": integer(3), "model.grid": integers(2, 1), "model.depth": integer(1, 8),
    "model.base_filters": integer(1, 1024), "model.head_filters": integer(1, 1024),
    "model.n_conv_per_depth": integer(1), "model.kernel_size": integer(1) | integers(2, 1),
    "model.batch_norm": BOOL, "model.stem": one_of("single", "stardist"), "model.pool": integer(1) | integers(2, 1),
    "model.views": names(("xy", "xz", "yz")), "model.patch_size": integers(2, 1), "model.batch_size": integer(1),
    "model.epochs": integer(1), "model.steps_per_epoch": integer(1), "model.lr": POS, "model.dist_weight": NONNEG,
    "model.background_reg": NONNEG, "model.val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "model.max_minutes": POS, "model.percentiles": PERCENTILES, "model.isotropic": BOOL, "model.augment": BOOL,
    "model.threads": NULL | integer(1), "model.bf16": AUTO_BOOL, "model.channels_last": BOOL,
    "model.prob_grid": numbers(None, 0, 1), "model.nms_grid": numbers(None, 0, 1),
    "model.tune_data": NULL | TEXT, "model.fusion_grid.seed_thresh": numbers(None, 0, 1),
    "model.fusion_grid.h": numbers(None, 0), "model.fusion_grid.sigma": numbers(None, 0),
    "model.fusion_grid.foreground": names(("polygons", "probability")),
    "model.fusion_grid.fg_vote": numbers(None, 0, 1), "model.fusion_grid.fg_prob": numbers(None, 0, 1),
    "model.predict.method": one_of("auto", "fusion", "linking", "2d"), "model.predict.bf16": AUTO_BOOL,
    "model.predict.tile": integers(2, 1),
    "model.predict.context": integer(0), "model.predict.batch_size": integer(1),
    "model.predict.fusion.fg_vote": PROB, "model.predict.fusion.foreground": one_of("polygons", "probability"),
    "model.predict.fusion.fg_prob": PROB, "model.predict.fusion.seed_thresh": NULL | PROB,
    "model.predict.fusion.h": NONNEG, "model.predict.fusion.sigma": NONNEG,
    "model.predict.fusion.min_size": integer(0), "model.predict.linking.max_distance": NONNEG,
    "model.predict.linking.min_slices": integer(1),
}
#: model=unet_pretrain (configs/model/unet_pretrain.yaml)
PRETRAIN = {
    "model.mode": one_of("2d", "2.5d", "3d"), "model.context": integer(0, 32), "model.net.base": integer(1, 1024),
    "model.net.depth": integer(0, 8), "model.net.dropout": SHARE, "model.phantom_shape": integers(3, 1),
    "model.patch": integer(8), "model.batch_size": integer(1), "model.lr": POS, "model.weight_decay": NONNEG,
    "model.max_steps": integer(1), "model.max_minutes": POS, "model.val_every": integer(1),
    "model.n_val": integer(1), "model.cache": integer(1), "model.reuse": integer(1), "model.threads": integer(0),
    "model.bf16": AUTO_BOOL, "model.p_real": PROB, "model.p_flat": PROB, "model.p_family_b": PROB,
    "model.warmup": integer(0),
    "model.ema": SHARE, "model.noise_reference": BOOL, "model.seed": NULL | SEED,
}
#: train.py init=BASE.ckpt finetune.KEY=VALUE (the finetune config group, configs/finetune/default.yaml)
FINETUNE = {
    "max_steps": integer(1), "max_minutes": POS, "lr": POS, "weight_decay": NONNEG, "batch_size": integer(1),
    "synth_fraction": PROB, "synth_weight": NONNEG, "freeze_encoder": BOOL, "freeze_bn": AUTO_BOOL,
    "adapt_bn": one_of("auto", "off") | BOOL | PROB, "val_every": integer(1), "patience": integer(0),
    "patch": integer(8), "detector": NULL | TEXT, "val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "val_tile": integer(4), "seed": NULL | SEED, "threads": integer(0), "runs": one_of("auto") | integer(1),
    "bf16": AUTO_BOOL, "phantom_shape": integers(3, 1), "cache": integer(1), "reuse": integer(1),
    "keep_best": BOOL, "match": PROB, "match_geometry": BOOL,
    "denoise": one_of("auto", "off") | NONNEG | numbers(None, 0), "distill": NONNEG,
    "blend_weights": numbers(None, 0, 1), "blend_trees": NULL | integer(1), "blend_tol": NONNEG,
    "selftrain": one_of("auto", "off") | BOOL, "selftrain_share": number(0, 1, lo_open=True, hi_open=True),
    "selftrain_slices": integer(1), "selftrain_threshold": PROB, "selftrain_ratio": number(1),
    "selftrain_boundary_px": integer(0), "selftrain_boundary_weight": NONNEG, "selftrain_weight": NONNEG,
    "selftrain_patches": PROB, "selftrain_distill": NONNEG, "selftrain_keep": one_of("best", "last"),
    "selftrain_synth_fraction": PROB,
}

#: benchmark.py (configs/benchmark.yaml)
BENCHMARK = {
    "methods": names(), "overwrite": BOOL, "predict": one_of("full", "test_slices"), "probabilities": BOOL,
    "panel_detector": NULL | TEXT, "fail_fast": BOOL,
    "roi": NULL | Rule("3 [start, stop] pairs of integers with 0 <= start < stop",
                       lambda v: _sized(v, 3) and all(_sized(p, 2) and all(_is_int(x) for x in p)
                                                      and 0 <= p[0] < p[1] for p in v)),
}

_FACES = ("z0", "z1", "y0", "y1", "x0", "x1")
#: characterise.py (configs/characterise.yaml)
CHARACTERISE = {
    "input": TEXT, "overwrite": BOOL, "voxel_size_nm": NULL | POS | numbers(3, 0, lo_open=True),
    "steps": names_from("seglearn.characterise.core", "STEPS"),
    "classes": NULL | names(), "values": NULL | Rule("a list of distinct integers",
                                                    lambda v: integers()(v) and len(set(v)) == len(v)),
    "depth.axis": one_of("z", "y", "x"), "depth.n_regions": integer(1), "interfaces.mesh": BOOL,
    "interfaces.sigma": NONNEG, "sizes.phases": NULL | names(), "sizes.n_linear": integer(1),
    "sizes.growth": number(1, lo_open=True), "sizes.inlet": NULL | one_of(*_FACES, "all"),
    "tortuosity.phases": NULL | names(), "tortuosity.directions": names(("z", "y", "x")),
    "tortuosity.device": DEVICE, "tortuosity.iter_limit": integer(1), "tortuosity.conv_crit": POS,
    "tortuosity.solver": one_of("auto", "fv", "taufactor"), "tortuosity.time_limit_s": POS, "tortuosity.rtol": POS,
    "tortuosity.max_phase_voxels": integer(1), "sizes.max_voxels": NULL | integer(1),
    "geodesic.max_voxels": NULL | integer(1), "parallel.workers": integer(1), "parallel.memory_gb": POS,
    "parallel.min_voxels": integer(0),
    "geodesic.face": one_of(*_FACES), "geodesic.d_fractions": NULL | numbers(None, 0, 1, lo_open=True),
    "geodesic.d_um": NULL | numbers(None, 0, lo_open=True), "geodesic.max_values": integer(1),
    "inner_pores.radius_um": POS, "inner_pores.step_nm": NULL | POS, "rve.n_sizes": integer(1),
    "rve.n_samples": integer(1), "rve.tolerance": POS, "rve.seed": SEED, "particles.from_components": BOOL,
    "particles.exclude_border": BOOL, "particles.min_voxels": integer(1), "plots": BOOL, "html": BOOL,
    "progress": BOOL, "probabilities": NULL | TEXT, "intervals.n_samples": integer(0),
    "intervals.n_samples_slow": integer(0), "intervals.correlation_length": one_of("auto") | NONNEG | numbers(3, 0),
    "intervals.correlation_scale": NONNEG, "intervals.level": number(0, 1, lo_open=True, hi_open=True),
    "intervals.seed": SEED, "intervals.span_point": BOOL,
}
#: preprocess.py (configs/preprocess.yaml)
PREPROCESS = {"overwrite": BOOL, "chunk": integer(1), "labels_frame": one_of("auto", "raw", "registered"),
              "progress": BOOL}
#: tofsims.py (configs/tofsims.yaml)
TOFSIMS = {
    "input": TEXT, "ions": TEXT | names(), "output": TEXT, "overwrite": BOOL, "fov_um": NULL | POS,
    "cc_threshold": NULL | number(0, 255), "angle_deg": number(),
    "crop": one_of("auto", "manual", "none"), "boost": NONNEG, "norm_percentile": number(0, 100, lo_open=True),
    "smooth_sigma": NONNEG, "per_slice": BOOL, "noise_threshold": number(0, 255), "advantage": POS,
    "method": one_of("argmax", "nmf"), "nmf.n_components": NULL | integer(1), "nmf.max_pixels": integer(1),
    "nmf.seed": SEED, "binary_thresholds": number(0, 255) | numbers(None, 0, 255), "particles.enabled": BOOL,
    "particles.opening_radius": integer(0), "particles.min_distance_px": integer(1),
    "particles.peak_fraction": PROB, "particles.min_area_px": integer(0), "particles.compactness": NONNEG,
    "particles.bins": integer(1), "particles.exclude_border": BOOL,
}
#: python -m seglearn.synth (configs/synth.yaml)
SYNTH = {
    "out": TEXT, "overwrite": BOOL, "seed": SEED, "shape": integers(3, 1), "voxel_size_nm": numbers(3, 0, lo_open=True),
    "am_fraction": PROB, "cbd_fraction": PROB, "particle_radius_nm": POS, "particle_radius_cv": NONNEG,
    "particle_min_gap": NONNEG, "surface_roughness": NONNEG, "inner_pores_per_particle": NONNEG,
    "inner_pore_radius_nm": POS, "crack_probability": PROB, "crack_width_nm": NONNEG, "cbd_porosity": PROB,
    "cbd_patchiness": PROB, "detectors": names(), "gradient_face": NONNEG, "gradient_slices": NONNEG,
    "redeposition": NONNEG, "redeposition_depth": NONNEG, "drift_px": NONNEG, "fiducial": integer(0),
    "bit_depth": one_of(8, 16), "test_slice": NULL | integer(0), "test_gap": integer(0),
    "n_train_slices": integer(1), "scribble_coverage": number(0, 1, lo_open=True),
    "scribble_erosion_px": integer(0),
}


def _lookup(params: Any, key: str) -> Any:
    node = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_options(cfg: Any, rules: Mapping[str, Rule], where: str, *, prefix: str = "") -> None:
    """Raise :class:`InputError` for the first option of ``cfg`` that breaks its rule.

    Parameters
    ----------
    cfg : mapping or DictConfig
        The command's config (or a section of it).
    rules : mapping of str to Rule
        Dotted option names (``"model.net.base"``) and their rules.
    where : str
        The command, first word of the message (``"predict"``).
    prefix : str
        Written before each option name in the message (``"finetune."`` for a section).
    """
    params = to_plain(cfg)
    for key, rule in rules.items():
        value = _lookup(params, key)
        if value == "???":
            raise InputError(f"{where}: {prefix}{key} is required: give {prefix}{key}=...")
        if value is not _MISSING and not rule(value):
            raise InputError(f"{where}: {prefix}{key}={_show(value)}: expected {rule.expected}")


def _show(value: Any) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
