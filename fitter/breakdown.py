"""The uncertainty breakdown: impacts of the nuisances on the POIs (rabbit's definitions).

Covariance ("traditional") impacts, :func:`impacts`:

* Per nuisance ``j``: ``impact_ij = C_ij / sqrt(C_jj)``, the shift of POI ``i`` correlated with a
  one-sigma shift of ``theta_j``.
* Per group ``G`` of nuisances: ``sqrt(v^T C_GG^-1 v)`` with ``v = C_iG``, the uncertainty of POI
  ``i`` explained by the group after diagonalising within it.
* Statistical: ``sqrt(diag((H_ss)^-1))`` with ``H_ss`` the Hessian block of the POIs and the
  unconstrained parameters; with Barlow-Beeston lite it is split into the data-statistical part
  (the Hessian at fixed beta) and the MC-statistical part (the difference in quadrature).

Global impacts, :func:`global_impacts` (rabbit main's ``--globalImpacts``; arXiv:2307.04007): the shift of a
POI when a global observable (a constraint's centre theta0, a Barlow-Beeston beta0) moves by one standard
deviation, in the Gaussian approximation: ``C_ij sqrt(w_j)`` for a nuisance with constraint weight ``w_j``
(priors included), ``s_b dbeta_b/dx . C e_i`` per Barlow-Beeston factor (``s_b`` the square root of its
constraint's curvature; summed in quadrature over the bins), and the data statistics as what remains of the
total variance. The groups add in quadrature, and the parts add up to the total.

Asymmetric impacts, :func:`asymmetric_impacts` (rabbit main's ``--asymImpacts``): the shift of each POI at the
two ends of a nuisance's profile-likelihood interval (``2 dNLL = 1``, everything else profiled); grouped by
combine's freeze-group convention: per side ``sqrt(total^2 - frozen^2)`` of the POI's own interval with the
group's nuisances frozen at their fitted values, ``stat`` the interval with every constrained nuisance frozen,
and ``Total`` the POI's interval itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wfit.fitter._tf import tf
from wfit.fitter.blinding import require_unblinded
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.result import FitResult

__all__ = ["AsymmetricImpacts", "Impacts", "asymmetric_impacts", "global_impacts", "impacts"]


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


def global_impacts(ll: Likelihood, result: FitResult) -> Impacts:
    """Global impacts on the POIs: per parameter (``values``) and grouped (the nuisance groups, ``stat``,
    ``binByBinStat``), in the :class:`Impacts` layout."""
    require_unblinded(result, "global impacts")
    cov = result.covariance
    if not np.all(np.isfinite(cov)):
        raise ValueError("global impacts need a covariance: the fit's Hessian was not positive definite")
    npoi = ll.npoi
    weight = np.concatenate([np.zeros(npoi), ll.ws.constraint_weights])
    if ll._prior_idx is not None:
        weight[ll._prior_idx.numpy()[:, 0]] += ll._prior_w.numpy()
    values = cov[:npoi] * np.sqrt(weight)[None, :]
    var_bb = _bb_global_variance(ll, result.values, cov[:, :npoi]) if ll.bb_lite else np.zeros(npoi)
    columns, names = [], []
    for group, idxs in ll.ws.syst_groups.items():
        columns.append(np.sqrt(np.sum(np.square(values[:, npoi + np.asarray(idxs, dtype=int)]), axis=1)))
        names.append(group)
    var_stat = np.diag(cov)[:npoi] - np.sum(np.square(values), axis=1) - var_bb
    columns.append(np.sqrt(np.maximum(var_stat, 0.0)))
    names.append("stat")
    if ll.bb_lite:
        columns.append(np.sqrt(var_bb))
        names.append("binByBinStat")
    return Impacts(pois=result.names[:npoi], names=list(result.names), values=values, groups=names,
                   grouped=np.stack(columns, axis=1))


def _bb_global_variance(ll: Likelihood, x: np.ndarray, cov_cols: np.ndarray) -> np.ndarray:
    """``sum_b (s_b dbeta_b/dx . v)^2`` for each column ``v`` of ``cov_cols``.

    The products ``J v`` (``J = dbeta/dx``) come from two reverse passes each: ``J v = d (v . J^T u) / du``.
    """
    out = np.zeros(cov_cols.shape[1])
    with tf.device(ll.device):
        xt = tf.constant(x)
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                inner.watch(xt)
                beta, scale = _bb_factors(ll, xt)
            u = tf.ones_like(beta)  # any value: J^T u is linear in u (zeros would be pruned as no gradient)
            outer.watch(u)
            jtu = inner.gradient(beta, xt, output_gradients=u)
            proj = tf.linalg.matvec(tf.constant(cov_cols), jtu, transpose_a=True)  # [ncols]
        for i in range(cov_cols.shape[1]):
            jv = outer.gradient(proj, u, output_gradients=tf.one_hot(i, cov_cols.shape[1], dtype=tf.float64))
            out[i] = float(tf.reduce_sum(tf.square(scale * jv)))
        del outer
    return out


def _bb_factors(ll: Likelihood, x):
    """The profiled Barlow-Beeston factors at ``x`` and the square roots of their constraints' curvatures."""
    beta0, k, mask = ll._beta0, ll._kstat, ll._bbmask
    if ll.covariance_fit:  # additive, 0.5 (beta - beta0)^2
        nu = ll._yields(x, bb_lite=False)
        return ll._beta0 + tf.linalg.matvec(ll._bbmap, ll._chi2_residual(nu)), tf.ones_like(nu)
    if ll.bb_full:
        from wfit.fitter.bbfull import profiled_bins

        _, _, beta = profiled_bins(ll._process_yields(x, masked=False), ll._nobs, ll._lognobs, k, beta0,
                                   tf.logical_not(mask))
    else:
        beta = ll._bb_lite_beta(ll._yields(x, bb_lite=False))
    # gamma constraint k (beta - beta0) - k beta0 log(beta / beta0): curvature k beta0 / beta^2
    safe = tf.where(mask | (beta <= 0.0), tf.ones_like(beta), beta)
    scale = tf.where(mask | (beta <= 0.0), tf.zeros_like(beta), tf.sqrt(k * beta0) / safe)
    return beta, scale


@dataclass
class AsymmetricImpacts:
    """Asymmetric impacts on the POIs, ``[..., 0]`` the down and ``[..., 1]`` the up side (signed shifts).

    Attributes:
        pois: The POIs (first axis).
        names: The scanned nuisances (second axis of ``values``).
        values: [npoi, nnuisances, 2] the POI shifts at the ends of each nuisance's interval.
        groups: The nuisance groups, then ``stat`` and ``Total``.
        grouped: [npoi, ngroups, 2].
    """

    pois: list[str]
    names: list[str]
    values: np.ndarray
    groups: list[str]
    grouped: np.ndarray


def asymmetric_impacts(ll: Likelihood, result: FitResult, nuisances: list[str] | None = None, *,
                       grouped: bool = True, q: float = 1.0) -> AsymmetricImpacts:
    """Asymmetric (profiled) impacts of ``nuisances`` (all by default) and, with ``grouped``, the freeze-group
    impacts. Each nuisance costs two profile-interval searches, each group two per POI."""
    from wfit.fitter.scanning import profile_interval

    require_unblinded(result, "asymmetric impacts")
    npoi = ll.npoi
    names = list(result.names[npoi:]) if nuisances is None else list(nuisances)
    values = np.full((npoi, len(names), 2), np.nan)
    hess = ll.nll_grad_hess(result.values)[2]  # the Gaussian starting guesses of every interval
    for j, name in enumerate(names):
        iv = profile_interval(ll, result, name, q=q, hessian=hess)
        values[:, j, 0] = iv.x_down[:npoi] - result.values[:npoi]
        values[:, j, 1] = iv.x_up[:npoi] - result.values[:npoi]
    groups: list[str] = []
    table = np.zeros((npoi, 0, 2))
    if grouped:
        def sides(frozen):
            out = np.full((npoi, 2), np.nan)
            for i, poi in enumerate(result.names[:npoi]):
                iv = profile_interval(ll, result, poi, q=q, frozen=frozen, hessian=hess)
                out[i] = iv.down, iv.up
            return out

        total = sides(None)
        cols = []
        for group, idxs in ll.ws.syst_groups.items():
            frozen = np.zeros(ll.nparams, dtype=bool)
            frozen[npoi + np.asarray(idxs, dtype=int)] = True
            mag = np.sqrt(np.maximum(np.square(total) - np.square(sides(frozen)), 0.0))
            cols.append(mag * np.array([-1.0, 1.0]))
            groups.append(group)
        frozen = np.concatenate([np.zeros(npoi, dtype=bool), ll.ws.constraint_weights > 0])
        cols += [sides(frozen), total]
        groups += ["stat", "Total"]
        table = np.stack(cols, axis=1)
    return AsymmetricImpacts(pois=result.names[:npoi], names=names, values=values, groups=groups, grouped=table)
