"""Fit pathologies end with a status and a non-zero exit code, never a silent result."""

from __future__ import annotations

import hist
import numpy as np
import pytest

from wfit.fitter import FitStatus, fit_workspace, read_result
from wfit.fitter.cli import main
from wfit.workspace import WorkspaceWriter


def _write(path, signals, bkg, data):
    ax = hist.axis.Regular(len(data), 0.0, 1.0, name="x")
    w = WorkspaceWriter()
    w.add_channel("c", [ax])
    for name, s in signals.items():
        w.add_process(name, "c", np.asarray(s, float), signal=True, variances=np.zeros(len(data)))
    w.add_process("bkg", "c", np.asarray(bkg, float), variances=np.zeros(len(data)))
    w.add_data("c", np.asarray(data, float))
    w.write(path)
    return str(path)


def test_degenerate_templates_report_a_flat_direction(tmp_path):
    """Two identical signal templates: only their sum is measured, the difference is flat."""
    s = [10.0, 20.0, 30.0]
    path = _write(tmp_path / "w.hdf5", {"a": s, "b": s}, [5.0, 5.0, 5.0], [20, 45, 62])
    res = fit_workspace(path, bb_lite=False)
    assert res.status == FitStatus.HESSIAN_NOT_POSDEF
    # the measured combination is still right: (mu_a + mu_b) s + b fits the data as well as one template
    single = fit_workspace(_write(tmp_path / "s.hdf5", {"a": s}, [5.0, 5.0, 5.0], [20, 45, 62]), bb_lite=False)
    assert res.values[0] + res.values[1] == pytest.approx(single.values[0], rel=1e-6)
    assert main(["fit", path, "-o", str(tmp_path / "r.hdf5"), "-q", "--no-bb-lite"]) == 1
    assert read_result(tmp_path / "r.hdf5").status == FitStatus.HESSIAN_NOT_POSDEF


def test_poi_at_its_bound_is_reported(tmp_path):
    """Data below the background with non-negative POIs: mu sits at 0, where the error is not Gaussian."""
    path = _write(tmp_path / "w.hdf5", {"sig": [10.0, 10.0]}, [50.0, 50.0], [40, 38])
    res = fit_workspace(path, bb_lite=False, poi_nonnegative=True)
    assert res.status == FitStatus.AT_BOUNDARY and res.values[0] == 0.0
    free = fit_workspace(path, bb_lite=False)
    assert free.ok and free.values[0] == pytest.approx((78 - 100) / 20, rel=1e-8)  # analytic, one effective bin
    assert main(["fit", path, "-o", str(tmp_path / "r.hdf5"), "-q", "--no-bb-lite", "--poi-nonnegative"]) == 1


def test_iteration_limit_is_reported(tmp_path):
    path = _write(tmp_path / "w.hdf5", {"sig": [10.0, 30.0]}, [50.0, 20.0], [90, 160])
    res = fit_workspace(path, max_iter=1)
    assert res.status == FitStatus.MAX_ITERATIONS and not res.ok
