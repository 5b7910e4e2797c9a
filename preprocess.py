"""``python preprocess.py input=DATASET output=NEW_DATASET [preprocess=seed001] [steps=[...]]``

A thin wrapper of ``seglearn-preprocess`` (``python -m seglearn preprocess``), which runs from any directory after
``pip install .``; see :mod:`seglearn.commands`.
"""

from seglearn.commands import preprocess as main

if __name__ == "__main__":
    main()
