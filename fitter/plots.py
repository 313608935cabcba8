"""Post-fit plots with mplhep: pulls and constraints, ranked impacts, correlations, unrolled templates."""

from __future__ import annotations

import os

import numpy as np

from wfit.fitter.derived import propagate
from wfit.fitter.impacts import Impacts
from wfit.fitter.likelihood import Likelihood
from wfit.fitter.result import FitResult

__all__ = ["plot_all", "plot_correlation", "plot_impacts", "plot_prepostfit", "plot_pulls"]


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.CMS)
    return plt, mplhep


def _save(fig, path: str) -> str:
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)  # never a half-written plot
    return path


def plot_pulls(result: FitResult, path: str, max_params: int = 40) -> str:
    """Nuisance pulls (post-fit value) and constraints (post-fit uncertainty), largest pulls first."""
    plt, _ = _mpl()
    idx = np.arange(result.npoi, len(result.names))
    idx = idx[np.argsort(-np.abs(result.values[idx]))][:max_params][::-1]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(idx) + 2))
    y = np.arange(len(idx))
    ax.axvspan(-1, 1, color="#ffe08a", alpha=0.5, label=r"pre-fit $\pm1\sigma$")
    ax.errorbar(result.values[idx], y, xerr=result.errors[idx], fmt="ko", label="post-fit")
    ax.set_yticks(y, [result.names[i] for i in idx], fontsize=10)
    reach = max(2.0, float(np.max(np.abs(result.values[idx]) + result.errors[idx], initial=0.0)) * 1.1)
    ax.set_xlim(-reach, reach)
    ax.set_xlabel(r"$(\hat\theta - \theta_0)/\Delta\theta$")
    ax.legend(loc="upper right", fontsize=12)
    return _save(fig, path)


def plot_impacts(imp: Impacts, poi: str, path: str, n: int = 30) -> str:
    """Ranked per-nuisance impacts on one POI."""
    plt, _ = _mpl()
    ranked = imp.ranked(poi, n)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(ranked) + 2))
    y = np.arange(len(ranked))
    vals = np.array([v for _, v in ranked])
    ax.barh(y, vals, color=np.where(vals > 0, "#5790fc", "#e42536"))
    ax.set_yticks(y, [name for name, _ in ranked], fontsize=10)
    ax.set_xlabel(f"impact on {poi}")
    ax.axvline(0, color="k", lw=0.8)
    return _save(fig, path)


def plot_correlation(result: FitResult, path: str, max_params: int = 60) -> str:
    """Correlation matrix of the POIs and the most correlated nuisances."""
    plt, _ = _mpl()
    corr = result.correlation()
    npoi = result.npoi
    strength = np.max(np.abs(corr[:npoi, npoi:]), axis=0) if npoi else np.zeros(len(result.names))
    nuis = npoi + np.argsort(-strength)[: max(0, max_params - npoi)]
    idx = np.r_[np.arange(min(npoi, max_params)), np.sort(nuis)].astype(int)
    fig, ax = plt.subplots(figsize=(10, 9))
    im = ax.imshow(corr[np.ix_(idx, idx)], cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [result.names[i] for i in idx]
    ax.set_xticks(range(len(idx)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(idx)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="correlation")
    return _save(fig, path)


def plot_prepostfit(ll: Likelihood, result: FitResult, path: str) -> str:
    """Data and the pre- and post-fit expectation of the unmasked bins, unrolled, with uncertainty bands."""
    plt, mplhep = _mpl()
    prefit = ll.asimov_data(ll.x0)
    postfit, cov = propagate(result, lambda x, beta: ll._yields(x, ll.bb_lite))
    # pre-fit band: nuisances at +-1 sigma, uncorrelated, linearised
    pre = FitResult(result.names, result.npoi, ll.x0, np.ones_like(ll.x0),
                    np.diag(np.r_[np.zeros(ll.npoi), np.ones(ll.nsyst)]), 0.0, 0.0, result.status, 0)
    _, cov_pre = propagate(pre, lambda x, beta: ll._yields(x, False))
    data = ll.data
    edges = np.arange(len(data) + 1)
    fig, (ax, rax) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for vals, c, color, label in ((prefit, cov_pre, "#f89c20", "pre-fit"), (postfit, cov, "#5790fc", "post-fit")):
        err = np.sqrt(np.diag(c))
        mplhep.histplot(vals, edges, ax=ax, color=color, label=label)
        ax.fill_between(edges, np.r_[vals - err, vals[-1] - err[-1]], np.r_[vals + err, vals[-1] + err[-1]],
                        step="post", color=color, alpha=0.3)
        rax.fill_between(edges, np.r_[1 - err / vals, 1 - err[-1] / vals[-1]],
                         np.r_[1 + err / vals, 1 + err[-1] / vals[-1]], step="post", color=color, alpha=0.3)
    mplhep.histplot(data, edges, ax=ax, histtype="errorbar", yerr=np.sqrt(data), color="k", label="data")
    rax.errorbar(edges[:-1] + 0.5, data / postfit, yerr=np.sqrt(data) / postfit, fmt="k.", ms=3)
    for ch in ll.ws.channels:
        if not ch.masked:
            ax.axvline(ch.start, color="grey", lw=0.5)
    ax.set_ylabel("events / bin")
    ax.legend()
    rax.set_ylabel("data / post-fit")
    rax.set_xlabel("unrolled bin")
    rax.set_ylim(0.8, 1.2)
    return _save(fig, path)


def plot_all(ll: Likelihood, result: FitResult, folder: str, imp: Impacts | None = None) -> list[str]:
    """Write every post-fit plot into ``folder`` and return their paths."""
    os.makedirs(folder, exist_ok=True)
    out = [plot_pulls(result, os.path.join(folder, "pulls.png")),
           plot_correlation(result, os.path.join(folder, "correlation.png")),
           plot_prepostfit(ll, result, os.path.join(folder, "prepostfit.png"))]
    if imp is not None:
        for poi in imp.pois[:5]:
            out.append(plot_impacts(imp, poi, os.path.join(folder, f"impacts_{poi}.png")))
    import matplotlib.pyplot as plt

    plt.close("all")
    return out
