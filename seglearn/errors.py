"""User-facing errors.

Anything a user can cause (a missing file, a volume of the wrong shape, a bad config value)
raises :class:`SeglearnError` with one sentence naming the file, what was expected and what was
found. The command-line entry points turn it into one line on stderr and a non-zero exit.
"""

from __future__ import annotations


class SeglearnError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class InputError(SeglearnError, ValueError):
    """An input file or value is missing, malformed or inconsistent."""


class OutputExistsError(SeglearnError, FileExistsError):
    """An output would overwrite an existing file and ``overwrite=true`` was not given."""
