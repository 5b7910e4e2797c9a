"""The command-line entry points, one function per command.

Each reads its Hydra config from the package (``seglearn/configs/``, see :func:`seglearn.cli.command`),
so it runs from any directory after ``pip install .``. Three equivalent ways to call one::

    seglearn-predict ckpt=C input=DATASET output=OUT         # console script ([project.scripts])
    python -m seglearn predict ckpt=C input=DATASET ...      # seglearn/__main__.py
    python predict.py ckpt=C input=DATASET ...               # repository checkout (thin wrapper)

Arguments are Hydra overrides of ``configs/<command>.yaml``. ``synth``, ``suggest`` and ``ct`` live
in their own ``__main__`` modules (``python -m seglearn.synth``) and are listed in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from seglearn import runner
from seglearn.cli import command, report_errors, setup_logging
from seglearn.options import TOFSIMS, check_options


@command("train")
def train(cfg) -> None:
    """Train a model: ``data.root=DATASET out_dir=DIR [model=unet|stardist] [experiment=NAME]``."""
    runner.train(cfg)


@command("predict")
def predict(cfg) -> None:
    """Predict a tomogram: ``ckpt=C input=DATASET_OR_TIFFS output=OUT``; no arguments: the demo."""
    runner.predict(cfg)


@command("preprocess")
def preprocess(cfg) -> None:
    """``input=DATASET output=NEW_DATASET [preprocess=seed001] [steps=[...]]``"""
    from seglearn.preprocess.run import run

    run(cfg)


@command("benchmark")
def benchmark(cfg) -> None:
    """Benchmark table: ``data.root=DATASET [methods=[...]] [unet.ckpt=PATH] [out=DIR]``."""
    from seglearn.benchmark.cli import run

    run(cfg)


@command("characterise")
def characterise(cfg) -> None:
    """Measure a label volume: ``input=labels.tif [voxel_size_nm=...] [output=DIR]`` (``docs/characterise.md``)."""
    from seglearn.characterise.cli import run

    run(cfg)


@report_errors
def run_tofsims(cfg) -> dict:
    """ToF-SIMS ion maps -> phase map for the composed ``configs/tofsims.yaml`` ``cfg``; returns the summary."""
    from omegaconf import OmegaConf

    from seglearn.tofsims.pipeline import run

    setup_logging()
    params = OmegaConf.to_container(cfg, resolve=True)
    check_options(params, TOFSIMS, "tofsims")
    return run(params)


@command("tofsims")
def tofsims(cfg) -> None:
    """``input=FOLDER ions=[Ni+,C2H-,C7H7+] output=DIR``: ToF-SIMS ion maps -> phase map (``docs/tofsims.md``)."""
    run_tofsims(cfg)


#: command name -> ``module:function`` of its entry point (the console scripts are ``seglearn-<name>``)
COMMANDS: dict[str, str] = {
    "train": "seglearn.commands:train",
    "predict": "seglearn.commands:predict",
    "preprocess": "seglearn.commands:preprocess",
    "benchmark": "seglearn.commands:benchmark",
    "characterise": "seglearn.commands:characterise",
    "tofsims": "seglearn.commands:tofsims",
    "synth": "seglearn.synth.__main__:main",
    "suggest": "seglearn.suggest:main",
    "ct": "seglearn.ct.__main__:main",
}


def entry_point(name: str) -> Callable[[], Any]:
    """The entry function of command ``name`` (a key of :data:`COMMANDS`)."""
    module, func = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), func)
