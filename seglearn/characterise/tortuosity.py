"""Tortuosity factor per phase and direction with taufactor (its solver, not a rewrite).

taufactor drives flux along the first axis of the array it is given, so the volume is transposed
to put the chosen direction first; anisotropic voxels use ``taufactor.AnisotropicSolver``. The solver
runs in torch on the CPU unless ``device`` names a GPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings

import numpy as np

log = logging.getLogger("seglearn")

_ORDER = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (2, 1, 0)}


@contextlib.contextmanager
def _keep_heap():
    """Keep freed memory in the glibc heap while the solver runs.

    taufactor allocates whole-volume temporaries every iteration; above glibc's mmap threshold each
    one is a fresh zero-filled mapping, which doubled the CPU time of a 256^3 solve (sys time).
    Restored to glibc's defaults afterwards; a no-op off glibc.
    """
    libc = None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(-3, 128 * 1024)
            libc.mallopt(-1, 128 * 1024)
            libc.malloc_trim(0)


def tortuosity_factor(mask: np.ndarray, direction: str = "z", spacing_nm=(1.0, 1.0, 1.0), *,
                      device: str = "cpu", iter_limit: int = 10000, conv_crit: float = 1e-2) -> dict:
    """Tortuosity factor of one phase along ``direction`` with taufactor.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
        The conducting phase.
    direction : {"z", "y", "x"}
    spacing_nm : (z, y, x) floats
    device : str
        torch device for taufactor (``cpu``, ``cuda``).
    iter_limit, conv_crit : passed to ``Solver.solve``.

    Returns
    -------
    dict
        ``tau`` (inf when the phase does not percolate), ``volume_fraction``, ``d_eff`` (relative
        effective diffusivity ``eps / tau``), ``iterations``, ``converged``, ``seconds``.
    """
    import taufactor

    if direction not in _ORDER:
        from seglearn.errors import InputError

        raise InputError(f"tortuosity direction must be z, y or x, got {direction!r}")
    order = _ORDER[direction]
    img = np.ascontiguousarray(np.transpose(np.asarray(mask, bool), order)).astype(np.uint8)
    sp = [float(spacing_nm[a]) for a in order]
    vf = float(img.mean())
    out = {"direction": direction, "volume_fraction": vf}
    if vf == 0.0:
        return {**out, "tau": float("inf"), "d_eff": 0.0, "iterations": 0, "converged": True, "seconds": 0.0}
    if vf == 1.0:
        return {**out, "tau": 1.0, "d_eff": 1.0, "iterations": 0, "converged": True, "seconds": 0.0}
    t0 = time.perf_counter()
    if not spans(img.astype(bool)):
        log.info("tortuosity %s: the phase does not percolate (no face-connected path)", direction)
        return {**out, "tau": float("inf"), "d_eff": 0.0, "iterations": 0, "converged": True,
                "seconds": time.perf_counter() - t0}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings(), _keep_heap():
        warnings.simplefilter("ignore")
        if max(sp) / min(sp) > 1 + 1e-6:
            solver = taufactor.AnisotropicSolver(img, spacing=tuple(sp), device=device)
        else:
            solver = taufactor.Solver(img, device=device)
        tau = solver.solve(iter_limit=iter_limit, verbose=False, conv_crit=conv_crit)
    for line in buf.getvalue().splitlines():
        log.debug("taufactor: %s", line)
    tau = float(np.asarray(tau).ravel()[0])
    if not np.isfinite(tau) or tau <= 0:
        tau = float("inf")
    seconds = time.perf_counter() - t0
    log.info("tortuosity %s: tau=%.4g after %d iterations (%.1f s)", direction, tau, solver.iter, seconds)
    return {**out, "tau": tau, "d_eff": 0.0 if not np.isfinite(tau) else vf / tau,
            "iterations": int(solver.iter), "converged": bool(solver.converged), "seconds": seconds}


def spans(mask: np.ndarray) -> bool:
    """Whether a face-connected (6-neighbour) cluster of ``mask`` joins its first and last slice."""
    from scipy import ndimage as ndi

    if not mask[0].any() or not mask[-1].any():
        return False
    lab, _ = ndi.label(mask)
    first = np.unique(lab[0][lab[0] > 0])
    last = np.unique(lab[-1][lab[-1] > 0])
    return bool(np.intersect1d(first, last).size)
