"""Post-fit cross sections from masked channels: rabbit's physics models and finite differences."""

from __future__ import annotations

import os
import subprocess
import sys

import hist
import numpy as np
import pytest

from tests.builders import build_random_model, write_rabbit
from tests.reference_fit import jacobian_fd
from wfit.fitter import Likelihood, fit
from wfit.fitter.derived import asymmetry, masked_channel, normalized, summed
from wfit.workspace import WorkspaceWriter, read_workspace

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),  # rabbit's writer leaves os.devnull open
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def test_masked_yields_match_rabbit_project_and_normalize(tmp_path):
    import rabbit  # noqa: F401  (a test dependency: run or fail, never skip)
    from rabbit.io_tools import get_fitresult

    m = build_random_model(seed=21)
    path = str(tmp_path / "ws.hdf5")
    write_rabbit(m, path)
    env = dict(os.environ, GIT_DIR=str(tmp_path / "no-git"))
    exe = os.path.join(os.path.dirname(sys.executable), "rabbit_fit")
    subprocess.run([exe, path, "-t", "0", "--unblind", "--allowNegativePOI", "--saveHists", "--computeHistErrors",
                    "--computeHistCov", "--physicsModel", "Project", "xsec", "gen", "--physicsModel", "Normalize",
                    "xsec", "gen", "-o", str(tmp_path), "--outname", "r.hdf5"], env=env, check=True,
                   capture_output=True)
    pm = get_fitresult(str(tmp_path / "r.hdf5"))["physics_models"]
    ws = read_workspace(path, trust_pickle=True)  # rabbit's channel names live in its pickle
    ll = Likelihood(ws)
    res = fit(ll, tol=1e-16)
    for key, ours in (("Project xsec gen", masked_channel(ll, res, "xsec")),
                      ("Normalize xsec gen", normalized(ll, res, "xsec"))):
        theirs = pm[key]["channels"]["xsec"]["hist_postfit_inclusive"].get()
        cov = pm[key]["hist_postfit_inclusive_cov"].get().values()
        np.testing.assert_allclose(ours.values, theirs.values(), rtol=1e-6)
        np.testing.assert_allclose(ours.covariance, cov, rtol=1e-5, atol=1e-9 * np.max(np.abs(cov)))


@pytest.fixture(scope="module")
def charge_model(tmp_path_factory):
    """Two charges x three |y| bins of W signal, each a POI, plus a background; generator bins masked."""
    rng = np.random.default_rng(3)
    reco = hist.axis.Regular(24, 0.0, 1.0, name="x")
    gen = [hist.axis.Integer(0, 2, name="charge"), hist.axis.Integer(0, 3, name="absy")]
    w = WorkspaceWriter()
    w.add_channel("reco", [reco])
    w.add_channel("xsec", gen, masked=True)
    total = np.zeros(24)
    for q in range(2):
        for iy in range(3):
            name = f"W{'pm'[q]}_y{iy}"
            shape = 500 * np.exp(-0.5 * ((reco.centers - (0.15 + 0.3 * iy + 0.05 * q)) / 0.08) ** 2) + 1
            w.add_process(name, "reco", shape, signal=True, variances=0.1 * shape)
            gen_vals = np.zeros((2, 3))
            gen_vals[q, iy] = shape.sum() * 1.3  # acceptance 1/1.3
            w.add_process(name, "xsec", gen_vals, signal=True, variances=np.zeros((2, 3)))
            w.add_norm_systematic("lumi", name, ["reco", "xsec"], 1.02)
            total += shape
    bkg = 50 * np.ones(24)
    w.add_process("bkg", "reco", bkg, variances=0.1 * bkg)
    w.add_shape_systematic("bkgshape", "bkg", "reco", bkg * np.exp(0.1 * reco.centers))
    w.add_data("reco", rng.poisson(total + bkg).astype(float))
    path = str(tmp_path_factory.mktemp("derived") / "ws.hdf5")
    w.write(path, rabbit_meta=True)  # rabbit reads the channel axes from its pickled metadata
    ll = Likelihood(read_workspace(path))
    return ll, fit(ll, tol=1e-16)


def test_derived_covariances_equal_finite_difference_propagation(charge_model):
    ll, res = charge_model
    npoi = ll.npoi

    def yields(x):
        return ll.masked_yields(x).sum(axis=1).reshape(2, 3)

    cases = {
        "xsec": (masked_channel(ll, res, "xsec"), lambda x: yields(x).ravel()),
        "norm": (normalized(ll, res, "xsec"), lambda x: (yields(x) / yields(x).sum()).ravel()),
        "asym": (asymmetry(ll, res, "xsec", "charge"), lambda x: ((yields(x)[0] - yields(x)[1])
                                                                   / yields(x).sum(0)).ravel()),
        "sum_y": (summed(ll, res, "xsec", ["charge"]), lambda x: yields(x).sum(1)),
    }
    for name, (derived, fn) in cases.items():
        j = jacobian_fd(fn, res.values)
        np.testing.assert_allclose(derived.values.ravel(), fn(res.values), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(derived.covariance, j @ res.covariance @ j.T, rtol=1e-6,
                                   atol=1e-10 * np.max(np.abs(derived.covariance)), err_msg=name)
    # analytic: the cross section of each bin is mu_p times its template and the lumi factor
    xs = masked_channel(ll, res, "xsec")
    lumi = np.exp(res.values[npoi + ll.names[npoi:].index("lumi")] * np.log(1.02))
    gen = ll.ws.norm[ll.ws.nbins:, :npoi].sum(axis=1).reshape(2, 3)
    np.testing.assert_allclose(xs.values, gen * res.values[:npoi].reshape(2, 3) * lumi, rtol=1e-12)


def test_charge_asymmetry_matches_rabbit(charge_model, tmp_path):
    import rabbit  # noqa: F401  (a test dependency: run or fail, never skip)
    from rabbit.io_tools import get_fitresult

    ll, res = charge_model
    env = dict(os.environ, GIT_DIR=str(tmp_path / "no-git"))
    exe = os.path.join(os.path.dirname(sys.executable), "rabbit_fit")
    subprocess.run([exe, ll.ws.path, "-t", "0", "--unblind", "--allowNegativePOI", "--saveHists",
                    "--computeHistErrors", "--computeHistCov", "--physicsModel", "Asymmetry", "xsec", "xsec",
                    "charge:0", "charge:1", "-o", str(tmp_path), "--outname", "r.hdf5"], env=env, check=True,
                   capture_output=True)
    pm = get_fitresult(str(tmp_path / "r.hdf5"))["physics_models"]
    (key,) = [k for k in pm if k.startswith("Asymmetry")]
    theirs = pm[key]["channels"]["xsec"]["hist_postfit_inclusive"].get()
    cov = pm[key]["hist_postfit_inclusive_cov"].get().values()
    ours = asymmetry(ll, res, "xsec", "charge")
    np.testing.assert_allclose(ours.values.ravel(), theirs.values().ravel(), rtol=1e-6)
    np.testing.assert_allclose(ours.covariance, cov, rtol=1e-5, atol=1e-9 * np.max(np.abs(cov)))
