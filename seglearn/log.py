"""seglearn's logger set up for commands: a low-layer module, so that any stage can call it."""

from __future__ import annotations

import logging
import sys

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
