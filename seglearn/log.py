"""How a command talks to its user: seglearn's logger on stderr, one line per error, Hydra entry points.

A low-layer module (it needs only :mod:`seglearn.errors` and :mod:`seglearn.paths`), so that any
stage with its own ``main()`` (``python -m seglearn.suggest``, ``seglearn.pretrain.soup``, ...) can use
it without importing the command layer (:mod:`seglearn.cli`, :mod:`seglearn.commands`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable

from seglearn.errors import SeglearnError
from seglearn.paths import CONFIGS_MODULE

log = logging.getLogger("seglearn")


def setup_logging(level: int = logging.INFO) -> None:
    """Log seglearn's messages to stderr as ``[seglearn] message``."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[seglearn] %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


DEBUG_HINT = "rerun with SEGLEARN_DEBUG=1 for the traceback"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _user_error_types() -> tuple[type, ...]:
    """Errors of the libraries the commands hand user input to that are the user's to fix: Hydra's and
    OmegaConf's (a bad override, a missing mandatory value) and Lightning's misconfiguration."""
    types: list[type] = []
    for module, name in (("hydra.errors", "HydraException"), ("omegaconf.errors", "OmegaConfBaseException"),
                         ("lightning.fabric.utilities.exceptions", "MisconfigurationException")):
        mod = sys.modules.get(module)  # only what a run imported can have been raised
        if mod is not None and hasattr(mod, name):
            types.append(getattr(mod, name))
    return tuple(types)


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one stderr line and exit code for ``exc``: 2 for a user's error, 1 for a bug."""
    if isinstance(exc, OSError) and not isinstance(exc, SeglearnError) and exc.filename:
        return f"seglearn: error: {exc.filename}: {exc.strerror or type(exc).__name__}", 2
    if isinstance(exc, (SeglearnError, OSError)):
        return f"seglearn: error: {_first_line(exc)}", 2
    if isinstance(exc, _user_error_types()):
        override = getattr(exc, "override", None)  # Hydra's OverrideParseException
        where = f"command line: {override}: " if override else "command line: "
        return f"seglearn: error: {where}{_first_line(exc)}", 2
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (f"seglearn: error: out of memory ({_first_line(exc)}); use a smaller input, block_slices, tile "
                f"or batch_size", 2)
    return f"seglearn: internal error: {type(exc).__name__}: {_first_line(exc)} ({DEBUG_HINT})", 1


def report_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn any exception into one stderr line: ``seglearn: error: ...`` and exit code 2 for an error
    the user can fix (:class:`SeglearnError`, I/O errors, bad config values), ``seglearn: internal
    error: ...`` and exit code 1 for anything else (a bug), with a hint to rerun with
    ``SEGLEARN_DEBUG=1``, which shows the full traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            print("seglearn: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - every error becomes one line (SEGLEARN_DEBUG=1: the traceback)
            if os.environ.get("SEGLEARN_DEBUG"):
                raise
            line, code = describe_error(exc)
            print(line, file=sys.stderr, flush=True)
            sys.exit(code)

    return wrapper


def command(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """``@hydra.main`` with :func:`report_errors` around both the task and Hydra itself, so a bad
    override (``tile=[1,2``, an unknown key) is also one line and exit code 2.

    The config ``config_name`` comes from the package (``pkg://seglearn.configs``, Hydra's search
    path), so the command runs from any directory after any kind of install::

        @command("predict")
        def main(cfg): ...
    """
    import hydra

    config_path = f"pkg://{CONFIGS_MODULE}"

    def decorate(func: Callable[[Any], Any]) -> Callable[[], Any]:
        hydra_main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(
            report_errors(func))

        @report_errors
        def entry() -> Any:
            previous = os.environ.get("HYDRA_FULL_ERROR")
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its own traceback
            try:
                return hydra_main()
            finally:
                if previous is None:
                    os.environ.pop("HYDRA_FULL_ERROR", None)
                else:
                    os.environ["HYDRA_FULL_ERROR"] = previous

        entry.__doc__ = func.__doc__
        return entry

    return decorate
