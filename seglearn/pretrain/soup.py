"""Weight averaging ("model soup") of base models continued from the same checkpoint.

Two continuations of one base model (different seeds, schedules or an EMA) end in the same basin
of the loss; the mean of their weights usually validates better than either (Wortsman et al.
2022, "Model soups"). ``checkpoints/fibsem_base.ckpt`` v4 is such a mean (docs/pretrain.md)::

    python -m seglearn.pretrain.soup A.ckpt B.ckpt --out SOUP.ckpt [--validate 24]

``--validate N`` scores the inputs and the soup on ``N`` fresh randomised phantoms (seed 777,
neither the training stream nor the in-run validation phantoms), so the choice does not rest on
any benchmark's test labels.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

from seglearn.ckpt import load_checkpoint, save_checkpoint
from seglearn.errors import InputError
from seglearn.io.atomic import atomic_path, check_writable
from seglearn.log import report_errors, setup_logging
from seglearn.pretrain.noise import store_reference
from seglearn.pretrain.train import evaluate, settings_from, validation_set
from seglearn.segment.net import build_net

#: seed of the independent validation phantoms of ``--validate``
VALIDATE_SEED = 777


#: what ``meta[section].soup`` records of each input
SOUP_KEYS = {"pretrain": ("steps", "seconds", "val_awe", "ema", "continued_from"),
             "finetune": ("steps", "seconds", "best_step", "best_val_awe", "val_awe_zero_shot")}


def average_checkpoints(paths: Sequence[str | Path], out: str | Path, *, overwrite: bool = False,
                        section: str = "pretrain") -> Path:
    """Write the mean of the weights of ``paths`` (same network and inputs) to ``out``.

    Floating-point tensors (weights and batch-norm statistics) are averaged; integer ones (batch
    counters) are taken from the first checkpoint, as is the metadata, to which
    ``meta[section].soup`` adds what each input had been trained for (``section``: ``"pretrain"``
    for base models, ``"finetune"`` for fine-tuned ones). A base model also gets its noise
    references stored (:func:`seglearn.pretrain.noise.store_reference`), so that fine-tuning and
    zero-shot adaptation do not measure them on every run.

    Parameters
    ----------
    paths : sequence of path-like
        At least two ``kind: unet`` checkpoints.
    out : path-like
    overwrite : bool
        Replace an existing ``out``.
    """
    if len(paths) < 2:
        raise InputError(f"soup: needs at least two checkpoints, got {len(paths)}")
    check_writable(out, overwrite=overwrite)  # before the work, not after it
    cks = [load_checkpoint(p, kind="unet") for p in paths]
    first = cks[0]
    for p, ck in zip(paths[1:], cks[1:]):
        for key in ("net", "channels", "classes", "normalisation"):
            if ck["meta"].get(key) != first["meta"].get(key):
                raise InputError(f"{p}: its {key} {ck['meta'].get(key)} differ from {paths[0]}'s "
                                 f"{first['meta'].get(key)}; only checkpoints of the same network can be averaged")
    state = {}
    for k, v in first["state_dict"].items():
        if v.is_floating_point():
            state[k] = sum(ck["state_dict"][k].double() for ck in cks).div(len(cks)).to(v.dtype)
        else:
            state[k] = v
    meta = dict(first["meta"])
    sec = dict(meta.get(section) or {})
    sec["soup"] = [{"checkpoint": str(p), **{k: (ck["meta"].get(section) or {}).get(k) for k in SOUP_KEYS[section]}}
                   for p, ck in zip(paths, cks)]
    meta[section] = sec
    if section == "pretrain":
        meta = store_reference(meta)
    return save_checkpoint(out, kind="unet", state_dict=state, meta=meta, overwrite=overwrite)


def soup_of_runs(best: Sequence[str | Path], ckpt: Path, runs: int) -> Path:
    """``ckpt``: the weights of the fine-tuning runs' checkpoints ``best`` averaged; with one run planned it is
    that run's own checkpoint already; with several planned but only the first done (stopped), a copy of it."""
    if len(best) > 1:
        average_checkpoints(list(best), ckpt, overwrite=True, section="finetune")
    elif runs > 1:
        with atomic_path(ckpt, overwrite=True) as tmp:
            shutil.copyfile(best[0], tmp)
    return ckpt


def validate(paths: Sequence[str | Path], n: int, *, seed: int = VALIDATE_SEED, threads: int = 1) -> dict[str, float]:
    """Mean awe (%) of each base checkpoint on ``n`` fresh randomised phantoms drawn with ``seed``.

    The phantoms use the randomiser of the first checkpoint's detectors and context (default
    ranges, the same as pretraining's).
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    cks = {str(p): load_checkpoint(p, kind="unet") for p in paths}
    meta = next(iter(cks.values()))["meta"]
    halo = int(meta["net"].get("context", 0))
    val = validation_set(settings_from({"detectors": list(meta["detectors"]), "context": halo}), n, seed=seed)
    out = {}
    for p, ck in cks.items():
        net = build_net(ck["meta"]["net"])
        net.load_state_dict(ck["state_dict"])
        out[p] = round(evaluate(net, val, halo), 3)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import json


    ap = argparse.ArgumentParser(prog="python -m seglearn.pretrain.soup", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="base checkpoints continued from the same model")
    ap.add_argument("--out", required=True, help="the averaged checkpoint to write")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--validate", type=int, default=0, metavar="N",
                    help="score the inputs and the soup on N fresh randomised phantoms")
    a = ap.parse_args(argv)
    setup_logging()

    check_writable(a.out, overwrite=a.overwrite, how="--overwrite")
    out = average_checkpoints(a.inputs, a.out, overwrite=a.overwrite)
    print(f"wrote {out}")
    if a.validate > 0:
        print(json.dumps({"validation_phantoms": a.validate, "seed": VALIDATE_SEED,
                          "awe": validate([*a.inputs, out], a.validate)}, indent=2))


if __name__ == "__main__":

    report_errors(main)()
