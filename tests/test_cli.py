"""``wfit fit``: exit codes, the result file, agreement with the Python API, and :class:`FitOptions`.

References: the CLI equals :func:`fit_workspace` bit for bit (the same function), and both equal an
independent fit (scipy on the numpy NLL, :mod:`tests.reference_fit`): values to 2e-5 sigma (the EDM
tolerance 1e-10 bounds the distance to the minimum by sqrt(2 EDM) = 1.4e-5 sigma), uncertainties to
1e-5 relative.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import stats

from tests.builders import build_random_model, write_wfit
from tests.reference_fit import ReferenceFit, reference_fit
from wfit.fitter import FitOptions, fit_workspace, read_result
from wfit.fitter.cli import _parser, main
from wfit.workspace import read_workspace


@pytest.fixture(scope="module")
def ws_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "ws.hdf5")
    write_wfit(build_random_model(seed=8), path)
    return path


@pytest.fixture(scope="module")
def reference(ws_path) -> ReferenceFit:
    return reference_fit(read_workspace(ws_path))


def _assert_matches_reference(res, ref: ReferenceFit) -> None:
    np.testing.assert_allclose((res.values - ref.x) / ref.errors, 0.0, atol=2e-5)
    np.testing.assert_allclose(res.errors, ref.errors, rtol=1e-5)
    np.testing.assert_allclose(res.nll, ref.nll, rtol=1e-10)


def test_cli_fit_writes_result_equal_to_api(ws_path, reference, tmp_path, capsys):
    out = str(tmp_path / "res.hdf5")
    assert main(["fit", ws_path, "-o", out, "--seed", "3"]) == 0
    printed = capsys.readouterr()
    assert "sig0" in printed.out and "converged" in printed.out and "iteration" in printed.err
    res = read_result(out)
    api = fit_workspace(ws_path)
    assert res.names == api.names
    np.testing.assert_array_equal(res.values, api.values)
    np.testing.assert_array_equal(res.covariance, api.covariance)
    _assert_matches_reference(res, reference)
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


def test_console_script_runs(ws_path, reference, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "wfit")
    out = tmp_path / "r.hdf5"
    proc = subprocess.run([exe, "fit", ws_path, "-o", str(out), "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    res = read_result(out)
    np.testing.assert_array_equal(res.values, fit_workspace(ws_path).values)
    _assert_matches_reference(res, reference)


def test_cli_impacts_scan_and_plots_equal_the_api(ws_path, reference, tmp_path):
    from wfit.fitter import Likelihood
    from wfit.fitter.breakdown import impacts
    from wfit.fitter.scanning import scan
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
    # Independent: impacts C_ij / sqrt(C_jj) and grouped sqrt(v^T C_GG^-1 v) from the reference covariance,
    # the profile q = 2 (min NLL at the scan point - min NLL) from reference fits with sig0 fixed, and
    # the saturated chi2 = 2 NLL at the reference minimum.
    cov, npoi, ws = reference.covariance, res.npoi, ll.ws
    np.testing.assert_allclose(res.extra["impacts"], cov[:npoi] / reference.errors, rtol=1e-4, atol=1e-7)
    for k, (group, idxs) in enumerate(ws.syst_groups.items()):
        g = npoi + np.asarray(idxs)
        v = cov[:npoi][:, g]
        expected = np.sqrt(np.einsum("ij,ij->i", v, np.linalg.solve(cov[np.ix_(g, g)], v.T).T))
        np.testing.assert_allclose(res.extra["impacts_grouped"][:, k], expected, rtol=1e-4, err_msg=group)
    points, q = res.extra["scan_sig0"][:, 0], res.extra["scan_sig0"][:, 1]
    i0 = res.names.index("sig0")
    for k in (0, len(points) // 4, len(points) // 2, len(points) - 1):
        prof = reference_fit(ws, fixed={i0: points[k]}, x0=reference.x)
        np.testing.assert_allclose(q[k], 2.0 * (prof.nll - reference.nll), rtol=1e-6, atol=1e-7)
    chi2 = 2.0 * reference.nll
    ndf = ws.nbins - npoi - len(ws.systs_noconstraint)
    np.testing.assert_allclose(res.extra["gof"], [chi2, ndf, stats.chi2.sf(chi2, ndf)], rtol=1e-9)
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["correlation.png", "impacts_sig0.png", "impacts_sig1.png", "prepostfit.png", "pulls.png"]
    assert all((plots / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_every_fit_option_has_a_flag_and_reaches_the_fit(ws_path, tmp_path):
    """FitOptions is the one list of options: each is a `wfit fit` flag (argparse dest = field name),
    and the options of a CLI fit are FitOptions' dict (plus the device TensorFlow used)."""
    parsed = vars(_parser().parse_args(["fit", ws_path]))
    assert set(FitOptions.names()) <= set(parsed)
    assert FitOptions(**{n: parsed[n] for n in FitOptions.names()}) == FitOptions()  # same defaults
    out = tmp_path / "r.hdf5"
    argv = ["fit", ws_path, "-o", str(out), "-q", "--no-bb-lite", "--tol", "1e-12", "--max-iter", "50",
            "--seed", "4", "--poi-nonnegative", "--device", "cpu"]
    assert main(argv) == 0
    stored = read_result(out).options
    expected = FitOptions(bb_lite=False, tol=1e-12, max_iter=50, seed=4, poi_nonnegative=True, device="cpu")
    assert stored == {**expected.to_dict(), "device": "/CPU:0"}
    assert FitOptions.from_dict(stored) == expected.replace(device="/CPU:0")


def test_fit_options_are_checked(ws_path, capsys):
    opts = FitOptions()
    assert opts.replace(tol=1e-12).tol == 1e-12 and opts.tol == 1e-10  # frozen: replace makes a copy
    with pytest.raises(AttributeError):
        opts.tol = 1.0  # type: ignore[misc]
    assert FitOptions(tol=np.float64(1e-9), max_iter=np.int64(7)).to_dict()["max_iter"] == 7
    assert type(FitOptions(max_iter=np.int64(7)).max_iter) is int  # JSON-able
    for bad, match in [
        ({"tol": 0.0}, r"tol=0\.0: .*finite number > 0"),
        ({"tol": float("nan")}, r"tol=nan"),
        ({"tol": float("inf")}, r"tol=inf"),
        ({"max_iter": 0}, r"max_iter=0: .*integer >= 1"),
        ({"max_iter": 2.5}, r"max_iter=2\.5"),
        ({"max_iter": True}, r"max_iter=True"),
        ({"seed": -1}, r"seed=-1: .*integer >= 0"),
        ({"device": "tpu"}, r"device='tpu': allowed: None, 'auto', 'cpu', 'gpu'"),
        ({"asimov": 1}, r"asimov=1: must be True or False"),
        ({"regularize": ("xsec", "xsec")}, r"regularize=.*\['xsec'\] given more than once"),
        ({"blind": True, "unblind": ("sig0", "sig.*", "sig0")}, r"unblind=.*\['sig0'\] given more than once"),
        ({"blind": True, "blinding_groups": ("W.*", "W.*")}, r"blinding_groups=.*given more than once"),
    ]:
        with pytest.raises(ValueError, match=match):
            FitOptions(**bad)
    for ok in ("cpu", "GPU", "auto", "/GPU:1", "/device:CPU:0", "/job:localhost/replica:0/task:0/device:GPU:0"):
        assert FitOptions(device=ok).device == ok
    with pytest.raises(TypeError, match=r"unknown fit option\(s\) \['tols'\]; the options are asimov"):
        opts.replace(tols=1e-9)
    with pytest.raises(TypeError, match=r"unknown fit option"):
        fit_workspace(ws_path, tols=1e-9)
    with pytest.raises(TypeError, match=r"options must be a FitOptions, got dict"):
        fit_workspace(ws_path, {"tol": 1e-9})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['worker'\]"):
        FitOptions.from_dict({"tol": 1e-9, "worker": "tcp://x"})
    assert FitOptions.from_dict({"tol": 1e-9, "worker": "tcp://x"}, strict=False) == FitOptions(tol=1e-9)
    # the CLI refuses the same values, with exit code 2 and the option named
    assert main(["fit", ws_path, "--tol", "-1", "-q"]) == 2
    assert "fit option tol=-1.0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--pseudodata", "nope"], "no pseudo-data set 'nope'"),
        (["-o", "{ws}"], "is the input workspace"),
        (["-o", "{link}"], "is the input workspace"),
        (["-o", "/proc/no-such-folder/r.hdf5"], "-o: cannot create the folder /proc/no-such-folder"),
        (["--plots", "/proc/no-such-folder"], "--plots: cannot create the folder /proc/no-such-folder"),
        (["--scan", "nosuch"], "--scan: no parameter 'nosuch'"),
        (["--tol", "nan"], "fit option tol=nan"),
        (["--max-iter", "0"], "fit option max_iter=0"),
    ],
    ids=["pseudodata", "o-is-input", "o-is-input-by-link", "o-folder", "plots-folder", "scan", "tol", "max-iter"],
)
def test_cli_bad_options_fail_before_the_fit(ws_path, tmp_path, capsys, args, words):
    """Exit 2 with one line naming the option, before any fitting: the input is untouched, nothing written."""
    link = tmp_path / "same.hdf5"
    link.symlink_to(ws_path)
    before = hashlib.sha256(Path(ws_path).read_bytes()).hexdigest()
    out = tmp_path / "r.hdf5"
    argv = [a.format(ws=ws_path, link=link) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(out)]
    assert main(["fit", ws_path, *argv]) == 2
    err = capsys.readouterr().err
    assert words in err
    assert "fitting on" not in err and "Traceback" not in err  # stopped before the fit started
    assert not out.exists()
    assert hashlib.sha256(Path(ws_path).read_bytes()).hexdigest() == before


@pytest.mark.parametrize("when", ["at start-up", "after reading"])
def test_ctrl_c_exits_130_with_one_line_and_no_traceback(ws_path, tmp_path, when):
    """SIGINT to a running `wfit fit`: exit 130, no traceback, and one line that tells the truth about the
    result file (written or not)."""
    import signal
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "wfit")
    out = tmp_path / "r.hdf5"
    # The child starts with SIGINT's default action even where this test runs with SIGINT ignored (a background
    # job of a non-interactive shell), as a terminal's wfit fit does.
    proc = subprocess.Popen([exe, "fit", ws_path, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    if when == "at start-up":
        time.sleep(0.5)  # the interpreter is importing TensorFlow
    else:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("wfit: reading"), line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    if out.exists():
        assert last.startswith(f"wfit: interrupted: the fit result was written to {out}"), last
        assert read_result(out).ok
    else:
        assert last == f"wfit: interrupted: nothing was written ({out} was not created or changed)", last
    if when == "at start-up":
        assert not out.exists()


def test_a_failing_post_fit_step_keeps_the_fit_result(ws_path, tmp_path, capsys, monkeypatch):
    """The disk fills while the plots are written (matplotlib's savefig raises ENOSPC): exit 3, a line that names
    the result file, and the result on disk equals the fit of the API."""
    import errno

    import matplotlib.figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    out = tmp_path / "r.hdf5"
    rc = main(["fit", ws_path, "-o", str(out), "-q", "--plots", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert f"a post-fit step failed (OSError: [Errno {errno.ENOSPC}] No space left on device" in err
    assert f"the fit result is in {out}" in err
    res = read_result(out)
    np.testing.assert_array_equal(res.values, fit_workspace(ws_path).values)
    np.testing.assert_array_equal(res.covariance, fit_workspace(ws_path).covariance)


def test_cli_prior_equals_the_api_and_bad_priors_fail_before_the_fit(ws_path, tmp_path, capsys):
    out = tmp_path / "r.hdf5"
    assert main(["fit", ws_path, "-o", str(out), "-q", "--prior", "sig0=1,0.3"]) == 0
    api = fit_workspace(ws_path, priors=(("sig0", 1.0, 0.3),))
    np.testing.assert_array_equal(read_result(out).values, api.values)
    assert read_result(out).options["priors"] == [["sig0", 1.0, 0.3]]
    assert not np.allclose(api.errors, fit_workspace(ws_path).errors)  # the prior changes the covariance
    capsys.readouterr()
    bad = tmp_path / "bad.hdf5"
    assert main(["fit", ws_path, "-o", str(bad), "-q", "--prior", "nosuch=1,0.3"]) == 2
    assert "--prior: prior on 'nosuch': no such parameter" in capsys.readouterr().err
    assert not bad.exists()
    with pytest.raises(SystemExit) as exc:
        main(["fit", ws_path, "-o", str(bad), "-q", "--prior", "sig0=1"])
    assert exc.value.code == 2
    assert "give NAME=MEAN,SIGMA" in capsys.readouterr().err
