"""Steady diffusion through a voxel volume: finite volumes solved by AMG-preconditioned CG (pyamg).

The flux runs along the first axis. Each voxel is a cell with a relative diffusivity ``D >= 0``
(1 in a conducting phase, 0 outside it); two face neighbours along axis ``a`` are joined by the
conductance ``harmonic_mean(D_i, D_j) * (h_0 / h_a)**2`` (face area over distance, divided by the
same quantity along the flux so that isotropic voxels have unit conductances). The two end faces
are Dirichlet boundaries (potential 1 at the inlet, 0 at the outlet) half a cell away from the
first / last layer; the four side faces are closed. Only the cells of the face-connected clusters
that join both end faces are solved for: dead ends attached to them stay in, isolated and
one-sided clusters carry no flux and are left out (they would make the system singular).

This is the discretisation of taufactor's ``Solver`` (same conductances, same boundary
half-cells, same ``D_eff``), so isotropic results agree with it; unlike its SOR loop it converges
in tens of iterations whatever the voxel shape or phase fraction.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np


@contextlib.contextmanager
def keep_heap():
    """Keep freed memory in the glibc heap while a solver runs.

    taufactor's SOR and :func:`_cg` allocate whole-volume temporaries every iteration; above glibc's
    mmap threshold (at most 32 MB by default) each one is a fresh zero-filled mapping, which doubled
    the CPU time of a 256^3 taufactor solve and made most of fv's system time at 512^3 (240 MB
    vectors). Only around the iterations (the set-up's temporaries would fragment the heap);
    afterwards the thresholds are those glibc's own sliding ones reach (32 / 64 MB) and the freed
    memory is given back; a no-op off glibc.
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
            libc.mallopt(-3, 32 << 20)  # where glibc's sliding threshold ends after a large free
            libc.mallopt(-1, 64 << 20)  # (a fixed 128 kB would map every later temporary anew)
            libc.malloc_trim(0)


class _Stop(Exception):
    """Raised from the CG callback when the time cap is reached."""


def _clusters_spanning(active: np.ndarray) -> np.ndarray:
    """The face-connected clusters of ``active`` that touch both its first and last slice."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(active)
    both = np.intersect1d(np.unique(lab[0]), np.unique(lab[-1]))
    both = both[both > 0]
    if both.size == 0:
        return np.zeros_like(active)
    keep = np.zeros(int(lab.max()) + 1, bool)
    keep[both] = True
    return keep[lab]


def _neighbour(full: np.ndarray, axis: int, step: int, z0: int, z1: int, fill) -> np.ndarray:
    """Values of ``full`` at the neighbour ``step`` along ``axis`` of each voxel of slab ``[z0, z1)``."""
    out = np.full((z1 - z0,) + full.shape[1:], fill, full.dtype)
    if axis == 0:
        lo, hi = max(z0 + step, 0), min(z1 + step, full.shape[0])
        out[lo - z0 - step:hi - z0 - step] = full[lo:hi]
        return out
    sub = full[z0:z1]
    dst = [slice(None)] * 3
    src = [slice(None)] * 3
    dst[axis], src[axis] = (slice(None, -1), slice(1, None)) if step > 0 else (slice(1, None), slice(None, -1))
    out[tuple(dst)] = sub[tuple(src)]
    return out


# column order within a CSR row: neighbours before the cell have smaller C-order indices
_STENCIL = ((0, -1), (1, -1), (2, -1), None, (2, 1), (1, 1), (0, 1))


def _assemble(idx: np.ndarray, cond: np.ndarray, weights, n: int, slab: int = 8):
    """CSR matrix of the finite-volume system and its right-hand side, built slab by slab in place."""
    import scipy.sparse as sp

    act = idx >= 0
    n0 = idx.shape[0]
    nnz = n + 2 * sum(int(np.count_nonzero(act[(slice(None),) * a + (slice(None, -1),)]
                                           & act[(slice(None),) * a + (slice(1, None),)])) for a in range(3))
    del act
    indices = np.empty(nnz, idx.dtype)
    data = np.empty(nnz, np.float32)
    indptr = np.zeros(n + 1, np.int64 if nnz >= 2**31 else np.int32)
    b = np.zeros(n, np.float32)
    row = put = 0
    for z0 in range(0, n0, slab):
        z1 = min(z0 + slab, n0)
        sub = idx[z0:z1]
        here = sub >= 0
        c = cond[z0:z1][here].astype(np.float64)
        cols = np.empty((c.size, 7), idx.dtype)
        vals = np.zeros((c.size, 7))
        for k, st in enumerate(_STENCIL):
            if st is None:
                cols[:, k] = sub[here]
                continue
            a, step = st
            nb = _neighbour(idx, a, step, z0, z1, -1)[here]
            cn = _neighbour(cond, a, step, z0, z1, 0)[here].astype(np.float64)
            ok = nb >= 0
            cols[:, k] = nb
            vals[ok, k] = -weights[a] * 2.0 * c[ok] * cn[ok] / (c[ok] + cn[ok])
        layer = np.nonzero(here)[0] + z0
        ends = 2.0 * c * ((layer == 0).astype(np.float64) + (layer == n0 - 1))  # half a cell to the boundary
        vals[:, 3] = -vals.sum(1) + ends
        b[row:row + c.size] = 2.0 * c * (layer == 0)  # potential 1 at the inlet, 0 at the outlet
        keep = cols >= 0
        counts = keep.sum(1)
        indptr[row + 1:row + c.size + 1] = put + np.cumsum(counts)
        k = int(counts.sum())
        indices[put:put + k] = cols[keep]
        data[put:put + k] = vals[keep]
        row, put = row + c.size, put + k
    return sp.csr_matrix((data, indices, indptr), shape=(n, n)), b


def solve_diffusion(cond: np.ndarray, spacing=(1.0, 1.0, 1.0), *, rtol: float, conv_crit: float,
                    iter_limit: int, time_limit_s: float) -> dict:
    """Relative effective diffusivity of ``cond`` along its first axis.

    Parameters
    ----------
    cond : (N0, N1, N2) float or bool ndarray
        Relative diffusivity of each voxel (0 = blocking; a mask is 1 in the phase).
    spacing : (h0, h1, h2) floats
        Voxel size along each axis (any unit).
    rtol : float
        CG stops when ``||b - A x|| <= rtol * ||b||``, or earlier (checked every 4th iteration once
        the residual is below 1e-3 of ``||b||``) when the layer fluxes agree within ``conv_crit / 2``.
    conv_crit : float
        Also required for convergence (taufactor's criterion): the flux through every layer
        differs from the largest by at most this fraction, ``(max - min) / max <= conv_crit``.
    iter_limit : int
        Most CG iterations.
    time_limit_s : float
        Most seconds of CG iterations (checked after each one; the AMG set-up, linear in the
        number of cells, comes before).

    Returns
    -------
    dict
        ``d_eff`` (``D_eff / D_0``: flux times length over area and potential drop; 0 when no
        cluster spans), ``converged``, ``stopped_by`` (``None``, ``"iter_limit=N"`` or
        ``"time_limit_s=T"``), ``iterations``, ``residual`` (relative), ``flux_spread``,
        ``unknowns``, ``seconds``.
    """
    t0 = time.perf_counter()
    cond = np.asarray(cond)
    n0, n1, n2 = cond.shape
    active = _clusters_spanning(cond > 0)
    n = int(active.sum())
    base = {"unknowns": n, "iterations": 0, "residual": 0.0, "flux_spread": 0.0, "stopped_by": None,
            "converged": True}
    if n == 0:
        return {**base, "d_eff": 0.0, "seconds": time.perf_counter() - t0}
    itype = np.int32 if n < 2**31 - 1 else np.int64
    idx = np.full(cond.shape, -1, itype)
    idx[active] = np.arange(n, dtype=itype)
    x0 = np.repeat(np.linspace(1.0, 0.0, n0 + 2, dtype=np.float32)[1:-1], active.reshape(n0, -1).sum(1))
    del active
    h = np.asarray(spacing, np.float64)
    A, b = _assemble(idx, cond, (h[0] / h) ** 2, n)
    x, stop, iterations = _cg(A, b, x0, _amg(A, idx, n, h), idx, cond, rtol=rtol, conv_crit=conv_crit,
                              iter_limit=iter_limit, time_limit_s=time_limit_s)
    residual = float(np.linalg.norm((b - A @ x).astype(np.float64)) / np.linalg.norm(b.astype(np.float64)))
    flux = _layer_flux(idx, cond, x)
    spread = float((flux.max() - flux.min()) / flux.max()) if flux.max() > 0 else float("inf")
    d_eff = float(flux.mean()) * n0 / (n1 * n2)
    return {**base, "d_eff": d_eff, "converged": bool(stop is None and spread <= conv_crit), "stopped_by": stop,
            "iterations": iterations, "residual": residual, "flux_spread": spread,
            "seconds": time.perf_counter() - t0}


def _amg(A, idx: np.ndarray, n: int, h: np.ndarray):
    """The preconditioner: pyamg's unsmoothed aggregation, its first level :func:`_block_aggregates`.

    In float32, no strength matrix (less memory), Gauss-Seidel forward before / backward after: at
    256^3 2.3x faster than pyamg's default aggregation and smoothers for the same tau. A W-cycle
    (the coarse levels, ~1/20 of the cells each, visited twice) halves the CG iterations of a
    V-cycle on the electrode's phases (pore 34 -> 17, NMC 83 -> 39, CBD 67 -> 32 at 256^3) for
    ~25 % more work per iteration (docs/characterise.md).
    """
    import pyamg

    ml = pyamg.smoothed_aggregation_solver(
        A, symmetry="symmetric", max_coarse=500, smooth=None,
        aggregate=[("predefined", {"AggOp": _block_aggregates(idx, n, h)})] + ["standard"] * 12,
        presmoother=("gauss_seidel", {"sweep": "forward"}), postsmoother=("gauss_seidel", {"sweep": "backward"}))
    return ml.aspreconditioner(cycle="W")


def _cg(A, b, x0, M, idx, cond, *, rtol, conv_crit, iter_limit, time_limit_s) -> tuple:
    """Preconditioned CG under the bounds of :func:`solve_diffusion`; returns ``(x, stopped_by, iterations)``."""
    import pyamg

    res: list[float] = []
    state = {"x": x0, "n": 0, "stop": None, "early": False}
    t_cg = time.perf_counter()
    normb = float(np.linalg.norm(b.astype(np.float64)))

    def callback(xk):
        state["x"], state["n"] = xk, state["n"] + 1
        if time.perf_counter() - t_cg > time_limit_s:
            state["stop"] = f"time_limit_s={time_limit_s:g}"
            raise _Stop
        # early stop: once the residual is below 1e-3 of ||b||, every 4th iteration checks the layer
        # fluxes; within conv_crit / 2 of each other tau is within ~1e-4 of its limit (measured,
        # docs/characterise.md), about a third fewer iterations than rtol alone
        if state["n"] % 4 == 0 and res and res[-1] <= 1e-3 * normb:
            fl = _layer_flux(idx, cond, xk)
            if fl.max() > 0 and (fl.max() - fl.min()) / fl.max() <= 0.5 * conv_crit:
                state["early"] = True
                raise _Stop

    try:
        with keep_heap():  # CG's vectors are reused, not mapped anew every iteration
            x, info = pyamg.krylov.cg(A, b, x0=x0, tol=rtol, maxiter=int(iter_limit), M=M, callback=callback,
                                      residuals=res)
    except _Stop:
        x, info = state["x"], (0 if state["early"] else -1)
    if state["stop"] is None and info != 0:
        state["stop"] = f"iter_limit={int(iter_limit)}"
    return x, state["stop"], max(len(res) - 1, state["n"])


def _block_aggregates(idx: np.ndarray, n: int, spacing, edge: int = 3, slab: int = 16):
    """Aggregation operator ``(n, n_aggregates)`` grouping the solved cells by boxes of voxels.

    A box is ``edge`` voxels of the finest axis wide in nm (fewer voxels along coarser axes); the
    cells of ``idx`` (``-1`` = not solved) in one box form one aggregate of the first AMG level.
    """
    import scipy.sparse as sp

    h = np.asarray(spacing, np.float64)
    ks = [max(1, int(round(edge * h.min() / v))) for v in h]
    nb = [-(-s // k) for s, k in zip(idx.shape, ks)]
    key = np.empty(n, np.int64)
    for z0 in range(0, idx.shape[0], slab):
        sub = idx[z0:z0 + slab]
        zz, yy, xx = np.nonzero(sub >= 0)
        key[sub[zz, yy, xx]] = (((zz + z0) // ks[0]) * nb[1] + yy // ks[1]) * nb[2] + xx // ks[2]
    used = np.zeros(int(np.prod(nb)), bool)
    used[key] = True
    new = np.cumsum(used, dtype=np.int64) - 1
    agg = new[key].astype(idx.dtype)
    del key, new
    return sp.csr_matrix((np.ones(n, np.float32), agg, np.arange(n + 1, dtype=idx.dtype)), shape=(n, int(used.sum())))


def _layer_flux(idx: np.ndarray, cond: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Flux through the inlet face, each of the ``N0 - 1`` inner planes and the outlet face."""
    n0 = idx.shape[0]
    flux = np.zeros(n0 + 1)
    first = idx[0] >= 0
    flux[0] = np.sum(2.0 * cond[0][first] * (1.0 - x[idx[0][first]]))
    last = idx[-1] >= 0
    flux[-1] = np.sum(2.0 * cond[-1][last] * x[idx[-1][last]])
    for k in range(n0 - 1):
        m = (idx[k] >= 0) & (idx[k + 1] >= 0)
        ci, cj = cond[k][m].astype(np.float64), cond[k + 1][m].astype(np.float64)
        flux[k + 1] = np.sum(2.0 * ci * cj / (ci + cj) * (x[idx[k][m]] - x[idx[k + 1][m]]))
    return flux
