"""Characterisation on shapes with known answers (issue 6)."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.errors import InputError


def _ball(shape, centre, r, spacing=(1, 1, 1)):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((z - centre[0]) * spacing[0]) ** 2 + ((y - centre[1]) * spacing[1]) ** 2
            + ((x - centre[2]) * spacing[2]) ** 2) <= r * r


# ------------------------------------------------------------------------------------ labels

def test_grey_values_map_in_ascending_order():
    from seglearn.characterise.labels import find_roles, map_labels

    raw = np.array([0, 85, 170, 85], np.uint8).reshape(1, 1, 4)
    lab, classes, values = map_labels(raw, ["pore", "active_material", "carbon_binder"])
    assert lab.ravel().tolist() == [1, 2, 3, 2] and values == [0, 85, 170]
    assert find_roles(classes) == {"pore": 1, "active": 2, "binder": 3}
    lab, classes, _ = map_labels(raw)
    assert classes == ["value_0", "value_85", "value_170"] and lab.max() == 3
    # explicit values: any other value is outside
    lab, _, _ = map_labels(raw, ["am", "pore"], values=[85, 0])
    assert lab.ravel().tolist() == [2, 1, 0, 1]


def test_seglearn_ids_with_outside_kept_and_mismatch_refused():
    from seglearn.characterise.labels import map_labels, resolve_voxel_size

    raw = np.array([0, 1, 2, 3, 3], np.uint8).reshape(1, 1, 5)
    lab, _, _ = map_labels(raw, ["pore", "carbon_binder", "active_material"])
    assert lab.ravel().tolist() == [0, 1, 2, 3, 3]
    # a prediction with an outside region and a missing class: values=[1..K] keeps the ids
    lab, _, _ = map_labels(raw[..., :3], ["pore", "carbon_binder", "active_material"], values=[1, 2, 3])
    assert lab.ravel().tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="do not match 2 classes"):
        map_labels(np.array([0, 5, 9], np.uint8).reshape(1, 1, 3), ["a", "b"])
    with pytest.raises(InputError, match="no voxel size"):
        resolve_voxel_size(None, None, source="x.tif")
    assert resolve_voxel_size(None, 5) == (5.0, 5.0, 5.0)
    assert resolve_voxel_size((30, 10, 10), None) == (30.0, 10.0, 10.0)
    assert resolve_voxel_size((352778, 352778, 352778), 5) == (5.0, 5.0, 5.0)  # what the user typed wins
    with pytest.raises(InputError, match="given in µm"):
        resolve_voxel_size(None, [0.04, 0.02, 0.02])


# --------------------------------------------------------------------------------- fractions

def test_fractions_regions_sections_and_rve_exact():
    from seglearn.characterise import fractions as fr

    lab = np.ones((10, 8, 6), np.uint8)
    lab[:4] = 2  # 40 % of z
    lab[0, 0, 0] = 0  # outside: not counted
    f = fr.volume_fractions(lab, 2)
    assert f[1] == pytest.approx((4 * 48 - 1) / (480 - 1))
    reg = fr.fractions_by_region(lab, 2, n_regions=5, axis="z")
    np.testing.assert_allclose(reg["fractions"][:, 1], [1, 1, 0, 0, 0])
    sec = fr.section_fractions(lab, 2)
    np.testing.assert_allclose(sec["per_slice"]["xy"][4:, 0], 1.0)
    assert sec["mean"]["yz"][1] == pytest.approx(f[1], abs=1e-3)
    homog = np.full((16, 16, 16), 3, np.uint8)
    rv = fr.representative_volume(homog, 3, n_sizes=3, n_samples=8, tolerance=0.02)
    assert np.all(rv["std"] == 0) and np.all(rv["mean"][:, 2] == 1) and rv["rve_edge"][2] == rv["edge"][0]
    stripes = np.ones((16, 16, 16), np.uint8)
    stripes[:, :, ::3] = 2  # 6 of 16 columns
    rv = fr.representative_volume(stripes, 2, n_sizes=4, n_samples=32, min_edge=2, tolerance=0.02)
    assert rv["mean"][-1, 1] == pytest.approx(6 / 16) and rv["std"][-1, 1] == 0
    assert rv["std"][0, 1] > 0.1 and rv["rve_edge"][1] == 16


# -------------------------------------------------------------------------------- interfaces

def test_sphere_area_marching_cubes_and_faces():
    from seglearn.characterise.interfaces import face_area_matrix, mesh_area_matrix

    r, n = 12, 34
    lab = np.ones((n, n, n), np.uint8)
    lab[_ball(lab.shape, ((n - 1) / 2,) * 3, r)] = 2
    true = 4 * np.pi * r * r
    mesh = mesh_area_matrix(lab, 2, sigma=0.7)
    assert mesh["pairs"][0, 1] == pytest.approx(true, rel=0.03)
    faces = face_area_matrix(lab, 2)
    assert faces[0, 1] == pytest.approx(1.5 * true, rel=0.05)  # face counting: 3/2 of a smooth surface


def test_slab_areas_anisotropic_and_three_phases():
    from seglearn.characterise.interfaces import face_area_matrix, mesh_area_matrix

    lab = np.ones((10, 20, 30), np.uint8)
    lab[5:] = 2
    sp = (4.0, 2.0, 3.0)
    exact = 20 * 2.0 * 30 * 3.0
    assert face_area_matrix(lab, 2, sp)[0, 1] == pytest.approx(exact)
    assert mesh_area_matrix(lab, 2, sp, sigma=0.7)["pairs"][0, 1] == pytest.approx(exact, rel=1e-6)
    lab[:, :, 15:] = 3
    a = face_area_matrix(lab, 3)
    assert a[0, 1] == pytest.approx(20 * 15) and a[0, 2] == pytest.approx(5 * 20) and a[1, 2] == pytest.approx(5 * 20)
    m = mesh_area_matrix(lab, 3, sigma=0.7)["pairs"]
    assert m[0, 2] == pytest.approx(100, rel=0.05) and m[0, 1] == pytest.approx(300, rel=0.1)


# ------------------------------------------------------------------------ sizes, intrusion

def test_fast_dilation_equals_distance_transform():
    from seglearn.characterise.morph import dilate, dilate_reference

    rng = np.random.default_rng(0)
    for sp in [(1, 1, 1), (2, 1, 1), (1.5, 1, 0.7)]:
        for r in (0.5, 1, 1.7, 3.2, 6):
            m = rng.random((14, 17, 19)) < 0.01
            assert np.array_equal(dilate(m, r, sp), dilate_reference(m, r, sp)), (sp, r)


def test_local_thickness_of_slab_and_sphere():
    from seglearn.characterise.sizes import size_distribution

    m = np.zeros((30, 24, 24), bool)
    m[10:20] = True  # 10 voxels thick
    r = size_distribution(m, (2.0, 2.0, 2.0), n_linear=6, growth=1.2)
    assert r["mean_diameter_nm"] == pytest.approx(20.0)
    assert np.all(r["local_thickness_nm"][m] == 20.0)
    n = 30
    s = _ball((n, n, n), ((n - 1) / 2,) * 3, 10)
    r = size_distribution(s, radii_nm=np.arange(1, 13))
    assert 18 <= r["local_thickness_nm"].max() <= 22  # within one voxel of the radius
    assert r["radius_nm"][-1] == 10  # the first radius whose ball does not fit ends the curve
    assert np.all(np.diff(r["opened"]) <= 0)


def test_constrictivity_bottleneck_and_straight_tube():
    from seglearn.characterise.morph import face_mask
    from seglearn.characterise.sizes import size_distribution

    n = 50
    z, y, x = np.ogrid[:n, :27, :27]
    tube = (y - 13) ** 2 + (x - 13) ** 2 <= 6.5 ** 2
    inlet = face_mask((n, 27, 27), "z0")
    straight = size_distribution(np.broadcast_to(tube, (n, 27, 27)), inlet=inlet, n_linear=6, growth=1.2)
    assert straight["constrictivity"] == pytest.approx(1.0)
    neck = np.where((z > 10) & (z < 16), 2.5, 6.5)
    narrowed = (y - 13) ** 2 + (x - 13) ** 2 <= neck ** 2
    r = size_distribution(narrowed, inlet=inlet, n_linear=6, growth=1.2)
    assert r["constrictivity"] < 0.3  # true (2.5 / 6.5)^2 = 0.15
    assert r["intruded"][4] < 0.3 < r["opened"][4]  # spheres of r = 5 stop at the neck


# ------------------------------------------------------------------------------ transport

def test_tortuosity_straight_channels_and_blocked_phase():
    # the analytic cases, taufactor and the convergence policy: tests/test_tortuosity.py
    from seglearn.characterise.core import merge_options
    from seglearn.characterise.tortuosity import tortuosity_factor

    policy = {k: v for k, v in merge_options(None)["tortuosity"].items() if k not in ("phases", "directions")}
    m = np.zeros((16, 12, 12), bool)
    m[:, 3:7, 3:7] = True
    r = tortuosity_factor(m, "z", (1, 1, 1), **policy)
    assert r["tau"] == pytest.approx(1.0, abs=1e-3) and r["volume_fraction"] == pytest.approx(16 / 144)
    assert r["tau"] > 0 and np.isinf(tortuosity_factor(m, "x", (1, 1, 1), **policy)["tau"])
    slab = np.zeros((8, 12, 16), bool)
    slab[2:5] = True
    assert tortuosity_factor(slab, "x", (30.0, 10.0, 10.0), **policy)["tau"] == pytest.approx(1.0, abs=1e-3)


def test_geodesic_tortuosity_straight_and_diagonal():
    from seglearn.characterise.geodesic import face_distance, geodesic_tortuosity

    m = np.zeros((30, 10, 10), bool)
    m[:, 3:6, 3:6] = True
    r = geodesic_tortuosity(m, face_distance(m.shape, "z0", (2, 1, 1)), 40.0, (2, 1, 1))
    assert r["mean"] == pytest.approx(1.0) and r["std"] == pytest.approx(0.0) and r["n_starts"] == 9
    d = np.zeros((30, 8, 40), bool)
    for k in range(30):
        d[k, 2:6, k: k + 4] = True  # 45 degrees in z-x
    r = geodesic_tortuosity(d, face_distance(d.shape, "z0", (1, 1, 1)), 24.0)
    assert r["mean"] == pytest.approx(np.sqrt(2), rel=0.03) and r["reached"] == 1.0


def test_rolling_ball_inner_pores_and_profile():
    from seglearn.characterise.inner import fraction_vs_boundary_distance, inner_pores

    n = 36
    c = (n - 1) / 2
    sph = _ball((n, n, n), (c, c, c), 14)
    cav = np.zeros_like(sph)
    for p in [(c - 6, c, c), (c + 6, c, c)]:
        cav |= _ball(sph.shape, p, 2.5)
    solid = sph & ~cav
    r = inner_pores(solid, 4.0)
    assert np.array_equal(r["inner"], cav)
    assert r["solid_fraction"] == pytest.approx(solid.sum() / sph.sum())
    assert np.array_equal(inner_pores(solid, 0.0)["inner"], cav)  # enclosed: unreachable at any radius
    prof = fraction_vs_boundary_distance(solid, r["particle"])
    assert prof["local"][0] == 1.0 and prof["cumulative"][-1] == pytest.approx(r["solid_fraction"])
    assert np.nanmin(prof["local"]) < 1.0


def test_particle_sizes_and_aspect_ratio():
    from seglearn.characterise.particles import particle_table

    inst = np.zeros((40, 40, 70), np.uint16)
    z, y, x = np.ogrid[:40, :40, :70]
    inst[((z - 20) / 8.0) ** 2 + ((y - 20) / 8.0) ** 2 + ((x - 17) / 8.0) ** 2 <= 1] = 1
    inst[((z - 20) / 6.0) ** 2 + ((y - 20) / 6.0) ** 2 + ((x - 48) / 15.0) ** 2 <= 1] = 2
    t = particle_table(inst, (10.0, 10.0, 10.0))
    assert t["equivalent_diameter_um"][0] == pytest.approx(0.16, rel=0.03)
    assert t["aspect_ratio"][0] == pytest.approx(1.0, abs=0.03)
    assert t["aspect_ratio"][1] == pytest.approx(2.5, rel=0.05)
    assert t["major_axis_um"][1] == pytest.approx(0.30, rel=0.05)
