"""Run seglearn's command-line entry points in-process and check how they refuse bad input (issue 25).

A new Python process costs ~4 s of ``import torch``; the bad-input corpus has 80+ cases, so every
command runs in this process instead: :func:`run_cli` executes ``train.py``, ``predict.py``, ...
(or ``-m seglearn.synth``) as ``__main__`` with ``sys.argv`` set, exactly as the shell would, and
restores what a run may change (Hydra's global state, cwd, environment, logging handlers,
signal handlers, torch's thread count and determinism flag). stdout and stderr are captured.

Declaring corpus rows (how another test file adds cases)
--------------------------------------------------------
A test file adds rows to ``tests/test_bad_input_corpus.py`` by defining a module-level list
``CORPUS_CASES`` of :class:`Case` (the corpus imports ``tests/test_intensity_scale.py``,
``tests/test_outputs_lock.py``, ``tests/test_checkpoint_validation.py`` and
``tests/test_bad_input_corpus.py`` itself; a missing file or list is skipped). Case ids are
fixed when the module is imported (pytest parametrises over them), so the inputs are built at
run time, by a ``setup`` function taking the case's :class:`Workspace`, and paths in ``argv``,
``absent`` and ``unchanged`` are written with ``{placeholders}`` filled from that workspace::

    from cli_harness import Case

    def _float01(ws):                      # ws: Workspace; write what the case needs under ws.tmp
        vol = tifffile.imread(ws.bad["good_tif"]).astype("float32") / 255
        tifffile.imwrite(ws.tmp / "f.tif", vol)

    CORPUS_CASES = [
        Case("predict-float-0-1", ["predict.py", "ckpt={ckpt}", "input=[{tmp}/f.tif,{tmp}/f.tif]",
                                   "detectors=[SE2,InLens]", "output={out}"],
             text="f.tif", absent=["{out}"], setup=_float01),
        Case("predict-valid-control", [...], code=0),        # a valid control: must succeed
    ]

Placeholders: ``{root}`` the repository, ``{tmp}`` a fresh folder of this case, ``{out}`` =
``{tmp}/out`` (not created), ``{ckpt}`` the demo checkpoint (``checkpoints/demo.ckpt``),
``{dataset}`` a small valid two-detector dataset (6 x 32 x 32, classes 1..3), ``{bad[NAME]}`` an
entry of ``tests/bad_inputs.make_corpus`` (shared by all cases: never write into it; copy it
into ``{tmp}`` in ``setup`` first). ``setup(ws)`` may also return a dict of extra placeholders.
Literal braces are doubled (``"steps=[{{step:magic}}]"``), as in ``str.format``.

A case passes (:func:`check_case`) when the exit code is ``code`` (default 2); for a failure
exactly one ``seglearn: error:`` line on stderr contains ``text``; no traceback is printed; every
``absent`` path does not exist afterwards, or is an empty folder ("nothing left behind") and every ``unchanged`` path
(file or folder) is byte-identical to what it was before the run ("nothing overwritten").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import runpy
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DEMO_CKPT = ROOT / "checkpoints" / "demo.ckpt"
ERROR_PREFIX = "seglearn: error:"


@dataclass
class Case:
    """One command line and what it must do.

    Attributes
    ----------
    id : str
        The pytest id, ``COMMAND-what`` (e.g. ``predict-tile-zero``).
    argv : list of str
        ``[script, *overrides]``; the script is a file of the repository (``train.py``) or
        ``-m MODULE``'s module given as ``"-m seglearn.synth"``.
    text : str
        Text the one ``seglearn: error:`` line must contain (ignored when ``code == 0``).
    absent : list of str
        Paths that must not exist after the run (outputs that must not be left behind).
    unchanged : list of str
        Files or folders that must be byte-identical after the run (nothing overwritten).
    code : int
        Expected exit code: 2 for a user error, 0 for a valid control.
    setup : callable, optional
        ``setup(ws) -> dict | None`` writes the case's inputs under ``ws.tmp`` before the run.
    cls : str
        The class of bad input in ``docs/reliability.md`` (e.g. ``options``, ``files``).
    env : dict
        Extra environment variables of the run.
    skip : callable, optional
        ``skip() -> str | None``: a reason to skip the case on this machine (e.g. running as root).
    """

    id: str
    argv: list
    text: str = ""
    absent: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)
    code: int = 2
    setup: Callable | None = None
    cls: str = "other"
    env: dict = field(default_factory=dict)
    skip: Callable | None = None


@dataclass
class Workspace:
    """What a case's placeholders and ``setup`` see (see the module docstring)."""

    tmp: Path
    bad: dict
    dataset: Path
    ckpt: Path = DEMO_CKPT
    root: Path = ROOT
    extra: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def fill(self, s: str) -> str:
        """``s`` with its ``{placeholders}`` replaced."""
        return str(s).format_map({"tmp": self.tmp, "out": self.out, "bad": self.bad, "dataset": self.dataset,
                                  "ckpt": self.ckpt, "root": self.root, **self.extra})


@dataclass
class Result:
    """What :func:`run_cli` saw: exit code, captured streams, and the before-run snapshots."""

    code: int
    stderr: str
    stdout: str = ""
    before: dict = field(default_factory=dict)
    absent_before: list = field(default_factory=list)
    argv: list = field(default_factory=list)
    ws: Workspace | None = None


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


@contextlib.contextmanager
def _restored_state():
    """Put back everything a command may change in this process."""
    import torch

    argv, cwd, env = list(sys.argv), os.getcwd(), dict(os.environ)
    loggers = {name: logging.getLogger(name) for name in ("", "seglearn", "lightning", "lightning.pytorch")}
    log_state = {n: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for n, lg in loggers.items()}
    sigs = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    main_mod = sys.modules.get("__main__")
    # a handler of an earlier run would write to that run's (gone) capture: start bare
    logging.getLogger("seglearn").handlers = []
    _clear_hydra()
    try:
        yield
    finally:
        _clear_hydra()
        sys.argv[:] = argv
        os.chdir(cwd)
        for n, lg in loggers.items():
            lg.handlers, lg.level, lg.propagate, lg.disabled = log_state[n][0], *log_state[n][1:]
        for s, h in sigs.items():
            if h is not None:
                signal.signal(s, h)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ, warn_only=warn_only)
        if main_mod is not None:
            sys.modules["__main__"] = main_mod
        os.environ.clear()  # last: restoring torch's settings may set variables (TORCHINDUCTOR_CACHE_DIR)
        os.environ.update(env)


def run_cli(argv: list, *, env: dict | None = None, cwd: str | Path = ROOT) -> Result:
    """Run ``argv`` (``["predict.py", "k=v", ...]`` or ``["-m seglearn.synth", ...]``) in this process.

    Returns
    -------
    Result
        Exit code (0 when the command returned; an exception that escaped everything is printed
        with its traceback to the captured stderr and counted as exit code 1).
    """
    script, args = str(argv[0]), [str(a) for a in argv[1:]]
    err, out = io.StringIO(), io.StringIO()
    with _restored_state():
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                if script.startswith("-m "):
                    module = script[3:].strip()
                    sys.argv[:] = [module, *args]
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                else:
                    path = ROOT / script
                    sys.argv[:] = [str(path), *args]
                    runpy.run_path(str(path), run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = _exit_code(exc)
            except BaseException:  # noqa: BLE001 - an escaped exception is what the corpus looks for
                import traceback

                traceback.print_exc(file=sys.stderr)
                code = 1
    return Result(code=code, stderr=err.getvalue(), stdout=out.getvalue(), argv=[script, *args])


def _digest(path: Path) -> dict:
    """``relative path -> sha1`` of a file or every file under a folder (``{"": None}`` if missing)."""
    if not path.exists():
        return {"": None}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else "": hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def run_case(case: Case, ws: Workspace) -> Result:
    """Set up ``case`` in ``ws`` (a fresh ``ws.tmp``), snapshot its protected paths and run it."""
    ws.tmp.mkdir(parents=True, exist_ok=True)
    if case.setup is not None:
        ws.extra.update(case.setup(ws) or {})
    argv = [case.argv[0], *(ws.fill(a) for a in case.argv[1:])]
    before = {p: _digest(Path(ws.fill(p))) for p in case.unchanged}
    absent_before = [p for p in case.absent if Path(ws.fill(p)).exists()]
    r = run_cli(argv, env=case.env)
    r.before, r.absent_before, r.ws = before, absent_before, ws
    return r


def problems(case: Case, r: Result) -> list[str]:
    """Every way ``r`` breaks ``case``'s contract (empty when it holds)."""
    ws = r.ws
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
    found = []
    if r.code != case.code:
        found.append(f"exit code {r.code}, expected {case.code}")
    if "Traceback (most recent call last)" in r.stderr:
        found.append("traceback on stderr")
    if case.code == 0:
        if errs:
            found.append(f"an error line in a valid control: {errs[0]!r}")
    elif len(errs) != 1:
        found.append(f"expected one {ERROR_PREFIX!r} line, got {len(errs)}")
    elif case.text and case.text not in errs[0]:
        found.append(f"the error line does not contain {case.text!r}")
    if r.absent_before:
        found.append(f"test set-up: {r.absent_before} existed before the run")
    for p in case.absent:
        path = Path(ws.fill(p))
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):  # an empty folder is tolerated
            inside = sorted(q.name for q in path.rglob("*"))[:5] if path.is_dir() else []
            found.append(f"left behind: {path.name} {inside}")
    for p, digest in r.before.items():
        if _digest(Path(ws.fill(p))) != digest:
            found.append(f"changed: {ws.fill(p)}")
    return found


def check_case(case: Case, r: Result) -> None:
    """Assert that ``r`` (from :func:`run_case`) meets ``case`` (see the module docstring)."""
    found = problems(case, r)
    assert not found, f"{case.id}: {'; '.join(found)}\n$ {' '.join(r.argv)}\n--- stderr (end):\n{r.stderr[-1500:]}"
