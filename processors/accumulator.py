"""The output type of the processors: a dict of histograms and counts that adds with ``+``.

Example:
    >>> a = Accumulator({"n": 2, "files": {"a.root"}})
    >>> b = Accumulator({"n": 3, "files": {"b.root"}, "sumw": 1.5})
    >>> s = a + b
    >>> s["n"], sorted(s["files"]), s["sumw"], a["n"]
    (5, ['a.root', 'b.root'], 1.5, 2)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from coffea.processor import accumulator as _acc

__all__ = ["Accumulator"]


class Accumulator(dict):
    """A dict that adds with ``+``: keys are merged, values added with coffea's accumulator rules.

    Values may be ``hist.Hist``, numbers, sets (united) or nested :class:`Accumulator` objects.
    ``a + b`` leaves both inputs unchanged; ``a += b`` updates ``a``.
    """

    def __add__(self, other: Mapping[str, Any]) -> Accumulator:
        out = Accumulator()
        for key, value in self.items():
            out[key] = _acc.add(value, other[key]) if key in other else copy.deepcopy(value)
        for key, value in other.items():
            if key not in self:
                out[key] = copy.deepcopy(value)
        return out

    def __radd__(self, other: Any) -> Accumulator:
        if other == 0:  # sum() starts from 0
            return copy.deepcopy(self)
        return Accumulator(other) + self

    def __iadd__(self, other: Mapping[str, Any]) -> Accumulator:
        for key, value in other.items():
            self[key] = _acc.iadd(self[key], value) if key in self else copy.deepcopy(value)
        return self
