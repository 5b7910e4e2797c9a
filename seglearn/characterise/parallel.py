"""Run the tasks of a characterisation on a few worker processes under a memory budget.

Each step of :func:`~seglearn.characterise.characterise` is cut into tasks (one tortuosity solve
per phase and direction, one size distribution per phase, one mesh per phase, ...). With
``workers > 1`` they run in forked worker processes (the label volume is shared copy-on-write,
never pickled): the costliest first, and a task starts only while the memory estimates of the
running tasks plus its own stay within ``memory_gb``; a task whose estimate alone exceeds it
is not run at all (its step is reported as not run, with the estimate). With
``workers = 1`` (or where ``fork`` is not available) they run one after the other in this process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("seglearn")

_TASKS: list["Task"] = []  # read by the forked workers (set before the pool forks)


@dataclass
class Task:
    """One unit of work: ``fn()`` returns a picklable result for the step ``step``."""

    step: str
    fn: Callable[[], Any]
    cost: float = 1.0  # relative CPU estimate (ordering only)
    mem: float = 0.0  # peak bytes estimate (admission under the budget)
    name: str = ""
    result: Any = field(default=None, repr=False)
    refused: str | None = None  # why it did not run (its memory estimate exceeds the budget)
    optional: bool = False  # its step is combined without it (else a refused task refuses the whole step)
    wall_s: float = 0.0
    cpu_s: float = 0.0


def _timed(task: Task) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = task.fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _run_index(i: int) -> tuple[Any, float, float, float]:
    out, wall, cpu = _timed(_TASKS[i])
    return out, wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tasks(tasks: list[Task], *, workers: int, memory_gb: float) -> dict:
    """Run ``tasks`` (results and timings set on each); returns ``{"workers", "peak_rss_mb_workers"}``.

    Parameters
    ----------
    tasks : list of Task
    workers : int
        Processes; 1 runs everything here, in the given order.
    memory_gb : float
        Budget for the summed ``mem`` estimates of the tasks running at once; a task whose own
        estimate exceeds it is not run (``refused`` says why).
    """
    budget = float(memory_gb) * 2**30
    for t in tasks:
        if t.mem > budget:
            t.refused = f"needs ~{t.mem / 2**30:.3g} GB > parallel.memory_gb={float(memory_gb):g}"
            log.warning("characterise: %s not run: %s", t.name or t.step, t.refused)
    tasks = [t for t in tasks if t.refused is None]
    use = min(int(workers), len(tasks))
    if use <= 1 or "fork" not in mp.get_all_start_methods():
        for t in tasks:
            t.result, t.wall_s, t.cpu_s = _timed(t)
        return {"workers": 1, "peak_rss_mb_workers": None}
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    global _TASKS
    _TASKS = list(tasks)
    todo = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
    running: dict = {}
    peak = 0.0
    try:
        with ProcessPoolExecutor(max_workers=use, mp_context=mp.get_context("fork")) as pool:
            while todo or running:
                used = sum(tasks[i].mem for i in running.values())
                for i in list(todo):
                    if len(running) >= use:
                        break
                    if running and used + tasks[i].mem > budget:
                        continue
                    running[pool.submit(_run_index, i)] = i
                    used += tasks[i].mem
                    todo.remove(i)
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    tasks[i].result, tasks[i].wall_s, tasks[i].cpu_s, rss = fut.result()
                    peak = max(peak, rss)
    finally:
        _TASKS = []
    return {"workers": use, "peak_rss_mb_workers": round(peak, 1)}
