"""``python preprocess.py input=DATASET output=NEW_DATASET [preprocess=seed001] [steps=[...]]``"""

from seglearn.cli import command


@command("preprocess")
def main(cfg) -> None:
    from seglearn.preprocess.run import run

    run(cfg)


if __name__ == "__main__":
    main()
