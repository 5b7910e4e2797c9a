"""Particle instances: targets, network, tiling, NMS, fusion, linking, baseline, metrics, features."""

from __future__ import annotations

import numpy as np
import pytest

from seglearn.instances.fusion import fuse_views
from seglearn.instances.linking import link_pair, link_slices
from seglearn.instances.metrics import instance_scores, instance_scores_2d
from seglearn.instances.postprocess import instances_2d, optimize_thresholds
from seglearn.instances.targets import slice_targets, unview_stack, view_stack
from seglearn.instances.watershed import distance_watershed
from disks import disks


def _disks(shape=(64, 64), spec=((16, 16, 10), (40, 40, 12), (18, 44, 8))):
    return disks(shape, spec)


def _spheres(shape, centres, radii):
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij", sparse=True)
    best = np.full(shape, np.inf)
    lbl = np.zeros(shape, np.int32)
    for k, (c, r) in enumerate(zip(centres, radii), 1):
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / r
        take = (d < 1) & (d < best)
        best[take] = d[take]
        lbl[take] = k
    return lbl


@pytest.fixture(scope="module")
def touching_spheres():
    """Six spheres in a row and a column, neighbours overlapping (split at the equal-distance surface)."""
    centres = [(16, 14, 14), (16, 14, 33), (16, 14, 52), (16, 34, 14), (16, 34, 33), (16, 34, 52)]
    return _spheres((32, 48, 66), centres, [10.5, 10, 11, 10, 11.5, 10])


def test_slice_targets_shapes_and_roundtrip():
    lbl = _disks()
    prob, dist = slice_targets(lbl, n_rays=32, grid=(2, 2))
    assert prob.shape == (32, 32) and dist.shape == (32, 32, 32)
    assert prob.max() == pytest.approx(1.0) and prob[lbl[::2, ::2] == 0].max() == 0
    # the polygons of perfect targets reproduce the disks
    rec = instances_2d(prob, dist, lbl.shape, grid=(2, 2), prob_thresh=0.5, nms_thresh=0.4)
    s = instance_scores(lbl, rec)
    assert s["0.5"]["f1"] == 1.0 and s["0.8"]["f1"] == 1.0
    empty_p, empty_d = slice_targets(np.zeros((16, 16), np.int32), n_rays=8)
    assert empty_p.shape == (8, 8) and not empty_p.any() and empty_d.shape == (8, 8, 8)


def test_slice_targets_split_pieces():
    """An id in two disconnected pieces (a concave particle cut by a slice) becomes two objects."""
    lbl = np.zeros((32, 32), np.int32)
    lbl[4:10, 4:10] = 1
    lbl[20:28, 20:28] = 1
    prob, _ = slice_targets(lbl, n_rays=8, grid=(1, 1))
    assert prob[7, 7] == pytest.approx(1.0) and prob[24, 24] == pytest.approx(1.0)


def test_view_stack_roundtrip():
    vol = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert view_stack(vol, "xy").shape == (2, 3, 4, 5)
    assert view_stack(vol, "xz").shape == (2, 4, 3, 5)
    assert view_stack(vol, "yz").shape == (2, 5, 3, 4)
    for v in ("xy", "xz", "yz"):
        np.testing.assert_array_equal(unview_stack(view_stack(vol, v), v), vol)
    assert view_stack(vol, "xz")[1, 2, 0, 3] == vol[1, 0, 2, 3]


def test_model_output_shapes():
    import torch

    from seglearn.instances.model import StarDistNet

    net = StarDistNet(2, n_rays=16, grid=(2, 2), depth=2, base_filters=8, head_filters=16)
    assert net.divisor == (8, 8)
    p, d = net(torch.zeros(3, 2, 32, 48))
    assert p.shape == (3, 1, 16, 24) and d.shape == (3, 16, 16, 24)


def test_tiled_prediction_matches_whole_image():
    import torch

    from seglearn.instances.model import StarDistNet
    from seglearn.instances.tiling import predict_tiles

    torch.manual_seed(0)
    net = StarDistNet(2, n_rays=8, grid=(2, 2), depth=1, base_filters=4, head_filters=8).eval()
    img = np.random.default_rng(0).normal(size=(2, 2, 100, 120)).astype(np.float32)
    p_whole, d_whole = predict_tiles(net, img, tile=(512, 512), context=0)
    p_tiled, d_tiled = predict_tiles(net, img, tile=(32, 32), context=32)
    assert p_whole.shape == (2, 50, 60) and d_tiled.shape == (2, 8, 50, 60)
    # the tiles see mirrored context where the whole image sees zero padding: compare beyond the
    # receptive field (~20 px) of this depth-1 network
    inner = (slice(None), slice(12, -12), slice(12, -12))
    np.testing.assert_allclose(p_tiled[inner], p_whole[inner], atol=1e-5)
    np.testing.assert_allclose(d_tiled[:, :, 12:-12, 12:-12], d_whole[:, :, 12:-12, 12:-12], atol=1e-4)
    assert np.abs(p_tiled - p_whole).max() > 0  # the border differs, so the comparison above is not vacuous
    # an odd size still gives ceil(H / grid) outputs
    p_odd, _ = predict_tiles(net, img[:, :, :37, :41], tile=(16, 16), context=16)
    assert p_odd.shape == (2, 19, 21)


def test_loss_prefers_the_truth():
    import torch

    from seglearn.instances.loss import stardist_loss

    lbl = _disks()
    prob, dist = slice_targets(lbl, n_rays=32)
    pt, dt = torch.from_numpy(prob)[None, None], torch.from_numpy(dist)[None]
    logits = torch.logit(pt.clamp(1e-4, 1 - 1e-4))
    good = stardist_loss(logits, dt, pt, dt)
    bad = stardist_loss(-logits, dt + 3, pt, dt)
    assert good["dist"] < 1e-3 and bad["dist"] > 2.5
    assert bad["loss"] > good["loss"]


def test_optimize_thresholds_on_perfect_outputs():
    labels = [_disks(), _disks(spec=((20, 20, 9), (44, 30, 11)))]
    outs = [slice_targets(y) for y in labels]
    best = optimize_thresholds([o[0] for o in outs], [o[1] for o in outs], labels, prob_grid=(0.3, 0.6), nms_grid=(0.3, 0.5))
    assert best["score"] == pytest.approx(1.0)
    assert len(best["table"]) == 4


def test_fusion_of_oracle_views_recovers_touching_particles(touching_spheres):
    from stardist import edt_prob

    from seglearn.instances.targets import relabel_slice

    true = touching_spheres
    probs, masks = [], []
    for v in ("xy", "xz", "yz"):
        st = view_stack(true, v)
        probs.append(unview_stack(np.stack([edt_prob(relabel_slice(s)) for s in st]), v))
        masks.append(true > 0)
    fused = fuse_views(probs, masks, seed_thresh=0.5, h=0.1)
    assert fused.dtype == np.uint32
    s = instance_scores(true, fused)
    assert s["0.5"]["f1"] == 1.0 and s["0.8"]["f1"] == 1.0
    # per-slice linking of connected components merges the touching spheres: it must do worse
    from skimage.measure import label

    linked = link_slices(np.stack([label(s) for s in true > 0]), max_distance=10, progress=False)
    assert instance_scores(true, linked)["0.5"]["f1"] < 0.5


def test_distance_watershed_splits_two_spheres():
    true = _spheres((40, 40, 60), [(20, 20, 18), (20, 20, 40)], [12, 11])
    ws = distance_watershed(true > 0, min_distance=5, h=1.0)
    assert ws.max() == 2
    assert instance_scores(true, ws)["0.9"]["f1"] == 1.0
    # anisotropic spacing is accepted and still splits
    assert distance_watershed(true > 0, spacing=(1.0, 1.0, 1.0)).max() == 2


def test_link_pair_respects_distance_and_assignment():
    a = np.zeros((40, 40), np.int32)
    b = np.zeros((40, 40), np.int32)
    a[5:10, 5:10], a[5:10, 12:17] = 3, 7       # two neighbours
    b[5:10, 13:18], b[5:10, 6:11] = 1, 2       # both moved by one pixel
    b[30:35, 30:35] = 5                         # far from everything
    assert link_pair(a, b, max_distance=4) == {1: 7, 2: 3}
    assert link_pair(a, b, max_distance=0.5) == {}
    assert link_pair(a, np.zeros_like(a)) == {}


def test_link_slices_tracks_and_gaps():
    vol = np.zeros((7, 30, 30), np.int32)
    for z in range(3):
        vol[z, 5 + z:12 + z, 5:12] = 4      # drifting particle
        vol[z, 18:25, 18:25] = 9
    vol[4:7, 5:12, 5:12] = 2                # starts again after an empty slice -> a new particle
    out = link_slices(vol, max_distance=5, progress=False)
    assert out.dtype == np.uint32 and out.max() == 3
    assert len(np.unique(out[0:3][vol[0:3] == 4])) == 1
    assert out[0, 8, 8] != out[5, 8, 8]
    short = link_slices(vol, max_distance=5, min_slices=4, progress=False)
    assert short.max() == 0


def test_link_slices_more_than_65535_particles():
    vol = np.zeros((7, 300, 300), np.int32)
    grid = np.zeros((300, 300), np.int32)
    grid[::2, ::2] = np.arange(1, 150 * 150 + 1).reshape(150, 150)
    vol[0] = vol[1] = vol[2] = grid            # slices 0-2 link into one set of particles
    vol[4] = vol[6] = grid                     # empty slices 3 and 5 end every track
    out = link_slices(vol, max_distance=1.5, progress=False)
    n = 150 * 150
    assert out.dtype == np.uint32 and out.max() == 3 * n > 65535
    assert np.array_equal(out[0], out[2]) and not np.any(out[4][grid > 0] == out[2][grid > 0])
    assert len(np.unique(out)) == 3 * n + 1


def test_instance_scores_2d_and_3d():
    lbl = _disks().astype(np.uint32)
    s = instance_scores(lbl, lbl)
    assert set(s) == {"0.5", "0.6", "0.7", "0.8", "0.9"}
    assert all(v["f1"] == 1.0 and v["panoptic_quality"] == 1.0 for v in s.values())
    shifted = np.roll(lbl, 4, axis=1)
    s2 = instance_scores(lbl, shifted)
    assert s2["0.5"]["f1"] == 1.0 and s2["0.9"]["f1"] == 0.0 and s2["0.5"]["panoptic_quality"] < 1.0
    missing = lbl.copy()
    missing[missing == 2] = 0
    s3 = instance_scores(lbl, missing)["0.5"]
    assert (s3["tp"], s3["fn"], s3["fp"]) == (2, 1, 0) and s3["recall"] == pytest.approx(2 / 3)
    stack = instance_scores_2d(np.stack([lbl, lbl]), np.stack([lbl, missing]))["0.5"]
    assert (stack["tp"], stack["fn"]) == (5, 1)
    with pytest.raises(ValueError):
        instance_scores(lbl, lbl[:10])


def test_particle_features_sphere_and_ellipsoid():
    from seglearn.instances.features import contact_pairs, particle_features

    zz, yy, xx = np.mgrid[:40, :40, :80]
    lbl = np.zeros((40, 40, 80), np.int32)
    lbl[(zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 12**2] = 1
    ell = ((zz - 20) / 8.0) ** 2 + ((yy - 20) / 10.0) ** 2 + ((xx - 51) / 20.0) ** 2 < 1
    lbl[ell & (lbl == 0)] = 2
    se2 = np.where(lbl == 1, 100.0, np.where(lbl == 2, 50.0, 0.0))
    df = particle_features(lbl, np.stack([se2, 2 * se2]), voxel_size_nm=(20, 20, 20), detectors=["SE2", "InLens"],
                           progress=False)
    s, e = df.iloc[0], df.iloc[1]
    r_um = 12 * 0.02
    assert s["volume_um3"] == pytest.approx(4 / 3 * np.pi * r_um**3, rel=0.03)
    assert s["equivalent_diameter_um"] == pytest.approx(2 * r_um, rel=0.02)
    assert 0.85 < s["sphericity"] <= 1.0 and e["sphericity"] < s["sphericity"]
    assert s["aspect_ratio"] == pytest.approx(1.0, abs=0.05)
    assert e["aspect_ratio"] == pytest.approx(20 / 8, rel=0.08)
    assert e["axis_1_um"] == pytest.approx(2 * 20 * 0.02, rel=0.05)
    assert s["mean_SE2"] == 100 and s["mean_InLens"] == 200 and e["std_SE2"] == 0
    assert s["centroid_x_um"] == pytest.approx(20 * 0.02, abs=1e-6)
    assert s["n_neighbours"] == 1 and e["n_neighbours"] == 1   # they touch at x = 31 / 32
    assert contact_pairs(lbl).tolist() == [[1, 2]]
    # anisotropic voxels scale the volume
    df2 = particle_features(lbl, None, voxel_size_nm=(40, 20, 20), progress=False)
    assert df2.iloc[0]["volume_um3"] == pytest.approx(2 * s["volume_um3"])
    assert len(particle_features(np.zeros((4, 4, 4), np.int32), progress=False)) == 0
