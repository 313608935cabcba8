"""Pseudo-experiments (frequentist toys) and the saturated goodness of fit.

Toys follow the frequentist prescription (as rabbit's ``--toysSystRandomize frequentist``): for each
toy the observed counts are drawn from Poisson(nu(x_gen)), the global observables theta0 of the
constrained nuisances from N(theta_gen, 1), and, with Barlow-Beeston lite, the MC-statistics
observables beta0 from Poisson(k beta) / k; the toy is then fitted like data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from wfit.fitter.fitting import fit
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.minimize import FitStatus, edm_and_covariance, minimize_batch
from wfit.fitter.result import FitResult

__all__ = ["GoodnessOfFit", "ToyResults", "goodness_of_fit", "run_toys"]


@dataclass
class GoodnessOfFit:
    """Saturated-model test: ``chi2 = 2 (NLL_min - NLL_saturated)`` with ``ndf`` degrees of freedom.

    ``ndf`` is the number of unmasked bins minus the POIs and unconstrained parameters (rabbit's
    ``ndfsat``); ``p_value`` is the asymptotic chi2 survival probability.
    """

    chi2: float
    ndf: int
    p_value: float


def goodness_of_fit(ll: Likelihood, result: FitResult) -> GoodnessOfFit:
    """The saturated goodness of fit of a fit result (the NLL carries the saturated offset)."""
    ndf = ll.ws.nbins - ll.npoi - len(ll.ws.systs_noconstraint)
    chi2 = 2.0 * result.nll
    return GoodnessOfFit(chi2=chi2, ndf=int(ndf), p_value=float(stats.chi2.sf(chi2, ndf)))


@dataclass
class ToyResults:
    """Fits of pseudo-experiments generated at ``x_gen``.

    Attributes:
        names: Parameter names.
        x_gen: Generating parameter values.
        values: [ntoys, nparams] fitted values.
        errors: [ntoys, nparams] Hessian uncertainties.
        status: [ntoys] fit status.
        gof: [ntoys] saturated chi2 of each toy.
    """

    names: list[str]
    x_gen: np.ndarray
    values: np.ndarray
    errors: np.ndarray
    status: np.ndarray
    gof: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return self.status == int(FitStatus.CONVERGED)

    def pulls(self) -> np.ndarray:
        """``(x_hat - x_gen) / sigma`` of the converged toys."""
        return ((self.values - self.x_gen) / self.errors)[self.ok]

    def coverage(self) -> np.ndarray:
        """Fraction of converged toys whose +-1 sigma interval contains the generating value."""
        return np.mean(np.abs(self.pulls()) <= 1.0, axis=0)


def run_toys(ll: Likelihood, ntoys: int, *, seed: int = 0, x_gen: np.ndarray | None = None, tol: float = 1e-10,
             progress: bool = False, batch_size: int | None = None) -> ToyResults:
    """Generate and fit ``ntoys`` frequentist pseudo-experiments (seeded).

    Args:
        ll: The likelihood; its data are restored afterwards.
        ntoys: How many toys.
        seed: Seed of the toys' random numbers (the same toys whatever ``batch_size``).
        x_gen: The generating parameters (``ll.x0`` by default).
        tol: EDM tolerance of each toy's fit.
        progress: A progress bar.
        batch_size: Fit the toys in batches of this many as one vectorised computation each
            (:meth:`Likelihood.nll_grad_hess_batch`, :func:`~wfit.fitter.minimize.minimize_batch`; on the GPU
            when TensorFlow sees one); ``None`` fits them one after the other. Both give the same fits.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: give an integer >= 1, or None for one toy at a time")
    if ll.bb_full and batch_size is not None:
        raise ValueError("batch_size: full Barlow-Beeston toys are fitted one at a time (batch_size=None)")
    rng = np.random.default_rng(seed)
    x_gen = ll.x0.copy() if x_gen is None else np.asarray(x_gen, dtype=float)
    npoi = ll.npoi
    theta_gen = x_gen[npoi:]
    constrained = ll.ws.constraint_weights > 0
    # the expected yields at x_gen, without BB scaling (beta = 1 generates the nominal templates)
    nu = ll.asimov_data(x_gen)
    kstat, bbmask = ll.kstat, ll.bb_masked
    nobs, theta0, beta0 = [], [], []
    for _ in range(ntoys):  # drawn in this order whatever the batching
        nobs.append(rng.poisson(nu).astype(float))
        theta0.append(np.where(constrained, theta_gen + rng.standard_normal(theta_gen.size), 0.0))
        beta0.append(np.where(bbmask, 1.0, rng.poisson(kstat) / kstat) if ll.bb_lite else np.ones(kstat.shape))
    x0 = np.array([np.concatenate([x_gen[:npoi], t]) for t in theta0]).reshape(ntoys, ll.nparams)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=ntoys, desc="toys", unit="toy")
    out_v, out_e, out_s, out_g = [], [], [], []
    data = ll.data.copy()
    try:
        if batch_size is None:
            for i in range(ntoys):
                ll.set_data(nobs[i], theta0=theta0[i], beta0=beta0[i] if ll.bb_lite else None)
                res = fit(ll, tol=tol, x0=x0[i])
                out_v.append(res.values)
                out_e.append(res.errors)
                out_s.append(int(res.status))
                out_g.append(2.0 * res.nll)
                if bar is not None:
                    bar.update()
        else:
            nobs_a, theta0_a, beta0_a = np.array(nobs), np.array(theta0), np.array(beta0)
            for start in range(0, ntoys, batch_size):
                sel = np.arange(start, min(start + batch_size, ntoys))

                def fgh(x, active, sel=sel):
                    k = sel[active]
                    return ll.nll_grad_hess_batch(x, nobs_a[k], theta0_a[k], beta0_a[k])

                for res in minimize_batch(fgh, x0[sel], tol=tol):
                    _, cov = edm_and_covariance(res.grad, res.hess)
                    diag = np.full(ll.nparams, np.nan) if cov is None else np.diag(cov)
                    out_v.append(res.x)
                    out_e.append(np.sqrt(np.where(diag >= 0, diag, np.nan)))
                    out_s.append(int(res.status))
                    out_g.append(2.0 * res.fun)
                if bar is not None:
                    bar.update(len(sel))
    finally:
        ll.set_data(data)
        if bar is not None:
            bar.close()
    shape = (ntoys, ll.nparams)
    return ToyResults(ll.names, x_gen, np.array(out_v).reshape(shape), np.array(out_e).reshape(shape),
                      np.array(out_s, dtype=int), np.array(out_g))
