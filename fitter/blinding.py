"""Blinding: the parameters of interest shown with a deterministic hidden offset until they are unblinded.

A blinded fit is an ordinary fit; what it shows and writes (the result file, the printed table, the figures,
the impacts and scans) goes through :meth:`Blinding.apply` first. The convention is rabbit main's
(``--unblind``, ``--blindingGroup``), so that the two fitters show the same blinded numbers:

* each POI ``mu`` is shown as ``mu / exp(v)`` and each nuisance of interest (``hnoiidxs``) ``theta`` as
  ``theta - v``, with its uncertainty and covariance transformed alike (correlations are unchanged);
* ``v`` is drawn from a normal distribution of width 5 seeded by the SHA-256 of the parameter's name (with
  ``_data`` appended when the fitted counts are integers, i.e. real data), so the offset is the same in every
  run and on every machine, and different for every parameter;
* the parameters matching one blinding group (a regular expression, matched against the whole name) share the
  offset seeded by the group's expression, so that their differences and ratios stay visible;
* ``unblind`` lists the names or regular expressions (whole-name match) of the parameters shown as fitted.

Fits of the Asimov data set are never blinded: their POIs are the prediction.

Example:
    >>> from wfit.fitter.blinding import Blinding
    >>> b = Blinding.for_parameters(["W_plus", "W_minus", "lumi"], npoi=2, noi=[], integer_data=True)
    >>> b.names
    ('W_plus', 'W_minus')
    >>> Blinding.for_parameters(["W_plus", "lumi"], npoi=1, noi=[], integer_data=True, unblind=["W_.*"]).names
    ()
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["Blinding", "blinding_offset", "match_names", "require_unblinded"]

_WIDTH = 5.0  # the width of the offsets (in log(mu) for POIs), rabbit main's
#: Post-fit products (``FitResult.extra``) with the POIs on their first axis, in the POIs' units.
POI_UNITS = ("impacts", "impacts_grouped", "global_impacts", "global_impacts_grouped", "asym_impacts",
             "asym_impacts_grouped")


def blinding_offset(seed: str, integer_data: bool) -> float:
    """The offset ``v`` of a parameter (or group) named ``seed``: a normal number of width 5 seeded by SHA-256."""
    key = seed.encode("utf-8") + (b"_data" if integer_data else b"")
    digest = int(hashlib.sha256(key).hexdigest(), 16)
    return float(np.random.default_rng(np.random.SeedSequence(digest)).normal(0.0, _WIDTH))


def match_names(patterns: Sequence[str], names: Sequence[str], what: str) -> list[str]:
    """The names equal to a pattern or matching it as a whole-name regular expression, in the order of ``names``.

    Raises:
        ValueError: A pattern that is not a regular expression, or one that matches no name (a typo would
            otherwise leave a parameter blinded, or a group unformed, without a word).
    """
    out: list[str] = []
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{what} {pattern!r} is not a regular expression ({err})") from None
        hits = [n for n in names if n == pattern or rx.fullmatch(n)]
        if not hits:
            raise ValueError(
                f"{what} {pattern!r} matches none of the blinded parameters (the POIs {list(names)[:5]}... and the "
                "nuisances of interest); give a name or a regular expression matching whole names, e.g. 'W_.*'"
            )
        out += [n for n in hits if n not in out]
    return out


@dataclasses.dataclass(frozen=True)
class Blinding:
    """The hidden offsets of one fit's parameters.

    Attributes:
        names: The blinded parameters.
        scale: Per parameter of the fit, the factor ``exp(v)`` its shown value is divided by (1 if none).
        shift: Per parameter, the offset ``v`` subtracted from its shown value (0 if none).
        groups: The blinding groups.
    """

    names: tuple[str, ...]
    scale: np.ndarray
    shift: np.ndarray
    groups: tuple[str, ...] = ()

    @classmethod
    def for_parameters(
        cls,
        names: Sequence[str],
        npoi: int,
        noi: Sequence[int],
        *,
        integer_data: bool,
        unblind: Sequence[str] = (),
        groups: Sequence[str] = (),
    ) -> Blinding:
        """The blinding of the POIs (``names[:npoi]``) and the nuisances of interest (``names[npoi + i]`` for the
        ``i`` in ``noi``).

        Raises:
            ValueError: An unblind pattern or group that matches nothing, or a parameter both unblinded and in a
                group (the intent is ambiguous; rabbit main refuses it too).
        """
        names = list(names)
        noi_names = [names[npoi + int(i)] for i in noi]
        blindable = names[:npoi] + [n for n in noi_names if n not in names[:npoi]]
        shown = set(match_names(unblind, blindable, "unblind"))
        seed = {n: n for n in blindable}
        in_group: dict[str, str] = {}
        for g in groups:
            for n in match_names([g], blindable, "blinding group"):
                in_group.setdefault(n, g)  # the first matching group wins, as in rabbit main
        both = sorted(shown & set(in_group))
        if both:
            raise ValueError(
                f"{both} match both unblind and a blinding group ({', '.join(repr(in_group[n]) for n in both)}); "
                "tighten the expressions so that each parameter is either unblinded or in a group"
            )
        seed.update(in_group)
        scale, shift = np.ones(len(names)), np.zeros(len(names))
        blinded = []
        for i, n in enumerate(names):
            if n not in seed or n in shown:
                continue
            v = blinding_offset(seed[n], integer_data)
            if i < npoi:
                scale[i] = np.exp(v)
            else:
                shift[i] = v
            blinded.append(n)
        return cls(tuple(blinded), scale, shift, tuple(groups))

    @classmethod
    def for_fit(cls, ws, options, data: np.ndarray) -> Blinding | None:
        """The blinding of a fit of ``data`` to a workspace with :class:`~wfit.fitter.FitOptions` ``options``, or
        ``None`` (not blinded, or an Asimov fit)."""
        if not options.blind or options.asimov:
            return None
        return cls.for_parameters(
            list(ws.signals) + list(ws.systs),
            len(ws.signals),
            ws.noi_idxs,
            integer_data=bool(np.any(np.asarray(data) == np.floor(data))),
            unblind=options.unblind,
            groups=options.blinding_groups,
        )

    def values(self, x: np.ndarray) -> np.ndarray:
        """Shown parameter values: ``x / scale - shift``."""
        return np.asarray(x, dtype=np.float64) / self.scale - self.shift

    def reveal(self, shown: np.ndarray) -> np.ndarray:
        """The fitted values from shown ones (the inverse of :meth:`values`)."""
        return (np.asarray(shown, dtype=np.float64) + self.shift) * self.scale

    def covariance(self, cov: np.ndarray) -> np.ndarray:
        """Shown covariance: ``C_ij / (scale_i scale_j)``."""
        return np.asarray(cov) / np.outer(self.scale, self.scale)

    def apply(self, result):
        """A copy of a :class:`~wfit.fitter.FitResult` as it is shown: values, errors, covariance, and the impacts
        and scans in ``extra``, with the offsets; ``options["blinded"]`` lists the blinded parameters."""
        if not self.names:
            return result
        npoi = result.npoi
        extra = dict(result.extra)
        for key in POI_UNITS:  # [npoi, ...] in units of the POI
            if key in extra:
                table = np.asarray(extra[key])
                extra[key] = table / self.scale[:npoi].reshape(-1, *[1] * (table.ndim - 1))
        for key, table in result.extra.items():
            if key.startswith("scan_") and key[5:] in result.names:  # columns: the scanned value, q
                i = result.names.index(key[5:])
                table = np.array(table, dtype=np.float64)
                table[:, 0] = table[:, 0] / self.scale[i] - self.shift[i]
                extra[key] = table
        return dataclasses.replace(
            result,
            values=self.values(result.values),
            errors=np.asarray(result.errors) / self.scale,
            covariance=self.covariance(result.covariance),
            options={**result.options, "blinded": list(self.names), "blinding_groups": list(self.groups)},
            extra=extra,
            blinding=None,
        )

    def apply_impacts(self, imp):
        """:class:`~wfit.fitter.breakdown.Impacts` in the units of the shown POIs."""
        npoi = len(imp.pois)
        return dataclasses.replace(
            imp, values=imp.values / self.scale[:npoi, None], grouped=imp.grouped / self.scale[:npoi, None]
        )


def require_unblinded(result, what: str) -> None:
    """Refuse a shown (blinded) result where the fitted values are needed: its values carry the offsets."""
    if (result.options or {}).get("blinded"):
        raise ValueError(
            f"{what} needs the fitted values, and this result is blinded (its values carry hidden offsets): "
            "compute it in fit_workspace's post_fit hook, which receives the fitted result, or fit with "
            "blind=False (--blind off, or --unblind NAME for the parameters you may look at)"
        )
