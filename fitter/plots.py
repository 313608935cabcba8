"""Post-fit figures with mplhep: pulls and constraints, ranked impacts, correlations, pre/post-fit templates.

Each function returns a ``matplotlib.figure.Figure`` and, given a path, writes it atomically
(the drawing helpers are shared with :mod:`wfit.plots`).

Example:
    >>> from wfit.fitter.plots import plot_pulls, plot_all  # doctest: +SKIP
    >>> plot_pulls(result, path="pulls.png")  # doctest: +SKIP
    >>> plot_all(ll, result, "plots/", impacts)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from wfit.plots import _mpl, _save

if TYPE_CHECKING:
    from wfit.fitter.breakdown import Impacts
    from wfit.fitter.cutopt import CutModel, Cuts, OptimizeResult
    from wfit.fitter.likelihood import Likelihood
    from wfit.fitter.result import FitResult

__all__ = [
    "plot_all",
    "plot_correlation",
    "plot_cut_dependence",
    "plot_impacts",
    "plot_lcurve",
    "plot_prepostfit",
    "plot_pulls",
]


def plot_pulls(
    result: FitResult,
    *,
    max_params: int = 40,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """The fitted nuisance parameters (pulls theta_hat with their Hessian uncertainties).

    The nuisances are in units of their prior width, so a good fit has values near 0 with
    uncertainties at most 1 (shaded: +-1 and +-2). The ``max_params`` largest |pulls| are shown.

    Args:
        result: A :class:`wfit.fitter.FitResult`.
        max_params: How many nuisances to show.
        path: Write the figure there.

    Returns:
        The matplotlib figure.
    """
    Figure, style, mplhep = _mpl()
    idx = np.arange(result.npoi, len(result.names))
    if idx.size == 0:
        raise ValueError("plot_pulls: the fit result has no nuisance parameters")
    idx = idx[np.argsort(-np.abs(result.values[idx]), kind="stable")][:max_params][::-1]
    y = np.arange(idx.size)
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 2 + 0.28 * idx.size))
        ax = fig.subplots()
        ax.axvspan(-2, 2, color="gold", alpha=0.4, lw=0)
        ax.axvspan(-1, 1, color="limegreen", alpha=0.5, lw=0)
        ax.errorbar(result.values[idx], y, xerr=result.errors[idx], fmt="o", color="k", ms=4)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [result.names[i] for i in idx], fontsize=10)
        ax.set_xlabel(r"$\hat\theta$ (units of the prior width)")
        ax.set_xlim(-2.5, 2.5)
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_impacts(imp: Impacts, poi: str, *, n: int = 30, path: str | os.PathLike[str] | None = None) -> Any:
    """Ranked per-nuisance impacts on one POI (``C_ij / sqrt(C_jj)``, largest first)."""
    Figure, style, mplhep = _mpl()
    ranked = imp.ranked(poi, n)[::-1]
    vals = np.array([v for _, v in ranked])
    y = np.arange(len(ranked))
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 2 + 0.28 * len(ranked)))
        ax = fig.subplots()
        ax.barh(y, vals, color=np.where(vals > 0, "#5790fc", "#e42536"))
        ax.set_yticks(y, [name for name, _ in ranked], fontsize=10)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"impact on {poi}")
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_correlation(result: FitResult, *, max_params: int = 60, path: str | os.PathLike[str] | None = None) -> Any:
    """Correlation matrix of the POIs and of the nuisances most correlated with them."""
    Figure, style, mplhep = _mpl()
    corr = result.correlation()
    npoi = result.npoi
    strength = np.max(np.abs(corr[:npoi, npoi:]), axis=0) if npoi else np.zeros(len(result.names) - npoi)
    nuis = npoi + np.argsort(-strength, kind="stable")[: max(0, max_params - npoi)]
    idx = np.r_[np.arange(min(npoi, max_params)), np.sort(nuis)].astype(int)
    labels = [result.names[i] for i in idx]
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(10, 9))
        ax = fig.subplots()
        im = ax.imshow(corr[np.ix_(idx, idx)], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(idx)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(idx)), labels, fontsize=7)
        fig.colorbar(im, ax=ax, label="correlation")
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_lcurve(result: FitResult, *, path: str | os.PathLike[str] | None = None) -> Any:
    """The L-curve of a regularised fit (``result.extra["lcurve"]``: tau, lx, ly, curvature) and its curvature, with
    the chosen strength marked."""
    if "lcurve" not in result.extra:
        raise ValueError("plot_lcurve: the result has no L-curve (fit with lcurve=True, --lcurve)")
    tau, lx, ly, kappa = np.asarray(result.extra["lcurve"]).T
    best = float(result.options.get("tau", np.nan))
    Figure, style, mplhep = _mpl()
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(14, 6))
        left, right = fig.subplots(1, 2)
        left.plot(lx, ly, "o-", color="k", ms=4)
        at = np.argmin(np.abs(tau - best))
        left.plot(lx[at], ly[at], "*", color="crimson", ms=16, label=rf"chosen $\tau$ = {best:.3g}")
        left.set_xlabel(r"log(NLL $-$ penalty)")
        left.set_ylabel(r"log(penalty / e$^{2\tau}$)")
        left.legend()
        right.plot(tau, kappa, "o-", color="k", ms=4)
        right.axvline(best, color="crimson")
        right.set_xlabel(r"$\tau$")
        right.set_ylabel("curvature of the L-curve")
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_prepostfit(ll: Likelihood, result: FitResult, *, path: str | os.PathLike[str] | None = None) -> Any:
    """Data with the pre- and post-fit expectation of the unmasked bins, unrolled, with uncertainty bands.

    The post-fit band is the covariance of the yields, ``J C J^T``; the pre-fit band takes every
    constrained nuisance at its prior width, uncorrelated.
    """
    from wfit.fitter.postfit import prepost_yields

    Figure, style, mplhep = _mpl()
    y = prepost_yields(ll, result)
    prefit, err_pre, postfit, err_post, data = (y[k] for k in ("prefit_yields", "prefit_errors", "postfit_yields",
                                                              "postfit_errors", "data_yields"))  # fmt: skip
    edges = np.arange(len(data) + 1)

    def band(ax, center, err, color, ratio_to=None):
        lo, hi = center - err, center + err
        if ratio_to is not None:
            lo, hi = lo / ratio_to, hi / ratio_to
        ax.fill_between(edges, np.r_[lo, lo[-1]], np.r_[hi, hi[-1]], step="post", color=color, alpha=0.3, lw=0)

    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(12, 7))
        ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        for vals, err, color, label in ((prefit, err_pre, "#f89c20", "pre-fit"), (postfit, err_post, "#5790fc", "post-fit")):
            mplhep.histplot(vals, edges, ax=ax, color=color, label=label)
            band(ax, vals, err, color)
            band(rax, vals, err, color, ratio_to=vals)
        mplhep.histplot(data, edges, ax=ax, histtype="errorbar", yerr=np.sqrt(data), color="k", label="data")
        rax.errorbar(edges[:-1] + 0.5, data / postfit, yerr=np.sqrt(data) / postfit, fmt="k.", ms=3)
        for ch in ll.ws.channels:
            if not ch.masked and ch.start:
                ax.axvline(ch.start, color="grey", lw=0.5)
        ax.set_ylabel("events / bin")
        ax.legend()
        rax.set_ylabel("data / post-fit")
        rax.set_xlabel("unrolled bin")
        rax.set_ylim(0.8, 1.2)
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_cut_dependence(
    model: CutModel,
    target: Any,
    cuts: Cuts,
    cut: str,
    values: Any,
    *,
    widths: Any = None,
    optimum: OptimizeResult | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """The expected uncertainty of ``target`` versus one cut threshold (the others held at ``cuts``): soft cuts
    as a line, hard cuts as points, the gradient at ``cuts`` as its tangent, and an optimiser's result.

    Args:
        model: A :class:`wfit.fitter.cutopt.CutModel`.
        target: A POI name or a function of the POI vector (as :meth:`CutModel.expected_uncertainty`).
        cuts: The point whose gradient is drawn.
        cut: The threshold on the x axis, one of :data:`wfit.fitter.cutopt.CUT_NAMES`.
        values: Its values (hard cuts at each; the soft line on a grid four times finer).
        widths: Soft-cut widths (default :data:`wfit.fitter.cutopt.DEFAULT_WIDTHS`).
        optimum: A :class:`wfit.fitter.cutopt.OptimizeResult` to mark.
        path: Write the figure there.
    """
    import dataclasses

    from wfit.fitter.cutopt import CUT_NAMES, DEFAULT_WIDTHS

    if cut not in CUT_NAMES:
        raise ValueError(f"plot_cut_dependence(cut={cut!r}): use one of {CUT_NAMES}")
    widths = DEFAULT_WIDTHS if widths is None else widths
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or not np.isfinite(values).all():
        raise ValueError("plot_cut_dependence: values must be at least two finite thresholds")
    fine = np.linspace(values.min(), values.max(), 4 * values.size)
    at = {name: [model.expected_uncertainty(dataclasses.replace(cuts, **{cut: float(v)}), target, w)
                 for v in grid] for name, grid, w in (("soft", fine, widths), ("hard", values, None))}  # fmt: skip
    sigma, grad = model.value_and_gradient(cuts, target, widths)
    x0, slope = getattr(cuts, cut), grad[CUT_NAMES.index(cut)]
    label = target if isinstance(target, str) else "target"
    Figure, style, mplhep = _mpl()
    with style.context(mplhep.style.CMS):
        fig = Figure(figsize=(9, 7))
        ax = fig.subplots()
        ax.plot(fine, at["soft"], color="steelblue", label="soft cuts")
        ax.plot(values, at["hard"], "o", color="k", ms=5, label="hard cuts")
        half = 0.15 * (values.max() - values.min())
        ax.plot([x0 - half, x0 + half], [sigma - slope * half, sigma + slope * half], color="crimson",
                label=rf"gradient at {x0:g}: {slope:.3g} per unit")  # fmt: skip
        if optimum is not None:
            moved = [n for n in CUT_NAMES if n != cut and not np.isclose(getattr(optimum.cuts, n), getattr(cuts, n))]
            note = f" (with {', '.join(f'{n} {getattr(optimum.cuts, n):.3g}' for n in moved)})" if moved else ""
            ax.axvline(getattr(optimum.cuts, cut), color="darkorange", ls="--",
                       label=f"optimum {getattr(optimum.cuts, cut):.3g}{note}")  # fmt: skip
        ax.set_xlabel(cut)
        ax.set_ylabel(rf"expected $\sigma$({label})")
        ax.legend(fontsize=14)
        fig.tight_layout()
        _save(fig, path)
    return fig


def plot_all(
    ll: Likelihood, result: FitResult, folder: str | os.PathLike[str], imp: Impacts | None = None
) -> list[str]:
    """Write every post-fit figure into ``folder`` (impacts for up to five POIs) and return the paths."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    jobs = {
        "pulls.png": lambda p: plot_pulls(result, path=p),
        "correlation.png": lambda p: plot_correlation(result, path=p),
        "prepostfit.png": lambda p: plot_prepostfit(ll, result, path=p),
    }
    if len(result.names) == result.npoi:  # no nuisances: no pulls to draw
        del jobs["pulls.png"]
    if "lcurve" in result.extra:
        jobs["lcurve.png"] = lambda p: plot_lcurve(result, path=p)
    for poi in imp.pois[:5] if imp is not None else []:
        jobs[f"impacts_{poi}.png"] = lambda p, poi=poi: plot_impacts(imp, poi, path=p)
    out = []
    for name, draw in jobs.items():
        draw(os.path.join(folder, name))
        out.append(os.path.join(folder, name))
    return out
