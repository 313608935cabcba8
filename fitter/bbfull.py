"""Full Barlow-Beeston: one gamma-constrained factor per bin and process, profiled by a per-bin solve.

In bin ``b`` with ``n`` observed events and processes of expected yields ``m_p`` (after the systematics), each
process with MC statistics (``sumw2 > 0`` and a positive nominal yield) carries a factor ``beta_p`` with the
gamma constraint of rabbit main's ``--binByBinStatMode full --binByBinStatType gamma``,

    L_b = x - n - n log(x / n) + sum_p k_p (beta_p - beta0_p) - k_p beta0_p log(beta_p / beta0_p),
    x = sum_p beta_p m_p (+ the yields of the processes without MC statistics),  k_p = sumw_p^2 / sumw2_p.

Setting ``dL_b / dbeta_p = 0`` gives ``beta_p = k_p beta0_p / (k_p + (1 - n / x) m_p)``: every factor follows
from the bin's total ``x``, the one root of the decreasing function

    F(x) = fixed + sum_p m_p k_p beta0_p / (k_p + (1 - n / x) m_p) - x

above ``x_min = n / (1 + min_p k_p / m_p)`` (Barlow and Beeston's equation). The root is found by Newton's
method in ``u = log(x - x_min)`` without gradients, and then one Newton step on ``F`` is taken with them: it
leaves the value where it is and gives ``dx / dm`` by the implicit-function theorem, so the gradient (the
envelope theorem) and the Hessian of the profiled NLL (the Schur complement over the betas) come out exact
from TensorFlow's autodiff.
"""

from __future__ import annotations

import numpy as np

from wfit.fitter._tf import tf

__all__ = ["bin_totals", "evaluate", "profiled_bins", "statistics"]

_NEWTON_STEPS = 60


def statistics(ws, full: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The effective MC statistics ``k = sumw^2 / sumw2`` of the unmasked bins (BB-lite: per bin; full: per bin
    and process), where no factor applies (no MC statistics, or with ``full`` no positive yield; ``k`` is 1
    there), and the per-bin ``sumw2``."""
    nb = ws.nbins
    sumw = ws.sumw[:nb] if full else ws.sumw[:nb].sum(axis=1)
    varw = ws.sumw2[:nb] if full else ws.sumw2[:nb].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kstat = sumw**2 / varw
    mask = (varw == 0.0) | (kstat == 0.0) | ~np.isfinite(kstat)
    if full:
        mask |= ws.norm[:nb] <= 0.0
    return np.where(mask, 1.0, kstat), mask, ws.sumw2[:nb].sum(axis=1)


def _where(cond, a, b):
    """``tf.where`` with Python numbers as float64."""
    return tf.where(cond, tf.cast(a, tf.float64), tf.cast(b, tf.float64))


def _equation(x, m, fixed, n, k, beta0, free):
    """``F(x)`` and ``dF/dx`` of every bin."""
    a = 1.0 - n / x
    den = k + a[:, None] * m
    num = m * k * beta0
    f = fixed + tf.reduce_sum(_where(free, num / den, 0.0), axis=1) - x
    df = -tf.reduce_sum(_where(free, num * m / tf.square(den), 0.0), axis=1) * (n / tf.square(x)) - 1.0
    return f, df


def profiled_bins(m, n, logn, k, beta0, free, profile: bool = True):
    """The profiled per-bin NLL terms (with the saturated offset), the bins' total yields and the factors.

    Args:
        m: [bins, processes] expected yields (a differentiable function of the parameters).
        n: [bins] observed counts.
        logn: [bins] ``log n`` (0 where ``n = 0``).
        k: [bins, processes] effective MC statistics (1 where not ``free``).
        beta0: [bins, processes] the constraints' centres (1 for data; toys draw them).
        free: [bins, processes] which yields carry a factor.
        profile: ``False`` holds the factors at their profiled values for differentiation (no MC-statistical
            part in the Hessian).

    Returns:
        ``(terms, nu, beta)``: ``terms`` [bins] is ``nu - n - n (log nu - log n) + constraint``; ``nu`` [bins]
        the bins' totals.
    """
    m_free = _where(free, m, 0.0)
    fixed = tf.reduce_sum(_where(free, 0.0, m), axis=1)
    ratio = _where(free, k / _where(free, m, 1.0), float("inf"))
    x_min = n / (1.0 + tf.reduce_min(ratio, axis=1))  # 0 where no process is free or n = 0

    # the root without gradients: Newton in u = log(x - x_min), steps of at most 1 in u
    ms, fs, ks, bs = (tf.stop_gradient(t) for t in (m_free, fixed, k, beta0))
    xm = tf.stop_gradient(x_min)
    total = fs + tf.reduce_sum(ms, axis=1)
    u0 = tf.math.log(tf.maximum(total - xm, 1e-3 * (xm + 1.0)))

    def step(i, u):
        x = xm + tf.exp(u)
        f, df = _equation(x, ms, fs, n, ks, bs, free)
        return i + 1, u - tf.clip_by_value(f / (df * tf.exp(u)), -1.0, 1.0)

    _, u = tf.while_loop(lambda i, u: i < _NEWTON_STEPS, step, (tf.constant(0), u0))
    x_star = tf.stop_gradient(xm + tf.exp(u))
    # one differentiable Newton step: the same value, and the implicit derivative of the root
    f, df = _equation(x_star, m_free, fixed, n, k, beta0, free)
    x = x_star - f / df
    a = 1.0 - n / x
    beta = _where(free, k * beta0 / (k + a[:, None] * m_free), tf.ones_like(m))
    if not profile:
        beta = tf.stop_gradient(beta)
    nu = fixed + tf.reduce_sum(_where(free, beta * m, 0.0), axis=1)
    has_n = n > 0.0
    log_nu = tf.math.log(_where(has_n, nu, 1.0))
    has_beta0 = free & (beta0 > 0.0)  # a toy can draw beta0 = 0: then beta = 0 and its constraint is k beta
    beta0_safe = _where(has_beta0, beta0, 1.0)
    beta_safe = _where(has_beta0, beta, 1.0)
    constraint = tf.reduce_sum(
        _where(free, k * (beta - beta0) - k * beta0 * (tf.math.log(beta_safe) - tf.math.log(beta0_safe)), 0.0),
        axis=1,
    )
    return nu - n - n * (log_nu - logn) + constraint, nu, beta


def _bins(model, x, profile: bool = True):
    """A likelihood's per-bin profiled terms and totals at ``x``."""
    m = model._process_yields(x, masked=False)
    terms, nu, _ = profiled_bins(m, model._nobs, model._lognobs, model._kstat, model._beta0,
                                 tf.logical_not(model._bbmask), profile)
    return terms, nu


def bin_totals(model, x):
    """The bins' expected totals with the profiled factors (the post-fit yields)."""
    return _bins(model, x)[1]


def evaluate(model, x, order: int, profile: bool = True):
    """A :class:`~wfit.fitter.likelihood.Likelihood`'s NLL (order 0), with its gradient (1) and Hessian (2), by
    autodiff through the per-bin solve."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            f = tf.reduce_sum(_bins(model, x, profile)[0]) + model._constraints(x)
        if order == 0:
            return f
        g = inner.gradient(f, x)
    if order == 1:
        return f, g
    h = outer.jacobian(g, x)
    return f, g, 0.5 * (h + tf.transpose(h))
