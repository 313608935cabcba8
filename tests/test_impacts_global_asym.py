"""Global and asymmetric impacts against independent references.

* Global impacts: the shifted-global-observable definition itself, done by refitting: move a constraint's
  centre theta0 (or a Barlow-Beeston beta0) by a tenth of its standard deviation up and down, refit, and scale
  the POI's shift to one standard deviation: the linear response that the Gaussian approximation gives.
* Asymmetric impacts: a brute-force profile scan (the grid scan of wfit.fitter.scanning, linear interpolation
  of its 2 dNLL = 1 crossings and of the profiled POI there), and the covariance impacts in the Gaussian limit.
"""

from __future__ import annotations

import numpy as np
import pytest

from wfit.fitter import Likelihood, fit, fit_workspace
from wfit.fitter.breakdown import asymmetric_impacts, global_impacts, impacts
from wfit.fitter.scanning import profile_interval, scan
from wfit.workspace import read_workspace

from .builders import build_random_model, write_wfit


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("imp") / "ws.hdf5")
    write_wfit(build_random_model(seed=8, nbins=(10, 6), nsig=2, nbkg=2, nshape=3, scale=5000.0), path)
    ll = Likelihood(read_workspace(path))
    return ll, fit_workspace(path, tol=1e-16)


@pytest.fixture(scope="module")
def symmetric(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("imp") / "sym.hdf5")
    write_wfit(build_random_model(seed=8, nbins=(10, 6), nsig=2, nbkg=2, nshape=3, scale=5000.0,
                                  asymmetric=False), path)
    ll = Likelihood(read_workspace(path))
    return ll, fit_workspace(path, tol=1e-16)


def _refit(ll, result, theta0=None, beta0=None):
    ll.set_data(ll.ws.data_obs, theta0=theta0, beta0=beta0)
    try:
        return fit(ll, tol=1e-16, x0=result.values).values
    finally:
        ll.set_data(ll.ws.data_obs)


def test_global_impacts_are_the_refitted_shifts_of_the_global_observables(model):
    ll, res = model
    gi = global_impacts(ll, res)
    npoi = ll.npoi
    for j in range(ll.nsyst):
        if ll.ws.constraint_weights[j] == 0:
            continue
        shift = np.zeros(ll.nsyst)
        shift[j] = 0.1
        up, down = _refit(ll, res, theta0=shift), _refit(ll, res, theta0=-shift)
        np.testing.assert_allclose(gi.values[:, npoi + j], 5.0 * (up - down)[:npoi], rtol=1e-3,
                                   atol=1e-4 * res.errors[:npoi].max())
    # Barlow-Beeston: beta0 of each bin moved by 1/sqrt(k) (a tenth, scaled), the shifts added in quadrature
    k, mask = ll.kstat, ll.bb_masked
    var = np.zeros(npoi)
    for b in np.flatnonzero(~mask):
        beta0 = np.ones(ll.ws.nbins)
        beta0[b] += 0.1 / np.sqrt(k[b])
        up = _refit(ll, res, beta0=beta0)
        beta0[b] -= 0.2 / np.sqrt(k[b])
        down = _refit(ll, res, beta0=beta0)
        var += (5.0 * (up - down)[:npoi]) ** 2
    bb = gi.groups.index("binByBinStat")
    np.testing.assert_allclose(gi.grouped[:, bb], np.sqrt(var), rtol=5e-3)
    # the parts add up to the total in quadrature
    own = [gi.groups.index(g) for g in ll.ws.syst_groups] + [gi.groups.index("stat"), bb]
    np.testing.assert_allclose(np.sqrt(np.sum(gi.grouped[:, own] ** 2, axis=1)), res.errors[:npoi], rtol=1e-9)


def test_profile_interval_equals_a_brute_force_scan(model):
    ll, res = model
    name = ll.names[ll.npoi]  # a shape nuisance with asymmetric templates
    i = res.index(name)
    iv = profile_interval(ll, res, name)
    grid = res.values[i] + res.errors[i] * np.linspace(-1.6, 1.6, 161)
    sc = scan(ll, res, name, points=grid, tol=1e-14)
    lo, hi = sc.interval()
    assert iv.down == pytest.approx(lo - res.values[i], rel=2e-4)
    assert iv.up == pytest.approx(hi - res.values[i], rel=2e-4)
    mu = sc.profiled[:, 0]
    assert iv.x_down[0] == pytest.approx(np.interp(lo, grid, mu), rel=1e-5)
    assert iv.x_up[0] == pytest.approx(np.interp(hi, grid, mu), rel=1e-5)


def test_asymmetric_impacts_reduce_to_the_covariance_impacts_in_the_gaussian_limit(symmetric):
    """Symmetric templates and high statistics: the likelihood is nearly Gaussian."""
    ll, res = symmetric
    ai = asymmetric_impacts(ll, res)
    imp = impacts(ll, res)
    npoi = ll.npoi
    sym = imp.values[:, npoi:]
    # the mean of the two sides within 1% of the covariance impact, each side within 10% (the log-normal
    # templates curve the likelihood a little, which moves the two sides in opposite directions)
    tol = 1e-3 * res.errors[:npoi].max()
    np.testing.assert_allclose(0.5 * (ai.values[:, :, 1] - ai.values[:, :, 0]), sym, rtol=0.01, atol=tol)
    np.testing.assert_allclose(ai.values[:, :, 1], sym, rtol=0.1, atol=tol)
    np.testing.assert_allclose(-ai.values[:, :, 0], sym, rtol=0.1, atol=tol)
    total = ai.grouped[:, ai.groups.index("Total")]
    np.testing.assert_allclose(0.5 * (total[:, 1] - total[:, 0]), res.errors[:npoi], rtol=0.02)
    for g in ll.ws.syst_groups:
        col = ai.grouped[:, ai.groups.index(g)]
        np.testing.assert_allclose(0.5 * (col[:, 1] - col[:, 0]), imp.grouped[:, imp.groups.index(g)],
                                   rtol=0.05, atol=2e-3 * res.errors[:npoi].max())


def test_cli_writes_global_and_asymmetric_impacts(symmetric, tmp_path, capsys):
    from wfit.fitter import read_result
    from wfit.fitter.cli import main

    ll, res = symmetric
    out = str(tmp_path / "fit.hdf5")
    assert main(["fit", ll.ws.path, "-o", out, "--global-impacts", "--asym-impacts", "-q", "--tol", "1e-16"]) == 0
    stored = read_result(out)
    gi, ai = global_impacts(ll, res), asymmetric_impacts(ll, res)
    np.testing.assert_allclose(stored.extra["global_impacts_grouped"], gi.grouped, rtol=1e-6)
    np.testing.assert_allclose(stored.extra["asym_impacts"], ai.values, rtol=1e-5, atol=1e-9)
    assert list(stored.extra["asym_impact_groups"]) == ai.groups
    # independent of the in-process call: the file's impacts against the file's own uncertainties
    npoi = ll.npoi
    groups = [str(g) for g in stored.extra["global_impact_groups"]]
    own = [groups.index(g) for g in ll.ws.syst_groups] + [groups.index("stat"), groups.index("binByBinStat")]
    grouped = stored.extra["global_impacts_grouped"]
    np.testing.assert_allclose(np.sqrt(np.sum(grouped[:, own] ** 2, axis=1)), stored.errors[:npoi], rtol=1e-8)
    total = stored.extra["asym_impacts_grouped"][:, [str(g) for g in stored.extra["asym_impact_groups"]].index("Total")]
    np.testing.assert_allclose(0.5 * (total[:, 1] - total[:, 0]), stored.errors[:npoi], rtol=0.02)
    text = capsys.readouterr().out
    assert "global impacts on sig0:" in text and "asymmetric impacts on sig0:" in text
