"""Train a model: ``python train.py data.root=DATASET out_dir=DIR [model=unet|stardist] [experiment=NAME]``.

A thin wrapper of ``seglearn-train`` (``python -m seglearn train``), which runs from any directory after
``pip install .``; see :mod:`seglearn.commands`.
"""

from seglearn.commands import train as main

if __name__ == "__main__":
    main()
