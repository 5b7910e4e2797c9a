"""The options of ``predict.py`` read once from its config into plain values (:class:`Options`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from seglearn.config import to_plain
from seglearn.paths import load_config


@dataclasses.dataclass(frozen=True)
class Options:
    """Every ``configs/predict.yaml`` entry prediction reads, as plain Python values.

    Missing keys (a config built by hand, e.g. in a test) take the YAML's value: the defaults live
    there only. The meaning of each field is documented next to it in ``configs/predict.yaml``.
    """

    ckpt: str
    input: Any
    detectors: Any = None
    output: str | None = None
    overwrite: bool = False
    voxel_size_nm: Any = None
    probabilities: bool = False
    uncertainty: bool = False
    preview: bool = True
    device: str = "auto"
    bf16: bool | None = None
    tile: list | None = None
    overlap: list | None = None
    batch_size: int | None = None
    adapt: Any = "auto"
    tta: str | None = None
    characterise: Any = False
    block_slices: Any = "auto"
    memory_budget_gib: float = 1.5
    output_format: str = "tiff"
    labels_frame: str = "auto"
    keep_zarr: bool = False

    @classmethod
    def from_config(cls, cfg) -> "Options":
        """The options of ``cfg`` (a DictConfig or mapping), YAML defaults for the keys it lacks."""
        given = to_plain(cfg) or {}
        yaml = {k: v for k, v in load_config("predict.yaml").items() if k not in ("defaults", "hydra")}
        merged = {**yaml, **given}
        names = [f.name for f in dataclasses.fields(cls)]
        opts = cls(**{k: merged[k] for k in names if k in merged})
        return dataclasses.replace(opts, ckpt=str(opts.ckpt), device=str(opts.device),
                                   output_format=str(opts.output_format), labels_frame=str(opts.labels_frame),
                                   probabilities=bool(opts.probabilities), uncertainty=bool(opts.uncertainty),
                                   overwrite=bool(opts.overwrite), keep_zarr=bool(opts.keep_zarr),
                                   memory_budget_gib=float(opts.memory_budget_gib))

    @property
    def where(self) -> str:
        """The input as the messages name it."""
        return str(self.input)

    def iter_kwargs(self, plan: dict) -> dict:
        """Keyword arguments of :meth:`seglearn.segment.api.Segmenter.iter_proba` for the block plan ``plan``."""
        return {"tta": self.tta, "block_slices": plan["block_slices"], "band_rows": plan["band_rows"],
                "tile": self.tile, "overlap": self.overlap, "batch_size": self.batch_size}
