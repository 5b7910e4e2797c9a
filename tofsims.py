"""``python tofsims.py input=FOLDER ions=[Ni+,C2H-,C7H7+] output=DIR``: ToF-SIMS ion maps -> phase map.

See ``configs/tofsims.yaml`` for every option and ``docs/tofsims.md`` for the input format.
"""

from omegaconf import DictConfig, OmegaConf

from seglearn.cli import command, report_errors, setup_logging


@report_errors
def run(cfg: DictConfig) -> dict:
    from seglearn.tofsims.pipeline import run as run_tofsims

    from seglearn.options import TOFSIMS, check_options

    setup_logging()
    params = OmegaConf.to_container(cfg, resolve=True)
    check_options(params, TOFSIMS, "tofsims")
    return run_tofsims(params)


@command("tofsims")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
