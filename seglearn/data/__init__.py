"""The dataset layout every command reads (see README, "Dataset layout")."""

from seglearn.data.layout import DEFAULT_CLASSES, Dataset, load_dataset, write_dataset

__all__ = ["DEFAULT_CLASSES", "Dataset", "load_dataset", "write_dataset"]
