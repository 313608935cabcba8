"""The TensorFlow binned maximum-likelihood fit of a wfit (or rabbit) workspace.

Public API (imported lazily, so that ``import wfit.fitter`` is cheap and never imports coffea)::

    from wfit.fitter import fit_workspace, FitOptions, Likelihood, fit, FitResult, read_result, FitStatus
    from wfit.fitter import impacts, scan, scan2d, run_toys, goodness_of_fit
    from wfit.fitter.derived import evaluate, channel, ratio  # composed cross sections, joint covariance
    from wfit.fitter.derived import masked_channel, normalized, asymmetry, summed  # one quantity each
    from wfit.fitter.breakdown import global_impacts, asymmetric_impacts  # rabbit main's impact kinds
    from wfit.fitter.scanning import profile_interval                      # MINOS-like intervals
    from wfit.fitter.regularization import lcurve                          # regularised unfolding
    from wfit.fitter.blinding import Blinding                              # what a blinded fit shows
    from wfit.fitter.plots import plot_all
    from wfit.fitter.cutopt import CutModel, Cuts, optimize_cuts  # the precision's gradient in the cuts

The POIs are signal strengths mu (not sqrt(mu)), one per signal process; the NLL has Poisson
terms with the saturated offset, Gaussian constraints on log-normal nuisances, and Barlow-Beeston
lite (or full) for the MC statistics. See :mod:`wfit.fitter.likelihood` for the model.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FitOptions",
    "FitResult",
    "FitStatus",
    "Likelihood",
    "fit",
    "fit_workspace",
    "goodness_of_fit",
    "impacts",
    "read_result",
    "run_toys",
    "scan",
    "scan2d",
]

_WHERE = {
    "FitOptions": "wfit.fitter.options",
    "FitResult": "wfit.fitter.result",
    "read_result": "wfit.fitter.result",
    "FitStatus": "wfit.fitter.minimize",
    "Likelihood": "wfit.fitter.likelihood",
    "fit": "wfit.fitter.fitting",
    "fit_workspace": "wfit.fitter.fitting",
    "impacts": "wfit.fitter.breakdown",
    "scan": "wfit.fitter.scanning",
    "scan2d": "wfit.fitter.scanning",
    "run_toys": "wfit.fitter.toys",
    "goodness_of_fit": "wfit.fitter.toys",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'wfit.fitter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
