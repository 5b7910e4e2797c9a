"""bfloat16 autocast and channels-last layout for seglearn's networks (U-Net, particle model), on any device.

``bf16: auto`` (the config default) turns bfloat16 on only where it is *fast*, not merely where it is
"supported": on a CUDA GPU with bf16, and on a CPU whose instruction set computes bf16 natively
(AVX512-BF16 or AMX tiles). oneDNN reports bf16 support on any AVX-512 CPU, but without those
instructions it emulates bf16 and runs about 3x slower than fp32 (issue 28: 0.54x MONAI fp32 against
1.71x in fp32 on such a CPU), so those CPUs get fp32. Under bf16 the convolutions run in bfloat16 under
:func:`torch.autocast` and the activations are kept channels-last, which is what oneDNN and cuDNN are
fastest with. Losses and outputs handed back to numpy stay float32. :func:`precision_record` says
what was chosen and why, for the summaries that commands write.

The one place where seglearn picks a device and a precision: :func:`resolve_device` for prediction
(the ``device`` option), :func:`resolve_bf16` for the ``bf16`` options, and :func:`trainer_device` for
every ``lightning.Trainer`` (U-Net training, pretraining, fine-tuning).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Mapping

from seglearn.errors import InputError

log = logging.getLogger("seglearn")


@functools.lru_cache(maxsize=None)
def _cpu_bf16_isa() -> str | None:
    """The native bf16 instruction set of this CPU (``"amx"``, ``"avx512_bf16"``) or None."""
    import torch

    for name, probe in (("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        try:
            if bool(getattr(torch.cpu, probe)()):
                return name
        except (AttributeError, RuntimeError):
            continue
    return None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: str | None = "auto"):
    """The ``torch.device`` of a ``device`` option: ``auto`` (or None) picks CUDA, then Apple's MPS, then
    the CPU; any other value is given to ``torch.device`` as it is (``cpu``, ``cuda:1``, ...)."""
    import torch

    if device in (None, "auto"):
        if _cuda_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def bf16_supported(device) -> bool:
    """Whether ``device`` (``torch.device`` or str) runs bfloat16 convolutions natively (fast).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AMX tiles or AVX512-BF16 (not oneDNN's own
    ``_is_mkldnn_bf16_supported``, which is also true where bf16 is only emulated). Other devices: False.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        return _cpu_bf16_isa() is not None
    return False


def precision_record(device, bf16: bool) -> dict:
    """What a run computes in and why, for summary.json / train summaries.

    Returns
    -------
    dict
        ``{"dtype": "bf16" | "fp32", "device": str, "native_bf16": bool, "why": str}``.
    """
    import torch

    kind = torch.device(device).type
    native = bf16_supported(device)
    if kind == "cpu":
        isa = _cpu_bf16_isa()
        why = f"CPU with native bf16 ({isa})" if isa else "CPU without native bf16 (no AMX / AVX512-BF16): fp32 is faster"
    elif kind == "cuda":
        why = "CUDA device with bf16" if native else "CUDA device without bf16"
    else:
        why = f"{kind} device"
    return {"dtype": "bf16" if bf16 else "fp32", "device": str(device), "native_bf16": native, "why": why}


def resolve_bf16(setting, device) -> bool:
    """The ``bf16`` config value (``true`` / ``false`` / ``"auto"`` / ``None`` = auto) for ``device``.

    Raises
    ------
    InputError
        For anything else.
    """
    if setting is None or (isinstance(setting, str) and setting.lower() == "auto"):
        return bf16_supported(device)
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        return setting.lower() == "true"
    raise InputError(f"bf16: expected true, false or auto, got {setting!r}")


def trainer_device(trainer_cfg: Mapping | None, bf16="auto") -> dict:
    """The ``trainer`` config group with its device choices made, for every ``lightning.Trainer`` of seglearn
    (U-Net training, pretraining, fine-tuning): the one place where precision and BatchNorm sync are decided.

    ``precision: auto`` becomes ``bf16-mixed`` where :func:`resolve_bf16` says so for the device the
    trainer will use (a GPU when one is visible and ``accelerator`` is auto / gpu / cuda, else the CPU;
    ``bf16`` is the run's own setting, ``auto`` = native bf16 only), else ``32-true``;
    ``sync_batchnorm`` is turned off off-GPU (torch's SyncBatchNorm runs on GPUs only; CPU DDP over gloo
    keeps per-process statistics).

    Returns
    -------
    dict
        A copy of ``trainer_cfg`` with ``precision`` and ``sync_batchnorm`` resolved.
    """
    tr = dict(trainer_cfg or {})
    gpu = _cuda_available() and tr.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    if tr.get("precision", "auto") in ("auto", None):
        tr["precision"] = "bf16-mixed" if resolve_bf16(bf16, "cuda" if gpu else "cpu") else "32-true"
    if tr.get("sync_batchnorm") and not gpu:
        log.info("trainer.sync_batchnorm=true needs GPUs; turned off for CPU training")
        tr["sync_batchnorm"] = False
    return tr


def autocast(device, enabled: bool):
    """``torch.autocast`` to bfloat16 on ``device``'s type, or a no-op when not ``enabled``."""
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def to_channels_last(x):
    """A 4D tensor (or a module) in channels-last memory format; other tensors unchanged."""
    import torch

    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
