"""Batched toys: N pseudo-experiments fitted together as one vectorised computation equal N fits made one after
the other (the reference: the sequential path, whose fits are tested against analytic results elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest

from wfit.fitter import Likelihood
from wfit.fitter.toys import run_toys
from wfit.workspace import read_workspace

from .builders import build_random_model, write_wfit


@pytest.fixture(scope="module")
def ll(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("toys") / "ws.hdf5")
    write_wfit(build_random_model(seed=17), path)  # asymmetric shapes, lnN, BB-lite, an empty template bin
    return Likelihood(read_workspace(path))


def test_batched_evaluation_equals_one_toy_at_a_time(ll):
    rng = np.random.default_rng(4)
    n = 5
    x = ll.x0 + 0.1 * rng.standard_normal((n, ll.nparams))
    nobs = rng.poisson(ll.asimov_data(), size=(n, ll.ws.nbins)).astype(float)
    theta0 = 0.5 * rng.standard_normal((n, ll.nsyst))
    beta0 = rng.uniform(0.8, 1.2, size=(n, *ll.kstat.shape))
    f, g, h = ll.nll_grad_hess_batch(x, nobs, theta0, beta0)
    data = ll.data.copy()
    for i in range(n):
        ll.set_data(nobs[i], theta0=theta0[i], beta0=beta0[i])
        fi, gi, hi = ll.nll_grad_hess(x[i])
        assert f[i] == pytest.approx(fi, rel=1e-12)
        np.testing.assert_allclose(g[i], gi, rtol=1e-10, atol=1e-10 * np.abs(gi).max())
        np.testing.assert_allclose(h[i], hi, rtol=1e-10, atol=1e-10 * np.abs(hi).max())
    ll.set_data(data)
    np.testing.assert_array_equal(ll.data, data)  # the batch did not touch the likelihood's own data
    # one row per toy in every argument, or a clear error (a transposed or short array is never broadcast)
    with pytest.raises(ValueError, match=r"nobs has shape \(4, .*\), expected \(5, "):
        ll.nll_grad_hess_batch(x, nobs[:4], theta0, beta0)
    with pytest.raises(ValueError, match=r"theta0 has shape"):
        ll.nll_grad_hess_batch(x, nobs, theta0.T, beta0)
    with pytest.raises(ValueError, match=r"x has shape \(\d+,\), expected \(N toys, "):
        ll.nll_grad_hess_batch(x[0], nobs, theta0, beta0)


@pytest.mark.parametrize("batch_size", [3, 16])
def test_batched_toys_equal_sequential_fits(ll, batch_size):
    seq = run_toys(ll, 7, seed=11, tol=1e-14)
    bat = run_toys(ll, 7, seed=11, tol=1e-14, batch_size=batch_size)
    assert np.all(seq.ok) and np.all(bat.ok)
    scale = seq.errors
    np.testing.assert_allclose(bat.values, seq.values, atol=1e-6 * scale.max(), rtol=0)
    assert np.max(np.abs(bat.values - seq.values) / scale) < 1e-6  # within a millionth of a standard deviation
    np.testing.assert_allclose(bat.errors, seq.errors, rtol=1e-7)
    np.testing.assert_allclose(bat.gof, seq.gof, rtol=1e-9, atol=1e-9)


def test_batch_size_is_checked(ll):
    with pytest.raises(ValueError, match=r"batch_size=0: give an integer >= 1"):
        run_toys(ll, 2, batch_size=0)


def test_cli_toys_give_the_toy_p_value_of_the_sequential_toys(tmp_path, capsys):
    from wfit.fitter import fit_workspace, read_result
    from wfit.fitter.cli import main

    path = str(tmp_path / "ws.hdf5")
    write_wfit(build_random_model(seed=23), path)
    out = str(tmp_path / "fit.hdf5")
    assert main(["fit", path, "-o", out, "--toys", "6", "--toys-batch", "4", "-q"]) == 0
    res = read_result(out)
    fitted = fit_workspace(path)
    ll = Likelihood(read_workspace(path))
    seq = run_toys(ll, 6, seed=0, x_gen=fitted.values)  # the same toys, fitted one at a time
    np.testing.assert_allclose(res.extra["toys_gof"], seq.gof, rtol=1e-7)
    chi2 = res.extra["gof"][0]
    assert float(res.extra["gof_toys_p_value"]) == pytest.approx(np.mean(seq.gof >= chi2))
    pulls = (seq.values[:, : ll.npoi] - fitted.values[: ll.npoi]) / seq.errors[:, : ll.npoi]
    np.testing.assert_allclose(res.extra["toys_poi_pulls"], pulls, rtol=1e-5, atol=1e-6)
    assert "toys: 6 of 6 converged" in capsys.readouterr().out
