"""The chain on one Dask cluster: processing on CPU workers, the fit on the worker that declares GPU=1.

References: the fit result equals ``wfit fit`` (the CLI, in-process) on the same workspace bit for bit,
and an independent fit (scipy on the numpy NLL, :mod:`tests.reference_fit`) to 2e-5 sigma in the values
(sqrt(2 EDM) at the EDM tolerance 1e-10 is 1.4e-5 sigma) and 1e-5 in the uncertainties; an Asimov fit
returns mu = 1, theta = 0; the processor output equals the Iterative executor's; the task stream says
which worker ran what.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import wfit.pipeline
import wfit.plots
from wfit.pipeline import (
    NoGPUWorkerError,
    fit_on_cluster,
    gpu_workers,
    local_chain_cluster,
    run_chain,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "nanoaod"
EXAMPLE_WS = ROOT / "examples" / "example_workspace.hdf5"


def _cli_fit(workspace: Path, out: Path) -> Any:
    from wfit.fitter import read_result
    from wfit.fitter.cli import main

    assert main(["fit", str(workspace), "-o", str(out), "-q"]) == 0
    return read_result(out)


def _assert_matches_reference(res: Any, workspace: Path) -> None:
    from tests.reference_fit import reference_fit
    from wfit.workspace import read_workspace

    ref = reference_fit(read_workspace(str(workspace)), bb_lite=res.options["bb_lite"])
    np.testing.assert_allclose((res.values - ref.x) / ref.errors, 0.0, atol=2e-5)
    np.testing.assert_allclose(res.errors, ref.errors, rtol=1e-5)
    np.testing.assert_allclose(res.nll, ref.nll, rtol=1e-10)


def _assert_same_fit(a: Any, b: Any) -> None:
    assert a.names == b.names and a.npoi == b.npoi
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.errors, b.errors)
    np.testing.assert_array_equal(a.covariance, b.covariance)
    assert a.nll == b.nll and a.status == b.status and a.niter == b.niter
    assert a.workspace_sha256 == b.workspace_sha256


def test_public_api() -> None:
    assert sorted(wfit.pipeline.__all__) == sorted(
        [
            "GPU_RESOURCE",
            "ChainResult",
            "NoGPUWorkerError",
            "cut_gradient_on_cluster",
            "fit_on_cluster",
            "gpu_workers",
            "load_dask_config",
            "local_chain_cluster",
            "process_on_cluster",
            "run_chain",
        ]
    )
    assert sorted(wfit.plots.__all__) == ["plot_templates"]


def test_import_is_light() -> None:
    code = "import sys, wfit.pipeline, wfit.plots; print(' '.join(sorted(sys.modules)))"
    mods = {m.split(".")[0] for m in subprocess.check_output([sys.executable, "-c", code], text=True).split()}
    assert not {"tensorflow", "coffea", "matplotlib"} & mods


@pytest.fixture(scope="module")
def gpu_client() -> Iterator[Any]:
    """One CPU worker and one worker that declares GPU=1 (processes, bound to 127.0.0.1)."""
    with local_chain_cluster(cpu_workers=1, gpu_workers=1) as client:
        yield client


def test_chain_fits_on_the_gpu_worker(gpu_client: Any, tmp_path: Path) -> None:
    from distributed import get_task_stream

    from wfit.processors import (
        AngularCoefficients,
        Sample,
        TemplateConfig,
        ToyConfig,
        WTemplateProcessor,
        run_templates,
        write_toy,
    )

    client = gpu_client
    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
    (gpu,) = gpu_workers(client)
    assert workers[gpu]["resources"] == {"GPU": 1}
    cpu = set(workers) - {gpu}

    edges = (0.0, 1.5)
    cfg = TemplateConfig(absy_edges=edges, eta_bins=(12, -2.4, 2.4), pt_bins=(10, 26.0, 56.0), eff_groups=4, pdf=False)
    write_toy(
        tmp_path / "w.root",
        6000,
        process="W",
        seed=11,
        config=ToyConfig(absy_edges=edges, a0=(0.1, 0.3), a4=(-0.5, -1.0)),
    )
    fileset = {"W": [str(tmp_path / "w.root")], "ttbar": [str(DATA / "nano_tt_v12.root")]}
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.5))
    samples = {"W": Sample("signal", xsec=1.0), "ttbar": Sample("background", xsec=20.0)}

    with get_task_stream(client) as ts:
        chain = run_chain(
            client, fileset, proc, samples=samples, lumi=6000.0, workdir=tmp_path / "run", pseudo_data=5, status=False
        )
    # Where things ran: the fit on the GPU worker, every coffea task on the CPU worker.
    assert chain.worker == gpu
    assert chain.fit.options["resources"] == {"GPU": 1}
    ran = {t["key"] if isinstance(t["key"], str) else str(t["key"]): t["worker"] for t in ts.data}
    fit_keys = [k for k in ran if "wfit-fit-" in k]
    assert len(fit_keys) == 1 and ran[fit_keys[0]] == gpu
    assert {w for k, w in ran.items() if k not in fit_keys} <= cpu
    assert chain.fit.ok

    # The fit equals `wfit fit` on the same workspace, bit for bit.
    _assert_same_fit(chain.fit, _cli_fit(Path(chain.workspace), tmp_path / "cli.hdf5"))
    _assert_matches_reference(chain.fit, Path(chain.workspace))
    assert Path(chain.result_path) == tmp_path / "run" / "fitresult.hdf5"

    # The processing equals the iterative executor's in this process.
    ref = run_templates(fileset, proc, executor="iterative").output
    for ds in fileset:
        np.testing.assert_array_equal(
            chain.output[ds]["templates_syst"].values(flow=True), ref[ds]["templates_syst"].values(flow=True)
        )
        assert chain.output[ds]["cutflow"] == ref[ds]["cutflow"]


def test_no_gpu_worker_is_a_clear_error(dask_client: Any, tmp_path: Path) -> None:
    ws = tmp_path / "ws.hdf5"
    shutil.copy(EXAMPLE_WS, ws)
    assert gpu_workers(dask_client) == []
    with pytest.raises(NoGPUWorkerError, match=r"declares the resource 'GPU'.*--resources GPU=1.*allow_cpu=True"):
        fit_on_cluster(dask_client, ws)
    assert not (tmp_path / "fitresult.hdf5").exists()
    # run_chain says so before it processes anything.
    with pytest.raises(NoGPUWorkerError):
        run_chain(dask_client, {"x": ["never-opened.root"]}, object(), samples={}, lumi=1.0, workdir=tmp_path / "r")


def test_cpu_opt_in(dask_client: Any, tmp_path: Path) -> None:
    ws = tmp_path / "ws.hdf5"
    shutil.copy(EXAMPLE_WS, ws)
    res = fit_on_cluster(dask_client, ws, tmp_path / "cpu.hdf5", allow_cpu=True)
    assert res.options["worker"] in dask_client.scheduler_info(n_workers=-1)["workers"]
    assert res.options["resources"] == {}
    _assert_same_fit(res, _cli_fit(ws, tmp_path / "cli.hdf5"))
    _assert_matches_reference(res, ws)
    # The options travel to the worker as FitOptions' dict and come back in the result file.
    from wfit.fitter import FitOptions

    opts = FitOptions(asimov=True, tol=1e-14, seed=2)
    asimov = fit_on_cluster(dask_client, ws, tmp_path / "asimov.hdf5", options=opts, allow_cpu=True, bb_lite=False)
    stored = FitOptions.from_dict(asimov.options, strict=False)
    assert stored == opts.replace(bb_lite=False, device=asimov.options["device"])
    # Asimov data are the expectation at mu = 1, theta = 0: the fit returns that point
    np.testing.assert_allclose(asimov.values[: asimov.npoi], 1.0, rtol=1e-7)
    np.testing.assert_allclose(asimov.values[asimov.npoi :], 0.0, atol=1e-7)
    with pytest.raises(TypeError, match="unknown fit option"):
        fit_on_cluster(dask_client, ws, allow_cpu=True, tols=1e-9)


def test_lowercase_gpu_resource_is_named(tmp_path: Path) -> None:
    """The FIELD_NOTES trap: a worker with {"gpu": 1} never gets a {"GPU": 1} task; the error says why."""
    from distributed import Client, LocalCluster

    ws = tmp_path / "ws.hdf5"
    shutil.copy(EXAMPLE_WS, ws)
    with (
        # In-process (inproc:// transport, no TCP listener); the HTTP server binds 127.0.0.1 only.
        LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0", resources={"gpu": 1}) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(NoGPUWorkerError, match=r"\{'gpu': 1\}.*lower-cases"):
            fit_on_cluster(client, ws)
