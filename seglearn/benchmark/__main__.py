"""``python -m seglearn.benchmark data.root=DATASET methods=[...]`` (same as ``benchmark.py``)."""

from seglearn.benchmark.cli import run
from seglearn.cli import command


@command("benchmark")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
