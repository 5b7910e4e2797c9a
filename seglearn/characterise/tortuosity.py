"""Tortuosity factor per phase and direction, with a convergence policy.

Two solvers of the same finite-volume system (taufactor's discretisation):

- ``fv`` (default on the CPU): :func:`seglearn.characterise.diffusion.solve_diffusion`, conjugate
  gradients preconditioned by algebraic multigrid (pyamg); converges in tens of iterations for any
  voxel shape and phase fraction.
- ``taufactor``: taufactor's own SOR solver in torch (``Solver``; for anisotropic voxels its
  ``AnisotropicSolver`` with the flux bug of taufactor 1.2 corrected, see
  :class:`_AnisotropicSolver`), run in chunks of 100 sweeps so the time cap holds; used by
  ``solver=auto`` when ``device`` is an available CUDA device.

Every solve is bounded by ``iter_limit`` and ``time_limit_s`` (``configs/characterise.yaml``).
A solve that stops on a bound is returned with ``converged=False`` and ``stopped_by`` naming the
bound; its estimate is kept apart (``tau_unconverged``) and ``tau`` is ``None``, so no table shows
it as a result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings

import numpy as np

from seglearn.characterise.diffusion import keep_heap as _keep_heap
from seglearn.characterise.diffusion import solve_diffusion
from seglearn.errors import InputError

log = logging.getLogger("seglearn")

_ORDER = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (2, 1, 0)}
SOLVERS = ("auto", "fv", "taufactor")
#: peak bytes of an fv solve per solved voxel (plus ~10 per voxel of the volume): 11.4 GB for the
#: 6.0e7 pore voxels of the 512^3 benchmark (docs/characterise.md); what characterise() budgets
BYTES_PER_UNKNOWN = 180.0


def choose_solver(solver: str, device: str) -> str:
    """``fv`` or ``taufactor`` for the option ``solver`` (``auto``: taufactor on an available GPU)."""
    if solver not in SOLVERS:
        raise InputError(f"tortuosity.solver must be one of {list(SOLVERS)}, got {solver!r}")
    if solver != "auto":
        return solver
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return "taufactor"
        log.info("tortuosity: device %s is not available, solver=auto uses fv on the CPU", device)
    return "fv"


def tortuosity_factor(mask: np.ndarray, direction: str, spacing_nm, *, solver: str, device: str,
                      iter_limit: int, time_limit_s: float, conv_crit: float, rtol: float, max_phase_voxels: int,
                      label: str = "") -> dict:
    """Tortuosity factor of one phase along ``direction``.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray, or float ndarray
        The conducting phase; a float array is the relative diffusivity of each voxel (0 =
        blocking), for which ``tau = mean(D) / D_eff`` (taufactor's multi-phase definition; only
        with ``solver=fv``).
    direction : {"z", "y", "x"}
    spacing_nm : (z, y, x) floats
    solver : {"auto", "fv", "taufactor"}
    device : str
        torch device of taufactor (``cpu``, ``cuda``).
    iter_limit : int
        Most iterations of one solve (CG iterations for fv, SOR sweeps for taufactor).
    time_limit_s : float
        Most seconds of one solve's iterations.
    conv_crit : float
        taufactor's criterion: flux of every layer within this fraction of the largest.
    rtol : float
        fv: relative residual at which CG stops.
    max_phase_voxels : int
        A phase with more voxels is not solved (memory bound): ``converged=False``, ``tau`` and
        ``tau_unconverged`` ``None``, ``stopped_by`` names the bound.
    label : str
        Name of the phase in log lines.

    Returns
    -------
    dict
        ``tau`` (``inf`` when the phase does not percolate, ``None`` when the solve did not
        converge), ``tau_unconverged`` (the last estimate of a solve stopped by a bound, else
        ``None``), ``converged``, ``stopped_by`` (``None``, ``"iter_limit=N reached"``,
        ``"time_limit_s=T reached"`` or ``"conv_crit=C not met (...)"``), ``volume_fraction``,
        ``d_eff`` (``mean(D) / tau``, for a mask ``eps / tau``; ``None`` when not converged),
        ``iterations``, ``flux_spread``, ``solver``, ``seconds``.
    """
    if direction not in _ORDER:
        raise InputError(f"tortuosity direction must be z, y or x, got {direction!r}")
    t0 = time.perf_counter()
    order = _ORDER[direction]
    arr = np.asarray(mask)
    field = np.ascontiguousarray(np.transpose(arr, order), np.float64 if arr.dtype != bool else bool)
    sp = [float(spacing_nm[a]) for a in order]
    kind = choose_solver(solver, device)
    d_mean = float(field.mean())
    out = {"direction": direction, "volume_fraction": float((field > 0).mean()), "solver": kind,
           "tau_unconverged": None, "stopped_by": None, "flux_spread": 0.0, "iterations": 0}
    name = f"tortuosity {label} {direction}".replace("  ", " ")
    n_phase = int(np.count_nonzero(field))
    if n_phase > max_phase_voxels:
        why = f"max_phase_voxels={int(max_phase_voxels)} exceeded ({n_phase} voxels)"
        log.warning("%s: not solved, %s", name, why)
        return {**out, "tau": None, "d_eff": None, "converged": False, "stopped_by": why,
                "seconds": time.perf_counter() - t0}
    r = None
    if kind == "fv" and d_mean > 0:
        r = solve_diffusion(field, sp, rtol=rtol, conv_crit=conv_crit, iter_limit=iter_limit,
                            time_limit_s=time_limit_s)
        r = r if r["unknowns"] else None
    elif kind == "taufactor" and d_mean > 0 and spans(field > 0):
        if field.dtype != bool:
            raise InputError("tortuosity.solver=taufactor takes a phase mask only; use solver=fv for diffusivities")
        r = _taufactor(field.astype(np.uint8), sp, device, iter_limit, time_limit_s, conv_crit)
    if r is None:
        if d_mean > 0:
            log.info("%s: the phase does not percolate (no face-connected path)", name)
        return {**out, "tau": float("inf"), "d_eff": 0.0, "converged": True, "seconds": time.perf_counter() - t0}
    return _result(out, r, d_mean, conv_crit, name, t0)


def _result(out: dict, r: dict, d_mean: float, conv_crit: float, name: str, t0: float) -> dict:
    """The result of a solve that ran: ``tau`` when converged, else the bound and the estimate apart."""
    d_eff = r["d_eff"]
    tau = d_mean / d_eff if d_eff > 0 else float("inf")
    seconds = time.perf_counter() - t0
    extra = {k: r[k] for k in ("flux_spread", "residual") if k in r}
    res = {**out, **extra, "iterations": r["iterations"], "converged": r["converged"], "stopped_by": r["stopped_by"],
           "seconds": seconds}
    if not r["converged"]:
        why = (f"{r['stopped_by']} reached" if r["stopped_by"]
               else f"conv_crit={conv_crit:g} not met (flux spread {r['flux_spread']:.3g})")
        log.warning("%s: NOT converged (%s) after %d iterations, %.1f s; last estimate %.4g is not "
                    "reported as a result", name, why, r["iterations"], seconds, tau)
        return {**res, "tau": None, "d_eff": None, "tau_unconverged": tau, "stopped_by": why}
    log.info("%s: tau=%.4g after %d iterations (%s, %.1f s)", name, tau, r["iterations"], out["solver"], seconds)
    return {**res, "tau": tau, "d_eff": d_eff}


def _taufactor(img: np.ndarray, spacing, device: str, iter_limit: int, time_limit_s: float,
               conv_crit: float) -> dict:
    """taufactor's SOR solve in chunks of 100 sweeps under the iteration and time caps."""
    import taufactor

    buf = io.StringIO()
    t0 = time.perf_counter()
    stop = None
    with contextlib.redirect_stdout(buf), warnings.catch_warnings(), _keep_heap():
        warnings.simplefilter("ignore")
        if max(spacing) / min(spacing) > 1 + 1e-6:
            s = _anisotropic_solver()(img, spacing=tuple(spacing), device=device)
        else:
            s = taufactor.Solver(img, device=device)
        while not s.converged:
            if s.iter >= iter_limit:
                stop = f"iter_limit={int(iter_limit)}"
                break
            if time.perf_counter() - t0 > time_limit_s:
                stop = f"time_limit_s={time_limit_s:g}"
                break
            s.solve(iter_limit=min(s.iter + 100, int(iter_limit)), verbose=False, conv_crit=conv_crit)
    for line in buf.getvalue().splitlines():
        log.debug("taufactor: %s", line)
    fl = np.asarray(s.flux_1d).ravel() if getattr(s, "flux_1d", None) is not None else np.array([0.0])
    spread = float((fl.max() - fl.min()) / fl.max()) if fl.max() > 0 else float("inf")
    d_rel = float(np.asarray(s.D_rel).ravel()[0]) if s.D_rel is not None else 0.0
    return {"d_eff": d_rel, "converged": bool(s.converged), "stopped_by": stop, "iterations": int(s.iter),
            "flux_spread": spread}


def _anisotropic_solver():
    """taufactor's ``AnisotropicSolver`` with its layer flux corrected.

    taufactor 1.2 drops the flux of every voxel whose weighted neighbour count exceeds 8, its test
    for a blocked voxel (``inf``); with lateral weights ``(h_flux / h_side)**2 > 1`` a conducting
    voxel's count reaches ``2 + 4 * weight`` (18 for the 40 x 20 x 20 nm demo along z), so the
    layer fluxes never agree and the solve ends unconverged at a wrong value (7343 instead of 3.0).
    """
    import taufactor
    import torch

    class _AnisotropicSolver(taufactor.AnisotropicSolver):
        def vertical_flux(self):
            flux = self.field[:, 2:-1, 1:-1, 1:-1] - self.field[:, 1:-2, 1:-1, 1:-1]
            flux[torch.isinf(self.factor[:, :-1])] = 0
            flux[torch.isinf(self.factor[:, 1:])] = 0
            return flux

    return _AnisotropicSolver


def spans(mask: np.ndarray) -> bool:
    """Whether a face-connected (6-neighbour) cluster of ``mask`` joins its first and last slice."""
    from scipy import ndimage as ndi

    if not mask[0].any() or not mask[-1].any():
        return False
    lab, _ = ndi.label(mask)
    first = np.unique(lab[0][lab[0] > 0])
    last = np.unique(lab[-1][lab[-1] > 0])
    return bool(np.intersect1d(first, last).size)
