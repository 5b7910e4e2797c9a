"""Peak memory of predict.py on a tomogram larger than it should ever hold in memory.

    python benchmarks/predict_memory.py [--shape 512 1024 1024] [--seconds 240]

Writes a (Z, Y, X) uint16 stack (1 GiB at the default shape) as a single-detector input, runs
``predict.py`` on it with the single-detector base model, and samples the process's peak
resident memory (VmHWM) while it streams blocks of slices. The run is stopped after
``--seconds`` when it has not finished (the whole volume takes far longer on 2 CPU cores):
the peak is reached within the first blocks, since each block is read, predicted, written and
freed. Appends the figures to docs/bench_predict_memory.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 1024, 1024])
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--ckpt", default="checkpoints/fibsem_base_1det.ckpt")
    ap.add_argument("--out", default="docs/bench_predict_memory.md")
    args = ap.parse_args()
    import tifffile

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        src = Path(tmp) / "SE2.tif"
        z, y, x = args.shape
        rng = np.random.default_rng(0)
        with tifffile.TiffWriter(src, bigtiff=True) as tw:
            for _ in range(z):
                tw.write(rng.integers(0, 65535, (y, x), dtype=np.uint16), contiguous=True, photometric="minisblack")
        size_gib = src.stat().st_size / 2**30
        out = Path(tmp) / "pred"
        cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt={args.ckpt}", f"input=[{src}]", "detectors=[SE2]",
               f"output={out}", f"block_slices={args.block}", "preview=false"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None and time.perf_counter() - t0 < args.seconds:
            peak = max(peak, _hwm_kib(proc.pid))
            time.sleep(0.5)
        finished = proc.poll() is not None
        peak = max(peak, _hwm_kib(proc.pid))
        if not finished:
            proc.kill()
        err = proc.communicate()[1]
        seconds = time.perf_counter() - t0
        done = err.count("slice")  # tqdm lines; informative only
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    status = "finished" if finished else f"stopped after {seconds:.0f} s (streaming; the peak is reached in the first blocks)"
    text = "\n".join([
        "## predict.py peak memory on a 1 GiB stack",
        "",
        f"`python benchmarks/predict_memory.py --shape {z} {y} {x} --seconds {args.seconds:.0f} --block {args.block}` "
        f"on {when}: input {z} x {y} x {x} uint16 ({size_gib:.2f} GiB), `{Path(args.ckpt).name}`, blocks of "
        f"{args.block} slices.",
        "",
        f"- peak resident memory (VmHWM): **{peak / 2**20:.2f} GiB** (target < 1.5 GiB); run {status}.",
        "",
    ])
    print(text, err[-500:] if not finished else "")
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
