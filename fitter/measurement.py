"""The W helicity/rapidity measurement's results and figures, from a fit result with its post-fit products.

A workspace built with ``build_workspace(..., cross_sections=coefficients)`` has the masked channel ``xsec``
(W charge x |y_W| x helicity, generator-level cross sections in pb). Fitted with the :data:`QUANTITIES` as derived
quantities, impacts and yields (``run_chain(..., derived=QUANTITIES, impacts=True, yields=True)``, or
``wfit fit --derived ... --impacts``), its result holds everything :class:`Measurement` reads:

* the polarised cross sections per charge, |y_W| bin and helicity, and the unpolarised ones per charge and |y_W|
  bin (``dsigma/d|y_W|``: divided by the bin width), with their joint covariance;
* the helicity fractions and the charge asymmetry ``(W+ - W-) / (W+ + W-)`` per |y_W| bin;
* the uncertainty breakdown of the POIs in the analysis's groups (:data:`BREAKDOWN`).

:func:`plot_measurement` draws the figures with mplhep: the cross sections and the asymmetry versus |y_W| against
the prediction, the grouped uncertainties versus |y_W|, the POIs' correlations and the post-fit unrolled (eta, pT)
distributions per charge with the data/prediction ratio and the uncertainty band.

This module reads result files with numpy only; it imports neither TensorFlow nor the fitter's likelihood.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from wfit.plots import _mpl, _save

__all__ = ["BREAKDOWN", "QUANTITIES", "Measurement", "plot_measurement"]

#: The derived quantities of the measurement (each as its expression prints itself, the key of the result file).
QUANTITIES: tuple[str, ...] = (
    "xsec",
    "project(xsec, charge, absy)",
    "helicity_fractions(xsec, helicity)",
    "asymmetry(project(xsec, charge, absy), charge)",
)

#: The uncertainty groups of the breakdown (the workspace's groups, ``stat`` and ``binByBinStat`` from the fit's
#: grouped impacts) and their labels.
BREAKDOWN: dict[str, str] = {
    "stat": "statistical",
    "binByBinStat": "MC statistical (Barlow-Beeston)",
    "eff": "efficiency",
    "muon": "momentum scale",
    "QCDscale": "QCD scales",
    "pdf": "PDF",
    "fakes": "fakes",
    "lumi": "luminosity",
    "others": "others",
}


# One colour per breakdown group (the first five solid, the others dashed).
_GROUP_COLOURS = ("k", "#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd", "#3f90da", "#b9ac70")


@dataclass
class Measurement:
    """The measured quantities of one fit result (values and uncertainties from its joint covariance).

    Attributes:
        absy_edges: |y_W| edges of the bins, the last one (the overflow) up to |y_W| = 10.
        xsec, xsec_err: Polarised cross sections in pb, ``[charge (W+, W-), |y_W| bin, helicity (L, R, 0)]``.
        unpolarised, unpolarised_err: Per charge and |y_W| bin, pb.
        fractions, fractions_err: Helicity fractions, like ``xsec``.
        asymmetry, asymmetry_err: Charge asymmetry per |y_W| bin.
        breakdown: ``{group: [npoi] uncertainty}`` of the POIs (absolute, on the signal strengths).
        pois: The POI names (rows of the breakdown).
    """

    absy_edges: np.ndarray
    xsec: np.ndarray
    xsec_err: np.ndarray
    unpolarised: np.ndarray
    unpolarised_err: np.ndarray
    fractions: np.ndarray
    fractions_err: np.ndarray
    asymmetry: np.ndarray
    asymmetry_err: np.ndarray
    breakdown: dict[str, np.ndarray]
    pois: list[str]

    @classmethod
    def from_result(cls, result: Any, absy_edges: Any) -> Measurement:
        """Read the :data:`QUANTITIES` and the grouped impacts from a result's ``extra``.

        Raises:
            KeyError: The result lacks them (with the fix).
        """
        extra = result.extra
        if "derived_expressions" not in extra or "impacts_grouped" not in extra:
            raise KeyError(
                "the fit result has no derived quantities or no impacts: fit with derived=QUANTITIES and impacts=True "
                "(wfit.fitter.measurement), or wfit fit --derived ... --impacts"
            )
        expressions = [str(e) for e in extra["derived_expressions"]]
        values, errors, which = extra["derived_values"], extra["derived_errors"], extra["derived_quantity"]

        def get(expression: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
            if expression not in expressions:
                raise KeyError(f"the fit result has no derived quantity {expression!r}; it has {expressions}")
            k = expressions.index(expression)
            return values[which == k].reshape(shape), errors[which == k].reshape(shape)

        edges = np.asarray([*absy_edges, max(10.0, absy_edges[-1] + 1.0)], dtype=float)
        n = len(edges) - 1
        xsec, xsec_err = get(QUANTITIES[0], (2, n, 3))
        unpol, unpol_err = get(QUANTITIES[1], (2, n))
        frac, frac_err = get(QUANTITIES[2], (2, n, 3))
        asym, asym_err = get(QUANTITIES[3], (n,))
        groups = [str(g) for g in extra["impact_groups"]]
        grouped = np.asarray(extra["impacts_grouped"])
        breakdown = {g: grouped[:, groups.index(g)] for g in BREAKDOWN if g in groups}
        return cls(edges, xsec, xsec_err, unpol, unpol_err, frac, frac_err, asym, asym_err, breakdown,
                   list(result.names[: result.npoi]))  # fmt: skip

    @property
    def widths(self) -> np.ndarray:
        """|y_W| bin widths."""
        return np.diff(self.absy_edges)

    def table(self) -> str:
        """The unpolarised dsigma/d|y_W| and the asymmetry per |y_W| bin, as text."""
        lines = [f"{'|y_W|':>11} {'dsigma/d|y| W+ [pb]':>24} {'dsigma/d|y| W- [pb]':>24} {'asymmetry':>18}"]
        for i in range(len(self.widths)):
            lo, hi = self.absy_edges[i], self.absy_edges[i + 1]
            w = self.widths[i]
            cells = [f"{self.unpolarised[q, i] / w:12.1f} +- {self.unpolarised_err[q, i] / w:7.1f}" for q in (0, 1)]
            lines.append(f"{lo:4.2f}-{hi:5.2f} {cells[0]:>24} {cells[1]:>24} "
                         f"{self.asymmetry[i]:8.4f} +- {self.asymmetry_err[i]:.4f}")  # fmt: skip
        return "\n".join(lines)


def plot_measurement(
    result: Any,
    absy_edges: Any,
    prediction: dict[str, float],
    folder: str | os.PathLike[str],
    *,
    eta_pt_bins: tuple[int, int] | None = None,
    component_names: list[str] | None = None,
) -> list[str]:
    """Write the measurement's figures into ``folder`` and return their paths.

    Args:
        result: A :class:`~wfit.fitter.FitResult` with the :data:`QUANTITIES`, impacts and (for the unrolled
            distributions) the pre- and post-fit yields.
        absy_edges: The configuration's |y_W| edges (``TemplateConfig.absy_edges``).
        prediction: The generator-level cross section of each component in pb (``build_workspace``'s summary
            ``cross_sections``).
        folder: Where to write.
        eta_pt_bins: ``(n_eta, n_pt)`` of the (eta, pt, charge) channel, for the unrolled distributions.
        component_names: ``TemplateConfig.component_names`` (the order of ``prediction``'s components).
    """
    m = Measurement.from_result(result, absy_edges)
    names = component_names or list(prediction)
    pred = np.array([prediction.get(n, np.nan) for n in names]).reshape(2, len(m.widths), 3)
    os.makedirs(folder, exist_ok=True)
    Figure, style, mplhep = _mpl()
    paths: list[str] = []
    # The overflow bin (up to |y| = 10) is left out of the versus-|y_W| figures.
    n = len(m.widths) - 1
    edges, centres, widths = m.absy_edges[: n + 1], 0.5 * (m.absy_edges[:n] + m.absy_edges[1 : n + 1]), m.widths[:n]
    charges, helicities = ("W+", "W-"), ("left", "right", "longitudinal")
    colours = ("#5790fc", "#e42536", "#964a8b")

    def save(fig: Any, name: str) -> None:
        path = os.path.join(os.fspath(folder), name)
        fig.tight_layout()
        _save(fig, path)
        paths.append(path)

    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(14, 6))
        axes = fig.subplots(1, 2, sharey=True)
        for q, ax in enumerate(axes):
            for k, colour in enumerate(colours):
                mplhep.histplot(pred[q, :n, k] / widths, edges, ax=ax, color=colour, ls="--", label=f"{helicities[k]}, prediction")
                ax.errorbar(centres, m.xsec[q, :n, k] / widths, yerr=m.xsec_err[q, :n, k] / widths, fmt="o", color=colour,
                            ms=4, label=f"{helicities[k]}, measured")  # fmt: skip
            ax.set_title(charges[q])
            ax.set_xlabel("|y_W|")
        axes[0].set_ylabel("dsigma/d|y_W| [pb]")
        axes[0].legend(fontsize=10)
        save(fig, "xsec_polarised.png")

        fig = Figure(figsize=(8, 7))
        ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        unpol_pred = pred.sum(axis=2)
        for q, colour in enumerate(colours[:2]):
            mplhep.histplot(unpol_pred[q, :n] / widths, edges, ax=ax, color=colour, ls="--", label=f"{charges[q]} prediction")
            ax.errorbar(centres, m.unpolarised[q, :n] / widths, yerr=m.unpolarised_err[q, :n] / widths, fmt="o",
                        color=colour, ms=4, label=f"{charges[q]} measured")  # fmt: skip
            rel = m.unpolarised_err[q, :n] / m.unpolarised[q, :n]
            ratio = m.unpolarised[q, :n] / unpol_pred[q, :n]
            rax.fill_between(edges, np.r_[1 - rel, 1 - rel[-1]], np.r_[1 + rel, 1 + rel[-1]], step="post", color=colour, alpha=0.25)
            rax.plot(centres, ratio, "o", color=colour, ms=4)
        ax.set_ylabel("dsigma/d|y_W| [pb]")
        ax.legend(fontsize=11)
        rax.axhline(1.0, color="k", lw=0.8)
        rax.set_ylabel("measured / pred.")
        rax.set_xlabel("|y_W|")
        save(fig, "xsec_unpolarised.png")

        fig = Figure(figsize=(8, 6))
        ax = fig.subplots()
        asym_pred = (unpol_pred[0] - unpol_pred[1]) / (unpol_pred[0] + unpol_pred[1])
        mplhep.histplot(asym_pred[:n], edges, ax=ax, color="k", ls="--", label="prediction")
        ax.fill_between(edges, np.r_[m.asymmetry[:n] - m.asymmetry_err[:n], m.asymmetry[n - 1] - m.asymmetry_err[n - 1]],
                        np.r_[m.asymmetry[:n] + m.asymmetry_err[:n], m.asymmetry[n - 1] + m.asymmetry_err[n - 1]],
                        step="post", color="#5790fc", alpha=0.3, label="measured, total uncertainty")  # fmt: skip
        ax.errorbar(centres, m.asymmetry[:n], yerr=m.asymmetry_err[:n], fmt="o", color="#5790fc", ms=4)
        ax.set_xlabel("|y_W|")
        ax.set_ylabel("(W+ - W-) / (W+ + W-)")
        ax.legend()
        save(fig, "charge_asymmetry.png")

        fig = Figure(figsize=(14, 9))
        grid = fig.subplots(2, 2, sharex=True)
        for q in range(2):
            for k in range(2):  # left and right: the POIs
                ax = grid[q, k]
                rows = [m.pois.index(names[(q * len(m.widths) + y) * 3 + k]) for y in range(n)
                        if names[(q * len(m.widths) + y) * 3 + k] in m.pois]  # fmt: skip
                if len(rows) != n:
                    continue
                for (g, label), colour, ls in zip(BREAKDOWN.items(), _GROUP_COLOURS, ("-",) * 5 + ("--",) * 4, strict=True):
                    if g in m.breakdown:
                        ax.plot(centres, m.breakdown[g][rows], drawstyle="steps-mid", label=label, color=colour, ls=ls)
                ax.set_title(f"{charges[q]}, {helicities[k]}")
                ax.set_yscale("log")
                ax.set_ylabel("uncertainty on mu")
        for ax in grid[1]:
            ax.set_xlabel("|y_W|")
        grid[0, 0].legend(fontsize=9, ncol=2)
        save(fig, "uncertainty_breakdown.png")

        corr = result.correlation()[: result.npoi, : result.npoi]
        fig = Figure(figsize=(11, 10))
        ax = fig.subplots()
        im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(result.npoi), m.pois, rotation=90, fontsize=6)
        ax.set_yticks(range(result.npoi), m.pois, fontsize=6)
        fig.colorbar(im, ax=ax, label="correlation")
        save(fig, "poi_correlation.png")

        if eta_pt_bins is not None and "postfit_yields" in result.extra:
            n_eta, n_pt = eta_pt_bins
            size = n_eta * n_pt * 2
            post, err = result.extra["postfit_yields"][:size], result.extra["postfit_errors"][:size]
            data = result.extra["data_yields"][:size]
            fig = Figure(figsize=(18, 10))
            panels = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 3, 1.2]})
            x = np.arange(n_eta * n_pt + 1)
            for q, label in enumerate(("negative", "positive")):  # the charge axis's order: -1, +1
                ax, rax = panels[2 * q], panels[2 * q + 1]
                p, e, d = post[q::2], err[q::2], data[q::2]  # (eta, pt) unrolled, pt fastest
                mplhep.histplot(p, x, ax=ax, color="#5790fc", label="post-fit")
                ax.fill_between(x, np.r_[p - e, p[-1] - e[-1]], np.r_[p + e, p[-1] + e[-1]], step="post", color="#5790fc", alpha=0.3)
                ax.errorbar(x[:-1] + 0.5, d, yerr=np.sqrt(d), fmt="k.", ms=2, label="data")
                ax.set_ylabel("events")
                ax.set_title(f"{label} leptons", fontsize=14, loc="left")
                ax.legend(fontsize=10)
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = np.where(p > 0, e / p, 0.0)
                    rax.plot(x[:-1] + 0.5, d / p, "k.", ms=1.5)
                rax.fill_between(x, np.r_[1 - rel, 1 - rel[-1]], np.r_[1 + rel, 1 + rel[-1]], step="post", color="#5790fc", alpha=0.5)
                rax.axhline(1.0, color="k", lw=0.5)
                rax.set_ylim(0.5, 1.5)
                rax.set_ylabel("data/pred.", fontsize=12)
            panels[-1].set_xlabel(f"unrolled bin (eta x pT: {n_eta} x {n_pt}, pT fastest)")
            save(fig, "postfit_unrolled.png")
    return paths
