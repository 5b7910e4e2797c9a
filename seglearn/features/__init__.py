"""Pixel features for classical classifiers: ilastik-style filters and tailored z-evolution features."""

from seglearn.features.ilastik import FEATURES, SIGMAS, feature_names, ilastik_features
from seglearn.features.stack import FeatureStack, predict_volume, training_samples
from seglearn.features.zevolution import zevolution_features

__all__ = ["FEATURES", "SIGMAS", "feature_names", "ilastik_features", "zevolution_features",
           "FeatureStack", "training_samples", "predict_volume"]
