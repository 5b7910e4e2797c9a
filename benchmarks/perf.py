"""U-Net tiled prediction against MONAI's sliding_window_inference, same network, same tiles.

    python benchmarks/perf.py [--ckpt checkpoints/demo.ckpt] [--shape 16 512 512] [--threads 2]

Both sides predict the same normalised 2.5D input with the same network (the checkpoint's),
the same 256 x 256 tiles with 64 px overlap (MONAI: overlap=0.25, mode="gaussian"), the same
number of slice-tiles per forward pass, fp32 on the CPU. Reported: throughput of each, their
ratio, and how far their outputs agree. Appends to docs/bench_perf.md.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", default="checkpoints/demo.ckpt")
    ap.add_argument("--shape", type=int, nargs=3, default=[16, 512, 512])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="docs/bench_perf.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from monai.inferers import sliding_window_inference

    from seglearn.segment.api import load_segmenter
    from seglearn.synth import make_phantom

    seg = load_segmenter(args.ckpt, device="cpu", bf16=False)
    z, y, x = args.shape
    ph = make_phantom({"shape": [z, y, x], "seed": 21, "voxel_size_nm": [40, 20, 20], "particle_radius_nm": 380})
    raw = ph.channels()
    dets = list(ph.config.detectors)
    tile, overlap, batch = [4, 256, 256], [0, 64, 64], 2

    def ours() -> np.ndarray:
        return seg.predict_proba(raw, dets, tile=tile, overlap=overlap, batch_size=batch)

    # MONAI: the same network seen as a 2D predictor of one slice from its +-h neighbours
    h = seg.net.halo
    norm = seg.prepare(raw[seg.channel_order(dets)])  # (C, Z, Y, X)
    idx = np.clip(np.arange(-h, z + h), 0, z - 1)
    padded = torch.from_numpy(np.ascontiguousarray(norm[:, idx]))
    stacks = torch.stack([padded[:, i:i + 2 * h + 1] for i in range(z)])  # (Z, C, 2h+1, Y, X)
    c = stacks.shape[1]
    flat = stacks.reshape(z, c * (2 * h + 1), y, x)
    net = seg.net.eval()

    def predictor(t: torch.Tensor) -> torch.Tensor:
        b = t.shape[0]
        out = net(t.reshape(b, c, 2 * h + 1, *t.shape[-2:]))
        return torch.softmax(out.float(), dim=1)[:, :, 0]

    def theirs() -> np.ndarray:
        with torch.inference_mode():
            out = sliding_window_inference(flat, roi_size=(tile[1], tile[2]), sw_batch_size=tile[0] * batch,
                                           predictor=predictor, overlap=overlap[1] / tile[1], mode="gaussian",
                                           sigma_scale=0.125, padding_mode="replicate")
        return out.permute(1, 0, 2, 3).numpy()

    ours()  # warm-up
    theirs()
    t_ours, t_theirs = [], []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        p_ours = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p_theirs = theirs()
        t_theirs.append(time.perf_counter() - t0)
    n = z * y * x
    v_ours, v_theirs = n / min(t_ours), n / min(t_theirs)
    agree = float(np.mean(np.argmax(p_ours, 0) == np.argmax(p_theirs, 0)))
    maxdiff = float(np.abs(p_ours - p_theirs).max())
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = f"python benchmarks/perf.py --ckpt {args.ckpt} --shape {z} {y} {x} --threads {args.threads}"
    text = "\n".join([
        "## U-Net tiled prediction vs MONAI sliding_window_inference",
        "",
        f"`{cmd}` on {when}, torch {torch.__version__}, {args.threads} threads, fp32, CPU. Same network "
        f"({Path(args.ckpt).name}, 2.5D), tiles 256 x 256, overlap 64 px, Gaussian blending, {tile[0] * batch} slice-tiles per forward.",
        "",
        "| implementation | best of {} s | voxels / s | ratio |".format(args.reps),
        "|---|---|---|---|",
        f"| seglearn `Segmenter.predict_proba` | {min(t_ours):.2f} | {v_ours:,.0f} | {v_ours / v_theirs:.2f} |",
        f"| MONAI `sliding_window_inference` | {min(t_theirs):.2f} | {v_theirs:,.0f} | 1.00 |",
        "",
        f"Outputs: labels agree on {agree:.4%} of voxels; max |probability difference| {maxdiff:.2e} "
        "(the blending weights differ: seglearn gives zero weight to a border at inner tile edges).",
        "",
    ])
    print(text)
    out = Path(args.out)
    out.write_text(text)


if __name__ == "__main__":
    main()
