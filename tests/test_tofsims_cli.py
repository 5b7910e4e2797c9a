"""The ``tofsims.py`` entry point, run as a user would (subprocess) on simulated SurfaceLab exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seglearn.tofsims import SimConfig, default_ions, simulate_counts, write_export

ROOT = Path(__file__).resolve().parents[1]
IONS = ["Ni+", "C2H-", "C7H7+", "LiF2-"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tofsims.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A 56 x 72 simulated export (3 phases + an interphase ion), its truth, and the folder."""
    yy, xx = np.mgrid[:56, :72]
    truth = np.full((56, 72), 3, np.uint8)  # pore / epoxy
    truth[:, 48:] = 2  # carbon-binder
    for cy, cx, r in ((16, 16, 10), (38, 30, 12), (24, 52, 9)):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1  # active material
    counts = simulate_counts(truth, SimConfig(ions=default_ions(interphase=True), dose=10.0, seed=4))
    folder = tmp_path_factory.mktemp("tofsims") / "export"
    write_export(folder, counts, IONS, fov_um=18.0, prefix="NMC cathode")
    return folder, truth


def test_cli_end_to_end(export, tmp_path):
    import imageio.v3 as iio

    from seglearn.io import read_stack

    folder, truth = export
    out = tmp_path / "out"
    args = [f"input={folder}", "ions=[Ni+,C2H-,C7H7+,LiF2-]", "mains=[Ni+,C2H-,C7H7+]", f"output={out}",
            "fov_um=36"]
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr
    labels, meta = read_stack(out / "labels.tif")
    phases, _ = read_stack(out / "phases.tif")
    zero, _ = read_stack(out / "labels_0based.tif")
    assert labels.shape == (1, 56, 72) and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert (labels == 4).any()  # the interphase ion is found ...
    assert set(np.unique(phases)) == {1, 2, 3}  # ... and folded into the main phases
    np.testing.assert_array_equal(zero, phases - 1)
    assert (phases[0] == truth).mean() > 0.9
    assert meta["voxel_size_nm"][2] == pytest.approx(500.0)  # fov_um=36 overrides the header's 18 um
    rgb = iio.imread(out / "slicegan_rgb.png")
    assert rgb.shape == (56, 72, 3)
    lut = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(rgb, lut[phases[0] - 1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pixel_um"] == pytest.approx(0.5)
    assert summary["fractions_mains"]["Ni+"] == pytest.approx((truth == 1).mean(), abs=0.04)
    assert summary["particle_sizes"]["n"] >= 1
    assert summary["interfaces_mains"]["Ni+|C7H7+"] > 0
    rows = (out / "particles.csv").read_text().splitlines()
    assert rows[0].startswith("slice,label,area_px") and len(rows) >= 3
    assert (out / "preview.png").stat().st_size > 0
    for name in IONS:
        assert (out / f"binary_{name}.tif").exists()

    from seglearn.errors import OutputExistsError
    from seglearn.tofsims import run

    before = (out / "labels.tif").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="overwrite=true"):  # refused before any work
        run({"input": str(folder), "ions": IONS, "output": str(out)})
    assert (out / "labels.tif").stat().st_mtime_ns == before


def test_cli_ambiguous_ion_stops(export, tmp_path):
    folder, _ = export
    write_export(folder, np.ones((1, 1, 56, 72), np.int64), ["C2H2-"], prefix="NMC cathode", overwrite=True)
    proc = _run(f"input={folder}", "ions=[Ni+,C2H]", f"output={tmp_path / 'out'}")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and err.startswith("seglearn: error:")
    assert "'C2H' matches 2 files" in err and "C2H-.txt" in err and "C2H2-.txt" in err
    assert not (tmp_path / "out" / "labels.tif").exists()
