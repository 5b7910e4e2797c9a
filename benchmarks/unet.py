"""U-Net accuracy benchmarks (results in docs/bench_unet.md).

    python benchmarks/unet.py phantom --data /tmp/ph0 --out /tmp/u4/ph0 [--mode 2.5d] [--set key=value ...]
        train on labels/train.tif of a phantom (default: python -m seglearn.synth out=/tmp/ph0 seed=0),
        score on labels/test.tif; --ckpt scores an existing checkpoint instead of training
    python benchmarks/unet.py micrograph --out /tmp/u4/micro [--set ...]
        ../shared/data/real/micrograph_2class.tif with its scribbles (127/254 -> 1/2), IoU vs _truth.tif
    python benchmarks/unet.py electrode --ckpt CKPT --png docs/unet_electrode_sem.png
        what a phantom-trained model does on ../shared/data/real/electrode_sem_4phase_unlabelled.tif

Each prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


def score_on_test(seg, ds, tta: str | None = None) -> dict:
    """Predict only the slabs around the test slices (exactly what a whole-volume run gives there in 2D/2.5D)."""
    from seglearn.metrics import score
    from seglearn.segment.tiling import contiguous_runs

    zs = np.flatnonzero(np.any(ds.test, axis=(1, 2)))
    margin = seg.net.halo + (16 if seg.mode == "3d" else 0)
    preds, truths = [], []
    t0 = time.perf_counter()
    for z0, z1 in contiguous_runs(zs):
        a, b = max(0, z0 - margin), min(ds.shape[0], z1 + margin)
        lab = seg.predict(ds.images[:, a:b], ds.detectors, tta=tta)
        preds.append(lab[z0 - a: z1 - a])
        truths.append(ds.test[z0:z1])
    s = score(np.concatenate(preds), np.concatenate(truths), ds.n_classes, class_names=ds.classes)
    return {"awe": s["awe"], "iou": s["iou_by_class"], "miou": s["miou"], "predict_s": time.perf_counter() - t0}


def phantom(args) -> dict:
    from seglearn.data import load_dataset
    from seglearn.segment import fit_segmenter, load_segmenter

    ds = load_dataset(args.data, require=("train", "test"))
    info = {"data": str(args.data), "shape": list(ds.shape)}
    if args.ckpt:
        ckpt = Path(args.ckpt)
        summ = ckpt.parent / "train_summary.json"
        if summ.exists():
            info["train"] = json.loads(summ.read_text())
    else:
        from seglearn.config import parse_pairs

        ov = {"model.mode": args.mode, **parse_pairs(args.set, "--set")}
        t0 = time.perf_counter()
        # the benchmark validates on held-out strokes of the training labels, never on the test slice
        ckpt = fit_segmenter(ds.images, ds.train, ds.detectors, args.out,
                             overrides={"voxel_size_nm": ds.voxel_size_nm, "classes": ds.classes, "overwrite": True, **ov})
        info["train_s"] = time.perf_counter() - t0
        info["train"] = json.loads((Path(args.out) / "train_summary.json").read_text())
    seg = load_segmenter(ckpt, device="cpu")
    info.update(mode=seg.mode, ckpt=str(ckpt), test=score_on_test(seg, ds))
    if args.tta != "none":
        info["test_tta"] = {"mode": args.tta, **score_on_test(seg, ds, args.tta)}
    return info


def micrograph(args) -> dict:
    from seglearn.io import read_stack
    from seglearn.metrics import score
    from seglearn.segment import fit_segmenter, load_segmenter

    img, _ = read_stack(REAL / "micrograph_2class.tif")
    scrib, _ = read_stack(REAL / "micrograph_2class_scribbles.tif")
    truth, _ = read_stack(REAL / "micrograph_2class_truth.tif")

    def to_ids(v):
        return np.select([v == 127, v == 254], [1, 2], 0).astype(np.uint8)

    train, gt = to_ids(scrib), to_ids(truth)
    from seglearn.config import parse_pairs

    ov = {"model.mode": "2d", "data.derived": None, **parse_pairs(args.set, "--set")}
    t0 = time.perf_counter()
    ckpt = fit_segmenter(img[None], train, ["SEM"], args.out,
                         overrides={"classes": ["phase_127", "phase_254"], "overwrite": True, **ov})
    train_s = time.perf_counter() - t0
    seg = load_segmenter(ckpt, device="cpu")
    pred = seg.predict(img[None], ["SEM"])
    s = score(pred, gt, 2, class_names=seg.classes)
    unlabelled = train == 0
    s_unl = score(np.where(unlabelled, pred, 0), np.where(unlabelled, gt, 0), 2)
    if args.png:
        from seglearn.io import write_preview

        write_preview(args.png, [("micrograph", img[0], None), ("scribbles", img[0], train[0]),
                                 (f"U-Net (IoU {s['iou'][0]:.3f} / {s['iou'][1]:.3f})", img[0], pred[0]),
                                 ("truth", img[0], gt[0])], seg.classes, overwrite=True)
    return {"train_s": train_s, "n_scribbled": int(np.count_nonzero(train)), "iou": s["iou_by_class"],
            "miou": s["miou"], "awe": s["awe"], "accuracy": s["accuracy"], "miou_unscribbled": s_unl["miou"],
            "train": json.loads((Path(args.out) / "train_summary.json").read_text())}


def electrode(args) -> dict:
    from seglearn.io import read_stack, write_preview
    from seglearn.segment.api import load_segmenter

    img, _ = read_stack(REAL / "electrode_sem_4phase_unlabelled.tif")
    seg = load_segmenter(args.ckpt, device="cpu")
    # a single SEM image: it stands in for every detector the model needs (so SE2-InLens is 0)
    images = np.repeat(img[None], len(seg.detectors), axis=0)
    t0 = time.perf_counter()
    pred = seg.predict(images, seg.detectors)
    fr = np.bincount(pred.ravel(), minlength=seg.n_classes + 1)[1:] / pred.size
    write_preview(args.png, [("electrode_sem_4phase_unlabelled.tif", img[0], None),
                             (f"U-Net ({Path(args.ckpt).name}, image fed as {'+'.join(seg.detectors)})", img[0], pred[0])],
                  seg.classes, overwrite=True, title="phantom-trained U-Net on a real SEM image (no labels)")
    return {"png": args.png, "seconds": time.perf_counter() - t0,
            "fractions": {c: float(f) for c, f in zip(seg.classes, fr)}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["phantom", "micrograph", "electrode"])
    ap.add_argument("--data", default="/tmp/ph0")
    ap.add_argument("--out", default="/tmp/unet_bench")
    ap.add_argument("--mode", default="2.5d")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--tta", default="none", choices=["none", "flips", "dihedral"],
                    help="phantom: also score with this test-time augmentation")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    args = ap.parse_args(argv)
    from seglearn.cli import setup_logging

    setup_logging()
    res = {"phantom": phantom, "micrograph": micrograph, "electrode": electrode}[args.what](args)
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    sys.exit(main())
