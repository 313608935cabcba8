"""The cut thresholds of the differentiable selection and their checks, numpy only (no TensorFlow), so that a
client checks them before it submits work (:func:`wfit.pipeline.cut_gradient_on_cluster`);
:mod:`wfit.fitter.cutopt` computes with them.

Example:
    >>> cut_vector(Cuts(40.0, 0.15, 26.0)).tolist()
    [40.0, 0.15, 26.0]
    >>> width_vector([1.0, 0.0, 0.5])
    Traceback (most recent call last):
    ValueError: widths must be 3 finite numbers > 0 ('mt_min', 'iso_max', 'pt_min'), got [1.0, 0.0, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CUT_NAMES", "DEFAULT_WIDTHS", "Cuts", "cut_vector", "width_vector"]

#: The cut thresholds, in this order wherever they travel as a vector.
CUT_NAMES = ("mt_min", "iso_max", "pt_min")

#: Default transition widths of the soft cuts (mT GeV, isolation, pT GeV): the narrowest stage of
#: :func:`wfit.fitter.cutopt.optimize_cuts`'s schedule.
DEFAULT_WIDTHS = (1.0, 0.005, 0.5)


@dataclass(frozen=True)
class Cuts:
    """Cut thresholds: ``mT >= mt_min`` (GeV), ``iso < iso_max``, lepton ``pT > pt_min`` (GeV)."""

    mt_min: float
    iso_max: float
    pt_min: float

    def array(self) -> np.ndarray:
        return np.array([self.mt_min, self.iso_max, self.pt_min], dtype=np.float64)

    @classmethod
    def from_array(cls, x: Sequence[float]) -> Cuts:
        return cls(*(float(v) for v in x))


def cut_vector(cuts: Cuts | Sequence[float]) -> np.ndarray:
    """The thresholds as a float64 vector (:data:`CUT_NAMES` order); raises ValueError unless 3 finite numbers."""
    x = np.asarray(cuts.array() if isinstance(cuts, Cuts) else cuts, dtype=np.float64)
    if x.shape != (3,) or not np.isfinite(x).all():
        raise ValueError(f"cuts must be 3 finite thresholds {CUT_NAMES}, got {x.tolist()!r}")
    return x


def width_vector(widths: Any) -> np.ndarray:
    """Soft-cut widths as a float64 vector; raises ValueError unless 3 finite numbers > 0."""
    w = np.asarray(widths, dtype=np.float64)
    if w.shape != (3,) or not (np.isfinite(w).all() and np.all(w > 0)):
        raise ValueError(f"widths must be 3 finite numbers > 0 {CUT_NAMES}, got {w.tolist()!r}")
    return w
