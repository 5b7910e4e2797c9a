"""Unit tests of seglearn.tofsims on tiny arrays (ASCII format, ion matching, clean-up, fusion, numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.errors import InputError
from seglearn.tofsims import (IonStack, SimConfig, binary_maps, default_ions, fuse_argmax, fuse_nmf, load_ions,
                              match_ion, normalise, process, read_ascii, simulate_counts, slicegan_rgb, write_ascii,
                              write_export)
from seglearn.tofsims import measure, preprocess
from seglearn.tofsims.particles import watershed_particles
from seglearn.tofsims.pipeline import fill_mains


def disks(shape=(48, 64), centres=((14, 16, 9), (30, 44, 11)), value=1, base=None):
    """Phase map with disks of ``value`` on ``base`` (default zeros)."""
    out = np.zeros(shape, dtype=np.uint8) if base is None else base.copy()
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for cy, cx, r in centres:
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value
    return out


def three_phase(shape=(48, 64)):
    """1 = two disks (active material), 2 = right third (binder), 3 = rest (pore)."""
    ph = np.full(shape, 3, dtype=np.uint8)
    ph[:, 2 * shape[1] // 3:] = 2
    return disks(shape, value=1, base=ph)


# ---------------------------------------------------------------- ASCII format

@pytest.mark.parametrize("layout", ["matrix", "columns"])
@pytest.mark.parametrize("nz", [1, 3])
def test_ascii_roundtrip(tmp_path, rng, layout, nz):
    counts = rng.poisson(5.0, size=(nz, 7, 11))
    path = write_ascii(tmp_path / "s - Ni+.txt", counts, name="Ni+", fov_um=22.0, layout=layout)
    img = read_ascii(path)
    assert img.counts.shape == (nz, 7, 11)
    np.testing.assert_array_equal(img.counts, counts)
    assert img.name == "Ni+"
    assert img.fov_um == pytest.approx((14.0, 22.0))


def test_ascii_header_variants(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("# ION-TOF\n# Peak: C2H- (25.01 u)\n# Field of view (µm): 500\n# Number of pixels: 3\n"
                 "1,2,3\n4;5;6\n7 8 9\n")
    img = read_ascii(p)
    assert img.name == "C2H-"
    assert img.fov_um == pytest.approx((500.0, 500.0))
    np.testing.assert_array_equal(img.counts[0], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    p.write_text("# Image size: 2 x 2\n# Field of view: 0.5 x 0.5 mm\n0 0 1\n1 0 2\n0 1 3\n1 1 4\n")
    img = read_ascii(p)  # x y counts, x fastest
    np.testing.assert_array_equal(img.counts[0], [[1, 2], [3, 4]])
    assert img.fov_um == pytest.approx((500.0, 500.0))


@pytest.mark.parametrize("text, where, what", [
    ("# Image size: 3 x 2\n1 2 3\n4 5\n", ":3:", "ragged"),
    ("# Image size: 3 x 2\n1 2 3\n4 x 6\n", ":3:", "non-numeric value 'x'"),
    ("# Image size: 4 x 2\n1 2 3\n4 5 6\n", ":2:", "header says image size 4 x 2"),
    ("# Image size: 2 x 2\n0 0 1\n1 0 2\n0 1 3\n", "a.txt:", "1 of 4 pixels missing"),
    ("# Image size: 2 x 2\n0 0 1\n1 0 2\n0 1 3\n0 1 3\n", ":5:", "more than once"),
    ("# Image size: 2 x 2\n0 0 1\n5 0 2\n0 1 3\n1 1 4\n", ":3:", "x = 5 is outside"),
    ("# Image size: 2 x 2\n# only a header\n", "a.txt:", "no data rows"),
    ("1 -2\n3 4\n", "a.txt:", "negative counts"),
])
def test_ascii_errors_name_file_and_line(tmp_path, text, where, what):
    p = tmp_path / "a.txt"
    p.write_text(text)
    with pytest.raises(InputError) as exc:
        read_ascii(p)
    msg = str(exc.value)
    assert str(p) in msg and where in msg and what in msg


# ---------------------------------------------------------------- ion selection

def _touch(folder, names):
    for n in names:
        write_ascii(folder / n, np.ones((2, 2)), name="x")
    return sorted(folder / n for n in names)


def test_match_ion_exact_substring_and_ambiguous(tmp_path):
    files = _touch(tmp_path, ["m - Ni+.txt", "m - 58Ni+.txt", "m - C2H-.txt", "m - C2H2-.txt", "m - PO3-.txt"])
    assert match_ion("Ni+", files).name == "m - Ni+.txt"  # exact beats the substring in 58Ni+
    assert match_ion("PO3", files).name == "m - PO3-.txt"  # unique substring
    with pytest.raises(InputError, match=r"'C2H' matches 2 files \(m - C2H-.txt, m - C2H2-.txt\)"):
        match_ion("C2H", files)
    with pytest.raises(InputError, match="no ion file matches 'Co\\+'"):
        match_ion("Co+", files)


def test_load_ions_order_shapes_and_tiff(tmp_path, rng):
    from seglearn.io import write_volume

    write_ascii(tmp_path / "m - Ni+.txt", rng.poisson(3, (5, 6)), name="Ni+", fov_um=12.0)
    write_volume(tmp_path / "m - C2H-.tif", rng.poisson(3, (1, 5, 6)).astype(np.uint16), voxel_size_nm=(2e3,) * 3)
    st = load_ions(tmp_path, ["C2H-", "Ni+"])
    assert st.counts.shape == (2, 1, 5, 6) and st.names == ["C2H-", "Ni+"]
    assert st.files[0].endswith(".tif") and st.fov_um == pytest.approx((10.0, 12.0))
    write_ascii(tmp_path / "m - F-.txt", np.ones((4, 6)), name="F-")
    with pytest.raises(InputError, match="differ in size"):
        load_ions(tmp_path, ["Ni+", "F-"])
    with pytest.raises(InputError, match="same ion twice"):
        load_ions(tmp_path, ["Ni+", "Ni+"])
    with pytest.raises(InputError, match="no such folder"):
        load_ions(tmp_path / "nope", ["Ni+"])


# ---------------------------------------------------------------- clean-up

def test_current_collector_rotation_and_crop():
    counts = np.zeros((2, 1, 20, 30))
    counts[:, 0, 2:18, 3:27] = 5.0
    counts[:, 0, 2:5, 3:27] = 100.0  # bright current collector on top
    valid = np.ones((1, 20, 30), dtype=bool)
    valid = preprocess.remove_current_collector(counts, valid, threshold=128)
    assert not valid[0, 2:4, 10].any() and valid[0, 10, 10]
    box = preprocess.crop_box(valid, counts, mode="auto")
    assert box[1] == slice(3, 27)
    assert box[0].start >= 4 and box[0].stop == 18
    box = preprocess.crop_box(valid, counts, mode="manual", rows=[5, None], cols=[None, 10])
    assert box == (slice(5, 20), slice(0, 10))
    with pytest.raises(InputError, match="do not fit"):
        preprocess.crop_box(valid, counts, mode="manual", rows=[5, 40])
    sq = np.random.default_rng(1).random((1, 1, 9, 9))
    rot, vrot = preprocess.rotate(sq, np.ones((1, 9, 9), bool), 90)
    np.testing.assert_allclose(rot[0, 0], np.rot90(sq[0, 0]), atol=1e-9)
    assert vrot.all()
    _, v45 = preprocess.rotate(sq, np.ones((1, 9, 9), bool), 45)
    assert not v45[0, 0, 0] and v45[0, 4, 4]


# ---------------------------------------------------------------- fusion

def test_fuse_argmax_threshold_advantage_boost():
    norm = np.zeros((2, 1, 1, 4))
    norm[0, 0, 0] = [200, 100, 10, 30]
    norm[1, 0, 0] = [100, 120, 15, 5]
    assert fuse_argmax(norm, noise_threshold=20)[0, 0].tolist() == [1, 2, 0, 1]
    assert fuse_argmax(norm, noise_threshold=20, advantage=1.5)[0, 0].tolist() == [1, 1, 0, 1]
    assert fuse_argmax(norm, noise_threshold=20, advantage=0.4, am_index=0)[0, 0].tolist() == [2, 2, 0, 1]
    assert fuse_argmax(norm, noise_threshold=20, boost=1.0)[0, 0].tolist() == [1, 2, 2, 1]
    valid = np.array([[[True, False, True, True]]])
    assert fuse_argmax(norm, valid, noise_threshold=20)[0, 0].tolist() == [1, 0, 0, 1]
    with pytest.raises(InputError, match="advantage"):
        fuse_argmax(norm, advantage=0)


def test_normalise_percentile_and_binary_maps():
    c = np.zeros((2, 1, 10, 10))
    c[0, 0] = 10.0
    c[0, 0, 0, 0] = 1e6  # hot pixel
    c[1, 0, :5] = 3.0
    n = normalise(c, percentile=98.0)
    assert n[0, 0, 5, 5] == pytest.approx(255.0) and n[1, 0, 0, 0] == pytest.approx(255.0)
    assert normalise(c, percentile=100.0)[0, 0, 5, 5] < 1.0
    b = binary_maps(n, [100, 300])
    assert b[0].all() and not b[1].any()
    with pytest.raises(InputError, match="one per ion"):
        binary_maps(n, [1, 2, 3])


@pytest.mark.parametrize("method", ["argmax", "nmf"])
def test_fusion_recovers_simulated_phase_map(method):
    truth = three_phase()
    counts = simulate_counts(truth, SimConfig(dose=20.0, seed=1))
    norm = normalise(counts)
    if method == "argmax":
        labels = fuse_argmax(norm, noise_threshold=20)
    else:
        labels, info = fuse_nmf(norm, noise_threshold=20)
        assert sorted(info["ion_of_component"]) == [0, 1, 2]
    acc = (labels[0] == truth).mean()
    assert acc > 0.95, acc
    lo = simulate_counts(truth, SimConfig(dose=0.2, seed=1))
    acc_lo = (fuse_argmax(normalise(lo), noise_threshold=20)[0] == truth).mean()
    assert acc_lo < acc  # Poisson noise at low dose costs accuracy


# ---------------------------------------------------------------- simulator

def test_simulator_yields_and_interphase():
    truth = three_phase()
    cfg = SimConfig(ions=default_ions(interphase=True), dose=2.0, blur_px=0.0)
    mean = np.mean([simulate_counts(truth, cfg, seed=s) for s in range(20)], axis=0)[:, 0]
    for i, ion in enumerate(cfg.ions[:3]):
        for ph in (1, 2, 3):
            assert mean[i][truth == ph].mean() == pytest.approx(2.0 * (ion.yields[ph - 1] + ion.background), rel=0.1)
    from scipy import ndimage as ndi

    am = truth == 1
    edge = (am & ndi.binary_dilation(truth == 2)) | ((truth == 2) & ndi.binary_dilation(am))
    assert mean[3][edge].mean() > 5 * mean[3][~edge].mean()


# ---------------------------------------------------------------- numbers

def test_fractions_and_interfaces():
    lab = np.zeros((1, 4, 6), dtype=np.uint8)
    lab[0, :, :3] = 1
    lab[0, :, 3:] = 2
    lab[0, 0, 5] = 0  # unlabelled, not counted
    fr = measure.phase_fractions(lab, ["a", "b"])
    assert fr == {"a": pytest.approx(12 / 23), "b": pytest.approx(11 / 23)}
    assert measure.interface_lengths(lab, ["a", "b"], pixel_um=0.5) == {"a|b": pytest.approx(2.0)}
    lab[0, 1, 1] = 3
    il = measure.interface_lengths(lab, ["a", "b", "c"])
    assert il == {"a|b": 4.0, "a|c": 4.0, "b|c": 0.0}


def test_particles_watershed_and_shape():
    two = disks((40, 60), centres=((20, 20, 9), (20, 36, 9)))  # touching disks
    inst = watershed_particles(two.astype(bool), min_distance_px=5)
    assert inst.max() == 2
    yy, xx = np.mgrid[:40, :60]
    ell = (((yy - 20) / 5.0) ** 2 + ((xx - 30) / 15.0) ** 2 <= 1)[None].astype(np.uint32)
    rows = measure.particle_table(ell, pixel_um=0.2)
    assert len(rows) == 1 and rows[0]["aspect_ratio"] == pytest.approx(3.0, rel=0.05)
    assert rows[0]["equivalent_diameter_um"] == pytest.approx(2 * np.sqrt(5 * 15) * 0.2, rel=0.05)
    assert not rows[0]["touches_border"]
    dist = measure.size_distribution(rows + [dict(rows[0], touches_border=True, equivalent_diameter_um=99.0)])
    assert dist["n"] == 1 and dist["d50_um"] == pytest.approx(rows[0]["equivalent_diameter_um"])


def test_fill_mains_and_slicegan_colours():
    lab = np.array([[[1, 1, 4, 2, 2], [1, 0, 4, 2, 3]]], dtype=np.uint8)  # 4 = interphase ion
    norm = np.zeros((4, 1, 2, 5))
    ph = fill_mains(lab, [1, 2, 3], norm)
    assert ph[0, 0].tolist()[:2] == [1, 1] and ph[0, 0, 3:].tolist() == [2, 2]
    assert ph[0, 1, 1] == 1 and ph[0, 1, 4] == 3 and ph.min() >= 1
    rgb = slicegan_rgb(ph)
    assert rgb.shape == (1, 2, 5, 3)
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert colours <= {(255, 0, 0), (0, 255, 0), (0, 0, 255)}
    assert tuple(rgb[0, 1, 4]) == (0, 0, 255)
    with pytest.raises(InputError, match="at most 3"):
        slicegan_rgb(np.full((1, 2, 2), 4, np.uint8))


def test_process_depth_profile_slice_by_slice(tmp_path):
    truth = np.stack([three_phase(), np.fliplr(three_phase())])
    counts = simulate_counts(truth, SimConfig(dose=20.0, seed=2))
    counts[:, 1] *= 3  # sputter yield changes with depth: scans are scaled on their own
    write_export(tmp_path, counts, ["Ni+", "C2H-", "C7H7+"], fov_um=32.0, layout="columns")
    st = load_ions(tmp_path, ["Ni+", "C2H-", "C7H7+"])
    res = process(st, {"crop": "none"})
    assert res.labels.shape == truth.shape and res.pixel_um == pytest.approx(0.5)
    for z in range(2):
        assert (res.phases[z] == truth[z]).mean() > 0.95
    assert res.particles.shape == truth.shape and res.particles[0].max() >= 2
    true_fr = (truth == 1).mean()
    assert res.stats["fractions_mains"]["Ni+"] == pytest.approx(true_fr, abs=0.03)
    with pytest.raises(InputError, match="not one of the ions"):
        process(st, {"mains": ["Ni+", "Co+"]})


def test_process_removes_collector_and_crops():
    truth = three_phase()
    counts = simulate_counts(truth, SimConfig(dose=20.0, seed=3)).astype(np.float64)
    counts[:, :, :6] = 400.0  # current collector: very bright in every ion on the top rows
    counts[:, :, -3:] = 0.0  # empty border at the bottom
    st = IonStack(counts=counts, names=["Ni+", "C2H-", "C7H7+"], files=[], fov_um=(48.0, 64.0))
    res = process(st, {"cc_threshold": 128})
    r0, r1 = res.stats["crop_rows"]
    assert 6 <= r0 <= 8 and r1 == 45  # collector (plus its smoothed edge) and empty rows cropped
    assert res.labels.shape == (1, r1 - r0, 64) and res.pixel_um == pytest.approx(1.0)
    assert (res.phases[0] == truth[r0:r1]).mean() > 0.95
