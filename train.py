"""Train a model: ``python train.py data.root=DATASET out_dir=DIR [model=unet|stardist] [experiment=NAME]``."""

import hydra

from seglearn.cli import report_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@report_errors
def main(cfg) -> None:
    from seglearn.runner import train

    train(cfg)


if __name__ == "__main__":
    main()
