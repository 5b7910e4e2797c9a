"""Tortuosity factor against analytic cases and taufactor, and its convergence policy (issue 28)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seglearn.characterise.core import merge_options
from seglearn.characterise.tortuosity import tortuosity_factor

POLICY = {k: v for k, v in merge_options(None)["tortuosity"].items() if k not in ("phases", "directions")}
FV = {**POLICY, "solver": "fv"}
TF = {**POLICY, "solver": "taufactor", "device": "cpu"}
SPACINGS = [(1.0, 1.0, 1.0), (40.0, 20.0, 20.0), (10.0, 30.0, 15.0)]


def _blobs(shape, fraction, sigma=2.0, seed=0):
    from scipy import ndimage as ndi

    g = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return g > np.quantile(g, 1 - fraction)


# ------------------------------------------------------------------------------ analytic cases

@pytest.mark.parametrize("spacing", SPACINGS)
def test_straight_channels_have_tau_one_and_blocked_directions_inf(spacing):
    along_z = np.zeros((12, 10, 14), bool)
    along_z[:, 2:5, 3:6] = True
    along_x = np.zeros_like(along_z)
    along_x[4:7, 6:9, :] = True
    for solver in (FV, TF):
        r = tortuosity_factor(along_z, "z", spacing, **solver)
        assert r["converged"] and r["tau"] == pytest.approx(1.0, rel=1e-3), (solver["solver"], r)
        assert r["volume_fraction"] == pytest.approx(along_z.mean())
    both = along_z | along_x  # apart: each is dead weight for the other's direction, tau = eps / eps_channel
    for direction, channel in (("z", along_z), ("x", along_x)):
        r = tortuosity_factor(both, direction, spacing, **FV)
        assert r["converged"] and r["tau"] == pytest.approx(both.sum() / channel.sum(), rel=1e-4), direction
    r = tortuosity_factor(both, "y", spacing, **FV)
    assert np.isinf(r["tau"]) and r["d_eff"] == 0.0 and r["converged"]


@pytest.mark.parametrize("spacing", SPACINGS)
def test_dead_ends_count_in_eps_only(spacing):
    m = np.zeros((16, 12, 12), bool)
    m[:, 4:7, 4:7] = True
    m[6, 7:10, 5] = True  # an arm in one layer, where the potential is uniform
    m[3:10, 9:12, 3:8] = True  # and the pocket at its end: no flux through either
    r = tortuosity_factor(m, "z", spacing, **FV)
    assert r["tau"] == pytest.approx(m.sum() / (16 * 9), rel=1e-4)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_layered_media_series_and_parallel_are_exact(spacing):
    d1, d2 = 1.0, 0.2
    layers = np.where((np.arange(10) // 2) % 2 == 0, d1, d2)
    series = np.broadcast_to(layers[:, None, None], (10, 8, 9)).copy()  # layers across z
    mean = series.mean()
    harm = 1.0 / np.mean(1.0 / series)
    r = tortuosity_factor(series, "z", spacing, **FV)
    assert r["tau"] == pytest.approx(mean / harm, rel=0.02)  # series bound, exact here
    assert r["tau"] == pytest.approx(mean / harm, rel=1e-4)
    for direction in ("y", "x"):  # the same layers are parallel to the flow: tau = 1
        assert tortuosity_factor(series, direction, spacing, **FV)["tau"] == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)])
def test_checkerboard_has_geometric_mean_diffusivity(spacing):
    # Keller / Dykhne: a 2D two-phase checkerboard has D_eff = sqrt(D1 D2) exactly
    d1, d2, k, n_um = 1.0, 0.25, 2, 16
    nz = n_um // int(spacing[0])
    sq = np.add.outer(np.arange(k * nz) // nz, np.arange(k * n_um) // n_um) % 2
    cond = np.where(sq == 0, d1, d2)[:, :, None].repeat(2, axis=2)  # (z, y, x): extruded along x
    for direction in ("z", "y"):
        r = tortuosity_factor(cond, direction, spacing, **FV)
        assert r["converged"] and cond.mean() / r["tau"] == pytest.approx(np.sqrt(d1 * d2), rel=0.02), direction


def _serpentine(legs, leg_len, width_y):
    """A one-voxel-wide path: legs along z joined by runs along y; returns mask and cells per axis."""
    nz, ny = leg_len, width_y * (legs - 1) + 1
    m = np.zeros((nz * legs, ny, 1), bool)
    steps = np.zeros(3, int)
    for leg in range(legs):
        y = leg * width_y
        m[leg * nz:(leg + 1) * nz, y, 0] = True
        steps[0] += nz - 1
        if leg < legs - 1:
            m[(leg + 1) * nz - 1, y:y + width_y + 1, 0] = True
            steps[1] += width_y
            steps[0] += 1  # into the next leg
    return m, steps


@pytest.mark.parametrize("spacing", SPACINGS)
def test_serpentine_path_matches_its_resistance(spacing):
    m, steps = _serpentine(legs=3, leg_len=5, width_y=4)
    h = np.asarray(spacing)
    # normalised conductance along axis a is (h_z / h_a)^2; two half cells join the end faces
    resistance = 1.0 + steps[0] + steps[1] * (h[1] / h[0]) ** 2
    tau = m.sum() * resistance / m.shape[0] ** 2
    r = tortuosity_factor(m, "z", spacing, **FV)
    assert r["tau"] == pytest.approx(tau, rel=1e-4)
    if spacing[0] == spacing[1]:
        assert r["tau"] == pytest.approx((m.sum() / m.shape[0]) ** 2, rel=1e-4)  # (path length / L)^2


# ------------------------------------------------------------------------------ taufactor

def test_fv_agrees_with_taufactor_isotropic_and_corrected_anisotropic():
    m = _blobs((28, 24, 26), 0.4)
    for spacing in [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)]:
        for direction in ("z", "x"):
            fv = tortuosity_factor(m, direction, spacing, **FV)
            tf = tortuosity_factor(m, direction, spacing, **TF)
            assert fv["converged"] and tf["converged"] and fv["solver"] == "fv" and tf["solver"] == "taufactor"
            assert 1.2 < fv["tau"] < 20
            assert fv["tau"] == pytest.approx(tf["tau"], rel=5e-3), (spacing, direction)


def test_taufactor_direct_solver_same_value():
    import taufactor

    m = _blobs((24, 20, 20), 0.45, seed=3)
    s = taufactor.Solver(m.astype(np.uint8), device="cpu")
    tau = float(np.ravel(s.solve(verbose=False, conv_crit=1e-3))[0])
    assert tortuosity_factor(m, "z", (1, 1, 1), **FV)["tau"] == pytest.approx(tau, rel=2e-3)


def test_anisotropic_voxels_against_resampled_isotropic_volume():
    m = _blobs((16, 36, 36), 0.45, sigma=3.0, seed=1)
    aniso = tortuosity_factor(m, "z", (2.0, 1.0, 1.0), **FV)["tau"]
    iso = tortuosity_factor(np.repeat(m, 2, axis=0), "z", (1.0, 1.0, 1.0), **FV)["tau"]
    squashed = tortuosity_factor(m, "z", (1.0, 1.0, 1.0), **FV)["tau"]
    assert aniso == pytest.approx(iso, rel=0.03)  # same geometry; the finer grid differs by discretisation
    assert abs(squashed - iso) > 5 * abs(aniso - iso)  # ignoring the voxel shape is far off


# ------------------------------------------------------------------------- convergence policy

def test_bounds_stop_a_solve_and_no_value_is_reported():
    m = _blobs((20, 20, 20), 0.4)
    for opts, bound in (({"iter_limit": 1, "rtol": 1e-12}, "iter_limit=1 reached"),
                        ({"time_limit_s": 0.0, "rtol": 1e-12}, "time_limit_s=0 reached")):
        r = tortuosity_factor(m, "z", (1, 1, 1), **{**FV, **opts})
        assert not r["converged"] and r["tau"] is None and r["d_eff"] is None
        assert r["stopped_by"] == bound and np.isfinite(r["tau_unconverged"])
    r = tortuosity_factor(m, "z", (1, 1, 1), **{**TF, "iter_limit": 100})
    assert not r["converged"] and r["tau"] is None and r["stopped_by"] == "iter_limit=100 reached"
    r = tortuosity_factor(m, "z", (1, 1, 1), **{**FV, "max_phase_voxels": 100})  # memory bound: not even started
    assert not r["converged"] and r["tau"] is None and r["tau_unconverged"] is None
    assert r["stopped_by"] == f"max_phase_voxels=100 exceeded ({m.sum()} voxels)" and r["iterations"] == 0


def test_report_shows_not_converged_with_the_bound(tmp_path):
    import pandas as pd

    from seglearn.characterise import characterise

    lab = np.where(_blobs((24, 24, 24), 0.5), 1, 2).astype(np.uint8)
    rep = characterise(lab, 10.0, ["pore", "active_material"], out_dir=tmp_path, steps=["fractions", "tortuosity"],
                       plots=False, tortuosity={"iter_limit": 1, "rtol": 1e-12, "solver": "fv"})
    for row in rep["tortuosity"]:
        assert row["tau"] is None and row["status"].startswith("not converged: iter_limit=1 reached")
    doc = json.loads((tmp_path / "report.json").read_text())
    assert all(r["tau"] is None for r in doc["tortuosity"])
    csv = pd.read_csv(tmp_path / "tortuosity.csv")
    assert csv["tau"].isna().all() and csv["relative_diffusivity"].isna().all()
    page = (tmp_path / "report.html").read_text()
    assert "not converged: iter_limit=1 reached" in page
    big = characterise(lab, 10.0, ["pore", "active_material"], steps=["tortuosity"],
                       tortuosity={"max_phase_voxels": 10})["tortuosity"]
    assert all(r["tau"] is None and r["status"].startswith("not solved: max_phase_voxels=10 exceeded") for r in big)
    ok = characterise(lab, 10.0, ["pore", "active_material"], steps=["tortuosity"])["tortuosity"]
    assert all(r["status"] == "converged" and r["tau"] > 1 for r in ok)


def test_policy_lives_in_the_yaml_and_bad_solver_is_refused():
    import yaml

    from seglearn.errors import InputError

    with open(Path(__file__).resolve().parents[1] / "configs" / "characterise.yaml", encoding="utf-8") as f:
        assert yaml.safe_load(f)["tortuosity"] == merge_options(None)["tortuosity"]
    with pytest.raises(InputError, match="tortuosity.solver"):
        tortuosity_factor(np.ones((4, 4, 4), bool), "z", (1, 1, 1), **{**FV, "solver": "sor"})
    import torch

    from seglearn.characterise.tortuosity import choose_solver

    assert choose_solver("auto", "cpu") == "fv" and choose_solver("taufactor", "cpu") == "taufactor"
    assert choose_solver("auto", "cuda") == ("taufactor" if torch.cuda.is_available() else "fv")
