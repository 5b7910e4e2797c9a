"""The helpers of the thin command-line entry points (``train.py``, ``predict.py``, ``seglearn/*/__main__.py``,
:mod:`seglearn.commands`), re-exported from :mod:`seglearn.log` where they live.

This module belongs to the command layer (``docs/architecture.md``): code inside the package imports
:mod:`seglearn.log` instead, so that no stage depends on the command layer.
"""

from __future__ import annotations

from seglearn.log import DEBUG_HINT, command, describe_error, report_errors, setup_logging

__all__ = ["DEBUG_HINT", "command", "describe_error", "report_errors", "setup_logging"]
