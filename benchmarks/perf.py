"""U-Net tiled prediction against MONAI's sliding_window_inference, same network, same tiles.

    python benchmarks/perf.py [--ckpt checkpoints/demo.ckpt] [--shape 8 512 512] [--threads 1]

Four runs of the same checkpoint on the same raw phantom volume, timed from raw detector images to
class probabilities (normalisation and 2.5D slice stacking included on both sides):

- seglearn ``Segmenter.predict_proba`` with its defaults (bf16 where the CPU/GPU runs it natively:
  BN folded into the convolutions, channels-last, bf16 weights; see ``seglearn.segment.net.inference_copy``);
- seglearn with ``bf16=False`` (fp32, the reference for the agreement figures);
- MONAI ``sliding_window_inference`` with the network as loaded (fp32, what a user gets by default);
- MONAI with the same network in channels-last under ``torch.autocast(bfloat16)`` (the fair bf16 peer).

Same tiles (256 x 256, overlap 64 px = MONAI overlap 0.25), same Gaussian weight map (seglearn's
map is passed to MONAI as ``roi_weight_map``; seglearn's zero-weight border is off, ``border=0``),
same number of slice-tiles per forward pass. So the two fp32 outputs must agree to float precision.
Writes docs/bench_perf.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def measure(ckpt: str, shape, *, reps: int = 2, device: str = "cpu") -> dict:
    """Time the four runs on ``device``; returns seconds, voxels/s, labels and probabilities per run.

    Returns
    -------
    dict
        ``best`` (s), ``vps`` (voxels / s), ``outs`` (probabilities), ``lab`` (argmax labels), ``seg``
        (the default :class:`~seglearn.segment.api.Segmenter`), ``peak_bytes`` (CUDA peak memory or None).
    """
    from monai.inferers import sliding_window_inference

    from seglearn.segment.api import load_segmenter
    from seglearn.tiling import _axis_weight
    from seglearn.synth import make_phantom

    seg = load_segmenter(ckpt, device=device)  # defaults: bf16 where native
    ref = load_segmenter(ckpt, device=device, bf16=False)
    dev = torch.device(device)
    z, y, x = shape
    ph = make_phantom({"shape": [z, y, x], "seed": 21, "voxel_size_nm": [40, 20, 20], "particle_radius_nm": 380})
    raw = ph.channels()
    dets = list(ph.config.detectors)
    tile, overlap, batch = [4, 256, 256], [0, 64, 64], 2
    kw = {"tile": tile, "overlap": overlap, "border": [0, 0, 0], "batch_size": batch}

    # MONAI: the same network seen as a 2D predictor of one slice from its +-h neighbours
    h = ref.net.halo
    order = ref.channel_order(dets)
    net32 = ref.net.eval()
    net_cl = copy.deepcopy(net32).eval()
    net_cl.channels_last = True
    net_cl.unet = net_cl.unet.to(memory_format=torch.channels_last)
    w2d = torch.from_numpy(np.outer(_axis_weight(tile[1], 0.125, 0, False, False, True),
                                    _axis_weight(tile[2], 0.125, 0, False, False, True))).to(dev)

    def monai(net, bf16: bool) -> np.ndarray:
        norm = ref.prepare(raw[order])  # (C, Z, Y, X), as seglearn does inside predict_proba
        idx = np.clip(np.arange(-h, z + h), 0, z - 1)
        padded = torch.from_numpy(np.ascontiguousarray(norm[:, idx])).to(dev)
        flat = torch.stack([padded[:, i:i + 2 * h + 1] for i in range(z)])  # (Z, C, 2h+1, Y, X)
        c = flat.shape[1]
        flat = flat.reshape(z, c * (2 * h + 1), y, x)

        def predictor(t: torch.Tensor) -> torch.Tensor:
            out = net(t.reshape(t.shape[0], c, 2 * h + 1, *t.shape[-2:]))
            return torch.softmax(out.float(), dim=1)[:, :, 0]

        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = sliding_window_inference(flat, roi_size=(tile[1], tile[2]), sw_batch_size=tile[0] * batch,
                                           predictor=predictor, overlap=overlap[1] / tile[1], mode="gaussian",
                                           roi_weight_map=w2d, padding_mode="replicate")
        return out.permute(1, 0, 2, 3).float().cpu().numpy()

    runs = {
        "ours": lambda: seg.predict_proba(raw, dets, **kw),
        "ours_fp32": lambda: ref.predict_proba(raw, dets, **kw),
        "monai_fp32": lambda: monai(net32, False),
        "monai_bf16": lambda: monai(net_cl, True),
    }
    times = {k: [] for k in runs}
    outs = {}
    for k, f in runs.items():  # warm-up
        f()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(reps):  # interleaved, so that load changes hit all four alike
        for k, f in runs.items():
            t0 = time.perf_counter()
            outs[k] = f()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[k].append(time.perf_counter() - t0)
    n = z * y * x
    best = {k: min(v) for k, v in times.items()}
    vps = {k: n / t for k, t in best.items()}
    lab = {k: np.argmax(v, 0) for k, v in outs.items()}
    peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    return {"best": best, "vps": vps, "outs": outs, "lab": lab, "seg": seg, "peak_bytes": peak, "tile": tile,
            "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", default="checkpoints/demo.ckpt")
    ap.add_argument("--shape", type=int, nargs=3, default=[8, 512, 512])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="docs/bench_perf.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from seglearn.precision import precision_record

    res = measure(args.ckpt, args.shape, reps=args.reps)
    best, vps, outs, lab, seg = res["best"], res["vps"], res["outs"], res["lab"], res["seg"]
    tile, batch = res["tile"], res["batch"]
    z, y, x = args.shape

    def agree(a: str, b: str) -> str:
        return f"{np.mean(lab[a] == lab[b]):.4%} | {np.abs(outs[a] - outs[b]).max():.2e}"

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    cmd = f"python benchmarks/perf.py --ckpt {args.ckpt} --shape {z} {y} {x} --threads {args.threads}"
    prec = "bf16" if seg.bf16 else "fp32"
    rows = [
        ("seglearn `predict_proba`, defaults (" + prec + ", BN folded, channels-last)", "ours"),
        ("seglearn `predict_proba`, `bf16=False` (fp32)", "ours_fp32"),
        ("MONAI `sliding_window_inference`, network as loaded (fp32)", "monai_fp32"),
        ("MONAI `sliding_window_inference`, channels-last + bf16 autocast", "monai_bf16"),
    ]
    text = [
        "## U-Net tiled prediction vs MONAI sliding_window_inference",
        "",
        f"`{cmd}` on {when}, {platform.machine()} ({precision_record('cpu', seg.bf16)['why']}), "
        f"torch {torch.__version__}, {args.threads} thread(s), CPU; load average (1/5/15 min, as `uptime`) {load} at "
        "the end (a shared 2-core machine: absolute times are pessimistic, the runs are interleaved so the ratios "
        "hold). Same network "
        f"({Path(args.ckpt).name}, 2.5D), input {z} x {y} x {x} raw phantom, tiles 256 x 256, overlap 64 px, the same "
        f"Gaussian weight map on both sides, {tile[0] * batch} slice-tiles per forward pass, timed from raw "
        f"images to probabilities (normalisation included on both sides), best of {args.reps}, runs interleaved.",
        "",
        "| implementation | s | voxels / s | vs MONAI fp32 | vs MONAI bf16 |",
        "|---|---|---|---|---|",
    ]
    for name, k in rows:
        text.append(f"| {name} | {best[k]:.2f} | {vps[k]:,.0f} | {vps[k] / vps['monai_fp32']:.2f} | "
                    f"{vps[k] / vps['monai_bf16']:.2f} |")
    ratio = vps["ours"] / vps["ours_fp32"]
    text += [
        "",
        f"**Defaults vs fp32 on this machine: {ratio:.2f}x** (`bf16: auto` chose {prec}; the rule is that the defaults "
        "are never slower than fp32: bf16 only with native AMX / AVX512-BF16 instructions, "
        f"{'met' if ratio >= 0.9 else 'NOT met'} here, 0.9 allowing for timing noise).",
        "",
        "Agreement (argmax labels; max |probability difference|):",
        "",
        "| pair | labels agree | max abs diff |",
        "|---|---|---|",
        f"| seglearn fp32 vs MONAI fp32 (same algorithm) | {agree('ours_fp32', 'monai_fp32')} |",
        f"| seglearn default vs seglearn fp32 (precision) | {agree('ours', 'ours_fp32')} |",
        f"| MONAI bf16 vs MONAI fp32 (precision) | {agree('monai_bf16', 'monai_fp32')} |",
        f"| seglearn default vs MONAI bf16 | {agree('ours', 'monai_bf16')} |",
        "",
        "The fp32 rows compute the same thing (same network, tiles, weights), so their gap is the cost "
        "of the implementations: seglearn runs `inference_copy` (batch norm folded into the convolutions, "
        "convolution + ReLU fused in one oneDNN call, max pooling as maxima of strided views, channels-last), "
        "caches tile weights and blends in place. " + (
            "Against MONAI under bf16 autocast the same holds, and "
            "seglearn's weights are bf16 once instead of being re-cast on every forward pass. bf16 itself changes "
            f"the label of {1 - np.mean(lab['ours'] == lab['ours_fp32']):.2%} of voxels against fp32 "
            f"(MONAI's bf16 run: {1 - np.mean(lab['monai_bf16'] == lab['monai_fp32']):.2%}); `bf16=False` gives the "
            "fp32 result." if seg.bf16 else
            "This CPU has no native bf16, so seglearn's defaults (`bf16: auto`) run fp32 and its first two rows "
            "compute the same thing: their gap is timing noise. bf16 autocast on such a CPU is emulated: MONAI "
            f"under it runs at {vps['monai_bf16'] / vps['monai_fp32']:.2f}x its own fp32 speed, which is why "
            "`auto` keeps fp32 here.") + " Before this "
        "work seglearn's fp32 prediction ran at 0.97x MONAI fp32 (2026-11-22 02:49, same command).",
        "",
    ]
    text = "\n".join(text)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
