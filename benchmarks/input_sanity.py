"""What predict.py's result warnings see on valid and on wrongly prepared inputs (the thresholds of
``seglearn/segment/predict_guard.py``: ``ONE_CLASS``, ``UNSURE``).

Inputs: a 16 x 96 x 96 crop of ``data/demo`` (z 40-55) as it is and prepared wrongly (contrast inverted,
SE2 / InLens swapped, 8-bit data squeezed into 60..123, a 0/1 mask given as the image), predicted with
``--ckpts`` (adapt off, as a fine-tuned model predicts); and phantoms of both families (48 x 128 x 128,
``--seeds``) predicted by the shipped base model with ``adapt=auto`` (what predict.py does with it).
Printed per case: awe against the truth, the largest class share, the share of segmented voxels whose
normalised entropy exceeds 0.5, their mean normalised entropy, and which warnings predict.py would give.
The phantoms are also given with SE2 / InLens swapped (each order adapted to as predict.py would): whether
the model's confidence could tell a swapped pair from the right one.

    .venv/bin/python benchmarks/input_sanity.py [--ckpts demo fibsem_base] [--seeds 10 18]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DETS = ["SE2", "InLens"]


def _crop_cases() -> dict:
    from seglearn.io import read_stack

    img = np.stack([read_stack(ROOT / "data" / "demo" / "images" / f"{d}.tif")[0][40:56, :96, :96] for d in DETS])
    truth = read_stack(ROOT / "data" / "demo" / "labels" / "truth.tif")[0][40:56, :96, :96]
    squeezed = (60 + img.astype(np.float32) * 63 / 255).round().astype(np.uint8)
    return {"demo crop": (img, truth), "contrast inverted": (255 - img, truth), "SE2 / InLens swapped":
            (img[::-1].copy(), truth), "8-bit in 60..123": (squeezed, truth),
            "0/1 mask as image": ((img > 127).astype(np.uint8), truth)}


def measure(ck: dict, images: np.ndarray, truth: np.ndarray, adapt: str) -> dict:
    from seglearn.metrics import score
    from seglearn.pretrain.adapt import zero_shot_noise_rule
    from seglearn.segment.adapt import adapt_for_prediction
    from seglearn.segment.api import labels_from, segmenter_from_checkpoint
    from seglearn.segment.calibrate import uncertainty_map
    from seglearn.segment.predict_guard import one_class_warning, unsure_warning

    ck, _, _ = adapt_for_prediction(ck, lambda a, b: images[:, a:b], images.shape[1:], DETS, adapt, where="x",
                                    ckpt_name="ckpt", noise_rule=zero_shot_noise_rule)  # as predict.py
    probs = segmenter_from_checkpoint(ck, device="cpu", bf16=False).predict_proba(images, DETS)
    labels, _ = labels_from(probs, images)
    seg = labels > 0
    unsure = float(np.mean(uncertainty_map(probs)[seg] > 0.5))
    shares = {c: float(np.mean(labels[seg] == c)) for c in (1, 2, 3)}
    warns = [w for w in (one_class_warning(shares, "x"), unsure_warning(unsure, "x")) if w]
    return {"awe": score(labels, truth, 3)["awe"], "top_share": max(shares.values()), "unsure": unsure,
            "entropy": float(uncertainty_map(probs)[seg].mean()),
            "warnings": ["one class" if "segmented voxels are" in w else "unsure" for w in warns]}


def main() -> None:
    import logging
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from uncertainty import synth_config

    from seglearn.ckpt import load_checkpoint
    from seglearn.synth.phantom import make_phantom

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpts", nargs="+", default=["demo", "fibsem_base"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 18])
    args = ap.parse_args()
    logging.getLogger("seglearn").setLevel(logging.ERROR)
    print("| model | input | awe % | largest class | unsure share | mean entropy | warnings |\n|---|---|---|---|---|---|---|")
    for name in args.ckpts:
        ck = load_checkpoint(ROOT / "checkpoints" / f"{name}.ckpt", kind="unet")
        for case, (img, truth) in _crop_cases().items():
            r = measure(ck, img, truth, "off")
            print(f"| {name} (adapt off) | {case} | {r['awe']:.1f} | {100 * r['top_share']:.0f} % | "
                  f"{100 * r['unsure']:.0f} % | {r['entropy']:.3f} | {', '.join(r['warnings']) or '-'} |")
    base = load_checkpoint(ROOT / "checkpoints" / "fibsem_base.ckpt", kind="unet")
    for fam in ("a", "b"):
        for seed in args.seeds:
            ph = make_phantom(synth_config(seed, fam, [48, 128, 128]))
            img = np.stack([ph.images[d] for d in DETS])
            for order, x in (("", img), (", SE2 / InLens swapped", img[::-1].copy())):
                r = measure(base, x, ph.truth, "auto")
                print(f"| fibsem_base (adapt auto) | family {fam} phantom seed {seed}{order} | {r['awe']:.1f} | "
                      f"{100 * r['top_share']:.0f} % | {100 * r['unsure']:.0f} % | {r['entropy']:.3f} | "
                      f"{', '.join(r['warnings']) or '-'} |")


if __name__ == "__main__":
    main()
