"""``python -m seglearn.benchmark data.root=DATASET methods=[...]`` (same as ``benchmark.py``)."""

from seglearn.cli import command


@command("benchmark")
def main(cfg) -> None:
    from seglearn.benchmark.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
