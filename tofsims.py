"""``python tofsims.py input=FOLDER ions=[Ni+,C2H-,C7H7+] output=DIR``: ToF-SIMS ion maps -> phase map.

See ``configs/tofsims.yaml`` for every option and ``docs/tofsims.md`` for the input format.
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from seglearn.cli import report_errors, setup_logging


@report_errors
def run(cfg: DictConfig) -> dict:
    from seglearn.tofsims.pipeline import run as run_tofsims

    setup_logging()
    return run_tofsims(OmegaConf.to_container(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="configs", config_name="tofsims")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
