"""Predict a tomogram: ``python predict.py ckpt=C input=DATASET_OR_TIFFS output=OUT``; no arguments: the demo.

A thin wrapper of ``seglearn-predict`` (``python -m seglearn predict``), which runs from any directory after
``pip install .``; see :mod:`seglearn.commands`.
"""

from seglearn.commands import predict as main

if __name__ == "__main__":
    main()
