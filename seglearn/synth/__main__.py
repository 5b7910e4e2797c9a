"""``python -m seglearn.synth out=DIR seed=N``: write a synthetic FIB-SEM dataset."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from seglearn.cli import command, report_errors, setup_logging
from seglearn.io.outset import OutputSet
from seglearn.options import SYNTH, check_options
from seglearn.synth.phantom import write_phantom


@report_errors
def run(cfg: DictConfig) -> None:
    """Write the phantom described by ``cfg`` (see ``configs/synth.yaml``)."""
    import logging

    setup_logging()
    params = OmegaConf.to_container(cfg, resolve=True)

    check_options(params, SYNTH, "synth")
    out = params.pop("out")
    overwrite = bool(params.pop("overwrite"))
    name = params.pop("name")
    from pathlib import Path

    # claimed (a second run is refused), written into a temporary sibling, published by rename
    with OutputSet(out, replace=overwrite) as tmp:
        ph = write_phantom(tmp, params, overwrite=True, name=name or Path(out).name)
    logging.getLogger("seglearn").info("wrote %s (train slices %s, test slice %d)", out,
                                       ph.info["train_slices"], ph.info["test_slice"])


@command("synth")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
