"""FIB-SEM stack preprocessing before any method (seed 001): slice registration (phase
correlation or TV-L1, chained or solved over several lags) with a crop to the common area,
brightness equalisation (histogram matching, CLAHE), curtaining removal (wavelet-FFT, FFT
notch, opening + median), non-local-means denoising, rotation and manual crop, chained in a
:class:`Pipeline` that is stored as a plain list of step configs. :mod:`.stage` runs it inside
train / predict / benchmark.

Steps (``{"step": name, ...}``): ``register``, ``match_histograms``, ``clahe``, ``destripe``,
``nl_means``, ``rotate``, ``crop``.
"""

from seglearn.preprocess.steps import STEPS, Step
from seglearn.preprocess import denoise, destripe, geometry, intensity, registration  # noqa: F401  (register steps)
from seglearn.preprocess.pipeline import ArraySource, Pipeline, ReaderSource
from seglearn.preprocess.drift import pair_shift, residual_rms
from seglearn.preprocess.registration import read_shifts_csv
from seglearn.preprocess.run import preprocess_dataset

__all__ = ["STEPS", "Step", "Pipeline", "ArraySource", "ReaderSource", "preprocess_dataset", "pair_shift", "read_shifts_csv",
           "residual_rms"]
