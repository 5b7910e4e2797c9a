"""GPU check: what seglearn's networks do on this machine's accelerator, in one JSON + one markdown table.

    python benchmarks/gpu_check.py [--out gpu_check] [--quick]

On a CUDA machine it measures, per GPU kind:

- ``train_unet``: training steps / s of the 2.5D U-Net (the base models' network, batch of patches,
  AdamW, cross-entropy), fp32 and bf16 autocast + channels-last;
- ``train_stardist``: the same for the particle network (StarDist loss);
- ``pretrain``: pretraining throughput on one GPU: randomised phantom patches / s of the stream
  (drawn on the CPU, as ``python train.py experiment=pretrain_fibsem`` does), of the network step alone,
  and of both together;
- ``ddp_pretrain``: ``python train.py experiment=pretrain_fibsem trainer=ddp trainer.devices=N`` for a fixed
  number of steps on 1 GPU and on all GPUs (each process draws its own phantoms on the CPU);
- ``predict``: tiled prediction voxels / s of seglearn's ``Segmenter`` beside MONAI's
  ``sliding_window_inference`` on the same network, fp32 and bf16 (``benchmarks/perf.py``'s measurement);
- peak GPU memory of every row (``torch.cuda.max_memory_allocated``).

On a machine without CUDA it says so, runs every row once on the CPU with tiny sizes (a smoke run that
shows the script works) and exits 0. Output: ``OUT/gpu_check.json`` (``{"env": {...}, "rows": [{"name",
"device", "precision", "metric", "value", "unit", "peak_gpu_bytes", "seconds", "note"}]}``) and
``OUT/gpu_check.md`` (the same as a table). The format is documented in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from instances_speed import step_time as stardist_step_time  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _peak(dev: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None


def _reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def env_info() -> dict:
    """Torch, CUDA and CPU facts, and the precision ``bf16: auto`` picks on each device."""
    from seglearn.precision import precision_record, resolve_bf16

    info = {"when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "cpu_precision": precision_record("cpu", resolve_bf16("auto", "cpu"))}
    if info["cuda"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
        info["gpu_precision"] = precision_record("cuda", resolve_bf16("auto", "cuda"))
    return info


def unet_meta(ckpt: Path) -> dict:
    """The network config of a shipped checkpoint (weights are not needed for timing)."""
    from seglearn.ckpt import load_checkpoint

    return load_checkpoint(ckpt)["meta"]


def train_unet(dev: torch.device, bf16: bool, *, batch: int, patch: int, steps: int) -> dict:
    """Training steps / s of the base models' 2.5D U-Net on random patches."""
    from seglearn.precision import autocast
    from seglearn.segment.net import build_net

    meta = unet_meta(ROOT / "checkpoints" / "fibsem_base.ckpt")
    cfg = {**meta["net"], "channels_last": bf16}
    torch.manual_seed(0)
    net = build_net(cfg).to(dev).train()
    h = net.halo
    x = torch.rand(batch, int(cfg["in_channels"]), 1 + 2 * h, patch, patch, device=dev)
    y = torch.randint(0, int(cfg["n_classes"]), (batch, 1, patch, patch), device=dev)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    _reset(dev)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(dev, bf16):
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i:  # the first step pays for kernel selection
            times.append(time.perf_counter() - t0)
    return {"value": 1.0 / float(np.median(times)), "unit": "steps/s", "peak_gpu_bytes": _peak(dev),
            "note": f"batch {batch} x {patch}^2 px, {cfg['mode']} base {cfg.get('base')}"}


def train_stardist(dev: torch.device, bf16: bool, *, batch: int, patch: int, steps: int) -> dict:
    """Training steps / s of the particle network (``benchmarks/instances_speed.py``'s step)."""
    _reset(dev)
    t = stardist_step_time(bf16=bf16, channels_last=bf16, batch=batch, patch=patch, steps=steps, device=str(dev))
    return {"value": 1.0 / t, "unit": "steps/s", "peak_gpu_bytes": _peak(dev),
            "note": f"batch {batch} x {patch}^2 px, 32 rays"}


def pretrain_throughput(dev: torch.device, bf16: bool, *, steps: int, shape=None) -> list[dict]:
    """Patches / s of the phantom stream (CPU), of the network step (``dev``) and of both in turn."""
    from omegaconf import OmegaConf

    from seglearn.precision import autocast
    from seglearn.pretrain.stream import PhantomPatchStream
    from seglearn.pretrain.train import base_meta, make_randomiser, settings_from
    from seglearn.segment.net import build_net

    s = settings_from(OmegaConf.load(ROOT / "configs" / "model" / "unet_pretrain.yaml"))
    rnd = make_randomiser({**s, "sources": []}, shape=shape)  # no real volumes needed for timing
    meta = base_meta(s, rnd)
    torch.manual_seed(0)
    net = build_net({**meta["net"], "channels_last": bf16}).to(dev).train()
    opt = torch.optim.AdamW(net.parameters(), float(s["lr"]))
    stream = iter(PhantomPatchStream(rnd, derived=meta["derived"], patch=int(s["patch"]), halo=net.halo,
                                     cache=int(s["cache"]), reuse=int(s["reuse"]), seed=0))
    bs = int(s["batch_size"])
    t0 = time.perf_counter()
    batches = [[next(stream) for _ in range(bs)] for _ in range(steps + 1)]
    t_stream = time.perf_counter() - t0
    _reset(dev)
    t_step = []
    for i, batch in enumerate(batches):
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(dev)
        y = torch.from_numpy(np.stack([b[1] for b in batch])).to(dev) - 1
        t1 = time.perf_counter()
        with autocast(dev, bf16):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)
        if i:
            t_step.append(time.perf_counter() - t1)
    n = bs * (steps + 1)
    stream_ps, step_ps = n / t_stream, bs / float(np.median(t_step))
    both = 1.0 / (1.0 / stream_ps + 1.0 / step_ps)
    note = f"batch {bs} x {s['patch']}^2 px, phantoms {'x'.join(map(str, rnd.shape))}, stream on 1 CPU process"
    peak = _peak(dev)
    return [{"name": "pretrain_stream", "value": stream_ps, "unit": "patches/s", "peak_gpu_bytes": None, "note": note},
            {"name": "pretrain_step", "value": step_ps, "unit": "patches/s", "peak_gpu_bytes": peak, "note": note},
            {"name": "pretrain", "value": both, "unit": "patches/s", "peak_gpu_bytes": peak,
             "note": note + "; stream and step in turn (the pretraining loop today)"}]


def ddp_pretrain(devices: int, *, steps: int, work: Path) -> dict:
    """``python train.py experiment=pretrain_fibsem trainer=ddp trainer.devices=N``: steps / s and patches / s."""
    out = work / f"ddp_{devices}"
    cmd = [sys.executable, "train.py", "experiment=pretrain_fibsem", f"out_dir={out}", "overwrite=true",
           "trainer=ddp", "trainer.accelerator=gpu", f"trainer.devices={devices}", "trainer.enable_progress_bar=false",
           f"model.max_steps={steps}", f"model.val_every={steps}", "model.max_minutes=8", "model.threads=0",
           "model.noise_reference=false"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"value": None, "unit": "steps/s", "peak_gpu_bytes": None,
                "note": f"failed (exit {r.returncode}): {r.stderr.strip().splitlines()[-1:]}"}
    summ = json.loads((out / "pretrain_summary.json").read_text())
    rate = summ["steps"] / summ["seconds"]
    return {"value": rate, "unit": "steps/s", "peak_gpu_bytes": None,
            "note": f"{summ['steps']} steps in {summ['seconds']} s ({wall:.0f} s with start-up), {summ['processes']} "
                    f"process(es) x batch 8: {rate * 8 * summ['processes']:.0f} patches/s"}


def predict_rows(dev: torch.device, shape, reps: int) -> list[dict]:
    """``benchmarks/perf.py``'s four runs on ``dev``: seglearn and MONAI, fp32 and bf16."""
    from perf import measure

    res = measure(str(ROOT / "checkpoints" / "demo.ckpt"), shape, reps=reps, device=str(dev))
    names = {"ours": f"seglearn defaults ({'bf16' if res['seg'].bf16 else 'fp32'})", "ours_fp32": "seglearn fp32",
             "monai_fp32": "MONAI sliding_window_inference fp32", "monai_bf16": "MONAI sliding_window_inference bf16"}
    agree = float(np.mean(res["lab"]["ours"] == res["lab"]["ours_fp32"]))
    prec = {"ours": "bf16" if res["seg"].bf16 else "fp32", "ours_fp32": "fp32", "monai_fp32": "fp32",
            "monai_bf16": "bf16"}
    return [{"name": f"predict: {names[k]}", "precision": prec[k], "value": res["vps"][k], "unit": "voxels/s",
             "peak_gpu_bytes": res["peak_bytes"],
             "note": f"{'x'.join(map(str, shape))} demo.ckpt; defaults agree with fp32 on {agree:.2%} of labels"
             if k == "ours" else f"{'x'.join(map(str, shape))} demo.ckpt"} for k in names]


def run(out: Path, quick: bool = False) -> dict:
    """Every row on the GPU (or a CPU smoke run without CUDA); writes OUT/gpu_check.json and .md."""
    from seglearn.precision import resolve_bf16

    env = env_info()
    gpu = env["cuda"] and not quick
    dev = torch.device("cuda" if env["cuda"] else "cpu")
    small = not gpu
    rows = []

    def add(name: str, precision: str, fn, *a, **kw):
        t0 = time.perf_counter()
        try:
            got = fn(*a, **kw)
        except Exception as exc:  # a check reports what failed and goes on with the others
            got = {"value": None, "unit": "", "peak_gpu_bytes": None, "note": f"failed: {type(exc).__name__}: {exc}"}
        for r in got if isinstance(got, list) else [got]:
            rows.append({"name": r.pop("name", name), "device": str(dev), "precision": r.pop("precision", precision),
                         "seconds": round(time.perf_counter() - t0, 2), **r})
        print(f"[gpu_check] {name} {precision}: done", file=sys.stderr, flush=True)

    precisions = [False, True] if (dev.type == "cuda" or resolve_bf16("auto", "cpu")) else [False]
    for bf16 in precisions:
        p = "bf16" if bf16 else "fp32"
        add("train_unet", p, train_unet, dev, bf16, batch=2 if small else 32, patch=64 if small else 256,
            steps=2 if small else 20)
        add("train_stardist", p, train_stardist, dev, bf16, batch=2 if small else 32, patch=64 if small else 256,
            steps=2 if small else 20)
    add("pretrain", "bf16" if resolve_bf16("auto", dev) else "fp32", pretrain_throughput, dev,
        resolve_bf16("auto", dev), steps=2 if small else 50, shape=(8, 64, 64) if small else None)
    if gpu:
        with tempfile.TemporaryDirectory() as work:
            for n in sorted({1, torch.cuda.device_count()}):
                add(f"ddp_pretrain_{n}gpu", "auto", ddp_pretrain, n, steps=300, work=Path(work))
    else:
        rows.append({"name": "ddp_pretrain", "device": "cpu", "precision": "-", "value": None, "unit": "steps/s",
                     "peak_gpu_bytes": None, "seconds": 0.0,
                     "note": "skipped without CUDA (tests/test_distributed.py pretrains with trainer=ddp on 2 CPU "
                             "processes)"})
    add("predict", "-", predict_rows, dev, (2, 128, 128) if small else (16, 1024, 1024), 1 if small else 2)
    result = {"env": env, "mode": "gpu" if gpu else "cpu smoke run (no CUDA device)" if not env["cuda"] else
              "cpu smoke run (--quick)", "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_check.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    env = result["env"]
    head = (f"GPU check, {env['when']}: {result['mode']}; torch {env['torch']}"
            + (f", CUDA {env.get('cuda_version')}, GPUs: {', '.join(env['gpus'])}" if env["cuda"] else "")
            + f"; CPU precision rule: {env['cpu_precision']['why']}.")
    lines = [head, "", "| check | device | precision | value | unit | peak GPU MiB | s | note |",
             "|---|---|---|---:|---|---:|---:|---|"]
    for r in result["rows"]:
        v = "-" if r["value"] is None else f"{r['value']:,.4g}" if r["value"] < 1000 else f"{r['value']:,.0f}"
        mib = "-" if r["peak_gpu_bytes"] is None else f"{r['peak_gpu_bytes'] / 2**20:,.0f}"
        lines.append(f"| {r['name']} | {r['device']} | {r['precision']} | {v} | {r['unit']} | {mib} | "
                     f"{r['seconds']} | {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--quick", action="store_true", help="tiny CPU-sized run even where CUDA is present")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("[gpu_check] no CUDA device on this machine: a tiny CPU smoke run only (exit 0)", file=sys.stderr)
    result = run(Path(args.out), quick=args.quick)
    print(markdown(result))
    failed = [r["name"] for r in result["rows"] if str(r["note"]).startswith("failed")]
    if failed:
        print(f"[gpu_check] failed rows: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
