"""Result folders that are claimed by one run and appear complete or not at all.

A command that writes a folder of results (``predict.py output=OUT``) uses :class:`OutputSet`:

1. **Claim.** ``OUT``'s lock file ``.OUT.lock`` (beside ``OUT``, in its parent) is created and
   held with an exclusive ``flock`` for the life of the run; it records ``pid``, ``host`` and the
   start ``time``. A second run on the same folder fails at once with one line naming the first
   (:class:`OutputBusyError`, exit code 2). The kernel drops the ``flock`` when its process dies, so
   the lock of a killed run is simply taken over (its record is logged), whatever host wrote it.
2. **Write.** Every file goes into a temporary sibling ``.OUT.tmp-PID`` (same parent, so same file
   system), never into ``OUT`` itself.
3. **Publish.** At the end the old ``OUT`` (``overwrite=true``) is renamed away, the temporary
   folder renamed to ``OUT`` and the old one deleted: the new set replaces the whole old set (no
   stale ``probabilities.tif`` of an earlier run), and a run killed at any point leaves either the
   old complete set or the new one, never a mixture. A killed run's temporary folder is removed
   by the next claim (or, when it was killed between the two renames, published by it).

Why a temporary sibling and not a completion marker: readers (napari, Fiji, a script globbing
``OUT/*.tif``) do not know about markers; with a rename they can never see a partial set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from seglearn.errors import OutputExistsError, SeglearnError

#: the key of summary.json that marks a folder written by predict.py (its labels are ids 1..K, 0 unsegmented)
PREDICTION_MARKER = "seglearn_predict"

log = logging.getLogger("seglearn")


class OutputBusyError(SeglearnError):
    """Another running process holds the output folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class FolderLock:
    """An exclusive lock on a folder name: ``PARENT/.NAME.lock`` held with ``flock``.

    Parameters
    ----------
    folder : path-like
        The folder to claim (need not exist; its parent is created).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder.parent / f".{self.folder.name}.lock"
        self._fd: int | None = None

    def _record(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "FolderLock":
        """Take the lock or raise :class:`OutputBusyError` (one line naming the holder)."""
        import fcntl

        try:
            self.folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SeglearnError(f"{self.folder.parent}: cannot create output folder "
                                f"({exc.strerror or type(exc).__name__})") from exc
        for _ in range(20):  # the file may be unlinked between open and flock by a releasing holder: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise SeglearnError(f"{self.folder.parent}: output folder is not writable "
                                    f"({exc.strerror or type(exc).__name__})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                rec = self._record()
                raise OutputBusyError(
                    f"{self.folder}: another run (pid {rec.get('pid', '?')} on {rec.get('host', '?')}, started "
                    f"{rec.get('time', '?')}) is writing this output folder; wait for it to finish or choose "
                    f"another output (its lock: {self.path})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = self._record()
            if old.get("pid") is not None:
                alive = old.get("host") == socket.gethostname() and _pid_alive(int(old["pid"]))
                log.info("took over the lock %s of an ended run (pid %s on %s, %s)%s", self.path, old.get("pid"),
                         old.get("host"), old.get("time"), "" if not alive else " whose process id is reused")
            rec = {"pid": os.getpid(), "host": socket.gethostname(),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "folder": self.folder.name}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(rec).encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise OutputBusyError(f"{self.folder}: could not take the lock {self.path} (other runs keep replacing it)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


class OutputSet:
    """A result folder claimed at the start and published complete at the end (module docstring).

    Parameters
    ----------
    out : path-like
        The final folder.
    replace : bool
        An existing non-empty ``out`` may be replaced (``overwrite=true``); otherwise the claim
        is refused with :class:`~seglearn.errors.OutputExistsError`.
    how : str
        How the user allows replacing, for the message.
    inputs : sequence of path-like
        The run's input files: an output folder holding one of them is refused (replacing it
        would delete the input).

    Examples
    --------
    >>> with OutputSet("out", replace=False) as tmp:      # doctest: +SKIP
    ...     write_volume(tmp / "labels.tif", labels)
    """

    def __init__(self, out: str | os.PathLike, *, replace: bool = False, how: str = "overwrite=true",
                 inputs=()):
        self.out = Path(out)
        self.inputs = [Path(str(p)) for p in inputs if p is not None]
        self.replace, self.how = bool(replace), how
        self.lock = FolderLock(self.out)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"
        self.published = False

    def _siblings(self, kind: str) -> dict[int, Path]:
        prefix = f".{self.out.name}.{kind}-"
        found = {}
        for p in self.out.parent.glob(f".{self.out.name}.{kind}-*"):
            pid = p.name[len(prefix):]
            if pid.isdigit():
                found[int(pid)] = p
        return found

    def _clean_stale(self) -> None:
        """Remove (or finish publishing) what killed runs left beside ``out``; we hold the lock."""
        tmps, olds = self._siblings("tmp"), self._siblings("old")
        for pid, old in olds.items():  # killed between its two renames: its tmp set is complete
            if pid in tmps and not self.out.exists():
                os.rename(tmps.pop(pid), self.out)
                log.info("published %s, completed by an interrupted run", self.out)
            shutil.rmtree(old, ignore_errors=True)
        for pid, tmp in tmps.items():
            if pid != os.getpid() or tmp != self.tmp:
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
                log.info("removed %s left by an interrupted run", tmp)
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _check_existing(self) -> None:
        root = self.out.resolve()
        for p in self.inputs:
            if p.resolve() == root or root in p.resolve().parents:
                raise OutputExistsError(f"{self.out}: the output folder holds the input {p}; choose another output "
                                        f"folder (the result set replaces the whole folder)")
        if self.out.exists() and not self.out.is_dir():
            raise OutputExistsError(f"{self.out}: output exists and is a file; give a folder")
        if not self.replace and self.out.is_dir() and any(self.out.iterdir()):
            raise OutputExistsError(f"{self.out}: output folder already exists and is not empty; pass {self.how} "
                                    f"to replace it")

    def claim(self) -> Path:
        """Take the lock, check ``out`` and create the temporary folder; returns it."""
        if self.out.parent.exists() and not self.out.parent.is_dir():
            raise SeglearnError(f"{self.out.parent}: is a file, cannot hold the output folder {self.out.name}")
        self.lock.acquire()
        try:
            self._clean_stale()
            self._check_existing()
            self.tmp.mkdir()
        except BaseException:
            self.lock.release()
            raise
        return self.tmp

    def publish(self) -> Path:
        """Move the temporary folder to ``out`` (replacing the whole old set) and release the lock."""
        if not self.lock.held:
            raise RuntimeError("OutputSet.publish without claim")
        try:
            old = None
            if self.out.exists() or self.out.is_symlink():
                if not self.replace and self.out.is_dir() and any(self.out.iterdir()):
                    raise OutputExistsError(f"{self.out}: output folder appeared while this run was writing; "
                                            f"not replaced (pass {self.how} to replace it)")
                old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
                os.rename(self.out, old)
            os.rename(self.tmp, self.out)
            self.published = True
            if old is not None:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        finally:
            self.lock.release()
        return self.out

    def abandon(self) -> None:
        """Delete the temporary folder and release the lock (after a failure); ``out`` is untouched."""
        if not self.published and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.lock.release()

    def __enter__(self) -> Path:
        return self.claim()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.abandon()
