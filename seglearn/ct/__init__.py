"""X-ray CT sparse-annotation user study (seed 003).

Modules: :mod:`~seglearn.ct.phantom` (synthetic CT of a segmented volume),
:mod:`~seglearn.ct.annotators` (simulated users painting 7 slices),
:mod:`~seglearn.ct.unsupervised` (S1/S2/S3 thresholds, gWS/cWS watershed),
:mod:`~seglearn.ct.ml` (random forest from the painted slices), :mod:`~seglearn.ct.study`
(``run(cfg)``: the whole study) and :mod:`~seglearn.ct.plots`.
"""

from seglearn.ct.annotators import Annotator, annotation_slices, make_users, paint_slice
from seglearn.ct.phantom import AM, NON_AM, CTConfig, CTPhantom, gaussian_prefilter, make_ct_phantom

__all__ = ["AM", "NON_AM", "Annotator", "CTConfig", "CTPhantom", "annotation_slices", "gaussian_prefilter",
           "make_ct_phantom", "make_users", "paint_slice"]
