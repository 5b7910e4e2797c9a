"""Measure a label volume: ``python characterise.py input=labels.tif [voxel_size_nm=...] [output=DIR]``.

See ``configs/characterise.yaml`` for every option and ``docs/characterise.md`` for the outputs.
"""

import hydra

from seglearn.cli import report_errors


@hydra.main(version_base="1.3", config_path="configs", config_name="characterise")
@report_errors
def main(cfg) -> None:
    from seglearn.characterise.cli import run

    run(cfg)


if __name__ == "__main__":
    main()
