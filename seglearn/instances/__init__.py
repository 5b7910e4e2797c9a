"""Particle instances (seed 004): a StarDist-style 2D network in PyTorch, applied to the xy, xz and
yz slices of a volume, 3D particles by view fusion or by Hungarian linking of per-slice labels, a
distance-transform watershed baseline, instance metrics and per-particle features.

Modules: ``model`` (network), ``targets`` (stardist targets, views, normalisation), ``loss``,
``postprocess`` (NMS, thresholds), ``tiling``, ``volume`` (per-view prediction), ``fusion``,
``linking``, ``watershed``, ``metrics``, ``features``, ``anisotropy`` (isotropic resampling), ``tune``
(fusion settings tuned on a held-out volume), ``train`` / ``predict`` (entry points).
"""
