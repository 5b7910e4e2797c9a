"""Classical segmentation baselines (thresholds, Otsu, Gabor pipeline, watershed, z-gradient, random forests).

See :mod:`seglearn.baselines.registry` for the method contract and the list of methods.
"""
