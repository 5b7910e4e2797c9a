"""Names of the segmentation methods and where they live (imported lazily).

A method is a pair ``fit(channels, detectors, train_labels, **params) -> model`` and
``predict(model, channels, detectors[, slices]) -> (Z, Y, X) uint8`` with ids ``1..K``; the
contract function :func:`segment` chains them. ``configs/method/<name>.yaml`` holds the
implementation name (``impl``) and every parameter; several configs may share one
implementation (``watershed_gws`` / ``watershed_cws``, ``rf_ilastik`` / ``rf_tailored``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import numpy as np

from seglearn.errors import InputError

_B = "seglearn.baselines."
METHODS: dict[str, tuple[str, str]] = {
    "double_threshold": (_B + "thresholds:fit_double", _B + "thresholds:predict_double"),
    "triple_threshold": (_B + "thresholds:fit_triple", _B + "thresholds:predict_triple"),
    "otsu": (_B + "thresholds:fit_otsu", _B + "thresholds:predict_otsu"),
    "multi_otsu": (_B + "thresholds:fit_multi_otsu", _B + "thresholds:predict_otsu"),
    "gabor": (_B + "gabor:fit", _B + "gabor:predict"),
    "watershed": (_B + "watershed:fit", _B + "watershed:predict"),
    "zgradient": (_B + "zgradient:fit", _B + "zgradient:predict"),
    "random_forest": (_B + "forest:fit", _B + "forest:predict"),
    # the U-Net as one more method lives above the networks it trains (pretrain, segment): the table names
    # it by import path, resolved only when the method is used (docs/architecture.md)
    "unet": ("seglearn.benchmark.unet_method:fit", "seglearn.benchmark.unet_method:predict"),
}


def _load(path: str) -> Callable[..., Any]:
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)


def get_method(impl: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(fit, predict)`` of an implementation name."""
    if impl not in METHODS:
        raise InputError(f"unknown method {impl!r}; known: {sorted(METHODS)}")
    fit, predict = METHODS[impl]
    return _load(fit), _load(predict)


def accepts(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes a keyword argument ``name``."""
    params = inspect.signature(func).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def fit_method(impl: str, channels: np.ndarray, detectors, train_labels=None, **params) -> Any:
    """Fit ``impl``; unknown parameters are refused with the list of known ones."""
    fit, _ = get_method(impl)
    sig = inspect.signature(fit).parameters
    known = [k for k, p in sig.items() if p.kind is p.KEYWORD_ONLY]
    bad = sorted(set(params) - set(known))
    if bad:
        raise InputError(f"method {impl!r}: unknown parameter(s) {bad}; known: {known}")
    return fit(channels, list(detectors), train_labels, **params)


def predict_method(impl: str, model: Any, channels: np.ndarray, detectors, slices=None) -> np.ndarray:
    """Predict with a fitted model; ``slices`` limits the work where the method supports it."""
    _, predict = get_method(impl)
    if slices is not None and accepts(predict, "slices"):
        return predict(model, channels, list(detectors), slices=slices)
    return predict(model, channels, list(detectors))


def segment(impl: str, channels: np.ndarray, detectors, train_labels=None, **params) -> np.ndarray:
    """The method contract: ``(C, Z, Y, X)`` channels -> ``(Z, Y, X)`` uint8 labels ``1..K``."""
    model = fit_method(impl, channels, detectors, train_labels, **params)
    return predict_method(impl, model, channels, detectors)
