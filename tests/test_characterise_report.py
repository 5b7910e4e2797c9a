"""The characterise() report end to end, the CLI, and the real electrode against taufactor (issue 6)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import ROOT, real_file
from seglearn.errors import InputError, OutputExistsError


def _electrode_like(shape=(20, 24, 24), seed=0) -> np.ndarray:
    """Grey-value labels 0 (pore) / 85 (particles) / 170 (binder shell) with known layout."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vol = np.zeros(shape, np.uint8)
    for _ in range(6):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        d2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        vol[(d2 <= 6.5 ** 2) & (vol == 0)] = 170
        vol[d2 <= 5 ** 2] = 85
    return vol


def test_characterise_writes_every_output(tmp_path):
    from seglearn.characterise import characterise

    raw = _electrode_like()
    inst = np.zeros(raw.shape, np.uint16)
    inst[raw == 85] = 1
    out = tmp_path / "rep"
    steps = ["fractions", "depth", "interfaces", "sizes", "geodesic", "inner_pores", "sections", "rve", "particles"]
    rep = characterise(raw, 50.0, ["pore", "active_material", "carbon_binder"], instances=inst, out_dir=out,
                       steps=steps, progress=False, inner_pores={"radius_um": 0.1})
    counts = np.bincount(raw.ravel() // 85, minlength=3) / raw.size
    assert rep["fractions"] == pytest.approx(dict(zip(["pore", "active_material", "carbon_binder"], counts)))
    assert rep["input"]["roles"] == {"pore": "pore", "active": "active_material", "binder": "carbon_binder"}
    cov = rep["cbd_coverage_of_am"]
    assert 0 < cov["faces"] <= 1 and 0 < cov["mesh"] <= 1
    assert rep["particles"]["count"] == 1
    files = set(p.name for p in out.iterdir())
    for name in ("report.json", "report.html", "fractions.csv", "interfaces.csv", "surface.csv",
                 "size_distribution.csv", "fractions_by_depth.csv", "sections.csv", "representative_volume.csv",
                 "local_fraction.csv", "particles.csv", "size_distribution.png", "intrusion.png",
                 "fractions_by_depth.png", "geodesic_tortuosity.png", "sections.png"):
        assert name in files, name
    doc = json.loads((out / "report.json").read_text())
    assert doc["fractions"]["pore"] == pytest.approx(counts[0])
    assert set(doc["outputs"]) <= files
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "http" not in page  # self-contained
    with pytest.raises(OutputExistsError):
        characterise(raw, 50.0, ["pore", "active_material", "carbon_binder"], out_dir=out, steps=["fractions"])
    with pytest.raises(InputError, match="unknown characterise option"):
        characterise(raw, 50.0, None, bogus=1)


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "characterise.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_grey_value_file(tmp_path):
    vol = _electrode_like()
    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, vol)
    out = tmp_path / "out"
    r = _cli(f"input={src}", "voxel_size_nm=40", f"output={out}", "classes=[pore,active_material,carbon_binder]",
             "steps=[fractions,interfaces,sizes,sections]", "plots=false")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "report.json").read_text())
    assert doc["input"]["voxel_size_nm"] == [40.0, 40.0, 40.0] and doc["input"]["values"] == [0, 85, 170]
    assert doc["fractions"]["carbon_binder"] == pytest.approx((vol == 170).mean())
    assert (out / "report.html").exists() and not (out / "sections.png").exists()
    # no voxel size anywhere: refused in one line, exit 2
    r = _cli(f"input={src}", f"output={tmp_path / 'o2'}")
    assert r.returncode == 2 and "no voxel size" in r.stderr and "Traceback" not in r.stderr
    # existing report not replaced
    r = _cli(f"input={src}", "voxel_size_nm=40", f"output={out}", "steps=[fractions]")
    assert r.returncode == 2 and "overwrite=true" in r.stderr


def test_voxel_size_read_from_file(tmp_path):
    from seglearn.characterise.cli import run
    from seglearn.io import write_volume

    src = tmp_path / "cal.tif"
    write_volume(src, _electrode_like((8, 16, 16)), voxel_size_nm=(30.0, 10.0, 10.0))
    kw = {"input": str(src), "steps": ["fractions"], "plots": False, "html": False, "classes": None}
    rep = run({**kw, "output": str(tmp_path / "o")})
    assert rep["input"]["voxel_size_nm"] == pytest.approx([30.0, 10.0, 10.0])
    # voxel_size_nm= as given wins over the file's calibration, as in predict.py (a warning names the file's)
    rep = run({**kw, "voxel_size_nm": 99, "output": str(tmp_path / "o2")})
    assert rep["input"]["voxel_size_nm"] == pytest.approx([99.0, 99.0, 99.0])


def test_real_electrode_against_taufactor():
    """Fractions of the full 256^3 file and tortuosity of a crop against taufactor called directly."""
    import taufactor

    from seglearn.characterise import fractions as fr
    from seglearn.characterise.core import merge_options
    from seglearn.characterise.labels import map_labels
    from seglearn.characterise.tortuosity import tortuosity_factor

    raw = tifffile.imread(real_file("electrode_nmc_3phase_256.tif"))
    lab, classes, values = map_labels(raw, ["pore", "active_material", "carbon_binder"])
    assert values == [0, 85, 170]
    f = fr.volume_fractions(lab, 3)
    np.testing.assert_allclose(f, [(raw == v).mean() for v in values])
    assert f == pytest.approx([0.45, 0.40, 0.15], abs=0.01)  # as published with the file
    crop = lab[:32, :32, :32] == 1  # small enough for torch to stay on one thread
    policy = {k: v for k, v in merge_options(None)["tortuosity"].items() if k not in ("phases", "directions")}
    mine = tortuosity_factor(crop, "z", (1, 1, 1), **{**policy, "solver": "taufactor", "device": "cpu"})
    ref = taufactor.Solver(crop.astype(np.uint8), device="cpu")
    tau = float(np.asarray(ref.solve(verbose=False)).ravel()[0])
    assert mine["tau"] == pytest.approx(tau, rel=1e-6) and 1.2 < tau < 4
    # along x: taufactor on the array transposed so x comes first; the default fv solver agrees with it
    mine_x = tortuosity_factor(crop, "x", (1, 1, 1), **{**policy, "solver": "fv"})
    ref_x = taufactor.Solver(np.ascontiguousarray(np.transpose(crop, (2, 1, 0))).astype(np.uint8), device="cpu")
    tau_x = float(np.asarray(ref_x.solve(verbose=False, conv_crit=1e-3)).ravel()[0])
    assert mine_x["converged"] and mine_x["tau"] == pytest.approx(tau_x, rel=2e-3)
