"""Predict a tomogram: ``python predict.py ckpt=C input=DATASET_OR_TIFFS output=OUT``; no arguments: the demo."""

import hydra

from seglearn.cli import report_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
@report_errors
def main(cfg) -> None:
    from seglearn.runner import predict

    predict(cfg)


if __name__ == "__main__":
    main()
