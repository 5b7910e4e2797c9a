"""Benchmark table: ``python benchmark.py data.root=DATASET [methods=[...]] [unet.ckpt=PATH] [out=DIR]``."""

import hydra


@hydra.main(version_base="1.3", config_path="configs", config_name="benchmark")
def main(cfg) -> None:
    from seglearn.benchmark.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
