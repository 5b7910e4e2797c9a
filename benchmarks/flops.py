"""Achieved convolution FLOP/s against a matmul peak measured in the same run (fp32 and bf16).

    python benchmarks/flops.py [--threads N] [--out docs/bench_flops.md]

The matmul peak is the best of a few large square matmuls; the convolution is a U-Net-sized
3x3 layer (64 -> 64 channels, 2 x 256 x 256, channels_last), the building block of the
segmenter. Both run in the same process on the same threads, so the ratio is what counts.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch


def _best(fn, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """Best GEMM rate: ``torch.mm`` and the same GEMM through oneDNN as a 1x1 convolution.

    On CPUs with AMX, ``torch.mm`` in bf16 does not reach the rate oneDNN's convolution kernels
    do, so the peak is the better of the two (an (n x n) @ (n x n) product either way).
    """
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    rates = [2 * n**3 / _best(lambda: torch.mm(a, b))]
    side = int(n**0.5)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(1, n, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def gemm():
        conv(x)

    rates.append(2 * n * n * side * side / _best(gemm))
    return max(rates)


def conv_rate(dtype: torch.dtype, channels: int = 64, size: int = 256, batch: int = 2,
              channels_last: bool = True, autocast: bool = False) -> float:
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    x = torch.randn(batch, channels, size, size)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if not autocast:
        conv = conv.to(dtype)
        x = x.to(dtype)

    @torch.inference_mode()
    def run():
        if autocast:
            with torch.autocast("cpu", dtype=dtype):
                conv(x)
        else:
            conv(x)

    t = _best(run)
    flops = 2 * batch * channels * channels * 9 * size * size
    return flops / t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="docs/bench_flops.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peak = matmul_peak(dtype)
        conv = conv_rate(dtype)
        conv_nchw = conv_rate(dtype, channels_last=False)
        rows.append((name, peak / 1e9, conv / 1e9, conv_nchw / 1e9))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Convolution FLOP/s vs matmul peak",
        "",
        f"`python benchmarks/flops.py --threads {args.threads}` on {when}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {args.threads} threads. Conv: 3x3, 64->64 channels, batch 2 x 256 x 256. "
        "Matmul peak: the best of torch.mm and the same 2048^2 GEMM through oneDNN (a 1x1 convolution).",
        "",
        "| dtype | matmul peak GFLOP/s | conv channels_last GFLOP/s | ratio to peak | conv NCHW GFLOP/s | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name, peak, conv, nchw in rows:
        lines.append(f"| {name} | {peak:.1f} | {conv:.1f} | {conv / peak:.0%} | {nchw:.1f} | {nchw / peak:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
