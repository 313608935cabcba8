"""notebooks/w_templates_and_fit.ipynb runs top to bottom (nbclient) and its numbers are right.

References: its fit equals ``wfit fit`` run here on the workspace it wrote (bit for bit, floats passed
as hex), and both agree with an independent fit of that workspace (scipy on the numpy NLL,
:mod:`tests.reference_fit`): values to 2e-5 sigma (the EDM tolerance 1e-10 bounds the distance to the
minimum by sqrt(2 EDM) = 1.4e-5 sigma), uncertainties to 1e-5 relative; its pseudo-data total equals the
``hdata_obs`` dataset read with h5py.

The kernel is this interpreter (``sys.executable -m ipykernel_launcher``) through a kernelspec written
into the test's temporary folder: the ``python3`` spec that ipykernel installs runs whatever ``python``
is first on PATH, which in a fresh virtual environment that is not activated is another interpreter.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.reference_fit import reference_fit
from wfit.workspace import read_workspace

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "w_templates_and_fit.ipynb"


@pytest.fixture
def kernel_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # jupyter_core warns (DeprecationWarning) unless the platformdirs layout is chosen explicitly.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    spec_dir = tmp_path / "kernels" / "wfit-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "wfit test kernel",
                "language": "python",
            }
        )
    )
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="wfit-test", kernel_spec_manager=ksm, ip="127.0.0.1")


def test_notebook_runs_and_agrees_with_wfit_fit(tmp_path: Path, kernel_manager) -> None:
    import nbformat
    from nbclient import NotebookClient

    from wfit.fitter import read_result
    from wfit.fitter.cli import main

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(NOTEBOOK, run / NOTEBOOK.name)
    nb = nbformat.read(run / NOTEBOOK.name, as_version=4)
    with warnings.catch_warnings():
        # jupyter_client 8 leaves the kernel client's zmq sockets to the garbage collector after nbclient
        # has stopped its channels ("Could not destroy zmq context"); collect them here, where that
        # ResourceWarning alone is ignored.
        warnings.filterwarnings("ignore", "Unclosed socket", ResourceWarning)
        NotebookClient(nb, km=kernel_manager, resources={"metadata": {"path": str(run)}}).execute()
        gc.collect()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # templates pt and eta, pulls, the uncertainty versus the mT cut
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4

    done = json.loads((run / "notebook-output" / "summary.json").read_text())
    assert done["resources"] == {"GPU": 1}
    ws = run / "notebook-output" / "workspace.hdf5"
    with h5py.File(ws, "r") as f:
        assert done["data"] == pytest.approx(float(np.sum(f["hdata_obs"][...])), rel=1e-12)

    assert main(["fit", str(ws), "-o", str(tmp_path / "cli.hdf5"), "-q"]) == 0
    ref = read_result(tmp_path / "cli.hdf5")
    assert done["names"] == ref.names
    np.testing.assert_array_equal([float.fromhex(v) for v in done["values"]], ref.values)
    np.testing.assert_array_equal([float.fromhex(v) for v in done["errors"]], ref.errors)

    model = read_workspace(ws)
    assert done["names"] == [*model.signals, *model.systs]
    indep = reference_fit(model)
    values = np.array([float.fromhex(v) for v in done["values"]])
    errors = np.array([float.fromhex(v) for v in done["errors"]])
    np.testing.assert_allclose((values - indep.x) / indep.errors, 0.0, atol=2e-5, err_msg="values, in sigma")
    np.testing.assert_allclose(errors, indep.errors, rtol=1e-5, err_msg="uncertainties")

    # Section 7: the expected uncertainty with the processor's hard cuts is the Asimov fit's of the workspace the
    # processor's templates made; the gradient from the GPU worker equals central differences computed here.
    from wfit.fitter import fit_workspace
    from wfit.fitter.cutopt import DEFAULT_WIDTHS, CutModel, Cuts
    from wfit.processors import Sample

    asimov = fit_workspace(ws, asimov=True)
    poi = done["cut_poi"]
    assert done["cut_sigma_hard"] == pytest.approx(asimov.errors[asimov.names.index(poi)], rel=1e-9)
    assert done["cut_worker"] == done["worker"]
    samples = {"W": Sample("signal", xsec=20000.0), "Z": Sample("background", xsec=2000.0)}
    cm = CutModel(run / "notebook-output" / "columns.h5", samples, lumi=1.0)
    x0, steps = Cuts(40.0, 0.15, 26.0).array(), np.array(DEFAULT_WIDTHS) * 1e-2
    fd = [(cm.expected_uncertainty(x0 + h * e, poi) - cm.expected_uncertainty(x0 - h * e, poi)) / (2 * h)
          for h, e in zip(steps, np.eye(3), strict=True)]  # fmt: skip
    np.testing.assert_allclose(done["cut_gradient"], fd, rtol=1e-4, atol=1e-6 * done["cut_sigma_hard"])
