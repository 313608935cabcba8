"""``wfit fit``: exit codes, the result file, and agreement with the Python API."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.builders import build_random_model, write_wfit
from wfit.fitter import fit_workspace, read_result
from wfit.fitter.cli import main


@pytest.fixture(scope="module")
def ws_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "ws.hdf5")
    write_wfit(build_random_model(seed=8), path)
    return path


def test_cli_fit_writes_result_equal_to_api(ws_path, tmp_path, capsys):
    out = str(tmp_path / "res.hdf5")
    assert main(["fit", ws_path, "-o", out, "--seed", "3"]) == 0
    printed = capsys.readouterr()
    assert "sig0" in printed.out and "converged" in printed.out and "iteration" in printed.err
    res = read_result(out)
    api = fit_workspace(ws_path)
    assert res.names == api.names
    np.testing.assert_array_equal(res.values, api.values)
    np.testing.assert_array_equal(res.covariance, api.covariance)
    with open(ws_path, "rb") as f:  # independent of the package's own checksum helper
        assert res.workspace_sha256 == hashlib.sha256(f.read()).hexdigest()
    assert res.options["seed"] == 3 and res.ok
    with h5py.File(out) as f:  # plain numeric or string datasets, nothing pickled
        assert set(f) == {"names", "values", "errors", "covariance", "extra"}
        kinds = set()
        f.visititems(lambda name, obj: kinds.add(obj.dtype.kind) if isinstance(obj, h5py.Dataset) else None)
        assert kinds <= {"f", "i", "u", "O"} and "V" not in kinds
        assert h5py.check_string_dtype(f["names"].dtype) is not None
    np.testing.assert_allclose(res.errors, np.sqrt(np.diag(res.covariance)))


def test_cli_asimov_recovers_nominal(ws_path, tmp_path):
    out = str(tmp_path / "asimov.hdf5")
    assert main(["fit", ws_path, "-o", out, "--asimov", "-q", "--tol", "1e-16"]) == 0
    res = read_result(out)
    # Asimov data are the expectation at mu = 1, theta = 0: the fit returns exactly that point
    np.testing.assert_allclose(res.values[: res.npoi], 1.0, rtol=1e-7)
    np.testing.assert_allclose(res.values[res.npoi :], 0.0, atol=1e-7)


def test_cli_exit_codes(ws_path, tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.hdf5")]) == 2
    assert "no such workspace" in capsys.readouterr().err
    bad = tmp_path / "bad.hdf5"
    bad.write_text("garbage")
    assert main(["fit", str(bad)]) == 2
    assert "not a readable HDF5" in capsys.readouterr().err
    # one iteration cannot converge: non-zero exit and the status in the output
    assert main(["fit", ws_path, "-o", str(tmp_path / "r.hdf5"), "--max-iter", "1", "-q"]) == 1
    assert "did not converge" in capsys.readouterr().err
    assert read_result(tmp_path / "r.hdf5").status != 0


def test_console_script_runs(ws_path, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "wfit")
    out = tmp_path / "r.hdf5"
    proc = subprocess.run([exe, "fit", ws_path, "-o", str(out), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_result(out).values, fit_workspace(ws_path).values)


def test_cli_impacts_scan_and_plots_equal_the_api(ws_path, tmp_path):
    from wfit.fitter import Likelihood
    from wfit.fitter.impacts import impacts
    from wfit.fitter.scan import scan
    from wfit.fitter.toys import goodness_of_fit
    from wfit.workspace import read_workspace

    out, plots = str(tmp_path / "r.hdf5"), tmp_path / "plots"
    assert main(["fit", ws_path, "-o", out, "-q", "--impacts", "--scan", "sig0", "--plots", str(plots)]) == 0
    res = read_result(out)
    ll = Likelihood(read_workspace(ws_path))
    api = fit_workspace(ws_path)
    imp = impacts(ll, api)
    np.testing.assert_allclose(res.extra["impacts"], imp.values, rtol=1e-10)
    np.testing.assert_allclose(res.extra["impacts_grouped"], imp.grouped, rtol=1e-10)
    assert list(res.extra["impact_groups"]) == imp.groups
    sc = scan(ll, api, "sig0")
    np.testing.assert_allclose(res.extra["scan_sig0"][:, 1], sc.q, rtol=1e-6, atol=1e-8)
    gof = goodness_of_fit(ll, api)
    np.testing.assert_allclose(res.extra["gof"], [gof.chi2, gof.ndf, gof.p_value], rtol=1e-10)
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["correlation.png", "impacts_sig0.png", "impacts_sig1.png", "prepostfit.png", "pulls.png"]
    assert all((plots / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
