"""Benchmark table: ``python benchmark.py data.root=DATASET [methods=[...]] [unet.ckpt=PATH] [out=DIR]``."""

from seglearn.cli import command


@command("benchmark")
def main(cfg) -> None:
    from seglearn.benchmark.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
