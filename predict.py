"""Predict a tomogram: ``python predict.py ckpt=C input=DATASET_OR_TIFFS output=OUT``; no arguments: the demo."""

from seglearn.cli import command


@command("predict")
def main(cfg) -> None:
    from seglearn.runner import predict

    predict(cfg)


if __name__ == "__main__":
    main()
