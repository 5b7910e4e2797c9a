"""Safe config instantiation: a config may only build seglearn's own classes and a short list of
well-known library classes (optimizers, schedulers, Lightning callbacks).

``hydra.utils.instantiate`` would import and call whatever ``_target_`` a command line names;
:func:`safe_instantiate` checks every ``_target_`` in the tree first.
"""

from __future__ import annotations

from typing import Any

from seglearn.errors import InputError

ALLOWED_PREFIXES = ("seglearn.",)
ALLOWED_TARGETS = frozenset({
    "torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD", "torch.optim.RMSprop",
    "torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.OneCycleLR",
    "torch.optim.lr_scheduler.StepLR", "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "torch.optim.lr_scheduler.LinearLR", "torch.optim.lr_scheduler.ExponentialLR",
    "lightning.pytorch.callbacks.EarlyStopping", "lightning.pytorch.callbacks.ModelCheckpoint",
    "lightning.pytorch.callbacks.LearningRateMonitor", "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.strategies.DDPStrategy",
})


def check_targets(cfg: Any, where: str = "config") -> None:
    """Raise :class:`InputError` if any ``_target_`` in ``cfg`` is outside the allowed set."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, dict):
        target = cfg.get("_target_")
        if target is not None:
            t = str(target)
            if not (t.startswith(ALLOWED_PREFIXES) or t in ALLOWED_TARGETS):
                raise InputError(f"{where}._target_={t!r}: only seglearn's own classes (and standard optimizers/"
                                 f"callbacks) may be instantiated from a config")
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
    (``+finetune.seed=3``, ``+model.seed=3``), else the top-level ``seed``, else ``default``."""
    sub = cfg.get(section) if cfg is not None else None
    if sub is not None and sub.get("seed") is not None:
        return int(sub.get("seed"))
    top = cfg.get("seed") if cfg is not None else None
    return int(default if top is None else top)
