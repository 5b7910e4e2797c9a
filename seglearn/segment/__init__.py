"""Multi-detector semantic segmentation with a U-Net (2D, 2.5D or 3D) trained on sparse labels.

Modules, one job each:

- :mod:`~seglearn.segment.channels`: input channels (detectors + derived ``A-B`` differences) and
  robust-percentile normalisation.
- :mod:`~seglearn.segment.net`: the U-Net and the mode wrapper (2D / 2.5D / 3D).
- :mod:`~seglearn.segment.augment`: albumentations pipeline plus FIB-SEM artefacts.
- :mod:`~seglearn.segment.datamodule`: labelled-voxel-biased patch sampling, validation split.
- :mod:`~seglearn.segment.module`: the LightningModule (masked cross-entropy, validation IoU/awe).
- :mod:`~seglearn.segment.tiling`: sliding-window inference with Gaussian blending.
- :mod:`~seglearn.segment.api`: :func:`load_segmenter`, :func:`fit_segmenter`.
- :mod:`~seglearn.segment.train`, :mod:`~seglearn.segment.predict`: the ``train.py`` / ``predict.py``
  back ends.

Imports are lazy: importing this package does not import torch.
"""

__all__ = ["load_segmenter", "fit_segmenter", "Segmenter"]


def __getattr__(name):
    if name in __all__:
        from seglearn.segment import api

        return getattr(api, name)
    raise AttributeError(name)
