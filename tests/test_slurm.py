"""The batch path for real: dask-jobqueue starts SLURM jobs from dask_configs/slurm.yaml as shipped (the CPU
worker jobs and the fit job that declares GPU=1), the chain runs through them, and a worker job cancelled with
``scancel`` in the middle of the processing is survived.

References: the same chain on a local cluster in this process (the fit to 1e-10, the histograms bit for bit),
and the processing with coffea's iterative executor.

Needs a running SLURM (``sinfo`` answers). On a Debian machine, as root: ``.ci/start-slurm`` installs
slurm-wlm and munge and starts munged, slurmctld and slurmd on 127.0.0.1 (CI runs it). Without SLURM these tests
are skipped, unless ``WFIT_REQUIRE_SLURM=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data" / "nanoaod"
HOW = "start it with `.ci/start-slurm` as root (installs Debian's slurm-wlm and munge)"


def _slurm_running() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any, str]]:
    """Two CPU worker jobs and one GPU fit job, from the shipped file; the prologue activates this interpreter's
    environment (the shipped one names a placeholder path). Yields (cluster, client, gpu job id)."""
    if not _slurm_running():
        if os.environ.get("WFIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM is not running: {HOW}")
        pytest.skip(f"SLURM is not running: {HOW}")
    import dask
    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.slurm import SLURMJob
    from distributed import Client

    from wfit.pipeline import load_dask_config

    tmp = tmp_path_factory.mktemp("slurm")
    prologue = [f"source {Path(sys.prefix) / 'bin' / 'activate'}", f"export TMPDIR={tmp}"]
    old_tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)  # local-directory: $TMPDIR is expanded in the job
    gpu_id = None
    with dask.config.set(load_dask_config("slurm")):
        cluster = SLURMCluster(
            config_name="slurm",
            job_script_prologue=prologue,
            log_directory=str(tmp / "logs"),
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        )
        try:
            shipped = load_dask_config("slurm")["jobqueue.slurm-gpu.job-script-prologue"]
            gpu_job = SLURMJob(
                scheduler=cluster.scheduler_address,
                name="wfit-gpu",
                config_name="slurm-gpu",
                job_script_prologue=[*prologue, *shipped[1:]],  # the shipped lines after its placeholder
                log_directory=str(tmp / "logs"),
            )
            script = tmp / "gpu.sh"
            script.write_text(gpu_job.job_script())
            out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True)
            gpu_id = out.stdout.strip().split(";")[0]
            cluster.scale(jobs=2)
            client = Client(cluster)
            n_cpu = 2 * dask.config.get("jobqueue.slurm.processes")
            client.wait_for_workers(n_cpu + 1, timeout=300)
            yield cluster, client, gpu_id
            client.close()
        finally:
            if gpu_id is not None:
                subprocess.run(["scancel", gpu_id], check=False)
            cluster.close()
            if old_tmpdir is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = old_tmpdir


def _inputs(tmp: Path, n_files: int = 4, n_events: int = 30_000) -> tuple[dict[str, list[str]], Any, Any, Any]:
    from wfit.processors import AngularCoefficients, Sample, TemplateConfig, ToyConfig, WTemplateProcessor, write_toy

    edges = (0.0, 1.5)
    cfg = TemplateConfig(absy_edges=edges, eta_bins=(12, -2.4, 2.4), pt_bins=(10, 26.0, 56.0), eff_groups=4, pdf=False)
    files = []
    for i in range(n_files):
        path = tmp / f"w{i}.root"
        if not path.exists():
            toy = ToyConfig(absy_edges=edges, a0=(0.1, 0.3), a4=(-0.5, -1.0))
            write_toy(path, n_events, process="W", seed=100 + i, config=toy)
        files.append(str(path))
    fileset = {"W": files, "ttbar": [str(DATA / "nano_tt_v12.root")]}
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.5))
    samples = {"W": Sample("signal", xsec=1.0), "ttbar": Sample("background", xsec=20.0)}
    return fileset, proc, samples, cfg


def _paced(proc: Any) -> Any:
    """The same processor, taking at least 0.5 s per chunk: the run lasts long enough to cancel a job in it."""
    from wfit.processors import WTemplateProcessor

    class Paced(WTemplateProcessor):
        def process(self, events: Any) -> Any:
            time.sleep(0.5)
            return super().process(events)

    paced = Paced.__new__(Paced)
    paced.__dict__.update(proc.__dict__)
    return paced


def _assert_same_output(a: Any, b: Any) -> None:
    assert set(a) == set(b)
    for ds in a:
        for name in ("templates_syst", "templates"):
            np.testing.assert_array_equal(a[ds][name].values(flow=True), b[ds][name].values(flow=True))
        assert a[ds]["cutflow"] == b[ds]["cutflow"]


def test_chain_through_slurm_jobs_equals_the_local_cluster(slurm_cluster: tuple[Any, Any, str], tmp_path: Path) -> None:
    from wfit.pipeline import gpu_workers, local_chain_cluster, run_chain

    cluster, client, gpu_id = slurm_cluster
    (gpu,) = gpu_workers(client)
    fileset, proc, samples, _ = _inputs(tmp_path)
    kw = {"samples": samples, "lumi": 6000.0, "pseudo_data": 5, "status": False, "chunksize": 20_000}
    chain = run_chain(client, fileset, proc, workdir=tmp_path / "slurm", **kw)
    assert chain.worker == gpu and chain.fit.options["resources"] == {"GPU": 1}
    with local_chain_cluster(cpu_workers=1, gpu_workers=1) as local:
        ref = run_chain(local, fileset, proc, workdir=tmp_path / "local", **kw)
    _assert_same_output(chain.output, ref.output)
    assert chain.fit.ok and ref.fit.ok
    np.testing.assert_allclose(chain.fit.values, ref.fit.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(chain.fit.covariance, ref.fit.covariance, rtol=1e-10, atol=1e-14)


def _job_of(cluster: Any, address: str) -> str:
    """The SLURM job id of the worker at ``address`` (the jobqueue name of a worker is ``<job name>-<i>``)."""
    workers = cluster.scheduler_info["workers"]
    name = str(workers[address]["name"])
    for job_name, job in cluster.workers.items():
        if name == str(job_name) or name.startswith(f"{job_name}-"):
            return str(job.job_id)
    raise AssertionError(f"no job for worker {name!r}")


def test_a_cancelled_worker_job_is_survived(slurm_cluster: tuple[Any, Any, str], tmp_path: Path) -> None:
    from wfit.pipeline import process_on_cluster
    from wfit.processors import run_templates

    cluster, client, _ = slurm_cluster
    fileset, proc, _, _ = _inputs(tmp_path, n_files=4, n_events=50_000)
    reference = run_templates(fileset, proc, executor="iterative", chunksize=2000).output
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["output"] = process_on_cluster(client, fileset, _paced(proc), chunksize=2000, status=False)
        except BaseException as err:  # handed to the test's thread
            result["error"] = err

    jobs = {str(j.job_id): str(n) for n, j in cluster.workers.items()}  # SLURM job id -> jobqueue name
    assert len(jobs) == 2
    thread = threading.Thread(target=run)
    thread.start()
    try:
        busy: list[str] = []
        while not busy and thread.is_alive():  # chunks running on the workers of both jobs
            busy = [w for w, tasks in client.processing().items() if tasks]
            busy = busy if len({_job_of(cluster, w) for w in busy}) == 2 else []
            time.sleep(0.05)
        assert thread.is_alive(), f"the run ended before a job could be cancelled: {result.get('error')!r}"
        victim = _job_of(cluster, busy[0])
        subprocess.run(["scancel", victim], check=True)
    finally:
        thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    _assert_same_output(result["output"], reference)
    # the cancelled job's workers left the cluster in the middle of the run, and the run went on without them
    names = [str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    gone = jobs[victim]
    assert not any(n == gone or n.startswith(f"{gone}-") for n in names), names
    # the job is gone from SLURM
    left = subprocess.run(["squeue", "-h", "-j", victim, "-o", "%T"], capture_output=True, text=True).stdout
    assert "RUNNING" not in left
