"""bfloat16 autocast and channels-last layout for seglearn's networks (U-Net, particle model), on any device.

On a CPU with AMX / AVX512-BF16 (oneDNN reports bf16 support) or a CUDA GPU with bf16, the
convolutions run in bfloat16 under :func:`torch.autocast` and the activations are kept
channels-last, which is what oneDNN and cuDNN are fastest with. Losses and outputs handed back
to numpy stay float32. ``bf16: auto`` in the config turns it on exactly where it is supported.
"""

from __future__ import annotations

import contextlib


def bf16_supported(device) -> bool:
    """Whether ``device`` (``torch.device`` or str) runs bfloat16 convolutions natively."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_bf16(setting, device) -> bool:
    """The ``bf16`` config value (``true`` / ``false`` / ``"auto"`` / ``None`` = auto) for ``device``.

    Raises
    ------
    ValueError
        For anything else.
    """
    if setting is None or (isinstance(setting, str) and setting.lower() == "auto"):
        return bf16_supported(device)
    if isinstance(setting, bool):
        return setting
    if isinstance(setting, str) and setting.lower() in ("true", "false"):
        return setting.lower() == "true"
    raise ValueError(f"bf16: expected true, false or auto, got {setting!r}")


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
