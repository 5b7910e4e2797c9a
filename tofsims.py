"""``python tofsims.py input=FOLDER ions=[Ni+,C2H-,C7H7+] output=DIR``: ToF-SIMS ion maps -> phase map.

See ``configs/tofsims.yaml`` for every option and ``docs/tofsims.md`` for the input format.

A thin wrapper of ``seglearn-tofsims`` (``python -m seglearn tofsims``), which runs from any directory after
``pip install .``; see :mod:`seglearn.commands`.
"""

from seglearn.commands import tofsims as main

if __name__ == "__main__":
    main()
