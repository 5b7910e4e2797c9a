"""Safe config instantiation: a config may only build seglearn's own classes and a short list of
well-known library classes (optimizers, schedulers, Lightning callbacks), matched as whole names:
``seglearn.MODULE.NAME`` must be a class or function defined in that seglearn module (no attribute
chains such as ``seglearn.config.os.system``, no ``seglearnX.*``).

``hydra.utils.instantiate`` would import and call whatever ``_target_`` a command line names;
:func:`safe_instantiate` checks every ``_target_`` in the tree first.
"""

from __future__ import annotations

from typing import Any

from seglearn.errors import InputError

ALLOWED_TARGETS = frozenset({
    "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD", "torch.optim.RMSprop",
    "torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.OneCycleLR",
    "torch.optim.lr_scheduler.StepLR", "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "torch.optim.lr_scheduler.LinearLR", "torch.optim.lr_scheduler.ExponentialLR",
    "lightning.pytorch.callbacks.EarlyStopping", "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.LearningRateMonitor", "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.strategies.DDPStrategy",
})


def _seglearn_target_ok(target: str) -> bool:
    """Whether ``target`` names a class or function *defined in* a seglearn module: the longest
    importable prefix must be a seglearn module and the rest one attribute whose ``__module__`` is
    seglearn's (so ``seglearn.config.os.system`` or a re-exported foreign name is refused)."""
    import importlib
    import inspect

    parts = target.split(".")
    if parts[0] != "seglearn" or len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return False
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if len(parts) - i != 1:  # an attribute chain (module.obj.attr): refused
            return False
        obj = getattr(module, parts[-1], None)
        return ((inspect.isclass(obj) or inspect.isfunction(obj))
                and str(getattr(obj, "__module__", "")).split(".")[0] == "seglearn")
    return False


def target_allowed(target: str) -> bool:
    """Whether a config may instantiate ``target`` (whole names only, see :data:`ALLOWED_TARGETS`)."""
    return target in ALLOWED_TARGETS or _seglearn_target_ok(target)


def check_targets(cfg: Any, where: str = "config") -> None:
    """Raise :class:`InputError` if any ``_target_`` in ``cfg`` is outside the allowed set."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, dict):
        target = cfg.get("_target_")
        if target is not None and not target_allowed(str(target)):
            raise InputError(f"{where}._target_={str(target)!r}: only classes and functions defined in seglearn's "
                             f"modules (and standard optimizers/callbacks) may be instantiated from a config")
        for k, v in cfg.items():
            check_targets(v, f"{where}.{k}")
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            check_targets(v, f"{where}[{i}]")


def safe_instantiate(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` after :func:`check_targets`."""
    from hydra.utils import instantiate

    check_targets(cfg)
    return instantiate(cfg, *args, **kwargs)


def to_plain(value: Any) -> Any:
    """An OmegaConf node as plain Python containers (resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def merge_settings(defaults: dict, given: Any, where: str, *, ignore: tuple[str, ...] = ()) -> dict:
    """``defaults`` updated by a (plain or OmegaConf) mapping; keys not in ``defaults`` are refused.

    Parameters
    ----------
    defaults : dict
        Every known key with its default.
    given : mapping or None
        Overrides.
    where : str
        Named in the error message (e.g. ``"finetune"``).
    ignore : tuple of str
        Keys of ``given`` that are dropped silently (e.g. ``"kind"``).
    """
    given = {k: v for k, v in dict(to_plain(given) or {}).items() if k not in ignore}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def parse_pairs(items: Any, where: str) -> dict:
    """``["max_steps=900", "ranges={noise: [0.1, 0.2]}"]`` -> ``{"max_steps": 900, "ranges": {...}}``.

    Values are parsed as YAML; an item without ``=`` is refused naming ``where`` (e.g. ``"--set"``).
    """
    import yaml

    out = {}
    for it in items or []:
        key, sep, value = str(it).partition("=")
        if not sep or not key:
            raise InputError(f"{where}: expected KEY=VALUE, got {it!r}")
        out[key] = yaml.safe_load(value)
    return out


def resolve_seed(cfg: Any, section: str, default: int = 0) -> int:
    """The seed of a ``train.py`` run: ``SECTION.seed`` when the command line gave one
    (``finetune.seed=3``, ``model.seed=3``), else the top-level ``seed``, else ``default``."""
    sub = cfg.get(section) if cfg is not None else None
    if sub is not None and sub.get("seed") is not None:
        return int(sub.get("seed"))
    top = cfg.get("seed") if cfg is not None else None
    return int(default if top is None else top)
