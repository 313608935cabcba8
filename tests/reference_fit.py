"""An independent fit: scipy's BFGS on the numpy NLL of :mod:`tests.reference_nll`, polished by Newton steps
on a Hessian of central differences of its complex-step gradient; the covariance is that Hessian's inverse.

Nothing of the fitter (TensorFlow likelihood, trust-region minimiser, analytic Hessian) is used, so a
result that agrees with this one to the tolerances of the tests is right, not only self-consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from tests import reference_nll
from wfit.workspace import Workspace


@dataclass
class ReferenceFit:
    """The minimum of the reference NLL.

    Attributes:
        x: Parameters at the minimum (POIs, then nuisances, in the workspace's order).
        nll: The NLL there (with the saturated offset).
        covariance: Inverse of the numerical Hessian there.
    """

    x: np.ndarray
    nll: float
    covariance: np.ndarray

    @property
    def errors(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))


def _hessian(grad, x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    h = np.empty((x.size, x.size))
    for j in range(x.size):
        e = np.zeros(x.size)
        e[j] = step
        h[:, j] = (grad(x + e) - grad(x - e)) / (2.0 * step)
    return 0.5 * (h + h.T)


def reference_fit(
    ws: Workspace, *, bb_lite: bool = True, fixed: dict[int, float] | None = None, x0: np.ndarray | None = None
) -> ReferenceFit:
    """Minimise the reference NLL of ``ws`` (read with ``load_logk=True``) over its data.

    Args:
        ws: The workspace.
        bb_lite: Barlow-Beeston lite, as the fitter's option.
        fixed: ``{parameter index: value}`` held fixed (profile scans); the covariance then covers the
            free parameters only (NaN elsewhere).
        x0: Start (POIs 1, nuisances 0 by default).
    """
    n = len(ws.signals) + ws.nsyst
    x_start = np.concatenate([np.ones(len(ws.signals)), np.zeros(ws.nsyst)]) if x0 is None else np.array(x0, float)
    fixed = fixed or {}
    free = np.array([i for i in range(n) if i not in fixed])

    def full(y: np.ndarray) -> np.ndarray:
        x = x_start.astype(complex if np.iscomplexobj(y) else float)
        x[free] = y
        for i, v in fixed.items():
            x[i] = v
        return x

    def f(y: np.ndarray) -> float:
        return float(np.real(reference_nll.nll(ws, full(y), bb_lite=bb_lite)))

    def g(y: np.ndarray) -> np.ndarray:
        return reference_nll.grad_complex_step(ws, full(y), bb_lite=bb_lite)[free]

    y = optimize.minimize(f, x_start[free], jac=g, method="BFGS", options={"gtol": 1e-9, "maxiter": 5000}).x
    for _ in range(5):  # Newton: quadratic convergence from BFGS's point to rounding
        hess = _hessian(g, y)
        y = y - np.linalg.solve(hess, g(y))
    hess = _hessian(g, y)
    cov = np.full((n, n), np.nan)
    cov[np.ix_(free, free)] = np.linalg.inv(hess)
    return ReferenceFit(x=full(y).real, nll=f(y), covariance=cov)


def jacobian_fd(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """The Jacobian of ``fn`` at ``x`` by central differences of step ``h`` (columns: the entries of ``x``)."""
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        cols.append((fn(x + e) - fn(x - e)) / (2 * h))
    return np.stack(cols, axis=1)
