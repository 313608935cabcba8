"""Second-order trust-region minimisation with the exact Hessian and an EDM stopping rule.

Each iteration takes the Newton step when the Hessian is positive definite and the step lies in
the trust region, and otherwise solves the trust-region subproblem exactly through the
eigen-decomposition of the Hessian (More & Sorensen, SIAM J. Sci. Stat. Comput. 4 (1983) 553),
which also handles the non-convex regions where quasi-Newton line searches fail. The fit stops
when the estimated distance to the minimum, ``EDM = 0.5 g^T H^-1 g`` (MINUIT's definition), falls
below the tolerance at a positive-definite Hessian.

Lower bounds (used for non-negative POIs) are kept by projection: a parameter at its bound whose
gradient pushes it further out is held fixed for that iteration.

On large models the exact Hessian is the cost: its term with the yields' second derivatives grows as bins x
processes x nuisances^2 (on a dense model of the CMS W-helicity fit's size, 3320 bins, 78 processes and 1354
nuisances, one Hessian is 3.5e11 flops, about 50 times the gradient's time). Given a cheaper positive semi-definite
model of the curvature (``approx``: the Gauss-Newton/Fisher matrix, whose cost grows with bins, not bins x
processes), the iterations use it, later corrected by one exact Hessian (:class:`_Curvature`), until its EDM falls
below the tolerance; the exact Hessian is then computed there and the same stopping rule applied to it, with exact
Newton iterations from there if it is not met. So the minimum and the curvature returned (and the covariance made
from it) are those of the exact method. Far from the minimum the Gauss-Newton matrix is also the better model: the
exact Hessian of a log-normal model is indefinite wherever the prediction exceeds the data, and the trust region
then creeps along directions of negative curvature. Trial points are judged on the NLL alone (``fun``) where that
is cheaper than the derivatives, so a rejected step costs one NLL evaluation.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

__all__ = ["FitStatus", "MinimizeResult", "edm_and_covariance", "minimize", "minimize_batch"]


class FitStatus(enum.IntEnum):
    """Outcome of a minimisation; anything but ``CONVERGED`` gives a non-zero CLI exit code."""

    CONVERGED = 0
    MAX_ITERATIONS = 1
    HESSIAN_NOT_POSDEF = 2
    NO_PROGRESS = 3
    NON_FINITE = 4
    AT_BOUNDARY = 5

    def describe(self) -> str:
        return {
            0: "converged",
            1: "stopped at the iteration limit before converging",
            2: "the Hessian at the minimum is not positive definite (flat or degenerate direction)",
            3: "the trust region collapsed without reaching the tolerance",
            4: "the NLL or its derivatives became NaN or infinite",
            5: "converged with a parameter at its bound (its uncertainty is not Gaussian)",
        }[int(self)]


@dataclass
class MinimizeResult:
    """Minimum and its curvature.

    Attributes:
        x: Parameters at the minimum.
        fun: NLL at the minimum.
        grad: Gradient there.
        hess: Exact Hessian there.
        edm: Estimated distance to minimum, ``0.5 g^T H^-1 g``.
        status: :class:`FitStatus`.
        niter: Iterations.
        nfev: Evaluations of NLL, gradient and Hessian.
        history: NLL after each accepted step.
        seconds: Wall-clock time of the minimisation.
    """

    x: np.ndarray
    fun: float
    grad: np.ndarray
    hess: np.ndarray
    edm: float
    status: FitStatus
    niter: int
    nfev: int
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0


def edm_and_covariance(grad: np.ndarray, hess: np.ndarray) -> tuple[float, np.ndarray | None]:
    """EDM and the covariance ``H^-1`` by Cholesky; ``(nan, None)`` if H is not positive definite."""
    try:
        c = linalg.cho_factor(hess, lower=True, check_finite=True)
    except (linalg.LinAlgError, ValueError):
        return float("nan"), None
    cov = linalg.cho_solve(c, np.eye(hess.shape[0]))
    cov = 0.5 * (cov + cov.T)
    edm = 0.5 * float(grad @ linalg.cho_solve(c, grad))
    return edm, cov


def _edm_cholesky(grad: np.ndarray, hess: np.ndarray) -> tuple[float, tuple | None]:
    """EDM and the Cholesky factor of H (``(nan, None)`` if H is not positive definite), without the inverse."""
    try:
        c = linalg.cho_factor(hess, lower=True, check_finite=True)
    except (linalg.LinAlgError, ValueError):
        return float("nan"), None
    return 0.5 * float(grad @ linalg.cho_solve(c, grad)), c


def _flat_edm(g: np.ndarray, h: np.ndarray) -> float:
    """EDM in the directions of positive curvature, if the others are flat (zero curvature and gradient)."""
    lam, q = np.linalg.eigh(h)
    gq = q.T @ g
    flat = np.abs(lam) <= 1e-10 * max(1.0, float(np.max(np.abs(lam))))
    if np.any(lam[~flat] < 0) or not np.any(flat):
        return float("inf")
    return 0.5 * float(np.sum(gq[~flat] ** 2 / lam[~flat])) + float(np.sum(np.abs(gq[flat])))


def _trust_region_step(g: np.ndarray, h: np.ndarray, radius: float) -> np.ndarray:
    """Exact solution of min g.p + 0.5 p.H.p subject to |p| <= radius (eigen-decomposition)."""
    lam, q = np.linalg.eigh(h)
    gq = q.T @ g
    lmin = lam[0]
    if lmin > 0:
        p = -gq / lam
        if np.linalg.norm(p) <= radius:
            return q @ p

    def norm_at(shift: float) -> float:
        return float(np.linalg.norm(gq / (lam + shift)))

    lo = max(0.0, -lmin) + 1e-15 * max(1.0, abs(lmin))
    # The "hard case": g orthogonal to the lowest eigenvector.
    if norm_at(lo) < radius:
        p = -gq / (lam + lo)
        p[lam + lo <= 1e-14 * max(1.0, abs(lam[-1]))] = 0.0
        tau2 = radius**2 - float(p @ p)
        p[0] += np.sqrt(max(tau2, 0.0))
        return q @ p
    hi = lo + np.linalg.norm(g) / radius + abs(lam[-1])
    for _ in range(200):  # bisection on the secular equation |p(shift)| = radius
        mid = 0.5 * (lo + hi)
        if norm_at(mid) > radius:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return q @ (-gq / (lam + hi))


def _trust_region_step_posdef(g: np.ndarray, h: np.ndarray, radius: float) -> np.ndarray | None:
    """The trust-region step for a positive-definite H whose Newton step is longer than the radius, by
    Newton's method on the secular equation ``1/|p(lam)| = 1/radius`` with ``(H + lam) p = -g`` (Nocedal and
    Wright, Numerical Optimization, algorithm 4.3): a few Cholesky factorisations instead of an eigen-
    decomposition, about 10 times cheaper for a thousand parameters. Solved to 1% of the radius, which the
    trust-region method does not need more precisely; ``None`` where it does not converge."""
    lam = 0.0
    eye = np.eye(h.shape[0])
    for _ in range(30):
        try:
            c = linalg.cho_factor(h + lam * eye, lower=True)
        except (linalg.LinAlgError, ValueError):
            return None
        p = -linalg.cho_solve(c, g)
        pn = float(np.linalg.norm(p))
        if abs(pn - radius) <= 0.01 * radius:
            return p
        q = linalg.solve_triangular(c[0], p, lower=True)
        lam = max(0.0, lam + (pn / float(np.linalg.norm(q))) ** 2 * (pn - radius) / radius)
    return None


def minimize(
    fgh: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]],
    x0: np.ndarray,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
    lower: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
    initial_radius: float = 1.0,
    callback: Callable[[int, float, float], None] | None = None,
    approx: Callable[[np.ndarray], tuple[float, np.ndarray, np.ndarray]] | None = None,
    fun: Callable[[np.ndarray], float] | None = None,
) -> MinimizeResult:
    """Minimise with a Newton trust-region method on the exact Hessian.

    Args:
        fgh: Returns the NLL, its gradient and Hessian at a point.
        x0: Starting point.
        tol: Stop when the EDM is below this at a positive-definite Hessian.
        max_iter: Iteration limit.
        lower: Lower bounds per parameter (``-inf`` for none).
        fixed: Boolean mask of parameters held at their starting values (profile scans).
        initial_radius: Initial trust-region radius per parameter, in units of the curvature
            scale (about one standard deviation); the region's radius is this times sqrt(n).
        callback: Called as ``callback(iteration, nll, edm)`` after each iteration.
        approx: Returns the NLL, gradient and a cheaper positive semi-definite approximation of the Hessian
            (:meth:`~wfit.fitter.likelihood.Likelihood.nll_grad_gauss_newton`), used until its EDM is 100 times
            below ``tol`` (:class:`_Curvature`); the result is then checked, and finished if needed, with ``fgh``.
        fun: Returns the NLL alone: after the first rejected step, trial points are judged on it and the
            derivatives computed only at the accepted ones (worth it where they cost much more than the NLL).

    Returns:
        The :class:`MinimizeResult` (``hess`` is always ``fgh``'s).
    """
    # The matrices here are small: BLAS threads would only compete with TensorFlow's thread pool
    # (measured: a 166x166 eigh takes 40x longer with OpenBLAS threads spinning against TensorFlow).
    # Above a thousand parameters the factorisations are large enough to use every core.
    with threadpool_limits(limits=1 if np.size(x0) < 1000 else None, user_api="blas"):
        return _minimize(
            fgh, x0, tol=tol, max_iter=max_iter, lower=lower, fixed=fixed, initial_radius=initial_radius,
            callback=callback, approx=approx, fun=fun,
        )


class _Curvature:
    """Which Hessian the iterations use: ``"exact"`` (``fgh``'s), ``"approx"`` (``approx``'s) or ``"corrected"``:
    the approximation plus the difference ``H - H_approx`` taken at the last exact Hessian, which changes slowly
    near the minimum, so that the steps there are nearly Newton's at the cost of the approximation.

    The exact Hessian is computed where the EDM of the model in use is below :attr:`BELOW` times the tolerance
    (the check: the cheap iterations go on a little further than the tolerance asks, so that the point where
    the exact Hessian, and the covariance, is taken is as close to the minimum as the exact method's), and
    where, below an EDM of :attr:`NEAR`, an accepted step leaves more than :attr:`SLOW` of the EDM (the
    approximation's linear convergence is too slow: its correction is refreshed; after :attr:`REFRESHES`, exact
    iterations take over).
    """

    SLOW = 0.3
    NEAR = 1e-2
    BELOW = 1e-2
    REFRESHES = 3

    def __init__(self, fgh, approx):
        self.fgh, self.approx = fgh, approx
        self.mode = "exact" if approx is None else "approx"
        self.correction = None
        self.is_exact = self.mode == "exact"
        self.refreshes = 0
        self.last_edm = None  # the EDM at the last accepted point
        self.edm = None

    def evaluate(self, x):
        if self.mode == "exact":
            return self.fgh(x)
        f, g, h = self.approx(x)
        return f, g, h if self.correction is None else h + self.correction

    def moved(self) -> None:
        self.is_exact = self.mode == "exact"
        self.last_edm = self.edm

    def wants_exact(self, edm: float, tol: float) -> bool:
        self.edm = edm
        if self.is_exact:
            return False
        slow = self.last_edm is not None and edm < self.NEAR and edm > self.SLOW * self.last_edm
        singular = not np.isfinite(edm) and self.mode == "approx"  # e.g. a parameter without any effect on the yields
        return singular or edm < self.BELOW * tol or slow

    def exact_at(self, x, h_model):
        """The exact NLL, gradient and Hessian at ``x``; updates the correction from the model Hessian there."""
        f, g, h = self.fgh(x)
        if self.mode != "exact":
            if self.refreshes < self.REFRESHES and np.all(np.isfinite(h)):
                base = h_model if self.correction is None else h_model - self.correction
                self.correction, self.mode = h - base, "corrected"
                self.refreshes += 1
            else:
                self.mode = "exact"
        self.is_exact, self.last_edm = True, None
        return f, g, h


def _minimize(fgh, x0, *, tol, max_iter, lower, fixed, initial_radius, callback, approx=None,
              fun=None) -> MinimizeResult:
    t0 = time.perf_counter()
    x = np.array(x0, dtype=np.float64)
    n = x.size
    lower = np.full(n, -np.inf) if lower is None else np.asarray(lower, dtype=np.float64)
    fixed = np.zeros(n, dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    x = np.where(fixed, x, np.maximum(x, lower))
    curv = _Curvature(fgh, approx)
    f, g, h = curv.evaluate(x)
    nfev = 1
    any_rejected = False  # once a step has been rejected, trial points are judged on ``fun`` alone
    radius = float(initial_radius) * np.sqrt(n)
    scale = np.sqrt(np.abs(np.diag(h)))
    history = [f]
    status = FitStatus.MAX_ITERATIONS
    edm = float("nan")
    it = 0
    for it in range(1, max_iter + 1):
        if not (np.isfinite(f) and np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            status = FitStatus.NON_FINITE
            break
        # Parameters held at their bound this iteration.
        held = ((x <= lower) & (g > 0)) | fixed
        free = ~held
        gf, hf = g[free], h[np.ix_(free, free)]
        edm, chol = _edm_cholesky(gf, hf)
        if callback is not None:
            callback(it, f, edm)
        if curv.wants_exact(edm, tol):
            f, g, h = curv.exact_at(x, h)
            nfev += 1
            continue
        if np.isfinite(edm) and edm < tol and curv.is_exact:
            status = FitStatus.CONVERGED
            break
        if not np.isfinite(edm) and curv.is_exact and _flat_edm(gf, hf) < tol:
            # converged in every direction the data constrain; the rest is flat (degenerate templates)
            status = FitStatus.HESSIAN_NOT_POSDEF
            break
        # Trust region in variables scaled by the curvature (More, "Recent developments in
        # algorithms and software for trust region methods", 1983): |D p| <= radius with
        # D = sqrt(diag H), kept non-decreasing, so that steps do not depend on parameter units.
        scale = np.maximum(scale, np.sqrt(np.abs(np.diag(h))))
        d = np.where(scale[free] > 0, scale[free], 1.0)
        gs, hs = gf / d, hf / np.outer(d, d)
        step = np.zeros(n)
        newton = None if chol is None else -d * linalg.cho_solve(chol, gf)  # in the scaled variables
        if newton is not None and np.linalg.norm(newton) <= radius:
            step[free] = newton / d
        else:
            p = None if newton is None else _trust_region_step_posdef(gs, hs, radius)
            step[free] = (_trust_region_step(gs, hs, radius) if p is None else p) / d
        # Keep bounds: shorten the step so that no parameter crosses its bound.
        xn = np.where(fixed, x, np.maximum(x + step, lower))
        step = xn - x
        pred = -(g @ step + 0.5 * step @ h @ step)
        trial = fun is not None and any_rejected
        if trial:
            fn = float(fun(xn))
        else:
            fn, gn, hn = curv.evaluate(xn)
            nfev += 1
        actual = f - fn
        snorm = float(np.linalg.norm(step * scale))
        noise = 1e-12 * max(1.0, abs(f))  # NLL differences below this are rounding
        if not np.isfinite(fn) or actual < -noise:
            rho = -1.0  # never accept a step that raises the NLL
        elif abs(pred) <= noise:
            rho = 1.0
        elif pred < 0:
            rho = -1.0  # the quadratic model predicts an increase: the step is numerically unsound
        else:
            rho = actual / pred
        any_rejected = any_rejected or rho <= 1e-4
        if rho < 0.25:
            radius = 0.5 * snorm if snorm > 0 else 0.25 * radius
        elif rho > 0.75 and snorm >= 0.99 * radius:
            radius = 2.0 * radius
        if rho > 1e-4:
            if trial:
                fn, gn, hn = curv.evaluate(xn)
                nfev += 1
            x, f, g, h = xn, fn, gn, hn
            curv.moved()
            history.append(f)
        if radius < 1e-14 * max(1.0, float(np.linalg.norm(x * scale))):
            if curv.mode != "exact":  # the approximation cannot go further: the exact Hessian takes over
                curv.mode = "exact"
                f, g, h = curv.exact_at(x, h)
                nfev += 1
                radius = float(initial_radius) * np.sqrt(n)
                continue
            status = FitStatus.NO_PROGRESS
            break
    else:
        it = max_iter
    if not curv.is_exact:  # the result carries the exact curvature
        f, g, h = fgh(x)
        nfev += 1
    sub = ~fixed
    full_edm, cov = _edm_cholesky(g[sub], h[np.ix_(sub, sub)])  # the factor stands for the covariance here
    if status == FitStatus.CONVERGED:
        if cov is None:
            status = FitStatus.HESSIAN_NOT_POSDEF
        elif np.any((x <= lower) & (g > 0) & sub):
            status = FitStatus.AT_BOUNDARY
        edm = full_edm if np.isfinite(full_edm) else edm
    elif cov is None and status != FitStatus.NON_FINITE:
        status = FitStatus.HESSIAN_NOT_POSDEF if status == FitStatus.NO_PROGRESS else status
    if np.isfinite(full_edm):
        edm = full_edm
    return MinimizeResult(
        x=x,
        fun=float(f),
        grad=g,
        hess=h,
        edm=float(edm),
        status=status,
        niter=it,
        nfev=nfev,
        history=history,
        seconds=time.perf_counter() - t0,
    )


def minimize_batch(
    fgh: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    x0: np.ndarray,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
    initial_radius: float = 1.0,
) -> list[MinimizeResult]:
    """Minimise N independent problems together: :func:`minimize`'s trust-region Newton method, vectorised.

    Each problem keeps its own trust region, step acceptance and stopping rule (the EDM below ``tol`` at a
    positive-definite Hessian), and stops being evaluated once it has converged or failed.

    Args:
        fgh: ``fgh(x, active)`` returns the NLL [k], gradients [k, n] and Hessians [k, n, n] of the problems
            ``active`` (indices into the N) at the points ``x`` [k, n].
        x0: [N, n] starting points.

    Returns:
        One :class:`MinimizeResult` per problem (``nfev`` counts the batched evaluations it took part in).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _minimize_batch(fgh, x0, tol=tol, max_iter=max_iter, initial_radius=initial_radius)


def _batch_steps(g: np.ndarray, h: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Solutions of min g.p + 0.5 p.H.p with |p| <= radius for a stack of problems (eigen-decompositions;
    the shift of the secular equation by bisection, vectorised)."""
    lam, q = np.linalg.eigh(h)
    gq = np.einsum("kji,kj->ki", q, g)
    lmin = lam[:, 0]
    lo = np.maximum(0.0, -lmin) + 1e-15 * np.maximum(1.0, np.abs(lmin))
    hi = lo + np.linalg.norm(g, axis=1) / radius + np.abs(lam[:, -1])
    newton_ok = lmin > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        newton = -gq / lam
    inside = newton_ok & (np.linalg.norm(np.where(newton_ok[:, None], newton, 0.0), axis=1) <= radius)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        too_long = np.linalg.norm(gq / (lam + mid[:, None]), axis=1) > radius
        lo, hi = np.where(too_long, mid, lo), np.where(too_long, hi, mid)
        if np.all(hi - lo <= 1e-12 * hi):
            break
    shifted = -gq / (lam + hi[:, None])
    p = np.where(inside[:, None], np.where(newton_ok[:, None], newton, 0.0), shifted)
    return np.einsum("kij,kj->ki", q, p)


def _minimize_batch(fgh, x0, *, tol, max_iter, initial_radius) -> list[MinimizeResult]:
    t0 = time.perf_counter()
    x = np.array(x0, dtype=np.float64)
    ntoy, n = x.shape
    every = np.arange(ntoy)
    f, g, h = (np.array(a, dtype=np.float64) for a in fgh(x, every))
    nfev = np.ones(ntoy, dtype=int)
    radius = np.full(ntoy, float(initial_radius) * np.sqrt(n))
    scale = np.sqrt(np.abs(np.einsum("kii->ki", h)))
    status = np.full(ntoy, int(FitStatus.MAX_ITERATIONS))
    niter = np.zeros(ntoy, dtype=int)
    edm = np.full(ntoy, np.nan)
    active = np.ones(ntoy, dtype=bool)
    history: list[list[float]] = [[float(v)] for v in f]
    for it in range(1, max_iter + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        niter[idx] = it
        fi, gi, hi = f[idx], g[idx], h[idx]
        finite = np.isfinite(fi) & np.all(np.isfinite(gi), axis=1) & np.all(np.isfinite(hi), axis=(1, 2))
        status[idx[~finite]] = int(FitStatus.NON_FINITE)
        active[idx[~finite]] = False
        idx, fi, gi, hi = idx[finite], fi[finite], gi[finite], hi[finite]
        for j, k in enumerate(idx):  # the EDM by Cholesky, as minimize() (small matrices)
            edm[k] = edm_and_covariance(gi[j], hi[j])[0]
        done = np.isfinite(edm[idx]) & (edm[idx] < tol)
        status[idx[done]] = int(FitStatus.CONVERGED)
        active[idx[done]] = False
        keep = ~done
        idx, fi, gi, hi = idx[keep], fi[keep], gi[keep], hi[keep]
        if idx.size == 0:
            continue
        scale[idx] = np.maximum(scale[idx], np.sqrt(np.abs(np.einsum("kii->ki", hi))))
        d = np.where(scale[idx] > 0, scale[idx], 1.0)
        gs, hs = gi / d, hi / (d[:, :, None] * d[:, None, :])
        step = _batch_steps(gs, hs, radius[idx]) / d
        xn = x[idx] + step
        pred = -(np.einsum("ki,ki->k", gi, step) + 0.5 * np.einsum("ki,kij,kj->k", step, hi, step))
        fn, gn, hn = (np.array(a, dtype=np.float64) for a in fgh(xn, idx))
        nfev[idx] += 1
        actual = fi - fn
        snorm = np.linalg.norm(step * scale[idx], axis=1)
        noise = 1e-12 * np.maximum(1.0, np.abs(fi))
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(
                ~np.isfinite(fn) | (actual < -noise), -1.0,
                np.where(np.abs(pred) <= noise, 1.0, np.where(pred < 0, -1.0, actual / pred)),
            )
        shrink, grow = rho < 0.25, (rho > 0.75) & (snorm >= 0.99 * radius[idx])
        radius[idx] = np.where(shrink, np.where(snorm > 0, 0.5 * snorm, 0.25 * radius[idx]),
                               np.where(grow, 2.0 * radius[idx], radius[idx]))
        accept = rho > 1e-4
        acc = idx[accept]
        x[acc], f[acc], g[acc], h[acc] = xn[accept], fn[accept], gn[accept], hn[accept]
        for k in acc:
            history[k].append(float(f[k]))
        stuck = radius[idx] < 1e-14 * np.maximum(1.0, np.linalg.norm(x[idx] * scale[idx], axis=1))
        status[idx[stuck]] = int(FitStatus.NO_PROGRESS)
        active[idx[stuck]] = False
    out = []
    seconds = time.perf_counter() - t0
    for k in range(ntoy):
        full_edm, cov = edm_and_covariance(g[k], h[k])
        st = FitStatus(int(status[k]))
        if cov is None and st in (FitStatus.CONVERGED, FitStatus.NO_PROGRESS):
            st = FitStatus.HESSIAN_NOT_POSDEF
        out.append(MinimizeResult(
            x=x[k], fun=float(f[k]), grad=g[k], hess=h[k], edm=float(full_edm if np.isfinite(full_edm) else edm[k]),
            status=st, niter=int(niter[k]), nfev=int(nfev[k]), history=history[k], seconds=seconds,
        ))
    return out
