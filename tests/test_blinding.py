"""Blinding: a blinded fit shows the fitted POIs divided by exp(v) and the nuisances of interest shifted by v,
with v the deterministic offset of rabbit main (a normal number of width 5 seeded by the SHA-256 of the name,
``_data`` appended for integer counts). The reference is the unblinded fit of the same workspace and that
formula, written out again here."""

from __future__ import annotations

import hashlib

import h5py
import hist
import numpy as np
import pytest

from wfit.fitter import FitOptions, fit_workspace, impacts, read_result
from wfit.fitter.cli import main
from wfit.workspace import WorkspaceError, WorkspaceWriter

from .builders import build_random_model, write_wfit


def _offset(seed: str, integer_data: bool = True) -> float:
    key = (seed + ("_data" if integer_data else "")).encode()
    return np.random.default_rng(np.random.SeedSequence(int(hashlib.sha256(key).hexdigest(), 16))).normal(0.0, 5.0)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("blind") / "ws.hdf5")
    write_wfit(build_random_model(seed=21, nsig=3), path)
    return path


@pytest.fixture(scope="module")
def fitted(ws):
    return fit_workspace(ws, tol=1e-14)


def _noi_workspace(path, n=(130.0, 80.0)):
    """Two bins, a signal and a background whose unconstrained rate (a nuisance of interest) is measured."""
    ax = hist.axis.Regular(2, 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("ch", [ax])
    w.add_process("sig", "ch", np.array([60.0, 20.0]), signal=True, variances=np.zeros(2))
    w.add_process("bkg", "ch", np.array([40.0, 50.0]), variances=np.zeros(2))
    w.add_norm_systematic("bkgrate", "bkg", "ch", 1.2, constrained=False, noi=True)
    w.add_data("ch", np.array(n))
    w.write(path)


def test_blinded_values_are_the_fitted_ones_with_rabbit_mains_offsets(ws, fitted):
    shown = fit_workspace(ws, tol=1e-14, blind=True)
    npoi = fitted.npoi
    c = np.exp([_offset(n) for n in fitted.names[:npoi]])
    np.testing.assert_allclose(shown.values[:npoi] * c, fitted.values[:npoi], rtol=1e-10)
    np.testing.assert_allclose(shown.errors[:npoi] * c, fitted.errors[:npoi], rtol=1e-10)
    np.testing.assert_allclose(shown.values[npoi:], fitted.values[npoi:], rtol=1e-10, atol=1e-12)  # no NOIs here
    np.testing.assert_allclose(shown.correlation(), fitted.correlation(), atol=1e-10)
    assert shown.nll == pytest.approx(fitted.nll, rel=1e-12)
    assert shown.options["blinded"] == fitted.names[:npoi]
    assert np.all(np.abs(shown.values[:npoi] - fitted.values[:npoi]) > 1e-3)  # the offsets do hide them
    assert "BLINDED: 3 parameters" in shown.summary()
    # deterministic: a second fit shows the same numbers
    again = fit_workspace(ws, tol=1e-14, blind=True)
    np.testing.assert_array_equal(again.values[:npoi], shown.values[:npoi])


def test_nuisance_of_interest_is_shifted_and_asimov_is_not_blinded(tmp_path):
    path = str(tmp_path / "noi.hdf5")
    _noi_workspace(path)
    fitted = fit_workspace(path, bb_lite=False, tol=1e-16)
    shown = fit_workspace(path, bb_lite=False, tol=1e-16, blind=True)
    i = fitted.index("bkgrate")
    assert shown.values[i] == pytest.approx(fitted.values[i] - _offset("bkgrate"), abs=1e-9)
    assert shown.errors[i] == pytest.approx(fitted.errors[i], rel=1e-10)
    assert shown.options["blinded"] == ["sig", "bkgrate"]
    asimov = fit_workspace(path, bb_lite=False, tol=1e-16, blind=True, asimov=True)
    assert asimov.values[0] == pytest.approx(1.0, abs=1e-8)  # the prediction, shown as fitted
    assert "blinded" not in asimov.options
    # non-integer counts (e.g. a weighted pseudo-data set) seed the offsets without "_data", as rabbit main
    _noi_workspace(path, n=(130.5, 80.25))
    fitted = fit_workspace(path, bb_lite=False, tol=1e-16)
    shown = fit_workspace(path, bb_lite=False, tol=1e-16, blind=True)
    assert shown.values[0] * np.exp(_offset("sig", False)) == pytest.approx(fitted.values[0], rel=1e-10)


def test_groups_keep_ratios_and_unblind_reveals_by_name_or_pattern(ws, fitted):
    shown = fit_workspace(ws, tol=1e-14, blind=True, blinding_groups=("sig[01]",), unblind=("sig2",))
    c = np.exp(_offset("sig[01]"))
    np.testing.assert_allclose(shown.values[:2] * c, fitted.values[:2], rtol=1e-10)
    assert shown.values[0] / shown.values[1] == pytest.approx(fitted.values[0] / fitted.values[1], rel=1e-10)
    assert shown.values[2] == pytest.approx(fitted.values[2], rel=1e-10)  # unblinded
    assert shown.options["blinded"] == ["sig0", "sig1"]
    everything = fit_workspace(ws, tol=1e-14, blind=True, unblind=("sig.*",))
    np.testing.assert_allclose(everything.values, fitted.values, rtol=1e-10, atol=1e-12)


def test_blinding_mistakes_are_errors_before_the_fit(ws):
    with pytest.raises(WorkspaceError, match=r"unblind 'sgi0' matches none of the blinded parameters"):
        fit_workspace(ws, blind=True, unblind=("sgi0",))
    with pytest.raises(WorkspaceError, match=r"\['sig0'\] match both unblind and a blinding group \('sig.\*'\)"):
        fit_workspace(ws, blind=True, unblind=("sig0",), blinding_groups=("sig.*",))
    with pytest.raises(ValueError, match=r"unblind=\('sig0',\): only has an effect on a blinded fit"):
        FitOptions(unblind=("sig0",))
    with pytest.raises(ValueError, match=r"blinding_groups=\['sig\['\].*not a regular expression"):
        FitOptions(blind=True, blinding_groups=["sig["])


def test_a_shown_result_cannot_feed_a_computation_that_needs_the_fit(ws):
    from wfit.fitter.likelihood import Likelihood
    from wfit.workspace import read_workspace

    shown = fit_workspace(ws, tol=1e-12, blind=True)
    with pytest.raises(ValueError, match="impacts needs the fitted values, and this result is blinded"):
        impacts(Likelihood(read_workspace(ws)), shown)


def test_cli_writes_prints_and_draws_only_blinded_numbers(ws, fitted, tmp_path, capsys):
    out, plots = str(tmp_path / "fit.hdf5"), str(tmp_path / "plots")
    rc = main(["fit", ws, "-o", out, "--blind", "--impacts", "--scan", "sig0", "--plots", plots, "-q",
               "--tol", "1e-14"])
    text = capsys.readouterr().out
    assert rc == 0
    res = read_result(out)
    c = np.exp([_offset(n) for n in fitted.names[: fitted.npoi]])
    np.testing.assert_allclose(res.values[: fitted.npoi] * c, fitted.values[: fitted.npoi], rtol=1e-9)
    # no dataset of the file holds a fitted POI value
    with h5py.File(out) as f:
        floats = [k for k in f["extra"] if f["extra"][k].dtype.kind == "f"]
        numbers = np.concatenate([np.ravel(f[k][...]) for k in ("values", "errors")]
                                 + [np.ravel(f["extra"][k][...]) for k in floats])
    for mu in fitted.values[: fitted.npoi]:
        assert not np.any(np.isclose(numbers, mu, rtol=1e-6)), mu
    assert f"{fitted.values[0]:.6f}" not in text
    assert f"{res.values[0]:.6f}" in text and "BLINDED" in text
    # the impacts are in units of the shown POIs; the scan runs over the shown values of sig0
    truth = impacts(*_ll_and(ws, fitted))
    np.testing.assert_allclose(res.extra["impacts"] * c[:, None], truth.values, rtol=1e-6, atol=1e-12)
    scan = res.extra["scan_sig0"]
    assert scan[np.argmin(scan[:, 1]), 0] == pytest.approx(res.values[0], rel=1e-6)
    lo, hi = (float(v) for v in text.split("profile scan of sig0: 68% interval [")[1].split("]")[0].split(","))
    assert lo < res.values[0] < hi and (hi - lo) / 2 == pytest.approx(res.errors[0], rel=0.1)
    assert {"pulls.png", "impacts_sig0.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}


def _ll_and(ws, result):
    from wfit.fitter.likelihood import Likelihood
    from wfit.workspace import read_workspace

    return Likelihood(read_workspace(ws)), result
