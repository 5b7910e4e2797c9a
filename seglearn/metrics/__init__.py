"""Scoring: confusion matrix, per-class IoU, average weighted error (awe), fractions, agreement."""

from seglearn.metrics.scores import (
    awe,
    confusion_matrix,
    fraction_std,
    iou_from_confusion,
    percent_differ,
    score,
    volume_fractions,
)

__all__ = ["awe", "confusion_matrix", "fraction_std", "iou_from_confusion", "percent_differ", "score",
           "volume_fractions"]
