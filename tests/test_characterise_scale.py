"""Characterisation at scale (issue 28): parallel tasks under a memory budget, sampled sizes and
geodesic tortuosity, the block-aggregated AMG solve, defaults from the YAML only."""

from __future__ import annotations

import time

import numpy as np
import pytest

from seglearn.errors import InputError

CLASSES = ["pore", "active_material", "carbon_binder"]


def _electrode(shape=(24, 28, 28), seed=0) -> np.ndarray:
    """Ids 1 (pore) / 2 (particles) / 3 (binder shell) of random spheres."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vol = np.ones(shape, np.uint8)
    for _ in range(8):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        d2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        vol[(d2 <= 6.5 ** 2) & (vol == 1)] = 3
        vol[d2 <= 5 ** 2] = 2
    return vol


def _numbers(rep: dict) -> dict:
    return {"fractions": rep["fractions"], "interfaces": rep["interfaces"],
            "tau": [(r["phase"], r["tau"], r["status"]) for r in rep["tortuosity"]],
            "sizes": {k: (v["r50_opening_um"], v["constrictivity"], v["opened"])
                      for k, v in rep["size_distribution"]["phases"].items()},
            "geodesic": [r["mean"] for r in rep["geodesic_tortuosity"]["results"]]}


def test_parallel_workers_give_the_serial_report():
    from seglearn.characterise import characterise

    lab = _electrode()
    steps = ["fractions", "interfaces", "sizes", "tortuosity", "geodesic"]
    kw = dict(steps=steps, plots=False, html=False, progress=False, values=[1, 2, 3])
    serial = characterise(lab, 50.0, CLASSES, parallel={"workers": 1}, **kw)
    par = characterise(lab, 50.0, CLASSES, parallel={"workers": 2, "min_voxels": 0}, **kw)
    assert serial["parallel"]["workers"] == 1 and par["parallel"]["workers"] == 2
    assert _numbers(par) == _numbers(serial)
    assert all(r["status"] == "converged" for r in par["tortuosity"])
    # every step timed, its CPU counted in the worker that ran it, and the total includes the workers
    assert set(steps) <= set(par["timings_cpu_s"]) and par["timings_cpu_s"]["tortuosity"] > 0
    assert par["timings_cpu_s"]["total"] >= 0.9 * sum(par["timings_cpu_s"][s] for s in steps)
    # and each task's own time, for the schedule's critical path (bench.json at 512^3)
    tasks = {t["task"]: t for t in par["parallel"]["tasks"]}
    assert {f"tortuosity {c} z" for c in CLASSES} <= set(tasks) and all(t["cpu_s"] >= 0 for t in tasks.values())
    assert abs(sum(t["cpu_s"] for t in tasks.values() if t["task"].startswith("tortuosity"))
               - par["timings_cpu_s"]["tortuosity"]) < 0.05


def _stamp(sleep_s: float):
    t = time.time()
    time.sleep(sleep_s)
    return t, time.time()


def test_memory_budget_keeps_big_tasks_apart():
    from seglearn.characterise.parallel import Task, run_tasks

    def tasks():
        return [Task("a", lambda: _stamp(0.4), mem=0.6 * 2**30), Task("b", lambda: _stamp(0.4), mem=0.6 * 2**30)]

    apart = tasks()
    run_tasks(apart, workers=2, memory_gb=1.0)  # 1.2 GB together > 1 GB: one after the other
    (s0, e0), (s1, e1) = sorted(t.result for t in apart)
    assert s1 >= e0 - 0.05
    together = tasks()
    info = run_tasks(together, workers=2, memory_gb=2.0)
    (s0, e0), (s1, e1) = sorted(t.result for t in together)
    assert info["workers"] == 2 and s1 < e0  # both fit: they overlap
    assert all(t.wall_s >= 0.35 for t in together)


def _fail():
    raise InputError("bad option in a worker")


def test_error_in_a_worker_reaches_the_caller():
    from seglearn.characterise.parallel import Task, run_tasks

    with pytest.raises(InputError, match="bad option in a worker"):
        run_tasks([Task("a", _fail), Task("b", lambda: 1)], workers=2, memory_gb=1.0)


def test_sample_box_is_a_full_depth_column_of_at_most_max_voxels():
    from seglearn.characterise.sizes import sample_box

    assert sample_box((64, 50, 40), 0, None) == (slice(0, 64), slice(0, 50), slice(0, 40))
    assert sample_box((64, 50, 40), 0, 10**9) == (slice(0, 64), slice(0, 50), slice(0, 40))
    box = sample_box((64, 50, 40), 0, 64 * 20 * 20)
    assert box[0] == slice(0, 64) and [b.stop - b.start for b in box[1:]] == [20, 20]
    assert box[1].start == 15 and box[2].start == 10  # central
    box = sample_box((30, 64, 40), 1, 64 * 10 * 10)  # inlet y0: whole along y
    assert box[1] == slice(0, 64) and [box[0].stop - box[0].start, box[2].stop - box[2].start] == [10, 10]


def test_sampled_sizes_whole_volume_and_column():
    from seglearn.characterise.morph import face_mask
    from seglearn.characterise.sizes import sampled_size_distribution, size_distribution

    lab = _electrode((32, 40, 40), seed=2)
    whole = sampled_size_distribution(lab, 1, (1, 1, 1), n_linear=4, growth=1.3, inlet="z0", max_voxels=None)
    ref = size_distribution(lab == 1, (1, 1, 1), n_linear=4, growth=1.3, inlet=face_mask(lab.shape, "z0"))
    assert whole["box"] == [[0, 32], [0, 40], [0, 40]]
    assert np.array_equal(whole["opened"], ref["opened"]) and whole["r50_opening_nm"] == ref["r50_opening_nm"]
    col = sampled_size_distribution(lab, 1, (1, 1, 1), n_linear=4, growth=1.3, inlet="z0", max_voxels=32 * 20 * 20)
    assert col["box"] == [[0, 32], [10, 30], [10, 30]]
    sub = size_distribution(lab[:, 10:30, 10:30] == 1, (1, 1, 1), n_linear=4, growth=1.3,
                            inlet=face_mask((32, 20, 20), "z0"), max_radius_nm=20.0)
    assert np.array_equal(col["opened"], sub["opened"]) and "local_thickness_nm" not in col


def test_sampled_geodesic_window_bounds_the_search():
    from seglearn.characterise.geodesic import face_distance, geodesic_tortuosity, sampled_geodesic

    lab = _electrode((32, 36, 36), seed=4)
    mask = lab == 1
    d = 12.0
    whole = sampled_geodesic(mask, "z0", d, (1, 1, 1), max_starts=None, max_voxels=None)
    ref = geodesic_tortuosity(mask, face_distance(mask.shape, "z0", (1, 1, 1)), d, (1, 1, 1))
    assert whole["mean"] == pytest.approx(ref["mean"]) and whole["n_starts"] == ref["n_starts"]
    cut = sampled_geodesic(mask, "z0", d, (1, 1, 1), max_starts=None, max_voxels=14 * 16 * 16)
    (z0, z1), (y0, y1), (x0, x1) = cut["box"]
    assert (z0, z1) == (0, 14) and (y1 - y0, x1 - x0) == (16, 16)
    assert cut["n_starts"] == int(mask[0, y0:y1, x0:x1].sum())
    assert cut["mean"] >= 1.0 and cut["reached"] > 0
    by_id = sampled_geodesic(lab, "z0", d, (1, 1, 1), max_starts=None, max_voxels=14 * 16 * 16, phase=1)
    assert by_id["box"] == cut["box"] and np.array_equal(by_id["tau"], cut["tau"])  # phase cut inside the window


def test_block_aggregates_partition_the_cells_by_boxes():
    from seglearn.characterise.diffusion import _block_aggregates

    rng = np.random.default_rng(0)
    act = rng.random((7, 8, 9)) < 0.6
    n = int(act.sum())
    idx = np.full(act.shape, -1, np.int32)
    idx[act] = np.arange(n, dtype=np.int32)
    agg = _block_aggregates(idx, n, (1.0, 1.0, 1.0)).tocoo()
    assert agg.shape[0] == n and np.array_equal(np.sort(agg.row), np.arange(n))  # each cell in one aggregate
    z, y, x = np.nonzero(act)
    box = (z // 3 * 3 + y // 3) * 3 + x // 3
    col = np.empty(n, int)
    col[agg.row] = agg.col
    for a in range(agg.shape[1]):  # an aggregate is one box
        assert np.unique(box[col == a]).size == 1
    assert agg.shape[1] == np.unique(box).size
    # anisotropic voxels: boxes of about the same size in nm (2 voxels along the coarse z here)
    aniso = _block_aggregates(idx, n, (40.0, 20.0, 20.0))
    assert aniso.shape[1] == np.unique((z // 2 * 3 + y // 3) * 3 + x // 3).size


def test_defaults_come_from_the_yaml_only():
    import seglearn.characterise.core as core
    from seglearn.characterise import default_options
    from seglearn.paths import load_config

    yaml = load_config("characterise.yaml")
    opts = default_options()
    assert not hasattr(core, "DEFAULTS")
    for key in ("tortuosity", "sizes", "geodesic", "parallel", "intervals", "steps", "rve"):
        assert opts[key] == yaml[key]
    with pytest.raises(InputError, match="parallel.threads"):
        core.merge_options({"parallel": {"threads": 2}})


def test_a_step_over_the_memory_budget_is_reported_not_run():
    from seglearn.characterise import characterise

    lab = _electrode()
    rep = characterise(lab, 50.0, CLASSES, values=[1, 2, 3], steps=["fractions", "interfaces", "inner_pores"],
                       plots=False, html=False, progress=False, parallel={"workers": 1, "memory_gb": 1e-5})
    assert rep["fractions"]["pore"] > 0  # cheap steps run
    assert "interfaces" not in rep and "inner_pores" not in rep
    assert set(rep["not_run"]) == {"interfaces", "inner_pores"}
    why = rep["not_run"]["inner_pores"]
    assert why.startswith("needs ~") and "parallel.memory_gb=1e-05" in why


def test_cli_passes_the_parallel_options(tmp_path):
    import tifffile

    from seglearn.characterise.cli import run

    src = tmp_path / "labels.tif"
    tifffile.imwrite(src, _electrode())
    rep = run({"input": str(src), "output": str(tmp_path / "out"), "voxel_size_nm": 50.0, "values": [1, 2, 3],
               "classes": CLASSES, "steps": ["fractions", "inner_pores"], "plots": False, "html": False,
               "parallel": {"workers": 1, "memory_gb": 1e-4, "min_voxels": 0}})
    assert rep["parallel"]["workers"] == 1 and set(rep["not_run"]) == {"inner_pores"}


def test_a_tortuosity_solve_over_the_budget_keeps_its_row_without_tau(tmp_path):
    import json

    import pandas as pd

    from seglearn.characterise import characterise
    from seglearn.characterise.tortuosity import BYTES_PER_UNKNOWN

    lab = np.ones((16, 20, 20), np.uint8)  # pore, with a straight binder channel and an active block
    lab[:, 2:6, 2:6] = 3
    lab[4:12, 10:18, 10:18] = 2
    n = {c: int((lab == i).sum()) for i, c in enumerate(CLASSES, 1)}
    need = {c: (BYTES_PER_UNKNOWN * v + 10.0 * lab.size) / 2**30 for c, v in n.items()}
    budget = 0.5 * (need["pore"] + need["carbon_binder"])  # the pore solve does not fit, the binder's does
    assert need["pore"] > budget > need["carbon_binder"]
    rep = characterise(lab, 50.0, CLASSES, values=[1, 2, 3], steps=["fractions", "tortuosity"], out_dir=tmp_path,
                       tortuosity={"phases": ["pore", "carbon_binder"]}, plots=False, progress=False,
                       parallel={"workers": 1, "memory_gb": budget})
    rows = {r["phase"]: r for r in rep["tortuosity"]}
    assert rows["pore"]["tau"] is None and rows["pore"]["status"].startswith("not run: needs ~")
    assert rows["carbon_binder"]["status"] == "converged"
    assert rows["carbon_binder"]["tau"] == pytest.approx(1.0, rel=1e-3)  # a straight channel
    assert list(rep["not_run"]) == ["tortuosity pore z"]
    csv = pd.read_csv(tmp_path / "tortuosity.csv").set_index("phase")
    assert pd.isna(csv.loc["pore", "tau"]) and csv.loc["pore", "status"].startswith("not run")
    assert pd.read_csv(tmp_path / "not_run.csv")["step"].tolist() == ["tortuosity pore z"]
    assert json.loads((tmp_path / "report.json").read_text())["tortuosity"][0]["tau"] is None
    assert "not run: needs ~" in (tmp_path / "report.html").read_text()


def test_meshes_over_the_budget_leave_the_face_counts():
    from seglearn.characterise import characterise

    lab = _electrode()
    budget = 8.0 * lab.size / 2**30  # face counting (~3 B a voxel) fits, a mesh (~16 B a voxel) does not
    rep = characterise(lab, 50.0, CLASSES, values=[1, 2, 3], steps=["fractions", "interfaces"], plots=False,
                       html=False, progress=False, parallel={"workers": 1, "memory_gb": budget})
    full = characterise(lab, 50.0, CLASSES, values=[1, 2, 3], steps=["fractions", "interfaces"], plots=False,
                        html=False, progress=False, parallel={"workers": 1})
    assert sorted(rep["not_run"]) == [f"interfaces mesh {c}" for c in sorted(CLASSES)]
    assert [r["area_faces_um2"] for r in rep["interfaces"]] == [r["area_faces_um2"] for r in full["interfaces"]]
    assert all(r["area_mesh_um2"] is None for r in rep["interfaces"])
    assert all(r["area_mesh_um2"] > 0 for r in full["interfaces"]) and "not_run" not in full


def test_large_volume_helpers_count_without_copies():
    from seglearn.characterise.fractions import phase_counts
    from seglearn.characterise.labels import _distinct, map_labels

    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, (40, 300, 300)).astype(np.uint8)  # > 2**24 voxels: several slabs
    assert np.array_equal(phase_counts(lab, 3), np.bincount(lab.ravel(), minlength=4))
    for dtype in (np.uint8, np.int8, np.uint16, np.int16):
        a = rng.integers(-50 if np.dtype(dtype).kind == "i" else 0, 120, (5, 7, 9)).astype(dtype)
        assert np.array_equal(_distinct(a), np.unique(a))
    ids, classes, values = map_labels(lab, CLASSES, [1, 2, 3])
    assert ids is lab and values == [1, 2, 3]  # ids 1..K already: the volume is not copied
    grey = (lab * 85).astype(np.uint8)
    assert np.array_equal(map_labels(grey, CLASSES, [85, 170, 255])[0], lab)
    big = np.repeat(grey, 5, axis=0)  # 1.8e7 voxels: the grey values ranked slab by slab
    ids, classes, values = map_labels(big, ["a", "b", "c", "d"])
    assert values == [0, 85, 170, 255] and np.array_equal(ids, np.repeat(lab, 5, axis=0) + 1)
