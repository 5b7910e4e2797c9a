"""Measure a label volume: ``python characterise.py input=labels.tif [voxel_size_nm=...] [output=DIR]``.

See ``configs/characterise.yaml`` for every option and ``docs/characterise.md`` for the outputs.

A thin wrapper of ``seglearn-characterise`` (``python -m seglearn characterise``), which runs from any directory after
``pip install .``; see :mod:`seglearn.commands`.
"""

from seglearn.commands import characterise as main

if __name__ == "__main__":
    main()
