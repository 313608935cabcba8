"""The options of a fit, defined once: :func:`~wfit.fitter.fit_workspace`, ``wfit fit``, the cluster fit
(:func:`wfit.pipeline.fit_on_cluster`) and :func:`wfit.pipeline.run_chain` all take a :class:`FitOptions`.

A new option is a field here (with its check in ``__post_init__``) and its flag in :mod:`wfit.fitter.cli`;
everything else (the keyword arguments of the fit functions, the dict sent to a Dask worker, the options
stored in a result file) follows from the fields.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["FitOptions"]

# What resolve_device (wfit.fitter._tf) accepts: a name, or a TensorFlow device string ("/GPU:1",
# "/device:CPU:0", "/job:localhost/replica:0/task:0/device:GPU:0").
_DEVICE_NAMES = (None, "auto", "cpu", "gpu")
_TF_DEVICE = re.compile(r"^(/job:[\w-]+(/replica:\d+)?(/task:\d+)?)?/(device:)?(CPU|GPU):\d+$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How a workspace is fitted (validated on construction; immutable).

    Attributes:
        asimov: Fit the Asimov data set (the expected yields at mu = 1, theta = 0) instead of the data.
        bb_lite: Barlow-Beeston lite treatment of the MC statistical uncertainty.
        bb_full: Full Barlow-Beeston instead of lite: one gamma-constrained factor per bin and process (rabbit
            main's ``--binByBinStatMode full --binByBinStatType gamma``); Poisson fits only.
        device: ``None`` (or ``"auto"``) for the GPU when TensorFlow sees one, else the CPU; ``"cpu"``,
            ``"gpu"``, or a TensorFlow device string such as ``"/GPU:1"``.
        tol: Tolerance on the estimated distance to the minimum (EDM), finite and > 0.
        max_iter: Iteration limit of the minimiser, an integer >= 1.
        poi_nonnegative: Keep the POIs (signal strengths mu) >= 0.
        seed: Seed of TensorFlow's global random generator (``tf.random.set_seed``), an integer >= 0.
        pseudodata: Fit the pseudo-data set of this name stored in the workspace (``hpseudodatanames``,
            rabbit's ``--pseudoData``) instead of the data; ``None`` fits the data.
        covariance_fit: The chi-square fit with the workspace's inverse data covariance
            (``hdata_cov_inv``, rabbit's ``--covarianceFit``) instead of the Poisson likelihood.
        priors: Gaussian priors ``(parameter, mean, sigma)`` on POIs or unconstrained nuisances: each adds
            ``0.5 ((x - mean) / sigma)^2`` to the NLL, so the fit is a maximum a posteriori and its
            covariance the posterior's (e.g. ``(("W_L", 1.0, 0.3),)`` holds a longitudinal helicity
            component to +-30%). A nuisance that already has a constraint cannot take one.
        regularize: Masked channels whose cross sections carry a curvature (Tikhonov/SVD) penalty, rabbit main's
            ``-r SVD Select CHANNEL`` (:mod:`wfit.fitter.regularization`).
        tau: The penalty's strength, ``exp(2 tau)`` (rabbit main's ``--regularizationStrength``).
        lcurve: Choose ``tau`` at the corner of the L-curve, scanned over ``tau - 3 .. tau + 3``.
        blind: Show the POIs and the nuisances of interest with deterministic hidden offsets
            (:mod:`wfit.fitter.blinding`) in the result, its file, the printed table and the figures; fits of the
            Asimov data set are not blinded.
        unblind: With ``blind``, the names or regular expressions (matched against whole names) of the
            parameters shown as fitted, e.g. ``("W_L.*",)``.
        blinding_groups: With ``blind``, regular expressions whose matching parameters share one offset, so that
            their ratios (POIs) or differences (nuisances) stay visible.

    Example:
        >>> from wfit.fitter import FitOptions
        >>> opts = FitOptions(tol=1e-12)
        >>> opts.replace(asimov=True).asimov
        True
        >>> FitOptions.from_dict(opts.to_dict()) == opts
        True
        >>> FitOptions(max_iter=0)
        Traceback (most recent call last):
        ...
        ValueError: fit option max_iter=0: the iteration limit must be an integer >= 1
    """

    asimov: bool = False
    bb_lite: bool = True
    bb_full: bool = False
    device: str | None = None
    tol: float = 1e-10
    max_iter: int = 200
    poi_nonnegative: bool = False
    seed: int = 0
    pseudodata: str | None = None
    covariance_fit: bool = False
    priors: tuple[tuple[str, float, float], ...] = ()
    regularize: tuple[str, ...] = ()
    tau: float = 0.0
    lcurve: bool = False
    blind: bool = False
    unblind: tuple[str, ...] = ()
    blinding_groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("asimov", "bb_lite", "bb_full", "poi_nonnegative", "covariance_fit", "blind", "lcurve"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be True or False")
        if not (
            isinstance(self.tol, numbers.Real)
            and not isinstance(self.tol, bool)
            and math.isfinite(self.tol)
            and self.tol > 0
        ):
            _fail("tol", self.tol, "the EDM tolerance must be a finite number > 0, e.g. 1e-10")
        if self.bb_full and not self.bb_lite:
            _fail("bb_full", self.bb_full,
                  "full Barlow-Beeston replaces the lite one: keep bb_lite=True (drop --no-bb-lite)")
        if self.bb_full and self.covariance_fit:
            _fail("bb_full", self.bb_full,
                  "full Barlow-Beeston is for Poisson fits, not the chi-square fit (covariance_fit)")
        if not (isinstance(self.tau, numbers.Real) and not isinstance(self.tau, bool) and math.isfinite(self.tau)):
            _fail("tau", self.tau, "the regularisation strength tau (log) must be a finite number, e.g. 0")
        object.__setattr__(self, "tau", float(self.tau))
        if isinstance(self.regularize, str) or not isinstance(self.regularize, (list, tuple)) or not all(
            isinstance(c, str) and c for c in self.regularize
        ):
            _fail("regularize", self.regularize, "a sequence of masked channel names, e.g. ('xsec',)")
        object.__setattr__(self, "regularize", tuple(self.regularize))
        _no_duplicates("regularize", self.regularize)
        if (self.lcurve or self.tau != 0.0) and not self.regularize:
            _fail("lcurve" if self.lcurve else "tau", self.lcurve if self.lcurve else self.tau,
                  "only has an effect with regularize=(channel, ...) (--regularize CHANNEL)")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            _fail("max_iter", self.max_iter, "the iteration limit must be an integer >= 1")
        if not _is_int(self.seed) or self.seed < 0:
            _fail("seed", self.seed, "the seed must be an integer >= 0")
        if self.pseudodata is not None and not (isinstance(self.pseudodata, str) and self.pseudodata):
            _fail("pseudodata", self.pseudodata, "the name of a pseudo-data set in the workspace, or None")
        if self.pseudodata is not None and self.asimov:
            _fail("pseudodata", self.pseudodata, "a stored pseudo-data set cannot be fitted with asimov=True")
        device = self.device
        if not (
            device is None
            or (isinstance(device, str) and (device.lower() in _DEVICE_NAMES or _TF_DEVICE.match(device)))
        ):
            _fail("device", device, "allowed: None, 'auto', 'cpu', 'gpu' or a TensorFlow device such as '/GPU:1'")
        # numpy scalars (e.g. from a parameter grid) become Python numbers: the options go to JSON.
        object.__setattr__(self, "tol", float(self.tol))
        object.__setattr__(self, "max_iter", int(self.max_iter))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "priors", _priors(self.priors))
        for name in ("unblind", "blinding_groups"):
            patterns = _patterns(name, getattr(self, name))
            if patterns and not self.blind:
                _fail(name, getattr(self, name), "only has an effect on a blinded fit: add blind=True (--blind)")
            _no_duplicates(name, patterns)
            object.__setattr__(self, name, patterns)

    @classmethod
    def resolve(cls, options: FitOptions | None = None, **changes: Any) -> FitOptions:
        """``options`` (the defaults when ``None``) with ``changes`` applied: what the fit functions do with
        their ``options`` argument and option keywords.

        Raises:
            TypeError: ``options`` is not a :class:`FitOptions`, or a name in ``changes`` is not an option.
            ValueError: A value is not allowed.
        """
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(
                f"options must be a FitOptions, got {type(options).__name__}; FitOptions.from_dict(d) makes one "
                "from a dict"
            )
        return options.replace(**changes) if changes else options

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in field order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> FitOptions:
        """A copy with ``changes`` applied (and validated).

        Raises:
            TypeError: A name in ``changes`` is not an option.
            ValueError: A value is not allowed.
        """
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown fit option(s) {unknown}; the options are {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict (what a Dask task receives and a result file stores)."""
        out = dataclasses.asdict(self)
        out["priors"] = [list(p) for p in self.priors]
        out["regularize"] = list(self.regularize)
        out["unblind"] = list(self.unblind)
        out["blinding_groups"] = list(self.blinding_groups)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True) -> FitOptions:
        """The options from :meth:`to_dict`'s dict; absent options take their defaults.

        Args:
            data: ``{option: value}``.
            strict: Refuse keys that are not options. ``strict=False`` skips them, so that the
                ``options`` of a :class:`~wfit.fitter.FitResult` (which also say where the fit ran:
                ``worker``, ``resources``) read back.

        Raises:
            ValueError: An unknown key (with ``strict``), or a value that is not allowed.
        """
        unknown = sorted(set(data) - set(cls.names()))
        if strict and unknown:
            raise ValueError(f"fit options {dict(data)}: unknown key(s) {unknown}; the options are {cls.names()}")
        return cls(**{k: v for k, v in data.items() if k in cls.names()})


def describe_priors(priors: Any) -> str:
    """``"W_L ~ N(1, 0.3), ..."``: the priors as the fit log and the result summary show them."""
    return ", ".join(f"{n} ~ N({m:g}, {s:g})" for n, m, s in priors)


def _priors(value: Any) -> tuple[tuple[str, float, float], ...]:
    """The priors as a tuple of ``(name, mean, sigma)`` with float numbers; lists (from JSON) are accepted."""
    rule = "a sequence of (parameter, mean, sigma), e.g. (('W_L', 1.0, 0.3),)"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        _fail("priors", value, rule)
    out = []
    for prior in value:
        if not (isinstance(prior, (list, tuple)) and len(prior) == 3 and isinstance(prior[0], str) and prior[0]):
            _fail("priors", value, rule)
        name, mean, sigma = prior
        for what, v in (("mean", mean), ("sigma", sigma)):
            if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)):
                _fail("priors", value, f"the {what} of the prior on {name!r} must be a finite number")
        if not sigma > 0:
            _fail("priors", value, f"the sigma of the prior on {name!r} must be > 0")
        out.append((name, float(mean), float(sigma)))
    names = [p[0] for p in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        _fail("priors", value, f"{twice} carry more than one prior: give each parameter one")
    return tuple(out)


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """Parameter names or regular expressions as a tuple of non-empty strings (lists from JSON too)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        _fail(name, value, "a sequence of parameter names or regular expressions, e.g. ('W_L.*',)")
    for pattern in value:
        if not (isinstance(pattern, str) and pattern):
            _fail(name, value, "each entry must be a non-empty parameter name or regular expression")
        try:
            re.compile(pattern)
        except re.error as err:
            _fail(name, value, f"{pattern!r} is not a regular expression ({err})")
    return tuple(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _no_duplicates(field_name: str, values: tuple) -> None:
    """A name given twice is a typo or a copy-paste: refuse it rather than guess what was meant."""
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        _fail(field_name, values, f"{twice} given more than once: give each once")


def _fail(name: str, value: Any, rule: str) -> None:
    raise ValueError(f"fit option {name}={value!r}: {rule}")
