"""``python -m seglearn.ct [key=value ...]``: the CT user study with ``configs/experiment/ct_user_study.yaml``.

Same as ``python benchmark.py experiment=ct_user_study``; overrides use the config's keys
(``ct_study.out=DIR``, ``ct_study.phantom.shape=[48,48,48]``, ``ct_study.overwrite=true``, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from seglearn.cli import report_errors, setup_logging

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "experiment"


@report_errors
def main(argv: list[str] | None = None) -> dict:
    """Compose the experiment config with the command-line overrides and run the study."""
    from hydra import compose, initialize_config_dir

    from seglearn.ct.study import run

    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return {}
    from hydra.errors import HydraException

    from seglearn.errors import InputError

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="ct_user_study", overrides=args)
    except HydraException as exc:
        raise InputError(f"configs/experiment/ct_user_study.yaml: {str(exc).splitlines()[0]}") from exc
    return run(cfg)


if __name__ == "__main__":
    main()
