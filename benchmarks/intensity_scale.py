"""``data/demo`` in the encodings users have, predicted with the shipped checkpoints (issue 25).

    python benchmarks/intensity_scale.py [--out /tmp/intensity_scale] [--adapt-base]

Writes ``data/demo`` as uint8, uint16 (``x * 200 + 3000``), int16 with an offset (``x * 100 - 12000``),
float32 0..1 and float64 0..255 (same labels) and runs ``predict.py``'s code path on each with
``demo.ckpt`` (adapt=auto: a fine-tuned model is not adapted) and ``fibsem_base.ckpt`` (adapt=off;
``--adapt-base`` adds adapt=auto, ~15 s a run on one core). Prints a markdown table: test awe and
agreement of the labels with those of the uint8 original, and the grey-scale rule applied
(``summary.json`` → ``intensity``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENCODINGS = {
    "uint8": lambda v: v,
    "uint16 x*200+3000": lambda v: v.astype(np.uint16) * 200 + 3000,
    "int16 x*100-12000": lambda v: v.astype(np.int16) * 100 - 12000,
    "float32 0..1": lambda v: (v / 255.0).astype(np.float32),
    "float64 0..255": lambda v: v.astype(np.float64),
}


def main() -> None:
    from omegaconf import OmegaConf

    from seglearn.data import load_dataset, write_dataset
    from seglearn.io import read_stack
    from seglearn.runner import predict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/intensity_scale")
    ap.add_argument("--adapt-base", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    ds = load_dataset(ROOT / "data" / "demo", labels=("train", "test"))
    runs = [("demo", "auto"), ("fibsem_base", "off")] + ([("fibsem_base", "auto")] if args.adapt_base else [])
    base = OmegaConf.load(ROOT / "configs" / "predict.yaml")
    ref: dict = {}
    print("| encoding | checkpoint | adapt | test awe % | labels = uint8's | rule |\n|---|---|---|---|---|---|")
    for i, (name, enc) in enumerate(ENCODINGS.items()):
        root = out / f"enc{i}"
        write_dataset(root, {d: enc(ds.images[c]) for c, d in enumerate(ds.detectors)}, voxel_size_nm=ds.voxel_size_nm,
                      train=ds.train, test=ds.test, name=f"enc{i}", overwrite=True)
        for ck, adapt in runs:
            res = out / f"pred{i}_{ck}_{adapt}"
            cfg = OmegaConf.merge(base, {"ckpt": str(ROOT / "checkpoints" / f"{ck}.ckpt"), "input": str(root),
                                         "output": str(res), "overwrite": True, "preview": False, "adapt": adapt})
            s = predict(cfg)
            labels = read_stack(res / "labels.tif")[0]
            ref.setdefault((ck, adapt), labels)
            agree = float(np.mean(labels == ref[(ck, adapt)])) * 100
            print(f"| {name} | {ck} | {adapt} | {s['test']['awe']:.2f} | {agree:.2f} % | {s['intensity']['rule']} |",
                  flush=True)


if __name__ == "__main__":
    main()
