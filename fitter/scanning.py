"""Profile likelihood scans in one and two parameters.

The scan value is ``q = 2 (NLL(profiled at the point) - NLL(global minimum))``; for a Gaussian
likelihood ``q = 1`` at one standard deviation in 1-D, and the 68% region of a 2-D scan is
``q < 2.30``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wfit.fitter.blinding import require_unblinded
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.minimize import minimize
from wfit.fitter.result import FitResult

__all__ = ["ProfileInterval", "Scan", "profile_interval", "scan", "scan2d"]


@dataclass
class Scan:
    """A profile likelihood scan.

    Attributes:
        params: Scanned parameter names.
        points: [npoints, len(params)] scanned values.
        q: ``2 * delta NLL`` at each point.
        status: Minimiser status per point.
        profiled: [npoints, nparams] the other parameters at each point.
    """

    params: list[str]
    points: np.ndarray
    q: np.ndarray
    status: np.ndarray
    profiled: np.ndarray

    def interval(self, level: float = 1.0, points: np.ndarray | None = None) -> tuple[float, float]:
        """Crossings of ``q = level`` of a 1-D scan (linear interpolation), e.g. the 68% interval.

        ``points`` replaces the scanned values by values they map to one to one (e.g. the blinded ones).
        """
        if self.points.shape[1] != 1:
            raise ValueError("interval() is for 1-D scans")
        x, q = (self.points[:, 0] if points is None else np.asarray(points, dtype=np.float64)), self.q
        imin = int(np.argmin(q))
        lo = hi = np.nan
        for i in range(imin, 0, -1):
            if q[i - 1] >= level > q[i] or q[i - 1] > level >= q[i]:
                lo = x[i] + (level - q[i]) * (x[i - 1] - x[i]) / (q[i - 1] - q[i])
                break
        for i in range(imin, len(q) - 1):
            if q[i + 1] >= level > q[i] or q[i + 1] > level >= q[i]:
                hi = x[i] + (level - q[i]) * (x[i + 1] - x[i]) / (q[i + 1] - q[i])
                break
        return float(lo), float(hi)


def _scan(ll: Likelihood, result: FitResult, params: Sequence[str], grid: np.ndarray, tol: float) -> Scan:
    require_unblinded(result, "a likelihood scan")
    idx = [result.index(p) for p in params]
    fixed = np.zeros(ll.nparams, dtype=bool)
    fixed[idx] = True
    q, status, prof = [], [], []
    # Walk outwards from the minimum so that each point starts next to its neighbour's solution.
    order = np.argsort(np.linalg.norm((grid - result.values[idx]) / result.errors[idx], axis=1))
    start = {}
    options = ll.minimizer_options()
    for k in order:
        near = min(start, key=lambda j: np.linalg.norm(grid[j] - grid[k]), default=None)
        x0 = (result.values if near is None else start[near]).copy()
        x0[idx] = grid[k]
        r = minimize(ll.nll_grad_hess, x0, tol=tol, fixed=fixed, **options)
        start[k] = r.x
        q.append((k, 2.0 * (r.fun - result.nll)))
        status.append((k, int(r.status)))
        prof.append((k, r.x))
    by = lambda items: np.array([v for _, v in sorted(items, key=lambda t: t[0])])  # noqa: E731
    return Scan(list(params), grid, by(q), by(status), by(prof))


def scan(ll: Likelihood, result: FitResult, param: str, points: Sequence[float] | None = None, *,
         n: int = 21, width: float = 3.0, tol: float = 1e-10) -> Scan:
    """1-D profile scan of ``param``; by default ``n`` points over +-``width`` uncertainties."""
    i = result.index(param)
    if points is None:
        points = result.values[i] + result.errors[i] * np.linspace(-width, width, n)
    return _scan(ll, result, [param], np.asarray(points, dtype=float).reshape(-1, 1), tol)


def scan2d(ll: Likelihood, result: FitResult, params: tuple[str, str], n: int = 11, width: float = 3.0,
           tol: float = 1e-10) -> Scan:
    """2-D profile scan on an ``n x n`` grid over +-``width`` uncertainties of each parameter."""
    axes = []
    for p in params:
        i = result.index(p)
        axes.append(result.values[i] + result.errors[i] * np.linspace(-width, width, n))
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    return _scan(ll, result, list(params), grid, tol)




@dataclass
class ProfileInterval:
    """Where ``2 (NLL_profile - NLL_min) = q`` on each side of a parameter's minimum.

    Attributes:
        param: The parameter.
        down, up: Signed shifts of the parameter at the two crossings (``down <= 0 <= up``; NaN if a side was
            not found).
        x_down, x_up: The parameter vectors (the others profiled) at the crossings.
    """

    param: str
    down: float
    up: float
    x_down: np.ndarray
    x_up: np.ndarray


def profile_interval(ll: Likelihood, result: FitResult, param: str, *, q: float = 1.0,
                     frozen: np.ndarray | None = None, tol: float = 1e-12, max_steps: int = 40,
                     hessian: np.ndarray | None = None) -> ProfileInterval:
    """The crossings of ``2 dNLL = q`` of the profile likelihood of ``param`` (the MINOS interval for ``q = 1``).

    Each side is found by Newton's method on the profiled curve, whose slope is ``2 dNLL/dparam`` at the
    profiled point (the envelope theorem), kept inside a bracket (bisection when a step leaves it), from the
    Gaussian guess ``sqrt(q) sigma``; each point profiles the other parameters (those of ``frozen`` stay at
    their fitted values). ``hessian``: the Hessian at the fitted values, when the caller already has it (many
    intervals of one fit).
    """
    require_unblinded(result, "a profile interval")
    i = result.index(param)
    hold = np.zeros(ll.nparams, dtype=bool) if frozen is None else np.asarray(frozen, dtype=bool).copy()
    hold[i] = False
    free = ~hold
    h = ll.nll_grad_hess(result.values)[2] if hessian is None else hessian
    cov = np.zeros_like(h)
    cov[np.ix_(free, free)] = np.linalg.inv(h[np.ix_(free, free)])
    sigma = float(np.sqrt(cov[i, i]))
    fixed = hold.copy()
    fixed[i] = True
    out = {}
    options = ll.minimizer_options()
    for sign in (-1.0, 1.0):
        lo, hi = 0.0, np.inf  # bracket of the shift t: q(lo) < q target < q(hi)
        t = np.sqrt(q) * sigma
        x_at = result.values + sign * np.sqrt(q) * cov[:, i] / sigma
        best = None
        for _ in range(max_steps):
            x0 = x_at.copy()
            x0[i] = result.values[i] + sign * t
            r = minimize(ll.nll_grad_hess, x0, tol=tol, fixed=fixed, **options)
            x_at = r.x
            gap = 2.0 * (r.fun - result.nll) - q
            slope = 2.0 * sign * r.grad[i]  # d q / d t
            best = (t, r.x)
            if abs(gap) < 1e-9 * max(1.0, q):
                break
            if gap < 0:
                lo = t
            else:
                hi = t
            step = t - gap / slope if slope > 0 else np.nan
            t = step if lo < step < hi else (0.5 * (lo + hi) if np.isfinite(hi) else 2.0 * t)
        else:
            best = (np.nan, np.full(ll.nparams, np.nan))
        out[sign] = best
    (td, xd), (tu, xu) = out[-1.0], out[1.0]
    return ProfileInterval(param, -td, tu, xd, xu)
