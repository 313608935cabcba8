"""Fit a workspace: read it, build the likelihood, minimise, and compute the covariance."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from wfit.fitter._tf import tf
from wfit.fitter.blinding import Blinding
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.minimize import edm_and_covariance, minimize
from wfit.fitter.options import FitOptions, describe_priors
from wfit.fitter.result import FitResult
from wfit.workspace import Workspace, WorkspaceError, read_workspace
from wfit.workspace.schema import dataset_error

__all__ = ["fit", "fit_workspace"]

_DEFAULTS = FitOptions()


def fit(
    ll: Likelihood,
    *,
    tol: float = _DEFAULTS.tol,
    max_iter: int = _DEFAULTS.max_iter,
    poi_nonnegative: bool = _DEFAULTS.poi_nonnegative,
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
        **ll.minimizer_options(),
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
    options: FitOptions | None = None,
    *,
    trust_pickle: bool = False,
    callback: Callable[[int, float, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    post_fit: Callable[[Likelihood, FitResult], None] | None = None,
    **changes: Any,
) -> FitResult:
    """Read a workspace and fit it: the one fit of the API, ``wfit fit`` and the cluster fit.

    Args:
        workspace: Path of the HDF5 workspace (or an already read :class:`Workspace`).
        options: The :class:`FitOptions` (defaults when ``None``).
        trust_pickle: Allow reading rabbit's pickled metadata (see :func:`read_workspace`).
        callback: Progress hook ``callback(iteration, nll, edm)``.
        log: Receives one line per stage (the workspace read, the device and data set of the fit).
        post_fit: Called as ``post_fit(likelihood, result)`` after the fit, before returning: what needs
            the likelihood (goodness of fit, impacts, scans) without building it twice. In a blinded fit it
            receives the fitted values with ``result.blinding`` set; what it adds to ``result.extra`` (impacts,
            scans) is blinded with the rest.
        **changes: Options that replace those of ``options``, by name (``tol=1e-12``); a name that is
            not a :class:`FitOptions` field is a ``TypeError``.

    Returns:
        The :class:`FitResult` (with ``blind``, as shown: :meth:`~wfit.fitter.blinding.Blinding.apply`);
        check ``result.status`` (or ``result.ok``). ``result.options`` holds
        :meth:`FitOptions.to_dict` with the device that TensorFlow used (e.g. ``"/CPU:0"``).

    Example:
        >>> from wfit.fitter import FitOptions, fit_workspace
        >>> result = fit_workspace("workspace.hdf5", FitOptions(asimov=True))  # doctest: +SKIP
        >>> result = fit_workspace("workspace.hdf5", bb_lite=False)  # doctest: +SKIP
        >>> print(result.summary())  # doctest: +SKIP
    """
    opts = FitOptions.resolve(options, **changes)
    say = log or (lambda line: None)
    t0 = time.perf_counter()
    if isinstance(workspace, Workspace):
        ws = workspace
    else:
        say(f"reading {os.fspath(workspace)}")
        # The log(kappa) tensor stays on disk: the likelihood streams it into its compacted blocks.
        ws = read_workspace(workspace, trust_pickle=trust_pickle, load_logk=False)
    t1 = time.perf_counter()
    kind = "log-normal" if ws.systematic_type == "log_normal" else "additive (normal)"
    say(
        f"{ws.nbins} bins ({ws.nbinsfull - ws.nbins} masked), {ws.nproc} processes ({len(ws.signals)} POIs), "
        f"{ws.nsyst} nuisances, {'symmetric' if ws.symmetric else 'asymmetric'} {kind}, {t1 - t0:.1f} s"
    )
    data = None
    if opts.pseudodata is not None:
        if opts.pseudodata not in ws.pseudodata:
            raise dataset_error(
                ws.path,
                "hpseudodatanames",
                f"has no pseudo-data set {opts.pseudodata!r}; the file has {sorted(ws.pseudodata) or 'none'}",
            )
        data = ws.pseudodata[opts.pseudodata]
    if opts.covariance_fit and ws.data_cov_inv is None:
        raise dataset_error(
            ws.path,
            "hdata_cov_inv",
            "is missing: covariance_fit (--covariance-fit) needs the inverse data covariance; write it with "
            "rabbit's TensorWriter.add_data_covariance, or fit without the option",
        )
    mixed = _bins_mixing_zero_variance(ws) if opts.bb_lite and not opts.bb_full else 0
    if mixed:
        say(f"{mixed} bins hold processes without MC statistics (sumw2 = 0) beside processes with them: "
            "BB-lite scales all of them, as rabbit 0.2.5 does; rabbit main leaves those processes unscaled")
    if ws.data_cov_inv is not None and not opts.covariance_fit:
        say("the file has a data covariance (hdata_cov_inv), unused by this Poisson fit, as by rabbit without "
            "--covarianceFit; covariance_fit=True (--covariance-fit) fits with it")
    priors = prior_indices(ws, opts.priors)
    try:
        blinding = Blinding.for_fit(ws, opts, ws.data_obs if data is None else data)
    except ValueError as err:  # an unblind pattern or blinding group that matches nothing
        raise WorkspaceError(f"{ws.path}: {err}") from err
    tf.random.set_seed(opts.seed)
    try:
        ll = Likelihood(ws, bb_lite=opts.bb_lite, device=opts.device, data=data,
                        covariance_fit=opts.covariance_fit, priors=priors, bb_full=opts.bb_full,
                        regularize=opts.regularize, tau=opts.tau)
    except ValueError as err:  # data the likelihood cannot take (e.g. negative pseudo-data in a Poisson fit)
        raise WorkspaceError(str(err)) from err
    if opts.asimov:
        ll.set_data(ll.asimov_data())
    t2 = time.perf_counter()
    which = "Asimov data" if opts.asimov else "observed data"
    if opts.pseudodata is not None:
        which = f"pseudo-data {opts.pseudodata!r}"
    model = "chi-square with the data covariance" if opts.covariance_fit else "Poisson"
    bb = "full Barlow-Beeston" if opts.bb_full else f"BB-lite {'on' if opts.bb_lite else 'off'}"
    say(f"fitting on {ll.device} ({which}, {model}, {bb})")
    if blinding is not None:
        say(f"blinded: {len(blinding.names)} parameters are shown with hidden offsets"
            + (f" (unblinded: {', '.join(opts.unblind)})" if opts.unblind else ""))
    elif opts.blind:
        say("not blinded: the Asimov fit's POIs are the prediction")
    if opts.priors:
        say(f"Gaussian priors (maximum a posteriori): {describe_priors(opts.priors)}")
    curve = None
    if opts.regularize:
        tau = opts.tau
        if opts.lcurve:
            from wfit.fitter.regularization import lcurve

            curve = lcurve(ll, np.linspace(opts.tau - 3.0, opts.tau + 3.0, 25), tol=opts.tol)
            tau = curve.best
            say(f"L-curve over tau = {opts.tau - 3:g} .. {opts.tau + 3:g} (25 fits): the corner is at tau = {tau:.4g}")
            ll.set_tau(tau)
        say(f"regularised: curvature penalty on {', '.join(opts.regularize)} with strength exp(2 tau), tau = {tau:.4g}")
    result = fit(ll, tol=opts.tol, max_iter=opts.max_iter, poi_nonnegative=opts.poi_nonnegative, callback=callback)
    result.timings = {"load": t1 - t0, "setup": t2 - t1, **result.timings}
    result.options = {**opts.to_dict(), "device": ll.device}
    if curve is not None:
        result.options["tau"] = curve.best
        result.extra["lcurve"] = np.column_stack([curve.tau, curve.lx, curve.ly, curve.curvature])
    result.blinding = blinding
    if post_fit is not None:
        post_fit(ll, result)
    return result if blinding is None else blinding.apply(result)


def close_names(name: str, names: Sequence[str]) -> str:
    """``" (close: a, b)"``: the parameter names close to one that the workspace does not have, or ``""``."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (close: {', '.join(close)})" if close else ""


def prior_indices(ws: Workspace, priors: Sequence[tuple[str, float, float]]) -> list[tuple[int, float, float]]:
    """The :attr:`FitOptions.priors` as ``(parameter index, mean, sigma)`` for this workspace.

    Raises:
        ValueError: A name that is not a parameter of the workspace (with the close ones), or a nuisance that
            already has a Gaussian constraint.
    """
    names = list(ws.signals) + list(ws.systs)
    npoi = len(ws.signals)
    out = []
    for name, mean, sigma in priors:
        if name not in names:
            raise ValueError(
                f"prior on {name!r}: no such parameter in {ws.path}{close_names(name, names)}; the parameters "
                f"are the POIs {names[:npoi][:5]}... and the nuisances of hsysts"
            )
        i = names.index(name)
        if i >= npoi and ws.constraint_weights[i - npoi] > 0:
            raise ValueError(
                f"prior on {name!r}: the nuisance already has a Gaussian constraint (weight "
                f"{ws.constraint_weights[i - npoi]:g}) in {ws.path}; priors are for POIs and unconstrained "
                "parameters (hsystsnoconstraint)"
            )
        out.append((i, float(mean), float(sigma)))
    return out


def _bins_mixing_zero_variance(ws: Workspace) -> int:
    """Unmasked bins where a process with yield but no MC statistics meets one with MC statistics."""
    nb = ws.nbins
    zero = (ws.norm[:nb] != 0.0) & (ws.sumw2[:nb] == 0.0)
    return int(np.count_nonzero(zero.any(axis=1) & (ws.sumw2[:nb] > 0.0).any(axis=1)))
