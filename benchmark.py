"""Benchmark table: ``python benchmark.py data.root=DATASET [methods=[...]] [unet.ckpt=PATH] [out=DIR]``.

A thin wrapper of ``seglearn-benchmark`` (``python -m seglearn benchmark``), which runs from any directory after
``pip install .``; see :mod:`seglearn.commands`.
"""

from seglearn.commands import benchmark as main

if __name__ == "__main__":
    main()
