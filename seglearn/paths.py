"""Where the package finds its own files: the YAML configs (the one home of every default).

Code that needs a default reads it from here, never from a path computed relative to the
repository (``parents[2]``), so a non-editable install finds the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

#: the folder of the YAML configs (Hydra's config directory), shipped inside the package
CONFIGS = Path(__file__).resolve().parent / "configs"

#: the same folder as a Hydra search-path entry (``@hydra.main(config_path=...)``, ``initialize_config_module``)
CONFIGS_MODULE = "seglearn.configs"


def config_file(name: str) -> Path:
    """Path of one config file, e.g. ``config_file("finetune/default.yaml")``."""
    return CONFIGS / name


def load_config(name: str) -> dict[str, Any]:
    """The YAML config ``name`` (relative to :data:`CONFIGS`) as a plain dict, Hydra's ``defaults`` list dropped."""
    with open(config_file(name), encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    data.pop("defaults", None)
    return data


def compose(name: str, overrides: Sequence[str] = ()) -> Any:
    """The Hydra config ``name`` (``"train"``, ``"experiment/ct_user_study"``) composed with ``overrides``
    from the package's configs, as the command ``name`` would see it (an OmegaConf ``DictConfig``).

    Uses Hydra's compose API (no working-directory change, no output folder); raises Hydra's errors
    for a bad override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module=CONFIGS_MODULE, version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))
