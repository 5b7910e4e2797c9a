"""Simulated users of seed 003: sparse painting of 7 slices with personal habits.

A real user paints what they *see*: their boundary sits a little inside or outside the true one
(``boundary_bias``), they get some pixels near edges wrong (``edge_errors``), and they place
strokes with a style of their own (far from edges or anywhere, big or small brushes, more strokes
on one phase than the other). Each :class:`Annotator` also carries the habits used by the
unsupervised "users" (how S2 is picked by eye, the watershed windows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from seglearn.ct.phantom import AM, NON_AM
from seglearn.errors import InputError
from seglearn.paths import load_config
from seglearn.synth.fields import smooth_noise

THRESHOLD_RULES = ("otsu", "minimum", "li", "isodata", "mean", "eye")


@dataclass
class Annotator:
    """Habits of one simulated user.

    Attributes
    ----------
    name : str
    boundary_bias : float
        Pixels by which the user's AM boundary lies outside the true one (negative: inside).
    edge_errors : float
        Share of the pixels within ``edge_width`` of a boundary that the user labels wrongly
        (in small clustered patches).
    edge_width : float
        Width (pixels) of the band where mistakes happen.
    margin : float
        How strongly strokes keep away from boundaries (0 = anywhere, 2 = mostly deep inside).
    stroke_px : float
        Size (pixels) of the painted patches.
    am_share : float or None
        Share of the painted pixels put on AM; None paints each phase in proportion to its area.
    threshold_rule : str
        How the user picks S2 by eye: one of ``otsu``, ``minimum`` (histogram valley), ``li``,
        ``isodata``, ``mean`` or ``eye`` (matches the AM area they see in the central slice).
    threshold_offset : float
        Grey levels the user adds to the rule's threshold.
    gws_window, cws_window : float
        Grey-level windows left unseeded for the generous / conservative watershed.
    """

    name: str = "A"
    boundary_bias: float = 0.0
    edge_errors: float = 0.05
    edge_width: float = 1.5
    margin: float = 1.0
    stroke_px: float = 3.0
    am_share: float | None = None
    threshold_rule: str = "otsu"
    threshold_offset: float = 0.0
    gws_window: float = 12.0
    cws_window: float = 40.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Annotator":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"annotator: unknown key(s) {unknown}")
        a = cls(**d)
        if a.threshold_rule not in THRESHOLD_RULES:
            raise InputError(f"annotator {a.name}: threshold_rule must be one of {THRESHOLD_RULES}, got {a.threshold_rule!r}")
        if not 0 <= a.edge_errors < 0.5:
            raise InputError(f"annotator {a.name}: edge_errors must be in [0, 0.5), got {a.edge_errors}")
        if a.am_share is not None and not 0 < a.am_share < 1:
            raise InputError(f"annotator {a.name}: am_share must be in (0, 1) or null, got {a.am_share}")
        return a

    def as_dict(self) -> dict:
        return asdict(self)


#: Three users with distinct, plausible habits (seed 003 had three): ``configs/ct_users.yaml``.
DEFAULT_USERS = tuple(Annotator(**u) for u in load_config("ct_users.yaml")["users"])


def make_users(n: int = 3, seed: int = 0, users: Sequence[Mapping[str, Any]] | None = None) -> list[Annotator]:
    """The study's users: given ones, else the three defaults plus random ones beyond three.

    Parameters
    ----------
    n : int
        Number of users.
    seed : int
        Seed of the habits drawn for users beyond the defaults.
    users : sequence of mapping, optional
        Explicit habits (see :class:`Annotator`); overrides ``n``.
    """
    if users:
        return [Annotator.from_dict(u) for u in users]
    if n < 2:
        raise InputError(f"ct user study: need at least 2 users to measure variation, got {n}")
    out = list(DEFAULT_USERS[:n])
    rng = np.random.default_rng(seed + 7919)
    for i in range(len(out), n):
        out.append(Annotator(
            name=chr(ord("A") + i) if i < 26 else f"U{i}",
            boundary_bias=float(rng.uniform(-0.7, 0.7)), edge_errors=float(rng.uniform(0.02, 0.2)),
            margin=float(rng.uniform(0.0, 2.5)), stroke_px=float(rng.uniform(1.5, 6.0)),
            am_share=None if rng.random() < 0.4 else float(rng.uniform(0.35, 0.65)),
            threshold_rule=str(rng.choice(THRESHOLD_RULES)), threshold_offset=float(rng.normal(0, 4)),
            gws_window=float(rng.uniform(6, 18)), cws_window=float(rng.uniform(28, 56))))
    return out


def annotation_slices(n_z: int, n_slices: int = 7) -> list[int]:
    """The central slice plus equally spaced ones: 25, 50, ..., 175 of 200 for 7 slices.

    Returns the slices in the order a user paints them: the central one first.
    """
    if n_slices < 1 or n_slices > n_z:
        raise InputError(f"cannot place {n_slices} annotation slices in {n_z} slices")
    pos = sorted({int(round(n_z * k / (n_slices + 1))) for k in range(1, n_slices + 1)})
    pos = [min(max(p, 0), n_z - 1) for p in pos]
    centre = min(pos, key=lambda p: abs(p - (n_z - 1) / 2))
    return [centre] + [p for p in pos if p != centre]


def _signed_distance(truth2d: np.ndarray) -> np.ndarray:
    """Distance to the AM interface in pixels: positive inside AM, negative outside (half-pixel centred)."""
    am = truth2d == AM
    if am.all() or not am.any():
        return np.full(truth2d.shape, 1e3 if am.all() else -1e3, np.float32)
    d_in = ndi.distance_transform_edt(am)
    d_out = ndi.distance_transform_edt(~am)
    return np.where(am, d_in - 0.5, -(d_out - 0.5)).astype(np.float32)


def perceived_labels(truth2d: np.ndarray, user: Annotator, rng: np.random.Generator) -> np.ndarray:
    """What the user believes each pixel of one slice is (1 non-AM, 2 AM).

    Parameters
    ----------
    truth2d : (Y, X) uint8
        1 non-AM, 2 AM.

    Returns
    -------
    (Y, X) uint8
    """
    s = _signed_distance(truth2d)
    # the user's boundary sits ``boundary_bias`` px out; a fractional shift is dithered per pixel
    # (uniform jitter of +-0.5 px), so +b and -b change the painted area symmetrically
    jitter = rng.uniform(-0.5, 0.5, truth2d.shape).astype(np.float32) if user.boundary_bias else 0.0
    seen = np.where(s + user.boundary_bias > jitter, AM, NON_AM).astype(np.uint8)
    if user.edge_errors > 0:
        band = np.abs(s + user.boundary_bias) < user.edge_width
        if band.any():
            blobs = smooth_noise(truth2d.shape, 1.0, rng)
            cut = np.quantile(blobs[band], 1.0 - user.edge_errors)
            flip = band & (blobs > cut)
            seen[flip] = np.where(seen[flip] == AM, NON_AM, AM)
    return seen


def paint_slice(truth2d: np.ndarray, user: Annotator, coverage: float, rng: np.random.Generator,
                focus: np.ndarray | None = None) -> np.ndarray:
    """Sparse labels a user paints on one slice.

    Parameters
    ----------
    truth2d : (Y, X) uint8
        1 non-AM, 2 AM.
    coverage : float
        Share of the slice's pixels that get a label (0..1).
    focus : (Y, X) float ndarray, optional
        Where the user wants to correct a previous result (0..1); strokes are drawn there first.

    Returns
    -------
    (Y, X) uint8
        0 unlabelled, 1 non-AM, 2 AM; exactly ``round(coverage * Y * X)`` pixels labelled.
    """
    if not 0 < coverage <= 1:
        raise InputError(f"coverage must be in (0, 1], got {coverage}")
    seen = perceived_labels(truth2d, user, rng)
    s = np.abs(_signed_distance(truth2d) + user.boundary_bias)
    depth = np.minimum(s, 4.0) / 4.0
    score = (user.margin * depth + 0.6 * smooth_noise(truth2d.shape, user.stroke_px, rng)).ravel()
    n = int(round(coverage * truth2d.size))
    out = np.zeros(truth2d.shape, np.uint8)
    flat_out, flat_seen = out.ravel(), seen.ravel()
    taken = np.zeros(truth2d.size, bool)
    if focus is not None:
        # correction strokes: up to half the budget goes on what the previous result got wrong
        f = ndi.gaussian_filter(np.asarray(focus, np.float32), max(user.stroke_px / 2, 0.5)).ravel()
        wrong = np.flatnonzero(f > 0.25)
        n_fix = min(n // 2, wrong.size)
        if n_fix:
            top = wrong[np.argsort(-(f[wrong] + 0.2 * score[wrong]), kind="stable")[:n_fix]]
            flat_out[top] = flat_seen[top]
            taken[top] = True
            n -= n_fix
    is_am = flat_seen == AM
    free_am, free_non = is_am & ~taken, ~is_am & ~taken
    share = is_am.mean() if user.am_share is None else user.am_share
    n_am = int(np.clip(round(share * n), max(0, n - int(free_non.sum())), min(n, int(free_am.sum()))))
    for mask, k in ((free_am, n_am), (free_non, n - n_am)):
        if k <= 0:
            continue
        idx = np.flatnonzero(mask)
        top = idx[np.argsort(-score[idx], kind="stable")[:k]]
        flat_out[top] = flat_seen[top]
    return out


def annotate_volume(truth: np.ndarray, user: Annotator, coverage: float, slices: Sequence[int],
                    rng: np.random.Generator, focus: Mapping[int, np.ndarray] | None = None) -> np.ndarray:
    """Paint ``slices`` of a volume.

    Parameters
    ----------
    truth : (Z, Y, X) uint8
        1 non-AM, 2 AM.
    focus : dict slice -> (Y, X) float, optional
        Correction targets per slice (see :func:`paint_slice`).

    Returns
    -------
    (Z, Y, X) uint8
        0 unlabelled, 1/2 on the painted slices.
    """
    out = np.zeros(truth.shape, np.uint8)
    for z in slices:
        f = None if focus is None else focus.get(int(z))
        out[int(z)] = paint_slice(truth[int(z)], user, coverage, rng, focus=f)
    return out
