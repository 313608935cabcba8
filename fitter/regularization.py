"""Regularised unfolding: a curvature (Tikhonov/SVD, arXiv:hep-ph/9509307) penalty on masked channels, and the
L-curve that picks its strength.

For each regularised masked channel (the generator-level cross-section bins, 1 to 3 axes) the penalty is

    P(x) = exp(2 tau) sum_k (Lap r(x))_k^2,   r_b = nu_b(x) / nu_b(x0)

with ``nu_b`` the channel's post-fit yield (all processes), ``x0`` the prefit point and ``Lap`` the discrete
Laplacian over the channel's axes (the kernel ``(1, -2, 1)`` per axis, summed over the axes: the 5- and 7-point
stencils in 2-D and 3-D), with
mirrored edges (an outside neighbour is the edge bin itself), as rabbit main's ``-r SVD`` with
``--regularizationStrength tau``. ``P`` is added to the NLL, so the fit's values and covariance (the inverse
Hessian of the penalised NLL) are the regularised ones; its derivatives come from autodiff (the masked
channels are small).

The L-curve (Hansen) is the curve ``(log(NLL - P), log(P / exp(2 tau)))`` traced by tau; the chosen strength
is where it bends most, the maximum of its curvature ``(x' y'' - x'' y') / (x'^2 + y'^2)^(3/2)``, found here
on a grid of fits (each started from its neighbour's minimum) with the derivatives from a cubic spline, then
refined by the spline's maximum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wfit.fitter._tf import tf

__all__ = ["LCurve", "add_penalty", "laplacian", "lcurve", "penalty_setup"]


def laplacian(shape: Sequence[int]) -> np.ndarray:
    """The discrete Laplacian [n, n] of a grid of ``shape`` (C order) with mirrored edges."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    lap = np.zeros((n, n))
    index = np.arange(n).reshape(shape)
    for axis in range(len(shape)):
        for b in range(n):
            pos = np.unravel_index(b, shape)
            lap[b, b] -= 2.0
            for step in (-1, 1):
                q = list(pos)
                q[axis] = min(max(q[axis] + step, 0), shape[axis] - 1)  # mirrored: the edge bin itself
                lap[b, index[tuple(q)]] += 1.0
    return lap


def penalty_setup(ws, channels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The penalty's operator ``Lap`` [K, masked bins] (block-diagonal over ``channels``, columns over all masked
    bins) and ``1 / nu(x0)`` per masked bin (0 where the prefit yield is 0, whose ratio is held at 1).

    Raises:
        ValueError: A channel that is not a masked channel of ``ws``, one given twice, or one with more than
            3 axes.
    """
    nmasked = ws.nbinsfull - ws.nbins
    masked = [c.name for c in ws.channels if c.masked]
    rows = []
    if len(set(channels)) != len(channels):
        raise ValueError(f"regularize={list(channels)}: a channel is given twice")
    for name in channels:
        if name not in masked:
            raise ValueError(
                f"regularize: {name!r} is not a masked channel of {ws.path}; the regularised quantities are the "
                f"cross sections of masked channels: {masked or 'the file has none'}"
            )
        ch = ws.channel(name)
        if not 1 <= len(ch.shape) <= 3:
            raise ValueError(f"regularize: channel {name!r} has {len(ch.shape)} axes; the Laplacian is for 1 to 3")
        block = np.zeros((int(np.prod(ch.shape)), nmasked))
        block[:, ch.start - ws.nbins : ch.stop - ws.nbins] = laplacian(ch.shape)
        rows.append(block)
    nu0 = ws.norm[ws.nbins :].sum(axis=1)
    inv = np.where(nu0 != 0.0, 1.0 / np.where(nu0 != 0.0, nu0, 1.0), 0.0)
    return np.concatenate(rows, axis=0), inv


def _penalty(model, x, unscaled: bool = False):
    nu = tf.reduce_sum(model._process_yields(x, masked=True), axis=1)
    r = tf.where(model._reg_inv_nu0 > 0.0, nu * model._reg_inv_nu0, tf.ones_like(nu))
    p = tf.reduce_sum(tf.square(tf.linalg.matvec(model._reg_lap, r)))
    return p if unscaled else model._reg_strength * p


def add_penalty(model, x, order: int, out):
    """``out`` (the NLL, with its gradient and Hessian for ``order`` 1 and 2) plus the penalty's."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            p = _penalty(model, x)
        if order == 0:
            return out + p
        g = inner.gradient(p, x)
    if order == 1:
        return out[0] + p, out[1] + g
    h = outer.jacobian(g, x)
    return out[0] + p, out[1] + g, out[2] + 0.5 * (h + tf.transpose(h))


def unscaled_penalty(model, x: np.ndarray) -> float:
    """``sum_k (Lap r)_k^2`` at ``x`` (the L-curve's second coordinate, before the log)."""
    with tf.device(model.device):
        return float(_penalty(model, tf.constant(np.asarray(x, dtype=np.float64)), unscaled=True))


@dataclass
class LCurve:
    """An L-curve scan.

    Attributes:
        tau: The scanned strengths (log: the penalty is scaled by ``exp(2 tau)``).
        lx: ``log`` of the NLL without the penalty at each fit.
        ly: ``log`` of the unscaled penalty.
        curvature: The curvature of ``(lx, ly)`` in tau.
        best: The strength of the largest curvature.
        status: Fit status per point.
    """

    tau: np.ndarray
    lx: np.ndarray
    ly: np.ndarray
    curvature: np.ndarray
    best: float
    status: np.ndarray


def lcurve(ll, taus: Sequence[float], *, tol: float = 1e-12, x0: np.ndarray | None = None) -> LCurve:
    """Fit at every strength of ``taus`` (ascending, at least 5) and find the corner of the L-curve.

    The likelihood's strength is restored afterwards.
    """
    from scipy.interpolate import CubicSpline

    from wfit.fitter.minimize import minimize

    taus = np.asarray(taus, dtype=np.float64)
    if taus.ndim != 1 or len(taus) < 5 or np.any(np.diff(taus) <= 0) or not np.all(np.isfinite(taus)):
        raise ValueError(f"L-curve strengths {taus.tolist()}: give at least 5 finite, increasing values of tau")
    before = float(ll._reg_strength.numpy())
    x = ll.x0.copy() if x0 is None else np.asarray(x0, dtype=np.float64)
    lx, ly, status = [], [], []
    try:
        options = ll.minimizer_options()
        for tau in taus:
            ll.set_tau(tau)
            r = minimize(ll.nll_grad_hess, x, tol=tol, **options)
            x = r.x
            p = unscaled_penalty(ll, x)
            lx.append(np.log(r.fun - np.exp(2.0 * tau) * p))
            ly.append(np.log(p))
            status.append(int(r.status))
    finally:
        ll._reg_strength.assign(before)
    lx, ly = np.array(lx), np.array(ly)
    sx, sy = CubicSpline(taus, lx), CubicSpline(taus, ly)

    def curvature(t):
        dx, dy, ddx, ddy = sx(t, 1), sy(t, 1), sx(t, 2), sy(t, 2)
        return (dx * ddy - ddx * dy) / np.power(dx * dx + dy * dy, 1.5)

    fine = np.linspace(taus[0], taus[-1], 50 * len(taus))
    best = float(fine[np.argmax(curvature(fine))])
    return LCurve(taus, lx, ly, curvature(taus), best, np.array(status))
