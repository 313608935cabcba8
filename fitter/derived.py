"""Derived quantities with their covariance: post-fit cross sections from masked channels.

A masked channel holds generator-level templates (e.g. W charge x |y_W| x helicity): its post-fit
yields ``sum_p mu_p sigma_bp(theta)`` are the measured cross sections (times luminosity). Any
function ``y(x)`` of the parameters gets the covariance ``J C J^T`` with ``J = dy/dx`` from
TensorFlow's autodiff at the minimum (the linear propagation used by rabbit). With BB-lite, the
MC-statistical uncertainty of the masked templates is added the same way (each masked bin's
Barlow-Beeston factor has variance ``sumw2 / sumw^2``).

Example:
    >>> from wfit.fitter.derived import masked_channel, normalized, asymmetry
    >>> xsec = masked_channel(ll, result, "xsec")                  # doctest: +SKIP
    >>> norm = normalized(ll, result, "xsec")                      # doctest: +SKIP
    >>> asym = asymmetry(ll, result, "xsec", axis="charge")        # doctest: +SKIP
    >>> xsec.values, xsec.errors                                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wfit.fitter._tf import tf
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.result import FitResult
from wfit.workspace import Channel

__all__ = ["Derived", "asymmetry", "masked_channel", "normalized", "propagate", "summed"]


@dataclass
class Derived:
    """Values of a derived quantity (in the shape of its histogram) with their covariance.

    Attributes:
        values: Post-fit values, with ``shape``.
        covariance: [n, n] covariance of the flattened values.
        axes: Names of the remaining histogram axes.
        shape: Shape of ``values``.
    """

    values: np.ndarray
    covariance: np.ndarray
    axes: list[str]
    shape: tuple[int, ...]

    @property
    def errors(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance)).reshape(self.shape)

    def correlation(self) -> np.ndarray:
        d = np.sqrt(np.diag(self.covariance))
        return self.covariance / np.outer(d, d)


def propagate(
    result: FitResult, fn: Callable, device: str = "/CPU:0", beta_var: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values and covariance ``J C J^T`` of ``fn(x, beta)``, a TensorFlow function of the parameters.

    ``beta`` are the Barlow-Beeston factors of the bins ``fn`` reads (1 at the minimum); with
    ``beta_var`` (their variances, ``sumw2 / sumw^2``) the MC-statistical uncertainty of the
    templates is propagated as well, as rabbit does with BB-lite.
    """
    nbeta = 0 if beta_var is None else len(beta_var)
    with tf.device(device):
        x = tf.constant(result.values)
        beta = tf.ones([nbeta], tf.float64)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([x, beta])
            y = tf.reshape(fn(x, beta), [-1])
        jac = tape.jacobian(y, x).numpy()
        cov = jac @ result.covariance @ jac.T
        if nbeta:
            jb = tape.jacobian(y, beta).numpy()
            cov = cov + (jb * beta_var) @ jb.T
    return y.numpy(), cov


def _masked(ll: Likelihood, channel: str) -> tuple[Channel, Callable, np.ndarray | None]:
    ch = ll.ws.channel(channel)
    if not ch.masked:
        raise ValueError(f"channel {channel!r} is not masked: derived cross sections come from masked channels "
                         f"(masked: {[c.name for c in ll.ws.channels if c.masked]})")
    lo, hi = ch.start - ll.ws.nbins, ch.stop - ll.ws.nbins

    def yields(x, beta):  # [bins of the channel] summed over processes, in the channel's shape
        nu = tf.reduce_sum(ll._process_yields(x, masked=True)[lo:hi], axis=1)
        if ll.bb_lite:
            nu = nu * beta
        return tf.reshape(nu, ch.shape)

    beta_var = None
    if ll.bb_lite:
        sumw = ll.ws.sumw[ch.start : ch.stop].sum(axis=1)
        sumw2 = ll.ws.sumw2[ch.start : ch.stop].sum(axis=1)
        ok = (sumw2 > 0) & (sumw != 0)
        beta_var = np.where(ok, sumw2 / np.where(ok, sumw, 1.0) ** 2, 0.0)
    return ch, yields, beta_var


def _axis_index(ch: Channel, name: str) -> int:
    names = [a["name"] for a in ch.axes]
    if name not in names:
        raise ValueError(f"channel {ch.name!r} has no axis {name!r}; its axes are {names}")
    return names.index(name)


def masked_channel(ll: Likelihood, result: FitResult, channel: str) -> Derived:
    """Post-fit yields of a masked channel (all processes summed), with their covariance."""
    ch, fn, bvar = _masked(ll, channel)
    values, cov = propagate(result, fn, ll.device, bvar)
    return Derived(values.reshape(ch.shape), cov, [a["name"] for a in ch.axes], ch.shape)


def summed(ll: Likelihood, result: FitResult, channel: str, keep: Sequence[str]) -> Derived:
    """Yields of a masked channel summed over every axis not in ``keep`` (e.g. inclusive in |y|)."""
    ch, fn, bvar = _masked(ll, channel)
    keep_idx = [_axis_index(ch, k) for k in keep]
    drop = [i for i in range(len(ch.shape)) if i not in keep_idx]
    order = sorted(keep_idx)

    def g(x, beta):
        return tf.transpose(tf.reduce_sum(fn(x, beta), axis=drop), [order.index(i) for i in keep_idx])

    values, cov = propagate(result, g, ll.device, bvar)
    shape = tuple(ch.shape[i] for i in keep_idx)
    return Derived(values.reshape(shape), cov, list(keep), shape)


def normalized(ll: Likelihood, result: FitResult, channel: str) -> Derived:
    """Yields of a masked channel divided by their sum (normalised cross sections; rabbit's Normalize)."""
    ch, fn, bvar = _masked(ll, channel)

    def g(x, beta):
        y = fn(x, beta)
        return y / tf.reduce_sum(y)

    values, cov = propagate(result, g, ll.device, bvar)
    return Derived(values.reshape(ch.shape), cov, [a["name"] for a in ch.axes], ch.shape)


def asymmetry(ll: Likelihood, result: FitResult, channel: str, axis: str) -> Derived:
    """``(y_0 - y_1) / (y_0 + y_1)`` along a two-bin axis, e.g. the charge asymmetry of W+ and W-.

    The first bin of ``axis`` is the numerator's positive term (order of the axis as written).
    """
    ch, fn, bvar = _masked(ll, channel)
    i = _axis_index(ch, axis)
    if ch.shape[i] != 2:
        raise ValueError(f"axis {axis!r} of channel {channel!r} has {ch.shape[i]} bins; an asymmetry needs 2")

    def g(x, beta):
        a, b = tf.unstack(fn(x, beta), axis=i)
        return (a - b) / (a + b)

    values, cov = propagate(result, g, ll.device, bvar)
    shape = tuple(s for j, s in enumerate(ch.shape) if j != i)
    return Derived(values.reshape(shape), cov, [a["name"] for j, a in enumerate(ch.axes) if j != i], shape)
