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
from wfit.fitter.minimize import FitStatus
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
             progress: bool = False) -> ToyResults:
    """Generate and fit ``ntoys`` frequentist pseudo-experiments (seeded).

    The likelihood's data are restored afterwards.
    """
    rng = np.random.default_rng(seed)
    x_gen = ll.x0.copy() if x_gen is None else np.asarray(x_gen, dtype=float)
    data, npoi = ll.data.copy(), ll.npoi
    theta_gen = x_gen[npoi:]
    constrained = ll.ws.constraint_weights > 0
    # the expected yields at x_gen, without BB scaling (beta = 1 generates the nominal templates)
    nu = ll.asimov_data(x_gen)
    kstat, bbmask = ll.kstat, ll.bb_masked
    out_v, out_e, out_s, out_g = [], [], [], []
    iterator = range(ntoys)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="toys", unit="toy")
    try:
        for _ in iterator:
            nobs = rng.poisson(nu).astype(float)
            theta0 = np.where(constrained, theta_gen + rng.standard_normal(theta_gen.size), 0.0)
            beta0 = None
            if ll.bb_lite:
                beta0 = np.where(bbmask, 1.0, rng.poisson(kstat) / kstat)
            ll.set_data(nobs, theta0=theta0, beta0=beta0)
            res = fit(ll, tol=tol, x0=np.concatenate([x_gen[:npoi], theta0]))
            out_v.append(res.values)
            out_e.append(res.errors)
            out_s.append(int(res.status))
            out_g.append(2.0 * res.nll)
    finally:
        ll.set_data(data)
    return ToyResults(ll.names, x_gen, np.array(out_v), np.array(out_e), np.array(out_s), np.array(out_g))
