"""Training-step time of the particle network: float32 vs bf16 autocast, contiguous vs channels-last.

One forward + float32 loss + backward + Adam step on a random batch, median of ``--steps`` after
two warm-up steps, in this process's torch threads (``--threads``, 1 by default)::

    python benchmarks/instances_speed.py --batch 8 --patch 64
"""

from __future__ import annotations

import argparse
import time


def step_time(*, bf16: bool, channels_last: bool, batch: int, patch: int, steps: int, device: str = "cpu") -> float:
    import torch

    from seglearn.instances.loss import stardist_loss
    from seglearn.instances.model import StarDistNet
    from seglearn.precision import autocast, to_channels_last

    torch.manual_seed(0)
    net = StarDistNet(2, n_rays=32, grid=(2, 2), depth=3, base_filters=32, head_filters=64).to(device)
    x = torch.rand(batch, 2, patch, patch, device=device)
    pt = torch.rand(batch, 1, patch // 2, patch // 2, device=device)
    dt = 10 * torch.rand(batch, 32, patch // 2, patch // 2, device=device)
    if channels_last:
        net, x = to_channels_last(net), to_channels_last(x)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        with autocast(device, bf16):
            p, d = net(x)
        loss = stardist_loss(p.float(), d.float(), pt, dt)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times = sorted(times[2:])
    return times[len(times) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    for bf16 in (False, True):
        for cl in (False, True):
            t = step_time(bf16=bf16, channels_last=cl, batch=a.batch, patch=a.patch, steps=a.steps, device=a.device)
            print(f"batch {a.batch} x {a.patch}^2, {'bf16 ' if bf16 else 'fp32 '} {'channels-last' if cl else 'contiguous   '}: "
                  f"{t:.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
