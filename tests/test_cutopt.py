"""Differentiable selection (wfit.fitter.cutopt, wfit.fitter.softcuts): the expected precision with hard cuts equals
an Asimov fit of the workspace built from the hard-cut templates; its gradient in the cuts equals central finite
differences and the closed form of a counting experiment; the optimiser finds the brute-force scan's optimum; the
gradient of a data/model comparison recovers an injected mis-modelling."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm

from tests.builders import central_differences, write_column_toys
from wfit.columns import DatasetColumns, EventColumns, Table, read_columns
from wfit.fitter import fit_workspace
from wfit.fitter._tf import tf
from wfit.fitter.cutopt import DEFAULT_WIDTHS, CutModel, Cuts, optimize_cuts, scan_by_refit
from wfit.fitter.softcuts import hard_cut, log_soft_cut, soft_cut
from wfit.processors import Sample

SAMPLES = {"W": Sample("signal", 20000.0), "Z": Sample("background", 2000.0),
           "QCD": Sample("background", 20000.0, process="QCD")}  # fmt: skip
POI = "Wplus_y2_L"
CUTS = Cuts(40.0, 0.15, 26.0)


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_column_toys(tmp_path_factory.mktemp("cutopt"), 6000)[1]


@pytest.fixture(scope="module")
def model(columns: str) -> CutModel:
    return CutModel(columns, SAMPLES, lumi=1.0)


def _asymmetry(model: CutModel) -> Any:
    """The W charge asymmetry of the predicted |y_W| < 0.25 yields, a function of the POIs."""
    plus = [i for i, n in enumerate(model.signals) if n.startswith("Wplus_y0_")]
    minus = [i for i, n in enumerate(model.signals) if n.startswith("Wminus_y0_")]

    def f(mu: Any) -> Any:
        a, b = tf.reduce_sum(tf.gather(mu, plus)), tf.reduce_sum(tf.gather(mu, minus))
        return (a - b) / (a + b)

    return f, plus, minus


# ---------------------------------------------------------------------- soft cuts
def test_soft_cuts_are_stable_and_tend_to_the_hard_cut() -> None:
    x = np.array([-1e4, -3.0, -1e-3, 0.0, 1e-3, 3.0, 1e4])
    for kind in ("sigmoid", "erf"):
        for width in (1.0, 1e-2, 1e-4):
            s = soft_cut(x, 0.0, width, kind).numpy()
            assert np.isfinite(s).all() and np.all((s >= 0) & (s <= 1))
            far = np.abs(x) > 100 * width
            np.testing.assert_array_equal(s[far], hard_cut(x, 0.0).numpy()[far])
        log_s = log_soft_cut(x, 0.0, 1.0, kind).numpy()
        assert np.isfinite(log_s).all()
    np.testing.assert_allclose(log_soft_cut(-1e4, 0.0, 1.0).numpy(), -1e4)  # sigmoid: -softplus(1e4) = -1e4
    np.testing.assert_allclose(log_soft_cut(-30.0, 0.0, 1.0, "erf").numpy(), norm.logcdf(-30.0), rtol=1e-12)
    np.testing.assert_allclose(soft_cut(0.7, 0.2, 0.5).numpy(), 1 / (1 + math.exp(-1.0)), rtol=1e-14)
    with pytest.raises(ValueError, match="width must be a finite number > 0"):
        soft_cut(x, 0.0, 0.0)


def test_small_widths_give_the_hard_cut_templates(model: CutModel) -> None:
    """Tolerance: with widths of 1/100 of the defaults (0.01 GeV in mT, 5e-5 in isolation, 5 MeV in pT), every
    process's nominal template is within 1e-2 (relative, per bin of more than one event: the pT bin at the
    threshold holds the entries within a few widths of it) of the hard-cut one, and the deviation falls with the
    width, at least 5 times per factor 10."""
    hard, _ = model.templates(CUTS, None)
    devs = []
    for scale in (10.0, 1.0, 0.1, 0.01):
        soft, _ = model.templates(CUTS, tuple(w * scale for w in DEFAULT_WIDTHS))
        dev = 0.0
        for p in model.processes:
            h, s = hard[p]["nominal"], soft[p]["nominal"]
            big = h > 1.0
            if big.any():
                dev = max(dev, float(np.max(np.abs(s[big] / h[big] - 1))))
        devs.append(dev)
    assert devs == sorted(devs, reverse=True) and devs[0] > 1e-2
    assert devs[-1] < 1e-2 and devs[-2] > 5 * devs[-1], devs


# ---------------------------------------------------------------------- against the fitter
def test_hard_cuts_equal_an_asimov_fit_of_the_built_workspace(columns: str, model: CutModel, tmp_path: Path) -> None:
    """The brute-force path (templates refilled from the columns, the workspace builder, the fitter's Asimov fit
    with Barlow-Beeston lite) and the expected information of the model agree for POIs and a derived quantity."""
    (sigma_fit,) = scan_by_refit(columns, SAMPLES, [CUTS], POI, lumi=1.0, workdir=tmp_path)
    res = fit_workspace(tmp_path / "scan0.hdf5", asimov=True)
    assert res.ok and set(res.names) == set(model.names)
    for name in (POI, "Wminus_y0_R", model.signals[-1]):
        np.testing.assert_allclose(model.expected_uncertainty(CUTS, name, None),
                                   res.errors[res.names.index(name)], rtol=1e-9)  # fmt: skip
    np.testing.assert_allclose(model.expected_uncertainty(CUTS, POI, None), sigma_fit, rtol=1e-9)
    f, plus, minus = _asymmetry(model)
    idx = [res.names.index(model.signals[i]) for i in plus + minus]
    g = np.concatenate([np.full(len(plus), 2 * len(minus)), np.full(len(minus), -2 * len(plus))]) / (
        len(plus) + len(minus)) ** 2  # d((a - b) / (a + b)) at a = len(plus), b = len(minus)  # fmt: skip
    cov = res.covariance[np.ix_(idx, idx)]
    np.testing.assert_allclose(model.expected_uncertainty(CUTS, f, None), math.sqrt(g @ cov @ g), rtol=1e-9)


def test_negative_bins_are_zero_in_the_workspace_and_in_the_model(columns: str, tmp_path: Path) -> None:
    """Negative-weight entries (as an NLO sample's) that make some bins of a process negative: the workspace holds
    them as zero and its Asimov data is the sum of the processes as written, and the model's hard-cut uncertainty
    equals the Asimov fit of that workspace."""
    from wfit.workspace import read_workspace

    cols = read_columns(columns)
    z = cols.datasets["Z"]
    tables = {}
    for name, t in z.tables.items():
        c = dict(t.columns)
        region = (c["eta"] > 2.0) & (c["charge"] > 0)
        c["w"] = np.where(region, -20.0 * c["w"], c["w"])
        tables[name] = dataclasses.replace(t, columns=c)
    changed = EventColumns(cols.path, cols.config, {**cols.datasets, "Z": dataclasses.replace(z, tables=tables)})
    m = CutModel(changed, SAMPLES, lumi=1.0)
    (sigma_fit,) = scan_by_refit(changed, SAMPLES, [CUTS], POI, lumi=1.0, workdir=tmp_path)
    ws = read_workspace(tmp_path / "scan0.hdf5")
    hard, _ = m.templates(CUTS, None)
    assert np.sum(hard["Z"]["nominal"] < 0) == ws.meta["clipped_negative_bins"]["mu_sr/Z"] > 0
    np.testing.assert_allclose(ws.data_obs, ws.norm.sum(axis=1)[: len(ws.data_obs)], rtol=1e-12)
    np.testing.assert_allclose(m.expected_uncertainty(CUTS, POI, None), sigma_fit, rtol=1e-9)


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", ["sigmoid", "erf"])
def test_gradient_equals_central_finite_differences(columns: str, model: CutModel, kind: str) -> None:
    m = model if kind == "sigmoid" else CutModel(read_columns(columns), SAMPLES, lumi=1.0, kind=kind)
    widths = (4.0, 0.02, 2.0)
    start = Cuts(35.0, 0.2, 25.0)
    f, _, _ = _asymmetry(m)
    for target in (POI, f):
        value, grad = m.value_and_gradient(start, target, widths)
        fd = central_differences(lambda x, target=target: m.expected_uncertainty(x, target, widths), start.array(),
                                  np.array(widths) * (1e-2 if isinstance(target, str) else 5e-2))  # fmt: skip
        # The differences carry the rounding of the Cholesky solve (about 1e-10 of sigma for the asymmetry,
        # whose information matrix is the worse conditioned: a larger step and 1e-4 there; 1e-5 for the POI), of
        # the largest component for the smaller ones.
        tol = 1e-5 if isinstance(target, str) else 1e-4
        np.testing.assert_allclose(grad, fd, rtol=tol, atol=tol * np.abs(fd).max())
        assert np.all(np.abs(grad) > 1e-6)  # every cut matters here
        assert value == pytest.approx(m.expected_uncertainty(start, target, widths), rel=1e-14)


def _counting_columns(signal: tuple[float, float], background: float, s_total: float, b_total: float) -> EventColumns:
    """One bin (one eta bin, one pT bin, positive charge): signal mT ~ N(mean, sd) and background mT ~ Exp(scale),
    as weighted midpoint quadrature over [0, 400] GeV (40000 entries each)."""
    dx = 0.01
    x = np.arange(0.0, 400.0, dx) + dx / 2
    ws = s_total * norm.pdf(x, *signal) * dx
    wb = b_total * np.exp(-x / background) / background * dx

    def table(w: np.ndarray) -> Table:
        n = len(w)
        cols = {"pt": np.full(n, 40.0), "eta": np.zeros(n), "charge": np.ones(n, dtype=np.int8), "mt": x,
                "iso": np.zeros(n), "component": np.zeros(n, dtype=np.int16), "fac": np.ones(n), "w": w}  # fmt: skip
        return Table(cols, chunks=np.array([n]))

    config = {"channel": "mu", "eta_bins": [1, -2.4, 2.4], "pt_bins": [1, 0.0, 1000.0], "signal_region": [40.0, 0.15],
              "lepton_pt_min": 0.0, "absy_edges": [0.0, 1.0], "eff_groups": 1, "lumi_uncertainty": 0.0}  # fmt: skip
    return EventColumns("counting", config, {
        "S": DatasetColumns("S", "signal", 1.0, 1, [], {"nominal": table(ws)}),
        "B": DatasetColumns("B", "mc", 1.0, 1, [], {"nominal": table(wb)}),
    })  # fmt: skip


def test_counting_experiment_closed_form() -> None:
    """sigma(mu) = sqrt(s + b) / s with s(t) = S (1 - Phi((t - 80) / 10)), b(t) = B exp(-t / 20), and its derivative
    (s' + b') / (2 s sqrt(s + b)) - sqrt(s + b) s' / s^2, for an mT cut t (erf soft cut of width 0.05 GeV; the
    Gaussian's width is then sqrt(100 + 0.05^2), which the closed form uses)."""
    S, B = 400.0, 1000.0
    samples = {"S": Sample("signal", 1.0), "B": Sample("background", 1.0)}
    model = CutModel(_counting_columns((80.0, 10.0), 20.0, S, B), samples, lumi=1.0, systematics=False, kind="erf",
                     bb_lite=False)  # fmt: skip
    poi = model.signals[0]
    sd = math.hypot(10.0, 0.05)
    for t in (30.0, 60.0, 90.0):
        s = S * norm.sf(t, 80.0, sd)
        ds = -S * norm.pdf(t, 80.0, sd)
        b = B * math.exp(-t / 20.0) * math.exp(0.05**2 / (2 * 20.0**2))  # the exponential convolved with the kernel
        db = -b / 20.0
        sigma = math.sqrt(s + b) / s
        dsigma = (ds + db) / (2 * s * math.sqrt(s + b)) - math.sqrt(s + b) * ds / s**2
        value, grad = model.value_and_gradient(Cuts(t, 0.5, 10.0), poi, (0.05, 0.001, 0.1))
        assert value == pytest.approx(sigma, rel=1e-6), t
        assert grad[0] == pytest.approx(dsigma, rel=1e-5), t
        np.testing.assert_allclose(grad[1:], 0.0, atol=1e-12)  # every entry far inside the other cuts


# ---------------------------------------------------------------------- optimisation
@pytest.mark.slow  # 15 workspaces built and fitted (about 3 minutes)
def test_the_optimiser_finds_the_optimum_of_a_brute_force_scan(columns: str, model: CutModel, tmp_path: Path) -> None:
    """The mT threshold: a hard-cut refit scan in 5 GeV steps, and the gradient optimiser from the scan's edge;
    the optimiser's threshold is within one step of the scan's best point."""
    grid = np.arange(0.0, 75.0, 5.0)
    points = [dataclasses.replace(CUTS, mt_min=float(t)) for t in grid]
    scanned = scan_by_refit(columns, SAMPLES, points, POI, lumi=1.0, workdir=tmp_path)
    best = grid[int(np.argmin(scanned))]
    assert 0.0 < best < 70.0  # an interior optimum: the question is not decided by the bounds
    res = optimize_cuts(model, POI, dataclasses.replace(CUTS, mt_min=60.0), {"mt_min": (0.0, 70.0)},
                        fixed=("iso_max", "pt_min"))  # fmt: skip
    assert abs(res.cuts.mt_min - best) <= 5.0, (res.cuts, best, scanned)
    assert res.sigma_hard <= scanned.min() * 1.02
    assert res.cuts.iso_max == CUTS.iso_max and res.cuts.pt_min == CUTS.pt_min
    with pytest.raises(ValueError, match=r"no bounds for \['iso_max'\]"):
        optimize_cuts(model, POI, CUTS, {"mt_min": (0.0, 70.0)}, fixed=("pt_min",))


# ---------------------------------------------------------------------- data / model comparison
def test_comparison_gradient_finds_an_injected_pt_slope(columns: str) -> None:
    """Pseudo-data: the MC entries reweighted by 1 + a (pT - 38 GeV). The fitted slope of data/prediction versus
    pT recovers a; the chi-square and the slope have gradients equal to central finite differences; without the
    distortion both vanish with their gradients."""
    cols = read_columns(columns)
    for a in (0.0, 0.01):
        tables = []
        for ds, sample in SAMPLES.items():
            t = cols.datasets[ds].tables["nominal"]
            c = dict(t.columns)
            c["w"] = c["w"] * sample.xsec / cols.datasets[ds].sumw_sign * (1 + a * (c["pt"] - 38.0))
            c["component"] = np.zeros(len(t), dtype=np.int16)
            tables.append(Table(c, chunks=np.array([len(t)])))
        data = {f"data{i}": DatasetColumns(f"data{i}", "data", float("nan"), 0, [], {"nominal": t})
                for i, t in enumerate(tables)}  # fmt: skip
        with_data = EventColumns(cols.path, cols.config, {**cols.datasets, **data})
        samples = {**SAMPLES, **{k: Sample("data") for k in data}}
        m = CutModel(with_data, samples, lumi=1.0)
        widths = (2.0, 0.01, 1.0)
        slope, g_slope = m.comparison_gradient(CUTS, "ratio_slope", widths)
        chi2, g_chi2 = m.comparison_gradient(CUTS, "chi2", widths)
        if a == 0.0:
            assert abs(slope) < 1e-12 and chi2 < 1e-20
            np.testing.assert_allclose(g_slope, 0.0, atol=1e-12)
            continue
        assert slope == pytest.approx(a, rel=0.02)
        assert chi2 > 0
        for stat, value, grad in (("ratio_slope", slope, g_slope), ("chi2", chi2, g_chi2)):

            def f(x: np.ndarray, stat: str = stat, m: CutModel = m, widths: tuple = widths) -> float:
                return m.comparison_gradient(x, stat, widths)[0]

            fd = central_differences(f, CUTS.array(), np.array(widths) * 1e-2)
            np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-12 * abs(value))
        assert g_slope[2] != 0.0  # the pT threshold moves the fitted slope


def test_bad_arguments_are_refused_by_name(model: CutModel) -> None:
    """A NaN or missing threshold, a zero or infinite width, an unknown POI or kernel: an error that names it."""
    for cuts in ([40.0, math.nan, 26.0], [40.0, 0.15], Cuts(math.inf, 0.15, 26.0)):
        with pytest.raises(ValueError, match=r"cuts must be 3 finite thresholds \('mt_min', 'iso_max', 'pt_min'\)"):
            model.value_and_gradient(cuts, POI)
    for widths in ((1.0, 0.0, 0.5), (1.0, math.inf, 0.5), (1.0,)):
        with pytest.raises(ValueError, match="widths must be 3 finite numbers > 0"):
            model.expected_uncertainty(CUTS, POI, widths)
    with pytest.raises(KeyError, match="'Wplus_y2_l' is not a POI.*Wplus_y2_L"):
        model.expected_uncertainty(CUTS, "Wplus_y2_l")
    with pytest.raises(ValueError, match="kind='tanh'"):
        CutModel(model.columns, SAMPLES, lumi=1.0, kind="tanh")


# ---------------------------------------------------------------------- cluster placement
def test_the_gradient_runs_where_the_fit_runs(columns: str, model: CutModel, dask_client: Any) -> None:
    from wfit.pipeline import NoGPUWorkerError, cut_gradient_on_cluster

    with pytest.raises(NoGPUWorkerError, match="allow_cpu=True"):
        cut_gradient_on_cluster(dask_client, columns, SAMPLES, CUTS, POI, lumi=1.0)
    # Checked on the client, before anything is submitted.
    with pytest.raises(FileNotFoundError, match="no event-columns file .*nope.h5"):
        cut_gradient_on_cluster(dask_client, "nope.h5", SAMPLES, CUTS, POI, lumi=1.0, allow_cpu=True)
    with pytest.raises(ValueError, match="widths must be 3 finite numbers > 0"):
        cut_gradient_on_cluster(dask_client, columns, SAMPLES, CUTS, POI, lumi=1.0, widths=(1.0, -1.0, 1.0),
                                allow_cpu=True)  # fmt: skip
    out = cut_gradient_on_cluster(dask_client, columns, SAMPLES, CUTS, POI, lumi=1.0, allow_cpu=True)
    value, grad = model.value_and_gradient(CUTS, POI)
    assert out["device"] == "/CPU:0" and out["worker"] in dask_client.scheduler_info()["workers"]
    assert out["sigma"] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(out["gradient"], grad, rtol=1e-10)
