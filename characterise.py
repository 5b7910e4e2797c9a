"""Measure a label volume: ``python characterise.py input=labels.tif [voxel_size_nm=...] [output=DIR]``.

See ``configs/characterise.yaml`` for every option and ``docs/characterise.md`` for the outputs.
"""

from seglearn.cli import command


@command("characterise")
def main(cfg) -> None:
    from seglearn.characterise.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
