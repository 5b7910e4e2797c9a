"""Synthetic pretraining with domain randomisation, and few-scribble adaptation of the base model.

Modules, one job each:

- :mod:`~seglearn.pretrain.randomise`: draws phantom parameters (artefacts, detector contrast,
  noise, particles, carbon-binder, voxel anisotropy, microstructure source) from config ranges.
- :mod:`~seglearn.pretrain.stream`: an endless stream of densely labelled patches from a small
  in-memory cache of randomised phantoms.
- :mod:`~seglearn.pretrain.train`: pretraining of a base model (``model.kind=unet_pretrain``).
- :mod:`~seglearn.pretrain.lit`: pretraining on the Lightning Trainer (phantom-stream DataModule,
  LightningModule, checkpoints on rank 0; ``trainer=ddp``).
- :mod:`~seglearn.pretrain.finetune`: adaptation of a base model to a dataset's scribbles
  (``python train.py data.root=DATASET init=BASE.ckpt``); its numeric rules (detector selection,
  grey scale, scribble split, class mapping) in :mod:`~seglearn.pretrain.rules`.
- :mod:`~seglearn.pretrain.blend`: the forest fitted on the same scribbles, blended into the fine-tuned
  model, stored as plain arrays in the checkpoint (applied at prediction by :mod:`seglearn.segment.blend`,
  packed by :mod:`seglearn.segment.forest_pack`).
- :mod:`~seglearn.pretrain.noise`: how noisy a dataset is next to the base model's phantoms, and
  the in-plane smoothing that brings it into their range.
- :mod:`~seglearn.pretrain.adapt`: adaptation to a volume without labels (BatchNorm statistics
  after fine-tuning; the noise rule of zero-shot prediction, whose statistics step is
  :mod:`seglearn.segment.adapt`).
- :mod:`~seglearn.pretrain.soup`: weight averaging of base models continued from the same one,
  and their scores on fresh randomised phantoms (``python -m seglearn.pretrain.soup``).

Imports are lazy: importing this package does not import torch.
"""
