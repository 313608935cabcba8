"""Each YAML file of dask_configs/ loads and sets what it promises, checked against distributed itself.

References: a real Worker/``dask worker`` process started under the config reports its resources to a
scheduler; ``DASK_CONFIG=<file>`` read by dask in a fresh interpreter; distributed's ``Security`` built
from the TLS settings; dask-jobqueue's own key set (its jobqueue.yaml when installed, else the keys of
dask-jobqueue 0.9 written out below).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
import yaml

from wfit.pipeline import load_dask_config, local_chain_cluster

CONFIGS = Path(__file__).resolve().parent.parent / "dask_configs"

def _jobqueue_keys(system: str) -> set[str]:
    """The keys dask-jobqueue defines for a batch system (its own jobqueue.yaml)."""
    import dask_jobqueue

    with open(Path(dask_jobqueue.__file__).parent / "jobqueue.yaml") as f:
        return set(yaml.safe_load(f)["jobqueue"][system])


def test_every_config_is_tested() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["gpu-worker", "htcondor", "local", "slurm", "tls"]


def test_gpu_worker_declares_GPU() -> None:
    cfg = load_dask_config("gpu-worker")
    assert cfg["distributed.worker.resources.GPU"] == 1
    with dask.config.set(cfg):
        assert dask.config.get("distributed.worker.resources") == {"GPU": 1}
        env = dask.config.get("distributed.nanny.pre-spawn-environ")
        # A deep merge: distributed's own OMP_NUM_THREADS=1 stays, MALLOC_TRIM_THRESHOLD_ is unset.
        assert env["OMP_NUM_THREADS"] == 1 and env["MALLOC_TRIM_THRESHOLD_"] is None
        from distributed import Client, LocalCluster

        # A real worker made under the config (no resources= argument) reports {"GPU": 1} to its scheduler.
        with (
            LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as cluster,
            Client(cluster) as client,
        ):
            (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
            assert worker["resources"] == {"GPU": 1}


def test_gpu_worker_file_through_DASK_CONFIG_and_the_env_var_trap() -> None:
    code = "import dask, distributed; print(dask.config.get('distributed.worker.resources'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.check_output(
        [sys.executable, "-c", code], env={**env, "DASK_CONFIG": str(CONFIGS / "gpu-worker.yaml")}, text=True
    )
    assert out.strip() == "{'GPU': 1}"
    # FIELD_NOTES: the environment-variable form lower-cases the name, which is why the file exists.
    trap = subprocess.check_output(
        [sys.executable, "-c", code], env={**env, "DASK_DISTRIBUTED__WORKER__RESOURCES__GPU": "1"}, text=True
    )
    assert trap.strip() == "{'gpu': 1}"


def test_local_cluster_config() -> None:
    cfg = load_dask_config("local")
    assert cfg["wfit.local-cluster.host"] == "127.0.0.1"
    assert cfg["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] is None
    with dask.config.set({**cfg, "wfit.local-cluster.cpu-workers": 1}), local_chain_cluster() as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert sorted(str(w["resources"]) for w in workers.values()) == ["{'GPU': 1}", "{}"]
        assert all(a.startswith("tcp://127.0.0.1:") for a in workers)
        # The workers' environment: no MALLOC_TRIM_THRESHOLD_, distributed's OMP_NUM_THREADS=1 kept.
        env = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
        assert set(env.values()) == {(None, "1")}


@pytest.mark.parametrize("system", ["htcondor", "slurm"])
def test_jobqueue_configs(system: str) -> None:
    cfg = load_dask_config(system)
    keys = _jobqueue_keys(system)
    for section in (system, f"{system}-gpu"):
        have = {k.split(".")[2] for k in cfg if k.startswith(f"jobqueue.{section}.")}
        assert have and have <= keys, sorted(have - keys)
        if section != system:  # every key that dask-jobqueue reads: a section of ours has no defaults behind it
            assert have == keys, sorted(keys - have)
        assert cfg[f"jobqueue.{section}.processes"] >= 1
    assert cfg[f"jobqueue.{system}.worker-extra-args"] == []
    assert cfg[f"jobqueue.{system}-gpu.worker-extra-args"] == ["--resources", "GPU=1"]
    assert cfg[f"jobqueue.{system}-gpu.processes"] == 1
    gpu_directive = {"htcondor": ("jobqueue.htcondor-gpu.job-extra-directives.request_gpus", "1")}
    if system in gpu_directive:
        key, value = gpu_directive[system]
        assert cfg[key] == value
    else:
        assert cfg["jobqueue.slurm-gpu.job-extra-directives"] == ["--gres=gpu:1"]


def test_jobqueue_gpu_worker_args_give_GPU(tmp_path: Path) -> None:
    """`dask worker` with the GPU section's worker-extra-args registers {"GPU": 1} (a real process)."""
    from distributed import Client, LocalCluster

    args = load_dask_config("htcondor")["jobqueue.htcondor-gpu.worker-extra-args"]
    assert args == load_dask_config("slurm")["jobqueue.slurm-gpu.worker-extra-args"]
    with (
        LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster,
        Client(cluster) as client,
    ):
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--host", "127.0.0.1"]
        proc = subprocess.Popen(
            [*cmd, "--nthreads", "1", "--no-dashboard", "--local-directory", str(tmp_path), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            while not client.scheduler_info(n_workers=-1)["workers"]:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
            (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
            assert worker["resources"] == {"GPU": 1.0}
        finally:
            client.retire_workers(close_workers=True)
            proc.wait()
            if proc.stderr:
                proc.stderr.close()


def test_tls_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WFIT_TLS_DIR", str(tmp_path))
    cfg = load_dask_config("tls")
    assert cfg["distributed.comm.require-encryption"] is True
    assert cfg["distributed.comm.tls.ca-file"] == f"{tmp_path}/ca.pem"
    from distributed.security import Security

    with dask.config.set(cfg):
        sec = Security()
    assert sec.require_encryption is True
    assert sec.tls_min_version == 0x304 or str(sec.tls_min_version).endswith("1_3")
    assert (sec.tls_ca_file, sec.tls_scheduler_cert, sec.tls_worker_key, sec.tls_client_cert) == (
        f"{tmp_path}/ca.pem",
        f"{tmp_path}/scheduler.pem",
        f"{tmp_path}/worker-key.pem",
        f"{tmp_path}/client.pem",
    )


def test_unknown_keys_and_names_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed:\n  worker:\n    resource:\n      GPU: 1\n")
    with pytest.raises(ValueError, match=r"unknown key 'distributed.worker.resource.GPU'"):
        load_dask_config(bad)
    bad.write_text("wfit:\n  local-cluster:\n    cpu_workers: 2\n")
    with pytest.raises(ValueError, match="wfit.local-cluster"):
        load_dask_config(bad)
    with pytest.raises(FileNotFoundError, match="WFIT_DASK_CONFIGS"):
        load_dask_config("no-such-config")


def _job_script(system: str, section: str) -> str:
    """The job script (submit description) that dask-jobqueue renders from a section of the shipped file."""
    from dask_jobqueue.htcondor import HTCondorJob
    from dask_jobqueue.slurm import SLURMJob

    job = {"htcondor": HTCondorJob, "slurm": SLURMJob}[system]
    with dask.config.set(load_dask_config(system)):
        return job(scheduler="tcp://127.0.0.1:8786", name="wfit", config_name=section).job_script()


@pytest.mark.parametrize("section", ["htcondor", "htcondor-gpu"])
def test_htcondor_job_scripts_parse_as_submit_descriptions(section: str) -> None:
    """HTCondor's own parser (htcondor2.Submit) reads the rendered file, with the resources the section asks."""
    import htcondor2

    sub = htcondor2.Submit(_job_script("htcondor", section))
    cfg = load_dask_config("htcondor")
    cores, nproc = cfg[f"jobqueue.{section}.cores"], cfg[f"jobqueue.{section}.processes"]
    memory = dask.utils.parse_bytes(cfg[f"jobqueue.{section}.memory"])
    assert sub["Executable"] == "/bin/sh"
    assert (sub["MY.DaskWorkerCores"], sub["MY.DaskWorkerMemory"]) == (str(cores), str(memory))
    assert sub["RequestCpus"] == "MY.DaskWorkerCores" and sub["MY.JobFlavour"] == '"workday"'
    args = sub["Arguments"]
    assert f"--nworkers {nproc}" in args or nproc == 1
    assert f"--nthreads {cores // nproc}" in args
    if section.endswith("-gpu"):
        assert sub["request_gpus"] == "1" and "--resources GPU=1" in args
    else:
        assert "request_gpus" not in sub.keys() and "--resources" not in args


@pytest.mark.parametrize("section", ["slurm", "slurm-gpu"])
def test_slurm_job_scripts_are_bash_with_the_directives(section: str, tmp_path: Path) -> None:
    script = _job_script("slurm", section)
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)  # bash's own syntax check
    directives = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    cfg = load_dask_config("slurm")
    assert f"-p {cfg[f'jobqueue.{section}.queue']}" in directives
    assert f"--cpus-per-task={cfg[f'jobqueue.{section}.cores']}" in directives
    assert ("--gres=gpu:1" in directives) == section.endswith("-gpu")
    assert ("--resources GPU=1" in script) == section.endswith("-gpu")
