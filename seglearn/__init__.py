"""seglearn: segmentation of battery-electrode tomograms.

Inside the package every image is ``(C, Z, Y, X)``; a label volume is ``(Z, Y, X)`` with class
ids ``1..K`` and ``0`` for unlabelled / not scored. Sub-packages import lazily so that the
command-line entry points start quickly.
"""

__version__ = "0.1.0"
