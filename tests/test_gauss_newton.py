"""The large-model minimiser path: the Gauss-Newton matrix, and fits that use it until the exact check.

References: the Fisher-scoring matrix ``J^T diag(g'') J + constraints`` built in numpy from the independent NLL
(:mod:`tests.reference_nll`, ``J`` by complex-step differentiation of its yields); the minimum and covariance of
:func:`tests.reference_fit.reference_fit`; and the exact-Hessian trust-region fit of the same model.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import reference_nll
from tests.builders import build_random_model, write_wfit
from tests.reference_fit import reference_fit
from wfit.fitter import FitStatus, Likelihood, fit, likelihood
from wfit.fitter.minimize import minimize
from wfit.workspace import read_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gn") / "ws.hdf5")
    write_wfit(build_random_model(seed=31, nbins=(14, 9), nsig=3, nshape=6), path)
    return read_workspace(path)


def _point(ws, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(0.7, 1.3, len(ws.signals)), rng.normal(0.0, 0.6, ws.nsyst)])


def _fisher_reference(ws, x, bb_lite):
    """``J^T diag(d2 g_b / d nu_b^2) J + diag(constraint weights)`` from the reference NLL."""
    n = x.size
    jac = np.empty((ws.nbins, n))
    for i in range(n):  # complex step: exact to rounding
        xc = x.astype(complex)
        xc[i] += 1e-40j
        jac[:, i] = reference_nll.yields(ws, xc).imag / 1e-40
    nu = reference_nll.yields(ws, x)

    def g1(v):  # d g_b / d nu_b by complex step, bin by bin (each bin's NLL depends on its own nu only)
        return reference_nll.bin_nll(ws, v + 1e-40j, bb_lite=bb_lite).imag / 1e-40

    h = 1e-5 * nu
    g2 = (g1(nu + h) - g1(nu - h)) / (2 * h)
    out = jac.T @ (g2[:, None] * jac)
    out[len(ws.signals) :, len(ws.signals) :] += np.diag(ws.constraint_weights)
    return out


@pytest.mark.parametrize("bb_lite", [False, True])
def test_gauss_newton_matrix_is_the_fisher_scoring_matrix(ws, bb_lite):
    ll = Likelihood(ws, bb_lite=bb_lite)
    for seed in range(2):
        x = _point(ws, seed)
        f, g, h = ll.nll_grad_gauss_newton(x)
        ref = _fisher_reference(ws, x, bb_lite)
        np.testing.assert_allclose(h, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
        f_exact, g_exact, h_exact = ll.nll_grad_hess(x)
        assert f == pytest.approx(f_exact, rel=1e-14)
        np.testing.assert_allclose(g, g_exact, rtol=1e-12, atol=1e-10)
        # away from the data the second-derivative terms matter: the approximation is not the Hessian
        assert np.abs(h - h_exact).max() > 1e-3 * np.abs(h_exact).max()


def test_gauss_newton_is_exact_for_data_equal_to_the_prediction(ws):
    """With n = nu (no BB-lite) every dL/dnu_b vanishes, and with it every term the approximation leaves out."""
    ll = Likelihood(ws, bb_lite=False)
    x = _point(ws, 5)
    ll.set_data(reference_nll.yields(ws, x))
    h_gn = ll.nll_grad_gauss_newton(x)[2]
    h = ll.nll_grad_hess(x)[2]
    np.testing.assert_allclose(h_gn, h, rtol=1e-9, atol=1e-9 * np.abs(h).max())


@pytest.mark.parametrize("poi_nonnegative", [False, True])
def test_fit_with_the_approximation_reaches_the_exact_minimum(ws, monkeypatch, poi_nonnegative):
    ll = Likelihood(ws)
    exact = fit(ll, tol=1e-12, poi_nonnegative=poi_nonnegative)
    assert ll.minimizer_options() == {}  # a small model: the exact Hessian throughout
    monkeypatch.setattr(likelihood, "LARGE_HESSIAN_FLOPS", 0.0)
    assert set(ll.minimizer_options()) == {"fun", "approx"}
    res = fit(ll, tol=1e-12, poi_nonnegative=poi_nonnegative)
    assert res.status == exact.status == FitStatus.CONVERGED
    assert res.edm < 1e-12
    np.testing.assert_allclose(res.values, exact.values, rtol=0, atol=1e-6 * exact.errors.min())
    np.testing.assert_allclose(res.covariance, exact.covariance, rtol=1e-6, atol=1e-6 * np.abs(exact.covariance).max())
    # the curvature reported is the exact Hessian at the minimum
    np.testing.assert_allclose(np.linalg.inv(res.covariance), ll.nll_grad_hess(res.values)[2], rtol=1e-8, atol=1e-8)
    if not poi_nonnegative:
        ref = reference_fit(ws)
        np.testing.assert_allclose(res.values, ref.x, rtol=0, atol=1e-5 * exact.errors.min())
        np.testing.assert_allclose(res.errors, ref.errors, rtol=1e-5)


def test_minimize_counts_exact_hessians_and_checks_with_them(ws):
    """From a far start the iterations use the approximation; the exact Hessian is computed a few times only, and
    the stopping rule is applied to it."""
    ll = Likelihood(ws)
    calls = {"exact": 0, "approx": 0, "nll": 0}

    def counted(name, fn):
        def wrapped(x):
            calls[name] += 1
            return fn(x)

        return wrapped

    x0 = ll.x0.copy()
    x0[ll.npoi :] = 1.5  # every nuisance 1.5 sigma off
    res = minimize(counted("exact", ll.nll_grad_hess), x0, tol=1e-10,
                   approx=counted("approx", ll.nll_grad_gauss_newton), fun=counted("nll", ll.nll))
    ref = minimize(ll.nll_grad_hess, x0, tol=1e-10)
    assert res.status == ref.status == FitStatus.CONVERGED
    assert 1 <= calls["exact"] <= 4 < calls["approx"]
    g, h = ll.nll_grad_hess(res.x)[1:]
    assert 0.5 * g @ np.linalg.solve(h, g) < 1e-10  # the EDM criterion, with the exact Hessian at the result
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-5)


def test_trust_region_step_by_cholesky_solves_the_subproblem():
    """Against the eigen-decomposition solution of min g.p + p.H.p/2, |p| <= r, for a positive-definite H."""
    from wfit.fitter.minimize import _trust_region_step, _trust_region_step_posdef

    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 40))
    h = a @ a.T + 0.1 * np.eye(40)
    g = rng.normal(size=40) * 10
    r = 0.2 * np.linalg.norm(np.linalg.solve(h, g))
    p = _trust_region_step_posdef(g, h, r)
    q = _trust_region_step(g, h, r)
    assert np.linalg.norm(p) == pytest.approx(r, rel=0.011)
    model = lambda s: g @ s + 0.5 * s @ h @ s  # noqa: E731
    assert model(p) <= model(q) + 0.02 * abs(model(q))
    np.testing.assert_allclose(p / np.linalg.norm(p), q / np.linalg.norm(q), atol=0.05)
