"""Fit a workspace: read it, build the likelihood, minimise, and compute the covariance."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from wfit.fitter.likelihood import Likelihood
from wfit.fitter.minimize import edm_and_covariance, minimize
from wfit.fitter.result import FitResult
from wfit.workspace import Workspace, read_workspace

__all__ = ["fit", "fit_workspace"]


def fit(
    ll: Likelihood,
    *,
    tol: float = 1e-10,
    max_iter: int = 200,
    poi_nonnegative: bool = False,
    x0: np.ndarray | None = None,
    callback: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Minimise the NLL of a :class:`Likelihood` and compute the Hessian covariance.

    Args:
        ll: The likelihood (its data may have been replaced with :meth:`Likelihood.set_data`).
        tol: EDM tolerance.
        max_iter: Iteration limit.
        poi_nonnegative: Keep the POIs (signal strengths) >= 0.
        x0: Starting point; POIs at 1 and nuisances at 0 by default.
        callback: Progress hook ``callback(iteration, nll, edm)``.
    """
    lower = np.full(ll.nparams, -np.inf)
    if poi_nonnegative:
        lower[: ll.npoi] = 0.0
    t0 = time.perf_counter()
    res = minimize(
        ll.nll_grad_hess,
        ll.x0 if x0 is None else x0,
        tol=tol,
        max_iter=max_iter,
        lower=lower,
        callback=callback,
    )
    t1 = time.perf_counter()
    edm, cov = edm_and_covariance(res.grad, res.hess)
    if cov is None:
        cov = np.full_like(res.hess, np.nan)
    t2 = time.perf_counter()
    from wfit import __version__

    return FitResult(
        names=ll.names,
        npoi=ll.npoi,
        values=res.x,
        errors=np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan)),
        covariance=cov,
        nll=res.fun,
        edm=res.edm,
        status=res.status,
        niter=res.niter,
        timings={"minimize": t1 - t0, "covariance": t2 - t1},
        workspace=ll.ws.path,
        workspace_sha256=ll.ws.sha256,
        options={
            "tol": tol,
            "max_iter": max_iter,
            "poi_nonnegative": poi_nonnegative,
            "bb_lite": ll.bb_lite,
            "device": ll.device,
        },
        version=__version__,
    )


def fit_workspace(
    workspace: str | os.PathLike[str] | Workspace,
    *,
    asimov: bool = False,
    bb_lite: bool = True,
    device: str | None = None,
    tol: float = 1e-10,
    max_iter: int = 200,
    poi_nonnegative: bool = False,
    trust_pickle: bool = False,
    callback: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Read a workspace and fit it.

    Args:
        workspace: Path of the HDF5 workspace (or an already read :class:`Workspace`).
        asimov: Fit the Asimov data set (expected yields at mu = 1, theta = 0) instead of the data.
        bb_lite: Barlow-Beeston lite treatment of the MC statistical uncertainty.
        device: ``"cpu"``, ``"gpu"``, a TensorFlow device, or ``None`` for the GPU when one is seen.
        tol: EDM tolerance.
        max_iter: Iteration limit.
        poi_nonnegative: Keep the POIs >= 0.
        trust_pickle: Allow reading rabbit's pickled metadata (see :func:`read_workspace`).
        callback: Progress hook ``callback(iteration, nll, edm)``.

    Returns:
        The :class:`FitResult`; check ``result.status`` (or ``result.ok``).

    Example:
        >>> from wfit.fitter import fit_workspace
        >>> result = fit_workspace("workspace.hdf5")  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    # The log(kappa) tensor stays on disk: the likelihood streams it into its compacted blocks.
    ws = (
        workspace
        if isinstance(workspace, Workspace)
        else read_workspace(workspace, trust_pickle=trust_pickle, load_logk=False)
    )
    t1 = time.perf_counter()
    ll = Likelihood(ws, bb_lite=bb_lite, device=device)
    if asimov:
        ll.set_data(ll.asimov_data())
    t2 = time.perf_counter()
    result = fit(ll, tol=tol, max_iter=max_iter, poi_nonnegative=poi_nonnegative, callback=callback)
    result.timings = {"load": t1 - t0, "setup": t2 - t1, **result.timings}
    result.options["asimov"] = asimov
    return result
