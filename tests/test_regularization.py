"""Regularised unfolding against closed forms: a linear response fitted with the chi-square of a data covariance,
where the penalised NLL 0.5 (n - A mu)^T C (n - A mu) + exp(2 tau) |Lap mu|^2 is quadratic, so the regularised
estimate, its covariance and the whole L-curve are matrix formulas (written here in numpy), and the Laplacian
built independently (second differences with mirrored edges, Kronecker sums in 2-D and 3-D)."""

from __future__ import annotations

import numpy as np
import pytest

from wfit.fitter import FitOptions, Likelihood, fit_workspace
from wfit.fitter.regularization import laplacian, lcurve
from wfit.workspace import read_workspace

from .builders import build_unfolding_model, write_rabbit

NGEN, NRECO = 8, 16

pytestmark = [
    # rabbit's TensorWriter (through wums) opens os.devnull for a git call and never closes it
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _lap1(n):
    lap = -2.0 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    lap[0, 0] += 1.0  # the mirrored neighbour of an edge bin is the bin itself
    lap[-1, -1] += 1.0
    return lap


def test_laplacian_is_the_sum_of_mirrored_second_differences():
    np.testing.assert_array_equal(laplacian((5,)), _lap1(5))
    i3, i4, i2 = np.eye(3), np.eye(4), np.eye(2)
    np.testing.assert_array_equal(laplacian((3, 4)), np.kron(_lap1(3), i4) + np.kron(i3, _lap1(4)))
    expect = (np.kron(np.kron(_lap1(2), i3), i4) + np.kron(np.kron(i2, _lap1(3)), i4)
              + np.kron(np.kron(i2, i3), _lap1(4)))
    np.testing.assert_array_equal(laplacian((2, 3, 4)), expect)


@pytest.fixture(scope="module")
def unfolding(tmp_path_factory):
    """Eight generator bins smeared (broadly: cond ~ 6e6) into sixteen reco bins; Gaussian data of known
    covariance."""
    m, a, var = build_unfolding_model(NGEN, NRECO, seed=12)
    path = str(tmp_path_factory.mktemp("unfold") / "ws.hdf5")
    write_rabbit(m, path, data_covariance=np.diag(var))
    return path, a, np.diag(1.0 / var), m.data["reco"]


def _closed_form(a, c, n, tau):
    lap = _lap1(NGEN)
    h = a.T @ c @ a + 2.0 * np.exp(2.0 * tau) * lap.T @ lap
    mu = np.linalg.solve(h, a.T @ c @ n)
    chi2_half = 0.5 * (n - a @ mu) @ c @ (n - a @ mu)
    return mu, np.linalg.inv(h), chi2_half, float(np.sum((lap @ mu) ** 2))


@pytest.mark.parametrize("tau", [-2.0, 1.5])
def test_regularised_fit_is_the_closed_form_tikhonov_solution(unfolding, tau):
    path, a, c, n = unfolding
    res = fit_workspace(path, FitOptions(covariance_fit=True, bb_lite=False, regularize=("xsec",), tau=tau,
                                         tol=1e-20), trust_pickle=True)
    assert res.ok
    mu, cov, chi2_half, pen = _closed_form(a, c, n, tau)
    order = [res.index(f"gen{k}") for k in range(NGEN)]
    np.testing.assert_allclose(res.values[order], mu, rtol=1e-8)
    np.testing.assert_allclose(res.covariance[np.ix_(order, order)], cov, rtol=1e-7, atol=1e-14)
    assert res.nll == pytest.approx(chi2_half + np.exp(2 * tau) * pen, rel=1e-8)
    unreg = fit_workspace(path, covariance_fit=True, bb_lite=False, tol=1e-20, trust_pickle=True)
    assert np.all(res.errors[order] < unreg.errors[order])  # the penalty constrains


def test_lcurve_corner_is_the_closed_form_one(unfolding):
    path, a, c, n = unfolding
    ll = Likelihood(read_workspace(path, trust_pickle=True), covariance_fit=True, bb_lite=False,
                    regularize=["xsec"])
    taus = np.linspace(-1.0, 5.0, 25)
    curve = lcurve(ll, taus, tol=1e-20)
    fine = np.linspace(-1.0, 5.0, 6001)
    lx, ly = [], []
    for t in fine:
        _, _, chi2_half, pen = _closed_form(a, c, n, t)
        lx.append(np.log(chi2_half))
        ly.append(np.log(pen))
    lx, ly = np.array(lx), np.array(ly)
    dx, dy = np.gradient(lx, fine), np.gradient(ly, fine)
    ddx, ddy = np.gradient(dx, fine), np.gradient(dy, fine)
    kappa = (dx * ddy - ddx * dy) / (dx * dx + dy * dy) ** 1.5
    best = fine[np.argmax(kappa[5:-5]) + 5]
    np.testing.assert_allclose(curve.lx, np.interp(taus, fine, lx), rtol=1e-7)
    np.testing.assert_allclose(curve.ly, np.interp(taus, fine, ly), atol=1e-5)
    assert 0.0 < best < 4.0  # the corner lies inside the scan
    assert curve.best == pytest.approx(best, abs=0.05)  # within a fifth of the scan step
    assert np.all(curve.status == 0)


def test_regularisation_options_are_checked(unfolding):
    path = unfolding[0]
    with pytest.raises(ValueError, match="only has an effect with regularize"):
        FitOptions(tau=1.0)
    with pytest.raises(ValueError, match=r"'reco' is not a masked channel .*\['xsec'\]"):
        fit_workspace(path, regularize=("reco",), trust_pickle=True)


def test_cli_lcurve_fits_at_the_corner_and_draws_it(unfolding, tmp_path):
    from wfit.fitter import read_result
    from wfit.fitter.cli import main

    path, a, c, n = unfolding
    out, plots = str(tmp_path / "fit.hdf5"), str(tmp_path / "plots")
    rc = main(["fit", path, "-o", out, "--covariance-fit", "--no-bb-lite", "--regularize", "xsec", "--tau", "2",
               "--lcurve", "--trust-pickle", "--tol", "1e-20", "--plots", plots, "-q"])
    assert rc == 0
    res = read_result(out)
    tau = res.options["tau"]
    assert res.extra["lcurve"].shape == (25, 4)
    np.testing.assert_allclose(res.extra["lcurve"][:, 0], np.linspace(-1.0, 5.0, 25))
    mu, cov, _, _ = _closed_form(a, c, n, tau)
    order = [res.index(f"gen{k}") for k in range(NGEN)]
    np.testing.assert_allclose(res.values[order], mu, rtol=1e-7)
    assert (tmp_path / "plots" / "lcurve.png").stat().st_size > 10_000
