"""What is computed after a fit from its likelihood, the same for ``wfit fit`` and the fit on a cluster worker.

:func:`post_fit_products` evaluates derived quantities of masked channels (:mod:`wfit.fitter.derived`), the
per-nuisance and grouped impacts (:mod:`wfit.fitter.breakdown`) and the pre- and post-fit yields of the unmasked
bins with their uncertainties (:func:`prepost_yields`), and stores them in ``result.extra`` under the names that
``wfit fit`` writes (``derived_*``, ``impacts``, ``impacts_grouped``, ``impact_groups``, ``postfit_yields``...), so
that a result file carries them to wherever it is read.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wfit.fitter.breakdown import Impacts
    from wfit.fitter.derived import DerivedSet
    from wfit.fitter.likelihood import Likelihood
    from wfit.fitter.result import FitResult

__all__ = ["post_fit_products", "prepost_yields"]


def prepost_yields(ll: Likelihood, result: FitResult, *, prefit: bool = True) -> dict[str, np.ndarray]:
    """The unmasked bins' expected yields after the fit (the fit's covariance, ``J C J^T``) and, with ``prefit``,
    before it (every constrained nuisance at its prior width, uncorrelated), each with its uncertainty, and the
    data. (Each band is one Jacobian of every bin's yield: about a minute at the analysis's size on 2 cores.)"""
    from wfit.fitter.derived import propagate
    from wfit.fitter.result import FitResult

    postfit, cov = propagate(result, lambda x, beta: ll._yields(x, ll.bb_lite))
    out = {
        "postfit_yields": np.asarray(postfit),
        "postfit_errors": np.sqrt(np.diag(cov)),
        "data_yields": np.asarray(ll.data),
    }
    if prefit:
        prior = FitResult(result.names, result.npoi, ll.x0, np.ones_like(ll.x0),
                          np.diag(np.r_[np.zeros(ll.npoi), ll.ws.constraint_weights]), 0.0, 0.0, result.status, 0)  # fmt: skip
        _, cov_pre = propagate(prior, lambda x, beta: ll._yields(x, False))
        out["prefit_yields"] = np.asarray(ll.asimov_data(ll.x0))
        out["prefit_errors"] = np.sqrt(np.diag(cov_pre))
    return out


def post_fit_products(
    ll: Likelihood,
    result: FitResult,
    *,
    derived: Sequence[str] = (),
    impacts: bool = False,
    yields: bool = False,
) -> tuple[DerivedSet | None, Impacts | None]:
    """Evaluate what is asked and store it in ``result.extra`` (timings in ``result.timings``).

    Args:
        ll, result: The fitted likelihood and its result.
        derived: Expressions of derived quantities (:mod:`wfit.fitter.quantities`), evaluated together with their
            joint covariance.
        impacts: Per-nuisance and grouped impacts on the POIs.
        yields: The post-fit yields of the unmasked bins with their uncertainties, and the data
            (:func:`prepost_yields` without the pre-fit band).

    Returns:
        ``(derived set or None, impacts or None)``.
    """
    out_derived = out_impacts = None
    if derived:
        from wfit.fitter.derived import evaluate

        t = time.perf_counter()
        out_derived = evaluate(ll, result, *derived)
        result.extra.update(out_derived.as_arrays())
        result.timings["derived"] = time.perf_counter() - t
    if impacts:
        from wfit.fitter.breakdown import impacts as compute_impacts

        t = time.perf_counter()
        out_impacts = compute_impacts(ll, result)
        result.extra.update({"impacts": out_impacts.values, "impacts_grouped": out_impacts.grouped,
                             "impact_groups": np.array(out_impacts.groups)})  # fmt: skip
        result.timings["impacts"] = time.perf_counter() - t
    if yields:
        t = time.perf_counter()
        result.extra.update(prepost_yields(ll, result, prefit=False))
        result.timings["yields"] = time.perf_counter() - t
    return out_derived, out_impacts
