"""Derived quantities as expressions: masked-channel yields selected, projected, normalised, combined.

A :class:`Quantity` is an expression of the post-fit yields of masked channels (rabbit's "mappings"):
:func:`channel`, then ``.select``, ``.project``, ``.normalize``, ``.asymmetry``, ``.helicity_fractions``,
``.angular_coefficients`` and :func:`ratio`, in any combination. It is evaluated, several at once with
their joint covariance, by :func:`wfit.fitter.derived.evaluate`; :meth:`Quantity.structure` checks it
against a workspace (channels, axes, bins) without a fit.

Each quantity keeps axis names and a shape; its values are flattened in C order (the last axis fastest).

The same expressions are written as text (``wfit fit --derived EXPR``; ``str(q)`` writes it and
:func:`parse_quantity` reads it, with a recursive-descent parser that evaluates nothing as Python)::

    QUANTITY := CHANNEL
              | select(QUANTITY, AXIS=INDEX or AXIS=START:STOP[:STEP], ...)   # an index drops the axis
              | project(QUANTITY[, AXIS, ...])          # sum over the other axes; keep these, in this order
              | normalize(QUANTITY[, AXIS, ...])        # divide by the sum over all bins, or over these axes
              | asymmetry(QUANTITY, AXIS)               # (y_0 - y_1) / (y_0 + y_1) along a 2-bin axis
              | helicity_fractions(QUANTITY[, AXIS])    # y_i / sum_j y_j along AXIS (default helicity)
              | angular_coefficients(QUANTITY[, AXIS])  # y_i / y_0 for i >= 1 along AXIS (default helicity)
              | ratio(QUANTITY, QUANTITY)               # bin by bin; the denominator broadcast by axis name

Names are identifiers (letters, digits, ``_`` and ``.``) or quoted (``'my-channel'``); bins count from 0
(flow bins included when the channel has them); a slice leaves out START (from 0) or STOP (to the end).

Example:
    >>> from wfit.fitter.quantities import channel, parse_quantity, ratio
    >>> xsec = channel("xsec")
    >>> str(xsec.project("absy").normalize())
    'normalize(project(xsec, absy))'
    >>> str(ratio(xsec.select(charge=0), xsec.select(charge=1)))
    'ratio(select(xsec, charge=0), select(xsec, charge=1))'
    >>> parse_quantity("normalize( project(xsec,absy) )") == xsec.project("absy").normalize()
    True
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from wfit.fitter._tf import tf
from wfit.workspace import Workspace

__all__ = ["Quantity", "Structure", "channel", "parse_quantity", "ratio"]

_Fn = Callable[[Mapping[str, Any]], Any]  # masked-channel yields by name -> the quantity's tensor


class Structure(NamedTuple):
    """The axes (names) and shape of a quantity's values, as evaluated on a workspace."""

    axes: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


# ------------------------------------------------------------------------------------------- the expressions
class Quantity:
    """An expression of masked-channel yields; immutable, and evaluated by :func:`wfit.fitter.derived.evaluate`.

    Made by :func:`channel` (or :func:`parse_quantity`) and combined with the methods below and
    :func:`ratio`; ``str(q)`` is its text in the ``--derived`` grammar of the module docstring.
    """

    __slots__ = ()

    def select(self, selection: Mapping[str, int | slice] | None = None, /, **axes: int | slice) -> Quantity:
        """Bins along axes: ``select(charge=0)`` drops the axis, ``select(absy=slice(0, 2))`` keeps it shorter.

        ``selection`` takes axis names that are not Python identifiers (``select({"eta-bin": 3})``).
        """
        items = dict(selection or {})
        both = sorted(set(items) & set(axes))
        if both:
            raise ValueError(f"select: axis {both} given twice")
        items.update(axes)
        if not items:
            raise ValueError("select: give at least one AXIS=INDEX or AXIS=slice(START, STOP)")
        return _Select(self, tuple((str(a), _selection(a, s)) for a, s in items.items()))

    def project(self, *keep: str) -> Quantity:
        """Sum over every axis but ``keep``, which stay in the order given (none: the total, a single number)."""
        return _Project(self, tuple(keep))

    def normalize(self, *along: str) -> Quantity:
        """Divide by the sum over all bins (rabbit's Normalize), or over the axes ``along`` only.

        With ``along``, every bin of the other axes sums to 1 over the ``along`` axes.
        """
        return _Normalize(self, tuple(along))

    def asymmetry(self, axis: str) -> Quantity:
        """``(y_0 - y_1) / (y_0 + y_1)`` along a two-bin ``axis``, which is dropped (e.g. the W charge asymmetry).

        Bin 0 of ``axis`` is the positive term (the axis's own order: for a charge axis written as
        ``[+1, -1]`` this is ``(W+ - W-) / (W+ + W-)``).
        """
        return _Asymmetry(self, str(axis))

    def helicity_fractions(self, axis: str = "helicity") -> Quantity:
        """Each component along ``axis`` divided by their sum, ``f_i = y_i / sum_j y_j`` (shape kept).

        The same as ``normalize(axis)``; any axis of components works (helicity states, angular
        coefficients' terms).
        """
        return _Normalize(self, (str(axis),), label="helicity_fractions")

    def angular_coefficients(self, axis: str = "helicity") -> Quantity:
        """``y_i / y_0`` for the bins ``i >= 1`` of ``axis`` (rabbit's AngularCoefficients, ``sigma_i / sigma_UL``).

        Bin 0 of ``axis`` is the reference (the unpolarised cross section sigma_UL in rabbit's helicity
        axis); ``axis`` keeps its name with one bin fewer, bin ``k`` holding component ``k + 1``.
        Convention factors of A_i (e.g. 20/3 for A_0) are not applied: they belong in the templates.
        """
        axis = str(axis)
        return ratio(self.select({axis: slice(1, None)}), self.select({axis: 0}))

    def structure(self, ws: Workspace) -> Structure:
        """The axes and shape of the values on ``ws``; checks the expression against the workspace.

        Raises:
            ValueError: A channel that is missing or not masked, an unknown axis, an axis of the
                wrong length, a bin out of range, or a ratio of incompatible shapes; the message
                names the quantity, the channel or axis, and what is allowed.
        """
        return self._build(ws)[0]

    def channels(self) -> tuple[str, ...]:
        """The masked channels the quantity reads, in order of appearance."""
        if isinstance(self, _Channel):
            return (self.name,)
        return tuple(dict.fromkeys(n for c in self._children() for n in c.channels()))

    def _children(self) -> tuple[Quantity, ...]:
        raise NotImplementedError

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        raise NotImplementedError


def channel(name: str) -> Quantity:
    """The post-fit yields of the masked channel ``name``, all processes summed, in the channel's axes."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"channel: give the name of a masked channel as a non-empty string, got {name!r}")
    return _Channel(name)


def ratio(numerator: Quantity, denominator: Quantity) -> Quantity:
    """``numerator / denominator``, bin by bin (rabbit's Ratio).

    The denominator has the numerator's axes, or some of them (by name and length, in any order:
    it is broadcast over the others, e.g. ``ratio(xsec, xsec.project("charge"))``), or the same
    shape with other axis names (bin by bin; the axes are then called ``a0``, ``a1``, ...).
    """
    for role, q in (("numerator", numerator), ("denominator", denominator)):
        if not isinstance(q, Quantity):
            raise TypeError(f"ratio: the {role} must be a Quantity (e.g. channel('xsec')), got {type(q).__name__}")
    return _Ratio(numerator, denominator)


def _selection(axis: str, sel: Any) -> int | slice:
    if isinstance(sel, slice):
        try:
            parts = [None if v is None else operator.index(v) for v in (sel.start, sel.stop, sel.step)]
        except TypeError:
            raise TypeError(f"select: {axis}={sel!r}: slice bounds must be integers or None") from None
        return slice(*parts)
    if isinstance(sel, bool):
        raise TypeError(f"select: {axis}={sel!r}: give a bin index (an integer) or a slice")
    try:
        return operator.index(sel)
    except TypeError:
        raise TypeError(f"select: {axis}={sel!r}: give a bin index (an integer) or a slice") from None


def _describe(st: Structure) -> str:
    if not st.axes:
        return "none (a single number)"
    return ", ".join(f"{a or '(unnamed)'} ({n} bins)" for a, n in zip(st.axes, st.shape, strict=True))


def _axis(where: Quantity, inner: Quantity, st: Structure, axis: str) -> int:
    """The position of ``axis`` in ``inner``'s structure; an error naming ``where`` and the axes allowed."""
    if axis not in st.axes:
        raise ValueError(f"{where}: {inner} has no axis {axis!r}; its axes are {_describe(st)}")
    if st.axes.count(axis) > 1:
        raise ValueError(f"{where}: {inner} has {st.axes.count(axis)} axes named {axis!r}; select one first")
    return st.axes.index(axis)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def _quote(name: str) -> str:
    if _NAME.match(name):
        return name
    return repr(name) if "'" not in name else f'"{name}"'


def _fmt(sel: int | slice) -> str:
    if isinstance(sel, int):
        return str(sel)
    text = ":".join("" if v is None else str(v) for v in (sel.start, sel.stop))
    return text if sel.step is None else f"{text}:{sel.step}"


@dataclass(frozen=True)
class _Channel(Quantity):
    name: str

    def __str__(self) -> str:
        return _quote(self.name)

    def _children(self) -> tuple[Quantity, ...]:
        return ()

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        masked = [c.name for c in ws.channels if c.masked]
        ch = next((c for c in ws.channels if c.name == self.name), None)
        if ch is None:
            raise ValueError(f"no channel {self.name!r} in {ws.path}; the masked channels are {masked}")
        if not ch.masked:
            raise ValueError(f"channel {self.name!r} is not masked: derived cross sections come from masked "
                             f"channels (generator-level templates); the masked channels are {masked}")
        name = self.name
        return Structure(tuple(a["name"] for a in ch.axes), tuple(ch.shape)), lambda y: y[name]


@dataclass(frozen=True)
class _Select(Quantity):
    q: Quantity
    items: tuple[tuple[str, int | slice], ...]

    def __str__(self) -> str:
        return f"select({self.q}, {', '.join(f'{_quote(a)}={_fmt(s)}' for a, s in self.items)})"

    def _children(self) -> tuple[Quantity, ...]:
        return (self.q,)

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        st, fn = self.q._build(ws)
        index: list[int | slice] = [slice(None)] * len(st.axes)
        seen = set()
        for axis, sel in self.items:
            i = _axis(self, self.q, st, axis)
            if i in seen:
                raise ValueError(f"{self}: axis {axis!r} is selected twice")
            seen.add(i)
            n = st.shape[i]
            if isinstance(sel, int):
                if not 0 <= sel < n:
                    raise ValueError(f"{self}: bin {sel} of axis {axis!r} of {self.q} is out of range; "
                                     f"it has {n} bins, 0 to {n - 1}")
            else:
                bounds = [v for v in (sel.start, sel.stop) if v is not None]
                if any(not 0 <= v <= n for v in bounds) or (sel.step is not None and sel.step < 1):
                    raise ValueError(f"{self}: slice {_fmt(sel)} of axis {axis!r} of {self.q}: bounds must lie in "
                                     f"0 to {n} (the axis has {n} bins) and the step must be >= 1")
                if not len(range(n)[sel]):
                    raise ValueError(f"{self}: slice {_fmt(sel)} of axis {axis!r} of {self.q} selects no bin")
            index[i] = sel
        axes = tuple(a for a, s in zip(st.axes, index, strict=True) if isinstance(s, slice))
        shape = tuple(len(range(n)[s]) for n, s in zip(st.shape, index, strict=True) if isinstance(s, slice))
        key = tuple(index)
        return Structure(axes, shape), lambda y: fn(y)[key]


@dataclass(frozen=True)
class _Project(Quantity):
    q: Quantity
    keep: tuple[str, ...]

    def __str__(self) -> str:
        return f"project({self.q}{''.join(', ' + _quote(a) for a in self.keep)})"

    def _children(self) -> tuple[Quantity, ...]:
        return (self.q,)

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        st, fn = self.q._build(ws)
        if len(set(self.keep)) != len(self.keep):
            raise ValueError(f"{self}: an axis is named twice")
        keep = [_axis(self, self.q, st, a) for a in self.keep]
        drop = [i for i in range(len(st.axes)) if i not in keep]
        order = sorted(keep)
        perm = [order.index(i) for i in keep]

        def g(y):
            return tf.transpose(tf.reduce_sum(fn(y), axis=drop), perm)

        return Structure(tuple(self.keep), tuple(st.shape[i] for i in keep)), g


@dataclass(frozen=True)
class _Normalize(Quantity):
    q: Quantity
    along: tuple[str, ...]
    label: str = field(default="normalize", compare=False)

    def __str__(self) -> str:
        return f"{self.label}({self.q}{''.join(', ' + _quote(a) for a in self.along)})"

    def _children(self) -> tuple[Quantity, ...]:
        return (self.q,)

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        st, fn = self.q._build(ws)
        if len(set(self.along)) != len(self.along):
            raise ValueError(f"{self}: an axis is named twice")
        along = [_axis(self, self.q, st, a) for a in self.along]

        def g(y):
            v = fn(y)
            return v / (tf.reduce_sum(v, axis=along, keepdims=True) if along else tf.reduce_sum(v))

        return st, g


@dataclass(frozen=True)
class _Asymmetry(Quantity):
    q: Quantity
    axis: str

    def __str__(self) -> str:
        return f"asymmetry({self.q}, {_quote(self.axis)})"

    def _children(self) -> tuple[Quantity, ...]:
        return (self.q,)

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        st, fn = self.q._build(ws)
        i = _axis(self, self.q, st, self.axis)
        if st.shape[i] != 2:
            raise ValueError(f"{self}: axis {self.axis!r} of {self.q} has {st.shape[i]} bins; an asymmetry needs "
                             f"an axis of 2 bins (select two first); the axes are {_describe(st)}")

        def g(y):
            a, b = tf.unstack(fn(y), axis=i)
            return (a - b) / (a + b)

        keep = [j for j in range(len(st.axes)) if j != i]
        return Structure(tuple(st.axes[j] for j in keep), tuple(st.shape[j] for j in keep)), g


@dataclass(frozen=True)
class _Ratio(Quantity):
    num: Quantity
    den: Quantity

    def __str__(self) -> str:
        return f"ratio({self.num}, {self.den})"

    def _children(self) -> tuple[Quantity, ...]:
        return (self.num, self.den)

    def _build(self, ws: Workspace) -> tuple[Structure, _Fn]:
        (sn, fn), (sd, fd) = self.num._build(ws), self.den._build(ws)
        unique = len(set(sn.axes)) == len(sn.axes) and len(set(sd.axes)) == len(sd.axes)
        sizes = dict(zip(sn.axes, sn.shape, strict=True))
        if unique and all(a in sizes and sizes[a] == n for a, n in zip(sd.axes, sd.shape, strict=True)):
            # broadcast the denominator over the numerator's other axes, matched by name
            perm = sorted(range(len(sd.axes)), key=lambda k: sn.axes.index(sd.axes[k]))
            shape = [n if a in sd.axes else 1 for a, n in zip(sn.axes, sn.shape, strict=True)]

            def g(y):
                return fn(y) / tf.reshape(tf.transpose(fd(y), perm), shape)

            return sn, g
        if sn.shape == sd.shape:
            return Structure(tuple(f"a{i}" for i in range(len(sn.axes))), sn.shape), lambda y: fn(y) / fd(y)
        raise ValueError(f"{self}: incompatible shapes: the numerator {self.num} has axes {_describe(sn)}, the "
                         f"denominator {self.den} has {_describe(sd)}; the denominator needs the numerator's axes "
                         "(all or some, by name and length) or the same shape")


# ---------------------------------------------------------------------------------------------- the grammar
_USAGE = {
    "select": "select(QUANTITY, AXIS=INDEX or AXIS=START:STOP, ...)",
    "project": "project(QUANTITY[, AXIS, ...])",
    "normalize": "normalize(QUANTITY[, AXIS, ...])",
    "asymmetry": "asymmetry(QUANTITY, AXIS)",
    "helicity_fractions": "helicity_fractions(QUANTITY[, AXIS])",
    "angular_coefficients": "angular_coefficients(QUANTITY[, AXIS])",
    "ratio": "ratio(QUANTITY, QUANTITY)",
}
_FUNCTIONS = tuple(_USAGE)
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<int>[+-]?\d+)|(?P<str>'[^']*'|\"[^\"]*\")"
                    r"|(?P<punct>[(),=:])|(?P<bad>\S))")


class _Token(NamedTuple):
    kind: str  # name, int, str, one of ( ) , = :, or end
    text: str
    col: int


def parse_quantity(text: str) -> Quantity:
    """The :class:`Quantity` written in ``text`` (the grammar of the module docstring; ``str(q)`` writes it).

    A recursive-descent parser: nothing is evaluated as Python.

    Raises:
        ValueError: A syntax error, with the column, what was expected and the usage of the function.

    Example:
        >>> str(parse_quantity("normalize( project(xsec,absy) )"))
        'normalize(project(xsec, absy))'
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_quantity: give the expression as a string, got {type(text).__name__}")
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[_Token] = []
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            if kind is None:  # trailing white space
                continue
            # a bad character is reported when the parser reaches it, so errors come in reading order
            self.tokens.append(_Token(m.group(kind) if kind == "punct" else kind, m.group(kind), m.start(kind)))
        self.tokens.append(_Token("end", "", len(text)))
        self.i = 0

    def error(self, msg: str, tok: _Token) -> ValueError:
        return ValueError(f"{msg} at column {tok.col + 1} of {self.text!r}")

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind == "bad":
            raise self.error(f"unexpected character {tok.text!r}", tok)
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def expect(self, kind: str, what: str) -> _Token:
        tok = self.next()
        if tok.kind != kind:
            raise self.error(f"expected {what}, found {_found(tok)}", tok)
        return tok

    def parse(self) -> Quantity:
        q = self.quantity()
        if self.peek().kind != "end":
            tok = self.next()  # a bad character raises here
            raise self.error(f"unexpected {_found(tok)} after the quantity {q}", tok)
        return q

    def quantity(self) -> Quantity:
        tok = self.next()
        if tok.kind == "name" and self.peek().kind == "(":
            if tok.text not in _USAGE:
                raise self.error(f"unknown function {tok.text!r}; the functions are {', '.join(_FUNCTIONS)}", tok)
            fname = tok.text
            self.next()
            q = self.quantity()
            args = []
            while self.peek().kind == ",":
                self.next()
                args.append(self.argument(fname))
            self.expect(")", f"',' or ')' in {_USAGE[fname]}")
            return self.apply(fname, q, args, tok)
        if tok.kind in ("name", "str"):
            return _Channel(_unquote(tok))
        raise self.error(f"expected a channel name or one of the functions {', '.join(_FUNCTIONS)}, "
                         f"found {_found(tok)}", tok)

    def axis(self, fname: str) -> str:
        tok = self.next()
        if tok.kind not in ("name", "str"):
            raise self.error(f"expected an axis name in {_USAGE[fname]}, found {_found(tok)}", tok)
        return _unquote(tok)

    def argument(self, fname: str) -> Any:
        if fname == "ratio":
            return self.quantity()
        axis = self.axis(fname)
        if fname != "select":
            return axis
        self.expect("=", f"'=' after the axis {axis!r} in {_USAGE[fname]}")
        start = self.integer()
        if self.peek().kind != ":":
            if start is None:
                raise self.error(f"expected a bin index or a slice START:STOP after {axis}=", self.peek())
            return axis, start
        self.next()
        stop = self.integer()
        step = None
        if self.peek().kind == ":":
            self.next()
            step = self.integer()
        return axis, slice(start, stop, step)

    def integer(self) -> int | None:
        if self.peek().kind == "int":
            return int(self.next().text)
        return None

    def apply(self, fname: str, q: Quantity, args: list[Any], tok: _Token) -> Quantity:
        counts = {"select": (1, None), "project": (0, None), "normalize": (0, None), "asymmetry": (1, 1),
                  "helicity_fractions": (0, 1), "angular_coefficients": (0, 1), "ratio": (1, 1)}
        lo, hi = counts[fname]
        if len(args) < lo or (hi is not None and len(args) > hi):
            raise self.error(f"{fname} takes {_USAGE[fname]}, got {len(args)} argument(s) after the quantity", tok)
        if fname == "select":
            axes = [a for a, _ in args]
            twice = sorted({a for a in axes if axes.count(a) > 1})
            if twice:
                raise self.error(f"select: axis {twice} given twice", tok)
            return q.select(dict(args))
        if fname == "ratio":
            return ratio(q, args[0])
        return getattr(q, fname)(*args)  # the methods of the same names


def _unquote(tok: _Token) -> str:
    return tok.text[1:-1] if tok.kind == "str" else tok.text


def _found(tok: _Token) -> str:
    return "the end of the expression" if tok.kind == "end" else repr(tok.text)
