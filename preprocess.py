"""``python preprocess.py input=DATASET output=NEW_DATASET [preprocess=seed001] [steps=[...]]``"""

import hydra

from seglearn.cli import report_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="preprocess")
@report_errors
def main(cfg) -> None:
    from seglearn.preprocess.run import run

    run(cfg)


if __name__ == "__main__":
    main()
