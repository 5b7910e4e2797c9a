"""The bf16 rule (issue 28): bf16 only where the device computes it natively, recorded in summaries."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from seglearn import precision  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo.ckpt"


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given native bf16 instruction sets (oneDNN always says 'supported')."""

    def set_flags(avx512_bf16: bool, amx: bool):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
        precision._cpu_bf16_isa.cache_clear()

    yield set_flags
    precision._cpu_bf16_isa.cache_clear()


@pytest.mark.parametrize("avx512_bf16, amx, native, isa", [
    (False, False, False, None),  # AVX-512 without bf16: oneDNN emulates it, 3x slower than fp32
    (True, False, True, "avx512_bf16"),
    (False, True, True, "amx"),
    (True, True, True, "amx"),
])
def test_auto_is_bf16_only_with_native_instructions(cpu_flags, avx512_bf16, amx, native, isa):
    cpu_flags(avx512_bf16, amx)
    assert precision.bf16_supported("cpu") is native
    assert precision.resolve_bf16("auto", "cpu") is native and precision.resolve_bf16(None, "cpu") is native
    rec = precision.precision_record("cpu", native)
    assert rec["dtype"] == ("bf16" if native else "fp32") and rec["native_bf16"] is native
    assert (isa in rec["why"]) if isa else ("without native bf16" in rec["why"])


def test_explicit_settings_win_and_bad_values_are_refused(cpu_flags):
    from seglearn.errors import InputError

    cpu_flags(False, False)
    assert precision.resolve_bf16(True, "cpu") is True and precision.resolve_bf16("true", "cpu") is True
    assert precision.resolve_bf16("false", "cpu") is False
    with pytest.raises(InputError, match="bf16"):
        precision.resolve_bf16("maybe", "cpu")


def test_segmenter_and_lightning_follow_the_rule(cpu_flags):
    """Prediction (Segmenter) and U-Net training (Lightning precision) read the same rule."""
    from seglearn.segment.api import load_segmenter
    from seglearn.segment.train import _resolve_auto

    cpu_flags(False, False)
    assert load_segmenter(DEMO, device="cpu").bf16 is False
    assert _resolve_auto({"accelerator": "cpu"}, "auto")[0]["precision"] == "32-true"
    cpu_flags(True, False)
    assert load_segmenter(DEMO, device="cpu").bf16 is True
    assert _resolve_auto({"accelerator": "cpu"}, "auto")[0]["precision"] == "bf16-mixed"
