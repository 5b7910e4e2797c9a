"""Train a model: ``python train.py data.root=DATASET out_dir=DIR [model=unet|stardist] [experiment=NAME]``."""

from seglearn.cli import command


@command("train")
def main(cfg) -> None:
    from seglearn.runner import train

    train(cfg)


if __name__ == "__main__":
    main()
