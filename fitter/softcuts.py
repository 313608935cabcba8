"""Soft (differentiable) cuts, written once in numerically stable forms, in TensorFlow float64.

A hard cut ``x > t`` keeps an event with weight ``1[x > t]``, whose derivative with respect to ``t`` is zero
almost everywhere: a precision computed from hard-cut templates cannot be differentiated. A soft cut replaces
the step by a smooth function of ``z = (x - t) / width``:

* ``"sigmoid"``: ``sigma(z) = 1 / (1 + exp(-z))``, computed as ``0.5 * (1 + tanh(z / 2))`` (no overflow of
  ``exp`` for any ``z``; its log is ``-softplus(-z)`` with the stable ``softplus(x) = max(x, 0) + log1p(exp(-|x|))``);
* ``"erf"``: the normal CDF ``Phi(z) = 0.5 * (1 + erf(z / sqrt 2))`` (its log through ``erfc``, and an asymptotic
  series in the far tail).

The hard cut is the limit ``width -> 0`` (:func:`hard_cut` is that limit, with a zero gradient). At a finite
width an event at distance ``d`` from the threshold keeps a weight that differs from the hard cut's by
``sigma(-|d| / width)`` (sigmoid: about ``exp(-|d| / width)``) or ``Phi(-|d| / width)`` (erf: about
``exp(-d^2 / 2 width^2)``), so templates approach the hard ones as the width shrinks, faster for erf.

**Vanishing gradients.** The derivative of a cut with respect to its threshold is ``-phi(z) / width``
with ``phi`` the kernel (sigmoid: ``sigma(z)(1 - sigma(z))``; erf: the normal density): it is non-zero only for
events within a few widths of the threshold. With erf it falls as ``exp(-z^2 / 2)``: once a threshold has moved
more than a few widths beyond the last event (a cut far in a tail, or an optimiser's step past the data), the
gradient underflows to exactly zero and gradient descent stops there; the sigmoid's exponential tail keeps a
(small) gradient much further out. :func:`wfit.fitter.cutopt.optimize_cuts` therefore starts wide (a width that
covers the sample's spread around the threshold) and shrinks the width in a schedule, each stage starting from
the previous optimum, as the differentiable-cuts literature does (relaxed/neos use a fixed, not too small,
bandwidth for the same reason); it reports the final optimum at the narrowest width and checks it with hard cuts.

Example:
    >>> import numpy as np
    >>> x = np.array([-1.0, 0.0, 1.0])
    >>> np.round(soft_cut(x, 0.0, 0.1).numpy(), 6).tolist()
    [4.5e-05, 0.5, 0.999955]
    >>> hard_cut(x, 0.0).numpy().tolist()
    [0.0, 0.0, 1.0]
    >>> float(softplus(np.array(1000.0)).numpy()), float(log_sigmoid(np.array(-1000.0)).numpy())
    (1000.0, -1000.0)
"""

from __future__ import annotations

import math
from typing import Any, Literal

from wfit.fitter._tf import tf

__all__ = ["KINDS", "hard_cut", "log_sigmoid", "log_soft_cut", "sigmoid", "soft_cut", "softplus"]

#: The soft-cut kernels.
KINDS = ("sigmoid", "erf")

Kind = Literal["sigmoid", "erf"]


def _f64(x: Any) -> Any:
    return tf.convert_to_tensor(x, dtype=tf.float64)


def softplus(x: Any) -> Any:
    """``log(1 + exp(x))`` as ``max(x, 0) + log1p(exp(-|x|))``: no overflow, exact for large ``|x|``."""
    x = _f64(x)
    return tf.maximum(x, 0.0) + tf.math.log1p(tf.exp(-tf.abs(x)))


def sigmoid(x: Any) -> Any:
    """``1 / (1 + exp(-x))`` through ``tanh``: ``0.5 * (1 + tanh(x / 2))``, finite for every ``x``."""
    return 0.5 * (1.0 + tf.tanh(0.5 * _f64(x)))


def log_sigmoid(x: Any) -> Any:
    """``log(sigmoid(x)) = -softplus(-x)``, stable where ``sigmoid(x)`` underflows."""
    return -softplus(-_f64(x))


def _check(kind: str, width: Any) -> None:
    if kind not in KINDS:
        raise ValueError(f"soft cut kind {kind!r} is not one of {KINDS}")
    if isinstance(width, (int, float)) and not (math.isfinite(width) and width > 0):
        raise ValueError(f"soft cut width must be a finite number > 0 (use hard_cut for the step), got {width!r}")


def soft_cut(x: Any, threshold: Any, width: Any, kind: Kind = "sigmoid") -> Any:
    """Soft version of ``x > threshold``: a weight in (0, 1) per element of ``x``.

    Args:
        x: Values (any shape).
        threshold: The cut (a scalar tensor: the gradient flows to it).
        width: The transition width (same units as ``x``), > 0.
        kind: ``"sigmoid"`` or ``"erf"``.
    """
    _check(kind, width)
    z = (_f64(x) - _f64(threshold)) / _f64(width)
    if kind == "sigmoid":
        return sigmoid(z)
    return 0.5 * (1.0 + tf.math.erf(z / math.sqrt(2.0)))


def log_soft_cut(x: Any, threshold: Any, width: Any, kind: Kind = "sigmoid") -> Any:
    """``log(soft_cut(...))``, stable far below the threshold (where the weight itself underflows)."""
    _check(kind, width)
    z = (_f64(x) - _f64(threshold)) / _f64(width)
    if kind == "sigmoid":
        return log_sigmoid(z)
    # log Phi(z) = log(erfc(-z / sqrt 2) / 2), accurate in float64 down to z = -20 (Phi = 3e-89); below, the
    # asymptotic series -z^2/2 - log(-z sqrt(2 pi)) + log(1 - 1/z^2 + 3/z^4 - 15/z^6 + 105/z^8) (relative
    # error below 1e-10 there), which never underflows.
    direct = tf.math.log(0.5 * tf.math.erfc(-tf.maximum(z, -20.0) / math.sqrt(2.0)))
    t = tf.minimum(z, -20.0)
    u = 1.0 / (t * t)
    tail = -0.5 * t * t - tf.math.log(-t) - 0.5 * math.log(2 * math.pi) + tf.math.log1p(
        u * (-1.0 + u * (3.0 + u * (-15.0 + 105.0 * u)))
    )
    return tf.where(z > -20.0, direct, tail)


def hard_cut(x: Any, threshold: Any) -> Any:
    """The ``width -> 0`` limit: ``1.0`` where ``x > threshold``, else ``0.0`` (no gradient)."""
    return tf.cast(_f64(x) > _f64(threshold), tf.float64)
