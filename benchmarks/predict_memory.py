"""Peak memory of predict.py with its defaults on tomograms larger than it should ever hold in memory.

    python benchmarks/predict_memory.py [--cases tiff omezarr] [--seconds 240]

Two cases, both two detectors of uint16, both with predict.py's defaults (``block_slices=auto``,
``memory_budget_gib=1.5``):

- ``tiff``: 2 x 256 x 1024 x 1024 (two BigTIFF stacks, 1 GiB) -> TIFF outputs;
- ``omezarr``: 2 x 512 x 2048 x 2048 (two OME-Zarr images, 8 GiB) -> ``output_format=ome-zarr``.

The input is phantom-like (smooth grains plus noise, so it compresses like real data); it is written
once per run into a temporary folder. ``predict.py`` runs as a child process whose peak resident
memory (VmHWM, the kernel's high-water mark) is read until it finishes or ``--seconds`` pass: memory is
bounded per block (or band of rows) of slices, so the peak is reached within the first blocks. Writes
docs/bench_predict_memory.md.
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
CASES = {"tiff": (256, 1024, 1024), "omezarr": (512, 2048, 2048)}


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _slices(shape, seed: int):
    """Phantom-like uint16 slices: a smooth random field of grains, shifted along z, plus noise."""
    from scipy import ndimage as ndi

    z, y, x = shape
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((y, x), dtype=np.float32), 6)
    grains = (field > np.percentile(field, 55)).astype(np.float32) * 20000 + 15000
    for i in range(z):
        yield (np.roll(grains, i, axis=1) + rng.normal(0, 1500, (y, x)).astype(np.float32)).astype(np.uint16)


def write_inputs(case: str, tmp: Path) -> list[Path]:
    import tifffile

    from seglearn.io.omezarr import OmeZarrWriter

    shape = CASES[case]
    paths = []
    for i, det in enumerate(("SE2", "InLens")):
        if case == "tiff":
            p = tmp / f"{det}.tif"
            with tifffile.TiffWriter(p, bigtiff=True) as tw:
                for s in _slices(shape, i):
                    tw.write(s, contiguous=True, photometric="minisblack", resolution=(50, 50), resolutionunit=3)
        else:
            p = tmp / f"{det}.ome.zarr"
            w = OmeZarrWriter(p, shape, np.uint16, voxel_size_nm=(30, 15, 15), chunks=(4, 512, 512), min_size=4096)
            for z, s in enumerate(_slices(shape, i)):
                w.write(z, s[None])
            w.finish()
        paths.append(p)
    return paths


def run_case(case: str, ckpt: str, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = write_inputs(case, tmp)
        t_write = time.perf_counter() - t0
        size = sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
        out = tmp / "pred"
        cmd = [sys.executable, str(ROOT / "predict.py"), f"ckpt={ckpt}", f"input=[{paths[0]},{paths[1]}]",
               "detectors=[SE2,InLens]", f"output={out}", "preview=false"]
        if case == "omezarr":
            cmd.append("output_format=ome-zarr")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None and time.perf_counter() - t0 < seconds:
            peak = max(peak, _hwm_kib(proc.pid))
            time.sleep(0.5)
        finished = proc.poll() is not None
        peak = max(peak, _hwm_kib(proc.pid))
        if not finished:
            proc.kill()
        err = proc.communicate()[1]
        plan = next((ln.split("] ", 1)[1] for ln in err.splitlines() if "memory: blocks" in ln), "?")
        return {"case": case, "shape": CASES[case], "input_gib": size / 2**30, "write_s": t_write, "peak_gib":
                peak / 2**20, "finished": finished, "seconds": time.perf_counter() - t0, "plan": plan,
                "tail": err[-400:] if finished and proc.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--ckpt", default="checkpoints/demo.ckpt")
    ap.add_argument("--out", default="docs/bench_predict_memory.md")
    args = ap.parse_args()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [run_case(c, args.ckpt, args.seconds) for c in args.cases]
    text = ["## predict.py peak memory with its defaults (byte budget 1.5 GiB)", "",
            f"`python benchmarks/predict_memory.py --cases {' '.join(args.cases)} --seconds {args.seconds:.0f}` on "
            f"{when}, `{Path(args.ckpt).name}`, two uint16 detectors, `block_slices=auto`, "
            "`memory_budget_gib=1.5` (the defaults). Peak = the child's VmHWM.", "",
            "| input | size | output | plan (from the log) | peak RSS | target | run |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        z, y, x = r["shape"]
        status = "finished" if r["finished"] else f"stopped after {r['seconds']:.0f} s"
        target = "< 1.5 GiB" if r["case"] == "tiff" else "< 2 GiB"
        text.append(f"| 2 x {z} x {y} x {x} {'TIFF' if r['case'] == 'tiff' else 'OME-Zarr'} | {r['input_gib']:.2f} GiB "
                    f"| {'TIFF' if r['case'] == 'tiff' else 'OME-Zarr'} | {r['plan']} | **{r['peak_gib']:.2f} GiB** | "
                    f"{target} | {status} |")
    text += ["", "Streaming: each block (or band of rows of a slice) is read, predicted, written and freed, so the "
             "peak is reached in the first blocks; the runs are stopped once that is certain (the whole volume "
             "takes far longer on 2 CPU cores).", ""]
    text = "\n".join(text)
    print(text, *[r["tail"] for r in rows if r["tail"]])
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
