"""Command-line glue of the benchmark (``benchmark.py`` and ``python -m seglearn.benchmark``)."""

from __future__ import annotations

from seglearn.benchmark.run import run_benchmark
from seglearn.cli import report_errors, setup_logging
from seglearn.config import to_plain
from seglearn.ct.study import run as run_ct_study
from seglearn.options import BENCHMARK, check_options


@report_errors
def run(cfg) -> dict:
    """Resolve the Hydra config and run :func:`seglearn.benchmark.run.run_benchmark`
    (or a study named by ``study=``, e.g. ``experiment=ct_user_study``)."""
    if cfg.get("study") == "ct_user_study":
        return run_ct_study(cfg)
    setup_logging()
    params = to_plain(cfg)
    check_options(params, BENCHMARK, "benchmark")
    return run_benchmark(params)
