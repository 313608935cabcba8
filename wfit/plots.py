"""Figures with mplhep: stacked lepton templates, and the drawing helpers of every wfit figure.

Each function returns the figure and, given a path, writes it atomically (:mod:`wfit.atomic`).
Figures are ``matplotlib.figure.Figure`` objects, not pyplot's, so a batch job keeps no registry of
them and a notebook shows the returned figure once. matplotlib and mplhep are imported when a
function is called, never by ``import wfit``. The fit's figures (pulls, impacts,
correlations, pre/post-fit) are in :mod:`wfit.fitter.plots`.

Example:
    >>> from wfit.plots import plot_templates  # doctest: +SKIP
    >>> plot_templates({"W+": h_wplus, "Z": h_z}, axis="pt", data=h_obs, path="templates_pt.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from wfit.atomic import atomic_path

__all__ = ["plot_templates"]


def _save(fig: Any, path: str | os.PathLike[str] | None) -> None:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (PNG without one)."""
    if path is None:
        return
    fmt = os.path.splitext(os.fspath(path))[1][1:] or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=fmt)


def _mpl() -> tuple[Any, Any, Any]:
    # Figures are made with matplotlib.figure.Figure, not pyplot: nothing is kept in pyplot's figure
    # registry (a batch job may draw many) and a notebook shows the returned figure once, as its result.
    import matplotlib.style
    import mplhep
    from matplotlib.figure import Figure

    return Figure, matplotlib.style, mplhep


def plot_templates(
    templates: Mapping[str, Any],
    *,
    axis: str = "pt",
    data: Any = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Any:
    """Stack templates projected on one axis, with the data (or pseudo-data) on top.

    Args:
        templates: ``{label: hist.Hist}``, e.g. the ``"nominal"`` templates per process of
            :func:`wfit.processors.process_templates` (axes eta, pt [GeV], charge), in stacking order.
        axis: The axis to project on (``"pt"``, ``"eta"`` or ``"charge"``).
        data: A histogram with the same axes, drawn as points with sqrt(N) errors.
        path: Write the figure there (PNG/PDF by suffix).
        title: Text in the top-left corner.

    Returns:
        The matplotlib figure.
    """
    Figure, style, mplhep = _mpl()
    if not templates:
        raise ValueError("plot_templates: no templates to draw; pass {label: hist.Hist}")
    projected = {k: h.project(axis) for k, h in templates.items()}
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 6))
        ax = fig.subplots()
        mplhep.histplot(
            list(projected.values()), label=list(projected), stack=True, histtype="fill", ax=ax, edgecolor="k"
        )
        if data is not None:
            d = data.project(axis)
            mplhep.histplot(
                d, yerr=np.sqrt(np.clip(d.values(), 0, None)), histtype="errorbar", color="k", label="data", ax=ax
            )
        first = next(iter(projected.values()))
        ax.set_xlabel(first.axes[0].label or axis)
        ax.set_ylabel("events / bin")
        if title:
            ax.set_title(title, loc="left", fontsize=14)
        ax.legend(fontsize=12, ncol=2)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        fig.tight_layout()
        _save(fig, path)
    return fig
