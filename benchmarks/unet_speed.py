"""Training-step speed of the U-Net on this CPU: fp32 vs bf16 autocast, NCHW vs channels_last.

python benchmarks/unet_speed.py [rounds]   (interleaved measurements, median seconds per step)
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from seglearn.segment.net import SegNet


def step_time(net, x, y, bf16, n=2):
    opt = torch.optim.AdamW(net.parameters())
    ts = []
    for i in range(n + 1):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            ts.append(time.perf_counter() - t)
    return min(ts)


def main(rounds=3):
    torch.manual_seed(0)
    cases = {}
    for mode, shape, yshape in (("2.5d", (8, 3, 5, 96, 96), (8, 1, 96, 96)), ("3d", (2, 3, 16, 96, 96), (2, 16, 96, 96))):
        x = torch.rand(*shape)
        y = torch.randint(0, 3, yshape)
        for cl in (False, True):
            for bf16 in (False, True):
                net = SegNet(3, 3, mode=mode, context=2, base=16, channels_last=cl, voxel_size_nm=(30, 15, 15))
                cases[(mode, cl, bf16)] = (net, x, y)
    res = {k: [] for k in cases}
    for _ in range(rounds):
        for k, (net, x, y) in cases.items():
            res[k].append(step_time(net, x, y, k[2]))
    print("| mode | channels_last | bf16 autocast | s/step (median of rounds) |")
    print("|---|---|---|---|")
    for (mode, cl, bf16), v in res.items():
        print(f"| {mode} | {cl} | {bf16} | {statistics.median(v):.3f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
