"""Full Barlow-Beeston: one gamma-constrained factor per bin and process, profiled per bin. The references: the
analytic one-process bin (where full equals lite), and a second implementation that minimises the unprofiled
NLL over every parameter and every factor jointly (numpy + scipy) and takes the covariance from its Hessian."""

from __future__ import annotations

import hist
import numpy as np
import pytest
from scipy.optimize import minimize

from wfit.fitter import FitOptions, fit_workspace
from wfit.workspace import WorkspaceWriter

S = np.array([[40.0, 25.0, 8.0], [10.0, 30.0, 20.0]])  # [process, bin]: signal, background
VAR = np.array([[30.0, 12.0, 6.0], [9.0, 20.0, 0.0]])  # sum of squared weights (the last bkg bin has none)
N = np.array([61.0, 47.0, 35.0])
KAPPA = 1.15


def _write(path, s=S, var=VAR, n=N, kappa=KAPPA):
    ax = hist.axis.Regular(len(n), 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("ch", [ax])
    w.add_process("sig", "ch", s[0], signal=True, variances=var[0])
    w.add_process("bkg", "ch", s[1], variances=var[1])
    if kappa is not None:
        w.add_norm_systematic("bkgnorm", "bkg", "ch", kappa)
    w.add_data("ch", n)
    w.write(path)


def _joint_fit(s=S, var=VAR, n=N, kappa=KAPPA):
    """mu, theta and every beta minimised together; the covariance of (mu, theta) from the full Hessian."""
    free = var > 0
    k = np.where(free, s**2 / np.where(free, var, 1.0), 0.0)
    nb = free.sum()

    def unpack(z):
        beta = np.ones_like(s)
        beta[free] = np.exp(z[2:])  # beta > 0 through log(beta)
        return z[0], z[1], beta

    def nll(z):
        mu, theta, beta = unpack(z)
        m = np.array([mu * s[0], s[1] * kappa**theta])
        nu = (beta * m).sum(axis=0)
        lbeta = np.where(free, k * (beta - 1.0) - k * np.log(beta), 0.0).sum()
        return (nu - n - n * np.log(nu / n)).sum() + lbeta + 0.5 * theta**2

    z0 = np.concatenate([[1.0, 0.0], np.zeros(nb)])
    z = minimize(nll, z0, method="BFGS", options={"gtol": 1e-11}).x
    # Newton polish with a central-difference Hessian, then the covariance in (mu, theta, log beta):
    # the (mu, theta) block of the inverse is the profiled covariance (log beta or beta: the same block).
    def hess(z, h=1e-4):
        d = len(z)
        out = np.zeros((d, d))
        for i in range(d):
            for j in range(d):
                e_i, e_j = np.eye(d)[i] * h, np.eye(d)[j] * h
                out[i, j] = (nll(z + e_i + e_j) - nll(z + e_i - e_j) - nll(z - e_i + e_j)
                             + nll(z - e_i - e_j)) / (4 * h * h)
        return out

    def grad(z, h=1e-6):
        return np.array([(nll(z + e) - nll(z - e)) / (2 * h) for e in np.eye(len(z)) * h])

    for _ in range(3):
        z = z - np.linalg.solve(hess(z), grad(z))
    cov = np.linalg.inv(hess(z))
    return z[:2], np.sqrt(np.diag(cov)[:2]), nll(z)


def test_one_process_per_bin_equals_the_analytic_lite_result(tmp_path):
    s, b, n, var = 30.0, 0.0, 55.0, 16.0
    path = str(tmp_path / "ws.hdf5")
    _write(path, s=np.array([[s], [b]]), var=np.array([[var], [0.0]]), n=np.array([n]), kappa=None)
    res = fit_workspace(path, bb_full=True, tol=1e-20)
    k = s**2 / var
    assert res.pois["sig"][0] == pytest.approx(n / s, rel=1e-10)
    assert res.pois["sig"][1] == pytest.approx(1.0 / (s * np.sqrt(1.0 / n - 1.0 / (n + k))), rel=1e-9)


def test_full_barlow_beeston_equals_the_joint_minimisation_over_every_factor(tmp_path):
    path = str(tmp_path / "ws.hdf5")
    _write(path)
    res = fit_workspace(path, bb_full=True, tol=1e-20)
    assert res.ok
    values, errors, nll = _joint_fit()
    np.testing.assert_allclose(res.values, values, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res.errors, errors, rtol=1e-4)
    assert res.nll == pytest.approx(nll, abs=1e-8)
    lite = fit_workspace(path, tol=1e-20)
    assert abs(lite.values[0] - res.values[0]) > 1e-4  # two processes per bin: full differs from lite


def test_full_barlow_beeston_gradient_and_hessian_match_finite_differences(tmp_path):
    from wfit.fitter.likelihood import Likelihood
    from wfit.workspace import read_workspace

    path = str(tmp_path / "ws.hdf5")
    _write(path)
    ll = Likelihood(read_workspace(path), bb_full=True)
    x = np.array([0.9, 0.3])
    f, g, h = ll.nll_grad_hess(x)
    eps = 1e-5
    g_fd = np.array([(ll.nll(x + e) - ll.nll(x - e)) / (2 * eps) for e in np.eye(2) * eps])
    h_fd = np.array([(ll.nll_grad(x + e)[1] - ll.nll_grad(x - e)[1]) / (2 * eps) for e in np.eye(2) * eps])
    np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(h, h_fd, rtol=1e-5, atol=1e-7)
    assert f == pytest.approx(ll.nll(x), rel=1e-14)


def test_full_barlow_beeston_options_are_checked():
    with pytest.raises(ValueError, match="keep bb_lite=True"):
        FitOptions(bb_full=True, bb_lite=False)
    with pytest.raises(ValueError, match="not the chi-square fit"):
        FitOptions(bb_full=True, covariance_fit=True)
