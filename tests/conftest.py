"""Shared fixtures: tiny phantoms made on the fly, paths to ../shared when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REAL = SHARED / "data" / "real"

os.environ.setdefault("OMP_NUM_THREADS", "2")


def real_file(name: str) -> Path:
    """A file of ../shared/data/real, or skip the test when it is absent."""
    p = REAL / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


@pytest.fixture(scope="session")
def tiny_phantom():
    """A 24 x 64 x 64 phantom (both detectors, truth, scribbles, test slice)."""
    from seglearn.synth import make_phantom

    return make_phantom({"shape": [24, 64, 64], "seed": 3, "voxel_size_nm": [40.0, 20.0, 20.0],
                         "particle_radius_nm": 260.0, "n_train_slices": 6, "scribble_coverage": 0.03})


@pytest.fixture(scope="session")
def tiny_dataset(tiny_phantom, tmp_path_factory):
    """The tiny phantom written in the dataset layout; returns its root."""
    from seglearn.data import write_dataset

    root = tmp_path_factory.mktemp("ds") / "tiny"
    ph = tiny_phantom
    write_dataset(root, ph.images, voxel_size_nm=ph.config.voxel_size_nm, train=ph.train, test=ph.test,
                  instances=ph.instances, truth=ph.truth, name="tiny")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)
