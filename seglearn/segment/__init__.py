"""Multi-detector semantic segmentation with a U-Net (2D, 2.5D or 3D) trained on sparse labels.

Modules, one job each:

- :mod:`~seglearn.segment.channels`: input channels (detectors + derived ``A-B`` differences) and
  robust-percentile normalisation.
- :mod:`~seglearn.segment.net`: the U-Net and the mode wrapper (2D / 2.5D / 3D).
- :mod:`~seglearn.segment.augment`: albumentations pipeline plus FIB-SEM artefacts.
- :mod:`~seglearn.segment.datamodule`: labelled-voxel-biased patch sampling, validation split.
- :mod:`~seglearn.segment.module`: the LightningModule (masked cross-entropy, validation IoU/awe).
- :mod:`~seglearn.segment.tiling`: sliding-window inference with Gaussian blending.
- :mod:`~seglearn.segment.infer`: the device, a network as a numpy function, tiling defaults.
- :mod:`~seglearn.segment.api`: :class:`Segmenter`, :func:`load_segmenter` (inference).
- :mod:`~seglearn.segment.adapt`: a model adapted to the volume it predicts, without labels.
- :mod:`~seglearn.segment.train`: the ``train.py`` back end and :func:`fit_segmenter` (training on arrays).
- :mod:`~seglearn.segment.predict`: the ``predict.py`` back end.

Imports are lazy: importing this package does not import torch.
"""

__all__ = ["load_segmenter", "segmenter_from_checkpoint", "fit_segmenter", "Segmenter"]


_WHERE = {"load_segmenter": "api", "segmenter_from_checkpoint": "api", "Segmenter": "api", "fit_segmenter": "train"}


def __getattr__(name):
    if name in _WHERE:  # lazy: training imports Lightning, prediction torch
        import importlib

        return getattr(importlib.import_module(f"seglearn.segment.{_WHERE[name]}"), name)
    raise AttributeError(name)
