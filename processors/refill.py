"""The processor's templates refilled from an event-columns file (:mod:`wfit.columns`) with hard cuts.

:func:`hard_templates` fills the processor's ``templates_syst`` histogram of one dataset for given cuts: the same
entries in the same order with the same weight products and the same chunk-by-chunk accumulation, so that on the
same events it equals the processor's histogram bit for bit (tested). :func:`columns_config` is the
:class:`TemplateConfig` recorded in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from wfit.columns import ColumnsError, DatasetColumns, EventColumns

from .config import TemplateConfig
from .processor import syst_histogram

__all__ = ["columns_config", "hard_templates"]


def columns_config(columns: EventColumns) -> TemplateConfig:
    """The :class:`TemplateConfig` of the binning and cuts recorded in an event-columns file (the processor's
    defaults for the rest)."""
    return TemplateConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in columns.config.items()})


def hard_templates(
    dataset: DatasetColumns, config: Any, *, mt_min: float, iso_max: float, pt_min: float
) -> Any:
    """The processor's ``templates_syst`` histogram of one dataset, filled from its columns with hard cuts.

    An entry is kept where ``mt >= mt_min``, ``iso < iso_max`` and ``pt > pt_min`` (the processor's conventions:
    its signal region and its candidate threshold), in each table, and for the jet-calibration variations with
    that variation's mT.

    Args:
        dataset: From :func:`wfit.columns.read_columns`.
        config: The :class:`~wfit.processors.TemplateConfig` whose axes to fill (the processor's).
        mt_min, iso_max, pt_min: The cuts.
    """
    nominal = dataset.tables["nominal"]
    c = nominal.columns

    def keep(cols: Mapping[str, np.ndarray], mt: np.ndarray) -> np.ndarray:
        return (mt >= mt_min) & (cols["iso"] < iso_max) & (cols["pt"] > pt_min)

    # (name, table, per-entry mask, weights of the kept entries' table rows): filled chunk by chunk and added,
    # as the processor's chunk outputs are accumulated (the same sums in the same order).
    fills: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    k = keep(c, c["mt"])
    fills.append(("nominal", "nominal", k, c["w"] * c["fac"]))
    for i, name in enumerate(nominal.ratio_names):
        fills.append((name, "nominal", k, (c["w"] * nominal.ratios[:, i]) * c["fac"]))
    for i, name in enumerate(nominal.mt_names):
        fills.append((name, "nominal", keep(c, nominal.mt_variations[:, i]), c["w"] * c["fac"]))
    for name, table in dataset.tables.items():
        if name != "nominal":
            t = table.columns
            fills.append((name, name, keep(t, t["mt"]), t["w"] * t["fac"]))
    bounds = {name: np.concatenate([[0], np.cumsum(t.chunks)]) for name, t in dataset.tables.items()}
    n_chunks = {len(b) - 1 for b in bounds.values()}
    if len(n_chunks) != 1:
        raise ColumnsError(f"dataset {dataset.name!r}: tables of different chunk counts {sorted(n_chunks)}")
    names = [f[0] for f in fills]
    total = syst_histogram(config, dataset.kind == "signal", names)
    for i in range(n_chunks.pop()):
        h = syst_histogram(config, dataset.kind == "signal", names)
        for name, table, mask, weight in fills:
            lo, hi = bounds[table][i], bounds[table][i + 1]
            rows = lo + np.flatnonzero(mask[lo:hi])
            cols = dataset.tables[table].columns
            h.fill(syst=name, component=cols["component"][rows], charge=cols["charge"][rows],
                   eta=cols["eta"][rows], pt=cols["pt"][rows], weight=weight[rows])  # fmt: skip
        total = h if i == 0 else total + h
    return total
