"""Derived quantities with their covariance: post-fit cross sections from masked channels.

A masked channel holds generator-level templates (e.g. W charge x |y_W| x helicity): its post-fit
yields ``sum_p mu_p sigma_bp(theta)`` are the measured cross sections (times luminosity). Quantities
built from them (:mod:`wfit.fitter.quantities`: select, project, normalize, ratio, asymmetry, helicity
fractions, angular coefficients, in any combination) are evaluated by :func:`evaluate`, several at
once, in one linear propagation ``J C J^T`` (``J = dy/dx`` by TensorFlow's autodiff at the minimum, as
rabbit does): the result holds their joint covariance, cross-covariances included (rabbit's
``--compositeMapping``). With BB-lite, the MC-statistical uncertainty of the masked templates is
added the same way (each masked bin's Barlow-Beeston factor has variance ``sumw2 / sumw^2``).

Order of the values: each quantity flattened in C order of its own axes (the last axis fastest), the
quantities one after another in the order given to :func:`evaluate`.

:func:`masked_channel`, :func:`summed`, :func:`normalized` and :func:`asymmetry` are shortcuts for
one quantity of one channel. The expression layer's names are re-exported here.

Example:
    >>> from wfit.fitter.derived import channel, evaluate, ratio
    >>> xsec = channel("xsec")
    >>> res = evaluate(ll, result, xsec.asymmetry("charge"), "helicity_fractions(xsec)")  # doctest: +SKIP
    >>> res[0].values, res[0].errors, res.block(0, 1)     # doctest: +SKIP
    >>> asym = asymmetry(ll, result, "xsec", axis="charge")  # res[0] again     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from wfit.fitter import quantities as _quantities
from wfit.fitter._tf import tf
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.quantities import Quantity, Structure, channel, parse_quantity, ratio
from wfit.fitter.result import FitResult

__all__ = [
    "Derived",
    "DerivedSet",
    "Quantity",  # the expression layer (wfit.fitter.quantities), re-exported
    "Structure",
    "asymmetry",
    "channel",
    "evaluate",
    "masked_channel",
    "normalized",
    "parse_quantity",
    "propagate",
    "ratio",
    "summed",
]


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class Derived:
    """Values of a derived quantity (in the shape of its histogram) with their covariance.

    Attributes:
        values: Post-fit values, with ``shape``.
        covariance: [n, n] covariance of the flattened values (C order).
        axes: Names of the remaining histogram axes.
        shape: Shape of ``values``.
        name: The quantity's expression (``str(quantity)``).
    """

    values: np.ndarray
    covariance: np.ndarray
    axes: list[str]
    shape: tuple[int, ...]
    name: str = ""

    @property
    def errors(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance)).reshape(self.shape)

    def correlation(self) -> np.ndarray:
        d = np.sqrt(np.diag(self.covariance))
        return self.covariance / np.outer(d, d)


@dataclass
class DerivedSet:
    """Quantities evaluated together (:func:`evaluate`): their values and joint covariance.

    Attributes:
        quantities: The quantities, in the order given.
        structures: Their axes and shapes.
        values: [n] all values, each quantity flattened in C order, the quantities one after another.
        covariance: [n, n] joint covariance of ``values``, cross-covariances included.
        blinded: The parameters that carried their blinding offsets in the evaluation (a blinded fit's
            quantities are blinded too); empty when the fit was not blinded.
    """

    quantities: tuple[Quantity, ...]
    structures: tuple[Structure, ...]
    values: np.ndarray
    covariance: np.ndarray
    blinded: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        """The quantities' expressions."""
        return [str(q) for q in self.quantities]

    @property
    def errors(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))

    def __len__(self) -> int:
        return len(self.quantities)

    def __iter__(self) -> Iterator[Derived]:
        return (self[k] for k in range(len(self)))

    def index(self, key: int | str | Quantity) -> int:
        """Position of a quantity: its index, the quantity, or its expression (any spacing)."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -len(self) <= key < len(self):
                raise IndexError(f"quantity {key} out of range: {len(self)} quantities were evaluated")
            return int(key) % len(self)
        name = str(parse_quantity(key) if isinstance(key, str) else key)
        if name not in self.names:
            raise KeyError(f"{name!r} was not evaluated; the quantities are {self.names}")
        return self.names.index(name)

    def bins(self, key: int | str | Quantity) -> slice:
        """The positions of a quantity's bins in :attr:`values`."""
        k = self.index(key)
        start = sum(s.size for s in self.structures[:k])
        return slice(start, start + self.structures[k].size)

    def __getitem__(self, key: int | str | Quantity) -> Derived:
        k, sl = self.index(key), self.bins(key)
        st = self.structures[k]
        return Derived(self.values[sl].reshape(st.shape), self.covariance[sl, sl], list(st.axes), st.shape,
                       str(self.quantities[k]))

    def block(self, a: int | str | Quantity, b: int | str | Quantity) -> np.ndarray:
        """The covariance between the bins of quantities ``a`` (rows) and ``b`` (columns)."""
        return self.covariance[self.bins(a), self.bins(b)]

    def labels(self) -> list[str]:
        """One label per value: the bin's axis indices, ``"absy=0,helicity=2"`` (``""`` for a single number)."""
        out = []
        for st in self.structures:
            for idx in np.ndindex(*st.shape):
                out.append(",".join(f"{a or i}={j}" for i, (a, j) in enumerate(zip(st.axes, idx, strict=True))))
        return out

    def summary(self, max_bins: int = 6) -> str:
        """A text table: each quantity's expression, then up to ``max_bins`` of its bins with value and uncertainty."""
        head = "derived quantities" + (f" (BLINDED: {len(self.blinded)} parameters with hidden offsets)"
                                       if self.blinded else "")
        lines = [head, f"{'bin':<40} {'value':>14} {'uncertainty':>14}", "-" * 70]
        labels, errors = self.labels(), self.errors
        for k, name in enumerate(self.names):
            sl = self.bins(k)
            lines.append(name)
            for i in range(sl.start, min(sl.stop, sl.start + max_bins)):
                lines.append(f"  {labels[i] or '(one number)':<38} {self.values[i]:>14.6g} {errors[i]:>14.6g}")
            if sl.stop - sl.start > max_bins:
                lines.append(f"  ... {sl.stop - sl.start - max_bins} more bins (all in the result file)")
        return "\n".join(lines)

    def as_arrays(self, prefix: str = "derived") -> dict[str, np.ndarray]:
        """The datasets that ``wfit fit --derived`` stores under the result's ``extra/`` group.

        ``{prefix}_expressions`` [quantities], and per value ``{prefix}_values``, ``_errors``,
        ``_quantity`` (index of its expression), ``_bins`` (:meth:`labels`), with ``{prefix}_covariance``.
        """
        which = np.concatenate([np.full(s.size, k, dtype=np.int64) for k, s in enumerate(self.structures)])
        return {f"{prefix}_expressions": np.array(self.names, dtype=object), f"{prefix}_values": self.values,
                f"{prefix}_errors": self.errors, f"{prefix}_covariance": self.covariance,
                f"{prefix}_quantity": which, f"{prefix}_bins": np.array(self.labels(), dtype=object)}


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
            # The Jacobian's rows in slices: one vectorised backward pass holds its intermediates for every row
            # at once (the unrolled yields of a model at the analysis's size need tens of GB in one pass).
            parts = [y[i : i + _JACOBIAN_ROWS] for i in range(0, int(y.shape[0]), _JACOBIAN_ROWS)]
        jac = np.concatenate([tape.jacobian(p, x).numpy() for p in parts]) if parts else np.zeros((0, len(result.values)))
        cov = jac @ result.covariance @ jac.T
        if nbeta:
            jb = np.concatenate([tape.jacobian(p, beta).numpy() for p in parts])
            cov = cov + (jb * beta_var) @ jb.T
    return y.numpy(), cov


#: Rows of the Jacobian per vectorised backward pass in :func:`propagate`.
_JACOBIAN_ROWS = 256


def evaluate(ll: Likelihood, result: FitResult, *quantities: Quantity | str) -> DerivedSet:
    """Evaluate quantities at the fit's minimum in one propagation: values and joint covariance.

    Args:
        ll: The likelihood of the fit.
        result: The fit result (its values and covariance).
        *quantities: :class:`Quantity` objects or their text (:func:`parse_quantity`).

    Returns:
        A :class:`DerivedSet`: ``res[k]`` (or ``res["asymmetry(xsec, charge)"]``) is one quantity's
        :class:`Derived`, ``res.block(a, b)`` the covariance between two, ``res.covariance`` all of it.

    A blinded fit's quantities are evaluated at the shown parameters (the POIs as ``mu / exp(v)``, the
    nuisances of interest as ``theta - v``; :mod:`wfit.fitter.blinding`), whether ``result`` is the shown
    result or the fitted one that ``fit_workspace``'s ``post_fit`` hook receives: the cross sections
    stay blinded, as rabbit computes its mappings with the blinding offsets applied.

    Raises:
        ValueError: A quantity that does not fit the workspace (see :meth:`Quantity.structure`).
    """
    if getattr(result, "blinding", None) is not None:
        result = result.blinding.apply(result)
    if not quantities:
        raise ValueError("evaluate: give at least one quantity, e.g. channel('xsec')")
    qs = tuple(parse_quantity(q) if isinstance(q, str) else q for q in quantities)
    for q in qs:
        if not isinstance(q, Quantity):
            raise TypeError(f"evaluate: quantities are Quantity objects or their text, got {type(q).__name__}")
    ws = ll.ws
    built = [q._build(ws) for q in qs]
    chans = [ws.channel(n) for n in dict.fromkeys(n for q in qs for n in q.channels())]
    beta_var = None
    if ll.bb_lite:
        parts = []
        for ch in chans:
            sumw = ws.sumw[ch.start : ch.stop].sum(axis=1)
            sumw2 = ws.sumw2[ch.start : ch.stop].sum(axis=1)
            ok = (sumw2 > 0) & (sumw != 0)
            parts.append(np.where(ok, sumw2 / np.where(ok, sumw, 1.0) ** 2, 0.0))
        beta_var = np.concatenate(parts)

    def fn(x, beta):
        nu = tf.reduce_sum(ll._process_yields(x, masked=True), axis=1)  # [masked bins], processes summed
        yields, off = {}, 0
        for ch in chans:
            y = nu[ch.start - ws.nbins : ch.stop - ws.nbins]
            if beta_var is not None:
                y = y * beta[off : off + ch.size]
                off += ch.size
            yields[ch.name] = tf.reshape(y, ch.shape)
        return tf.concat([tf.reshape(g(yields), [-1]) for _, g in built], axis=0)

    values, cov = propagate(result, fn, ll.device, beta_var)
    blinded = tuple((result.options or {}).get("blinded") or ())
    return DerivedSet(qs, tuple(st for st, _ in built), values, cov, blinded)


# -------------------------------------------------------------------- the single-quantity shortcuts
def masked_channel(ll: Likelihood, result: FitResult, channel: str) -> Derived:
    """Post-fit yields of a masked channel (all processes summed), with their covariance."""
    return evaluate(ll, result, _quantities.channel(channel))[0]


def summed(ll: Likelihood, result: FitResult, channel: str, keep: Sequence[str]) -> Derived:
    """Yields of a masked channel summed over every axis not in ``keep`` (e.g. inclusive in |y|)."""
    return evaluate(ll, result, _quantities.channel(channel).project(*keep))[0]


def normalized(ll: Likelihood, result: FitResult, channel: str) -> Derived:
    """Yields of a masked channel divided by their sum (normalised cross sections; rabbit's Normalize)."""
    return evaluate(ll, result, _quantities.channel(channel).normalize())[0]


def asymmetry(ll: Likelihood, result: FitResult, channel: str, axis: str) -> Derived:
    """``(y_0 - y_1) / (y_0 + y_1)`` along a two-bin axis, e.g. the charge asymmetry of W+ and W-.

    The first bin of ``axis`` is the numerator's positive term (order of the axis as written);
    the same as ``evaluate(ll, result, channel(name).asymmetry(axis))[0]``.
    """
    return evaluate(ll, result, _quantities.channel(channel).asymmetry(axis))[0]
