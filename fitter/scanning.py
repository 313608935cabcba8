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

__all__ = ["Scan", "scan", "scan2d"]


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
    for k in order:
        near = min(start, key=lambda j: np.linalg.norm(grid[j] - grid[k]), default=None)
        x0 = (result.values if near is None else start[near]).copy()
        x0[idx] = grid[k]
        r = minimize(ll.nll_grad_hess, x0, tol=tol, fixed=fixed)
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


