"""Helpers shared by the thin command-line entry points (``train.py``, ``predict.py``, ...)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable

from seglearn.errors import SeglearnError

log = logging.getLogger("seglearn")


def report_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`SeglearnError` and common I/O errors into one stderr line and exit code 2.

    Set ``SEGLEARN_DEBUG=1`` to see the full traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SeglearnError, OSError) as exc:
            if os.environ.get("SEGLEARN_DEBUG"):
                raise
            if isinstance(exc, OSError) and not isinstance(exc, SeglearnError) and exc.filename:
                msg = f"{exc.filename}: {exc.strerror or type(exc).__name__}"
            else:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"seglearn: error: {msg}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("seglearn: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper


def setup_logging(level: int = logging.INFO) -> None:
    """Log seglearn's messages to stderr as ``[seglearn] message``."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[seglearn] %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
