"""The uncertainty breakdown: impacts of the nuisances on the POIs, from the covariance at the minimum
(rabbit's definitions).

* Per nuisance ``j``: ``impact_ij = C_ij / sqrt(C_jj)``, the shift of POI ``i`` correlated with a
  one-sigma shift of ``theta_j``.
* Per group ``G`` of nuisances: ``sqrt(v^T C_GG^-1 v)`` with ``v = C_iG``, the uncertainty of POI
  ``i`` explained by the group after diagonalising within it.
* Statistical: ``sqrt(diag((H_ss)^-1))`` with ``H_ss`` the Hessian block of the POIs and the
  unconstrained parameters; with Barlow-Beeston lite it is split into the data-statistical part
  (the Hessian at fixed beta) and the MC-statistical part (the difference in quadrature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wfit.fitter.blinding import require_unblinded
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.result import FitResult

__all__ = ["Impacts", "impacts"]


@dataclass
class Impacts:
    """Impacts on the POIs (rows) of each parameter and of each group (columns).

    Attributes:
        pois: Names of the rows.
        names: Names of the columns of ``values`` (every parameter).
        values: [npoi, nparams] per-parameter impacts.
        groups: Names of the columns of ``grouped``: the nuisance groups, then ``stat`` and
            (with BB-lite) ``binByBinStat``.
        grouped: [npoi, ngroups] grouped impacts.
    """

    pois: list[str]
    names: list[str]
    values: np.ndarray
    groups: list[str]
    grouped: np.ndarray

    def ranked(self, poi: str, n: int = 30) -> list[tuple[str, float]]:
        """The ``n`` nuisances with the largest absolute impact on ``poi``."""
        i = self.pois.index(poi)
        npoi = len(self.pois)
        order = np.argsort(-np.abs(self.values[i, npoi:]))[:n]
        return [(self.names[npoi + j], float(self.values[i, npoi + j])) for j in order]


def impacts(ll: Likelihood, result: FitResult) -> Impacts:
    """Per-nuisance and grouped impacts at the fitted point.

    Args:
        ll: The likelihood that was fitted (its data and BB-lite setting are used).
        result: The fit result (covariance and minimum).
    """
    require_unblinded(result, "impacts")
    cov = result.covariance
    if not np.all(np.isfinite(cov)):
        raise ValueError("impacts need a covariance: the fit's Hessian was not positive definite")
    npoi = ll.npoi
    sig = np.sqrt(np.diag(cov))
    values = cov[:npoi] / sig[None, :]

    nstat = npoi + len(ll.ws.systs_noconstraint)
    _, _, hess = ll.nll_grad_hess(result.values)
    stat_cov = np.linalg.inv(hess[:nstat, :nstat])
    columns, names = [], []
    ws = ll.ws
    v = cov[:npoi, npoi:]
    for group, idxs in ws.syst_groups.items():
        idxs = np.asarray(idxs)
        c_gg = cov[npoi + idxs][:, npoi + idxs]
        v_g = v[:, idxs]
        columns.append(np.sqrt(np.einsum("ij,ji->i", v_g, np.linalg.solve(c_gg, v_g.T))))
        names.append(group)
    if ll.bb_lite:
        hess_fixed = ll.hessian_fixed_beta(result.values)
        stat_fixed = np.linalg.inv(hess_fixed[:nstat, :nstat])
        columns.append(np.sqrt(np.diag(stat_fixed))[:npoi])
        columns.append(np.sqrt(np.maximum(np.diag(stat_cov - stat_fixed), 0.0))[:npoi])
        names += ["stat", "binByBinStat"]
    else:
        columns.append(np.sqrt(np.diag(stat_cov))[:npoi])
        names.append("stat")
    return Impacts(pois=result.names[:npoi], names=list(result.names), values=values, groups=names,
                   grouped=np.stack(columns, axis=1))
