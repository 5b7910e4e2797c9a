"""``python -m seglearn.benchmark data.root=DATASET methods=[...]`` (same as ``benchmark.py``)."""

import hydra


@hydra.main(version_base="1.3", config_path="../../configs", config_name="benchmark")
def main(cfg) -> None:
    from seglearn.benchmark.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
