"""The coffea processor that measures the angular coefficients A0 and A4 of W MC (moments of cos(theta*)).

Run it on the W MC before the template processor and pass
``AngularCoefficients.from_moments(out[dataset]["moments"])`` to
:class:`~wfit.processors.processor.WTemplateProcessor`; cos(theta*) is in the Collins-Soper frame with the
convention of :mod:`wfit.processors.helicity`.

Example:
    >>> from wfit.processors import AngularCoefficients, AngularCoefficientsProcessor, run_templates  # doctest: +SKIP
    >>> run = run_templates({"W": ["w.root"]}, AngularCoefficientsProcessor())  # doctest: +SKIP
    >>> coefficients = AngularCoefficients.from_moments(run.output["W"]["moments"])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import hist
import numpy as np
from coffea import processor

from .accumulator import Accumulator
from .config import TemplateConfig
from .helicity import gen_w_from_events

__all__ = ["AngularCoefficientsProcessor"]


def _moments_hist(config: TemplateConfig) -> hist.Hist:
    return hist.Hist(
        hist.axis.IntCategory([1, -1], name="charge", label="W charge"),
        hist.axis.Variable(list(config.absy_edges) + [np.inf], name="absy", label="|y_W|", flow=False),
        hist.axis.Variable(
            list(config.coeff_pt_edges) + [np.inf], name="ptW", label="pT_W [GeV]", flow=False
        ),
        hist.axis.Integer(0, 3, name="moment", label="moment (1, cos, cos^2)", flow=False),
        storage=hist.storage.Double(),
    )


class AngularCoefficientsProcessor(processor.ProcessorABC):
    """Coffea processor that fills the moments (sum w, sum w c, sum w c^2) of cos(theta*).

    Weights are sign(genWeight). The output per dataset is ``{"moments": hist}`` with axes
    ``(charge, absy, ptW [GeV], moment)``, the input of
    :meth:`~wfit.processors.helicity.AngularCoefficients.from_moments`.

    Args:
        config: Binning (``absy_edges``, ``coeff_pt_edges``).
    """

    def __init__(self, config: TemplateConfig | None = None) -> None:
        self.config = config or TemplateConfig()

    def process(self, events: Any) -> Accumulator:
        dataset = events.metadata.get("dataset", "unknown")
        h = _moments_hist(self.config)
        if "genWeight" not in events.fields or "GenPart" not in events.fields:
            raise ValueError(
                f"file {events.metadata.get('filename')!r} (dataset {dataset!r}) has no genWeight/GenPart: "
                "angular coefficients are measured on W Monte Carlo only; remove data files from this fileset"
            )
        if len(events):
            gen = gen_w_from_events(events)
            w = np.sign(np.asarray(events.genWeight, dtype=np.float64))[gen.found]
            c = gen.cos_theta[gen.found]
            for m, wm in enumerate((w, w * c, w * c * c)):
                h.fill(
                    charge=gen.charge[gen.found],
                    absy=gen.absy[gen.found],
                    ptW=gen.pt[gen.found],
                    moment=np.full(len(c), m),
                    weight=wm,
                )
        return Accumulator({dataset: Accumulator({"moments": h})})

    def postprocess(self, accumulator: Any) -> Any:
        return accumulator
