"""The U-Net as one more benchmark method (``impl: unet`` in ``configs/method/``, listed in
:data:`seglearn.baselines.registry.METHODS`): load a checkpoint, fine-tune a base model, or train one.

Uses ``seglearn.segment`` (``load_segmenter``, ``fit_segmenter``) and
``seglearn.pretrain.finetune``, imported only when called.
"""

from __future__ import annotations

import tempfile

import numpy as np

from seglearn.ckpt import load_checkpoint
from seglearn.errors import InputError
from seglearn.io.intensity import fit_to_model
from seglearn.pretrain.adapt import adapt_to_volume, parse_predict_adapt, resolve_predict_alpha
from seglearn.segment.tta import check_mode


def _api():
    try:
        import seglearn.segment as api
    except ImportError as exc:  # the segment package is optional for the classical baselines
        raise InputError(f"unet: seglearn.segment is not available ({exc})") from exc
    return api


def fit(channels, detectors, train_labels=None, *, ckpt: str | None = None, init: str | None = None,
        out_dir: str | None = None, overrides: dict | None = None, finetune: dict | None = None, val_labels=None,
        voxel_size_nm=None, tta: str | None = None, adapt="auto") -> dict:
    """Use ``ckpt`` as it is (e.g. a base model zero-shot); or fine-tune the base model ``init`` on the
    training labels (``seglearn.pretrain.finetune``, settings ``finetune``; validation on held-out
    scribbles, never on the test labels); or train from scratch with ``fit_segmenter`` into ``out_dir``.
    ``tta`` (none, flips, dihedral) is the test-time augmentation of the predictions; ``adapt`` as
    ``predict.py adapt=`` (``auto``: a base model is adapted to the predicted volume without labels,
    :func:`seglearn.pretrain.adapt.adapt_to_volume`)."""
    mode = check_mode(tta)  # before any training
    wanted = parse_predict_adapt(adapt)  # a bad setting fails before any training too
    path = str(ckpt) if ckpt else _train(channels, detectors, train_labels, init=init, out_dir=out_dir,
                                         overrides=overrides, finetune=finetune, val_labels=val_labels,
                                         voxel_size_nm=voxel_size_nm)
    # a model trained here (fine-tuned or from scratch) fits this dataset already: auto leaves it alone
    if wanted == 0 or (wanted == "auto" and not ckpt):
        return {"ckpt": path, "tta": mode, "adapt": 0.0}
    return {"ckpt": path, "tta": mode,
            "adapt": resolve_predict_alpha(wanted, load_checkpoint(path, kind="unet")["meta"], path)}


def _train(channels, detectors, train_labels, *, init, out_dir, overrides, finetune, val_labels, voxel_size_nm) -> str:
    """Path of a checkpoint fine-tuned from ``init``, or trained from scratch, on ``train_labels``."""
    if train_labels is None or not np.any(train_labels):
        raise InputError("unet: needs unet.ckpt=PATH or training labels to train one")
    out_dir = out_dir or tempfile.mkdtemp(prefix="seglearn_unet_")
    if init:
        from seglearn.pretrain.finetune import finetune as run_finetune

        res = run_finetune(str(init), np.asarray(channels), list(detectors), np.asarray(train_labels), out_dir,
                           voxel_size_nm=voxel_size_nm, test=val_labels, settings=finetune, overwrite=True)
        return str(res["best_ckpt"])
    ov = dict(overrides or {})
    if voxel_size_nm is not None:
        ov.setdefault("voxel_size_nm", list(voxel_size_nm))
    path = _api().fit_segmenter(channels, train_labels, list(detectors), out_dir, overrides=ov or None,
                                val_labels=val_labels)
    return str(path)


def predict(model, channels, detectors) -> np.ndarray:
    api = _api()
    channels = np.asarray(channels)
    if model.get("adapt", 0.0) > 0 or channels.dtype != np.uint8:  # adapted to these channels first, no labels

        # adapt_to_volume first puts the channels on the model's grey scale (seglearn.io.intensity)
        ck = load_checkpoint(model["ckpt"], kind="unet")
        idx = api.segmenter_from_checkpoint(ck, device="cpu", bf16=False).channel_order(list(detectors), "channels")
        ck, _ = adapt_to_volume(ck, lambda a, b: channels[idx, a:b], channels.shape[1:], ck["meta"]["detectors"],
                                model.get("adapt", 0.0), where=str(model["ckpt"]))
        seg = api.segmenter_from_checkpoint(ck)
    else:
        seg = api.load_segmenter(model["ckpt"])
        meta = getattr(seg, "meta", None)
        if meta is not None:  # uint8 channels too: a model trained on 16-bit or 0..1 data reads another scale

            sel = channels[seg.channel_order(list(detectors), "channels")]
            ck, _ = fit_to_model({"meta": meta}, lambda a, b: sel[:, a:b], sel.shape[1:], seg.detectors,
                                 where=str(model["ckpt"]))
            seg.input_map = ck["meta"]["normalisation"].get("input_map")
    return np.asarray(seg.predict(channels, list(detectors), tta=model.get("tta"))).astype(np.uint8)
