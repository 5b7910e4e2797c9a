"""Atomic output files: write to a hidden temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from seglearn.errors import OutputExistsError, SeglearnError


def check_writable(path: str | os.PathLike, *, overwrite: bool = False, how: str = "overwrite=true") -> Path:
    """Refuse to clobber an existing file and make sure the folder can be written.

    Parameters
    ----------
    path : path-like
        The final output path.
    overwrite : bool
        Allow replacing an existing file.
    how : str
        How the caller's command line allows it, for the error message (``--overwrite`` for the
        argparse commands; Hydra's ``overwrite=true`` by default).

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`, its parent folder created.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output already exists; pass {how} to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SeglearnError(f"{path.parent}: cannot create output folder ({exc.strerror})") from exc
    if not os.access(path.parent, os.W_OK):
        raise SeglearnError(f"{path.parent}: output folder is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``path``, on failure delete it.

    A reader never sees a half-written file under the final name, and a killed process leaves
    at most a hidden ``.NAME.tmp-PID`` file behind.

    Examples
    --------
    >>> with atomic_path("out/labels.tif") as tmp:  # doctest: +SKIP
    ...     tifffile.imwrite(tmp, labels)
    """
    path = check_writable(path, overwrite=overwrite)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path}: output appeared while writing; not replaced")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_temp(path: Path) -> bool:
    """True for a temporary file of :func:`atomic_path` (``.NAME.tmp-PID``)."""
    name = Path(path).name
    return name.startswith(".") and ".tmp-" in name and name.rsplit(".tmp-", 1)[1].isdigit()


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed processes (their PID is gone).

    Returns the paths removed. Temporaries of running processes are left alone.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.is_file() and is_temp(p) and not _pid_alive(int(p.name.rsplit(".tmp-", 1)[1])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
