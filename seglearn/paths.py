"""Where the package finds its own files: the YAML configs (the one home of every default).

Code that needs a default reads it from here, never from a path computed relative to the
repository (``parents[2]``), so a non-editable install finds the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: the folder of the YAML configs (Hydra's config directory)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_file(name: str) -> Path:
    """Path of one config file, e.g. ``config_file("pretrain/finetune.yaml")``."""
    return CONFIGS / name


def load_config(name: str) -> dict[str, Any]:
    """The YAML config ``name`` (relative to :data:`CONFIGS`) as a plain dict, Hydra's ``defaults`` list dropped."""
    with open(config_file(name), encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    data.pop("defaults", None)
    return data
