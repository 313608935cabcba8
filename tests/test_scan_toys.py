"""Profile scans, goodness of fit and toys against analytic results and independent profiles."""

from __future__ import annotations

import hist
import numpy as np
import pytest
from scipy import optimize, stats

from wfit.fitter import Likelihood, fit
from wfit.fitter.scanning import scan, scan2d
from wfit.fitter.toys import goodness_of_fit, run_toys
from wfit.workspace import WorkspaceWriter, read_workspace


def _counting(tmp_path, s=(20.0,), b=50.0, n=(90,), kappa=None):
    ax = hist.axis.Regular(len(n), 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("c", [ax])
    w.add_process("sig", "c", np.asarray(s, float), signal=True, variances=np.zeros(len(n)))
    w.add_process("bkg", "c", np.full(len(n), b), variances=np.zeros(len(n)))
    if kappa:
        w.add_norm_systematic("bkgnorm", "bkg", "c", kappa)
    w.add_data("c", np.asarray(n, float))
    path = str(tmp_path / "c.hdf5")
    w.write(path)
    return Likelihood(read_workspace(path), bb_lite=False)


def test_1d_scan_of_counting_experiment_is_analytic(tmp_path):
    s, b, n = 20.0, 50.0, 90
    ll = _counting(tmp_path, (s,), b, (n,))
    res = fit(ll, tol=1e-18)
    sc = scan(ll, res, "sig", n=15, width=3)
    mu = sc.points[:, 0]
    nu = mu * s + b
    np.testing.assert_allclose(sc.q, 2 * (nu - n - n * np.log(nu / n)), rtol=1e-9, atol=1e-9)
    # the 68% interval is where q = 1, solved independently with brentq
    q = lambda m: 2 * ((m * s + b) - n - n * np.log((m * s + b) / n)) - 1  # noqa: E731
    lo, hi = optimize.brentq(q, mu[0], res.values[0]), optimize.brentq(q, res.values[0], mu[-1])
    ilo, ihi = sc.interval()
    assert abs(ilo - lo) < 0.02 * res.errors[0] and abs(ihi - hi) < 0.02 * res.errors[0]  # grid interpolation


def test_profiled_scan_equals_independent_profile(tmp_path):
    s, b, n, kappa = (30.0, 10.0), 40.0, (95, 41), 1.2
    ll = _counting(tmp_path, s, b, n, kappa)
    res = fit(ll, tol=1e-18)
    sc = scan(ll, res, "sig", n=7, width=2)

    def nll(mu, theta):
        nu = mu * np.asarray(s) + b * kappa**theta
        return np.sum(nu - n - np.asarray(n) * np.log(nu / np.asarray(n))) + 0.5 * theta**2

    for mu, q in zip(sc.points[:, 0], sc.q, strict=True):
        prof = optimize.minimize_scalar(lambda t, mu=mu: nll(mu, t), bounds=(-5, 5), method="bounded",
                                        options={"xatol": 1e-10})
        assert q == pytest.approx(2 * (prof.fun - res.nll), abs=1e-7)
    sc2 = scan2d(ll, res, ("sig", "bkgnorm"), n=3, width=1)
    for (mu, th), q in zip(sc2.points, sc2.q, strict=True):  # nothing left to profile: plain NLL values
        assert q == pytest.approx(2 * (nll(mu, th) - res.nll), abs=1e-8)


def test_goodness_of_fit_is_the_saturated_deviance(tmp_path):
    s, b, n = (30.0, 10.0, 5.0), 20.0, (55, 22, 31)
    ll = _counting(tmp_path, s, b, n)
    res = fit(ll, tol=1e-16)
    gof = goodness_of_fit(ll, res)
    nu = res.values[0] * np.asarray(s) + b
    deviance = 2 * np.sum(nu - n + np.asarray(n) * np.log(np.asarray(n) / nu))
    assert gof.chi2 == pytest.approx(deviance, rel=1e-10)
    assert gof.ndf == 2 and gof.p_value == pytest.approx(stats.chi2.sf(deviance, 2), rel=1e-10)


def test_toys_are_seeded_and_unbiased(tmp_path):
    ll = _counting(tmp_path, (60.0, 30.0), 100.0, (160, 130), kappa=1.1)
    toys = run_toys(ll, 200, seed=4)
    again = run_toys(ll, 5, seed=4)
    np.testing.assert_array_equal(again.values, toys.values[:5])
    assert toys.ok.all()
    pulls = toys.pulls()[:, 0]
    # 200 toys: the mean pull has a standard error of 0.07 and the width of 0.05
    assert abs(pulls.mean()) < 0.25 and abs(pulls.std() - 1) < 0.2
    np.testing.assert_array_equal(ll.data, [160.0, 130.0])  # the observed data are restored
    # the toys' saturated chi2 follows chi2(ndf = 2 bins - 1 POI) on average
    assert toys.gof.mean() == pytest.approx(1.0, abs=0.3)


@pytest.mark.slow
def test_coverage_of_500_toys_on_a_medium_workspace(tmp_path):
    from tests.builders import build_random_model, write_wfit

    m = build_random_model(seed=30, nbins=(30, 30), nsig=6, nbkg=3, nshape=6, scale=400.0)
    path = str(tmp_path / "medium.hdf5")
    write_wfit(m, path)
    ll = Likelihood(read_workspace(path))
    toys = run_toys(ll, 500, seed=1)
    assert toys.ok.mean() > 0.99
    pulls = toys.pulls()[:, : ll.npoi].ravel()  # pooled over the 6 POIs
    cover = np.mean(np.abs(pulls) <= 1.0)
    print(f"pull mean {pulls.mean():.4f}, width {pulls.std():.4f}, 68% coverage {cover:.4f}")
    assert abs(pulls.mean()) < 0.05 and abs(pulls.std() - 1) < 0.05 and abs(cover - 0.6827) < 0.02
