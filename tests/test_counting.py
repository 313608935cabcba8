"""One-bin counting experiments with known s and b: the fit equals the analytic maximum likelihood."""

from __future__ import annotations

import hist
import numpy as np
import pytest

from wfit.fitter import fit_workspace
from wfit.workspace import WorkspaceWriter


def _write(path, s, b, n, kappa=None):
    ax = hist.axis.Regular(1, 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("count", [ax])
    w.add_process("sig", "count", np.array([s]), signal=True, variances=np.array([0.0]))
    w.add_process("bkg", "count", np.array([b]), variances=np.array([0.0]))
    if kappa is not None:
        w.add_norm_systematic("bkgnorm", "bkg", "count", kappa)
    w.add_data("count", np.array([float(n)]))
    w.write(path)


@pytest.mark.parametrize(("s", "b", "n"), [(10.0, 5.0, 20), (100.0, 400.0, 530), (3.0, 1.0, 2)])
def test_mu_and_uncertainty_are_analytic(tmp_path, s, b, n):
    path = str(tmp_path / "ws.hdf5")
    _write(path, s, b, n)
    res = fit_workspace(path, bb_lite=False, tol=1e-20)
    assert res.ok
    # L = nu - n log nu with nu = mu s + b: mu_hat = (n - b)/s, d2L/dmu2 = n s^2/nu^2 = s^2/n at the minimum
    mu, err = res.pois["sig"]
    assert mu == pytest.approx((n - b) / s, rel=1e-10)
    assert err == pytest.approx(np.sqrt(n) / s, rel=1e-10)
    assert res.nll == pytest.approx(0.0, abs=1e-10)  # saturated: the model can meet the data exactly


def test_free_background_normalisation_with_known_curvature(tmp_path):
    """A free log-normal background rate and a constrained one: the profiled uncertainty is analytic."""
    s, b, n, kappa = 20.0, 50.0, 90, 1.1
    path = str(tmp_path / "ws.hdf5")
    _write(path, s, b, n, kappa=kappa)
    res = fit_workspace(path, bb_lite=False, tol=1e-20)
    mu, err = res.pois["sig"]
    theta = res.values[res.index("bkgnorm")]
    # At the minimum nu = n (saturated, one bin, two parameters): theta = 0 is preferred by the
    # constraint, so mu s + b = n and theta = 0.
    assert theta == pytest.approx(0.0, abs=1e-9)
    assert mu == pytest.approx((n - b) / s, rel=1e-10)
    # Hessian at nu = n: H = (1/n) J J^T + diag(0, 1), J = (s, b log kappa);
    # Var(mu) = [H^-1]_00 = (1/n) (b log kappa)^2 + 1) / det(...) evaluated explicitly:
    j = np.array([s, b * np.log(kappa)])
    h = np.outer(j, j) / n + np.diag([0.0, 1.0])
    assert err == pytest.approx(np.sqrt(np.linalg.inv(h)[0, 0]), rel=1e-10)


def test_bb_lite_one_bin_is_analytic(tmp_path):
    """One bin with MC statistics: profiling beta with k = sumw^2/sumw2 gives a closed-form curvature."""
    s, b, n = 30.0, 10.0, 55.0
    var = 16.0  # sum of squared weights of the template
    ax = hist.axis.Regular(1, 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("count", [ax])
    w.add_process("sig", "count", np.array([s]), signal=True, variances=np.array([var]))
    w.add_process("bkg", "count", np.array([b]), variances=np.array([0.0]))
    w.add_data("count", np.array([n]))
    path = str(tmp_path / "ws.hdf5")
    w.write(path)
    res = fit_workspace(path, bb_lite=True, tol=1e-20)
    mu, err = res.pois["sig"]
    k = (s + b) ** 2 / var
    # With beta profiled, the minimum is nu = n with beta = 1, and
    # d2g/dnu2 = n/nu^2 - beta/(nu + k) = 1/n - 1/(n + k) at nu = n: Var(mu) = 1/(s^2 g'').
    assert mu == pytest.approx((n - b) / s, rel=1e-10)
    assert err == pytest.approx(1.0 / (s * np.sqrt(1.0 / n - 1.0 / (n + k))), rel=1e-10)


def test_data_in_a_bin_without_prediction_is_a_clear_error(tmp_path):
    ax = hist.axis.Regular(2, 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("count", [ax])
    w.add_process("sig", "count", np.array([5.0, 0.0]), signal=True)
    w.add_data("count", np.array([4.0, 3.0]))
    path = str(tmp_path / "ws.hdf5")
    w.write(path)
    with pytest.raises(ValueError, match=r"no expected events.*channel 'count' bin \(1,\)"):
        fit_workspace(path)


def test_gaussian_prior_on_the_poi_is_the_analytic_maximum_a_posteriori(tmp_path):
    """With a prior N(m, sigma) on mu, the fit maximises L(mu) prior(mu): the root of
    s - n s / (mu s + b) + (mu - m) / sigma^2 (found here by brentq), with the curvature
    n s^2 / (mu s + b)^2 + 1 / sigma^2; the result says which parameter carries the prior."""
    from scipy.optimize import brentq

    s, b, n, m, sigma = 100.0, 50.0, 230, 1.0, 0.1
    path = str(tmp_path / "ws.hdf5")
    _write(path, s, b, n)
    res = fit_workspace(path, bb_lite=False, tol=1e-20, priors=(("sig", m, sigma),))
    assert res.ok

    def dnll(mu):
        return s - n * s / (mu * s + b) + (mu - m) / sigma**2

    mu_map = brentq(dnll, 0.1, 3.0, xtol=1e-14)
    mu, err = res.pois["sig"]
    assert mu == pytest.approx(mu_map, rel=1e-10)
    assert err == pytest.approx((n * s**2 / (mu_map * s + b) ** 2 + 1 / sigma**2) ** -0.5, rel=1e-10)
    assert abs(mu - (n - b) / s) > 0.1  # the prior pulls mu away from the likelihood's maximum
    assert res.options["priors"] == [["sig", m, sigma]]
    assert "sig ~ N(1, 0.1)" in res.summary()


def test_priors_are_checked_before_the_fit(tmp_path):
    from wfit.fitter import FitOptions

    path = str(tmp_path / "ws.hdf5")
    _write(path, 10.0, 5.0, 20, kappa=1.1)
    with pytest.raises(ValueError, match=r"prior on 'sgi': no such parameter .* \(close: sig\)"):
        fit_workspace(path, priors=(("sgi", 1.0, 0.3),))
    with pytest.raises(ValueError, match=r"prior on 'bkgnorm': the nuisance already has a Gaussian constraint"):
        fit_workspace(path, priors=(("bkgnorm", 0.0, 1.0),))
    for bad, match in [
        ((("sig", 1.0, 0.0),), r"sigma of the prior on 'sig' must be > 0"),
        ((("sig", float("nan"), 1.0),), r"mean of the prior on 'sig' must be a finite number"),
        ((("sig", 1.0, 0.3), ("sig", 1.0, 0.2)), r"\['sig'\] carry more than one prior"),
        ("sig=1,0.3", r"a sequence of \(parameter, mean, sigma\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            FitOptions(priors=bad)
    assert FitOptions.from_dict(FitOptions(priors=(("sig", 1, 0.3),)).to_dict()).priors == (("sig", 1.0, 0.3),)
