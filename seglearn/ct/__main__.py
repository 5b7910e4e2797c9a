"""``python -m seglearn.ct [key=value ...]``: the CT user study with ``configs/experiment/ct_user_study.yaml``.

Same as ``python benchmark.py experiment=ct_user_study``; overrides use the config's keys
(``ct_study.out=DIR``, ``ct_study.phantom.shape=[48,48,48]``, ``ct_study.overwrite=true``, ...).
"""

from __future__ import annotations

import sys

from seglearn.cli import report_errors, setup_logging
from seglearn.ct.study import run
from seglearn.errors import InputError
from seglearn.paths import compose


@report_errors
def main(argv: list[str] | None = None) -> dict:
    """Compose the experiment config with the command-line overrides and run the study."""
    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return {}
    from hydra.errors import HydraException

    try:
        cfg = compose("experiment/ct_user_study", args)
    except HydraException as exc:
        raise InputError(f"configs/experiment/ct_user_study.yaml: {str(exc).splitlines()[0]}") from exc
    return run(cfg)


if __name__ == "__main__":
    main()
