"""The whole chain on one Dask cluster: NanoAOD -> templates -> workspace -> fit with covariance.

::

    fileset ──► run_templates, Dask executor ──► processor output ──► build_workspace ──► workspace.hdf5
                (CPU workers)                     (client)                                   │ path
                                                                                             ▼
    FitResult ◄── read_result ◄── fitresult.hdf5 ◄── fit_workspace on the worker with resources={"GPU": 1}

The processing runs on the workers that declare no ``GPU`` resource (through
:func:`wfit.processors.run_templates` with ``executor="dask"``), the workspace is written on the client
(:func:`wfit.processors.build_workspace`), and the fit is submitted with ``resources={"GPU": 1}`` so that
it runs on the GPU worker, where :func:`wfit.fitter.fit_workspace` with ``device=None`` puts it on the GPU
that TensorFlow sees. Workspaces and results travel as files (their paths, never their arrays): the
working directory must be on storage that the client and every worker see.

Dask settings live in the YAML files of the repository's ``dask_configs/`` (:func:`load_dask_config`).

Example:
    >>> from wfit.pipeline import local_chain_cluster, run_chain  # doctest: +SKIP
    >>> with local_chain_cluster(cpu_workers=2, gpu_workers=1) as client:  # doctest: +SKIP
    ...     chain = run_chain(client, fileset, processor, samples=samples, lumi=1000.0, workdir="out")
    ...     print(chain.fit.summary())

Importing this module imports neither coffea nor TensorFlow; the stages import them when they run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wfit.fitter.options import FitOptions

__all__ = [
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

#: The worker resource that marks a GPU worker. Case matters: ``gpu`` (what the environment-variable
#: form DASK_DISTRIBUTED__WORKER__RESOURCES__GPU=1 produces) is another resource.
GPU_RESOURCE = "GPU"

#: Where :func:`load_dask_config` looks for ``<name>.yaml``: ``$WFIT_DASK_CONFIGS`` or the repository's
#: ``dask_configs/`` (next to the ``wfit/`` folder; not part of an installed wheel).
_CONFIG_DIR_ENV = "WFIT_DASK_CONFIGS"
_REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "dask_configs"

# Keys of the `wfit.local-cluster` section (read by local_chain_cluster) and their defaults.
_LOCAL_CLUSTER_DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "cpu-workers": 2,
    "gpu-workers": 1,
    "threads-per-worker": 1,
    "dashboard-address": None,
}
# Mappings of distributed's configuration whose keys are free (names of resources or variables).
_FREE_MAPPINGS = {
    "distributed.worker.resources",
    "distributed.nanny.pre-spawn-environ",
    "distributed.nanny.environ",
}
# Only these values are paths that this process opens; jobqueue values such as `local-directory:
# $TMPDIR` must reach the batch node unexpanded, where its shell expands them.
_EXPANDED = ("distributed.comm.tls.",)

log = logging.getLogger(__name__)


class NoGPUWorkerError(RuntimeError):
    """The cluster has no worker that declares the resource ``GPU``."""


# ------------------------------------------------------------------------------------------ config
def _config_file(name: str | os.PathLike[str]) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"dask config {str(path)!r}: no such file")
        return path
    folder = Path(os.environ.get(_CONFIG_DIR_ENV, _REPO_CONFIG_DIR))
    candidate = folder / f"{name}.yaml"
    if not candidate.is_file():
        have = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"dask config {str(name)!r}: no {candidate} (configs there: {have or 'none'}); pass the path of a "
            f"YAML file, or set {_CONFIG_DIR_ENV} to the folder of the repository's dask_configs/ (an installed "
            "wheel does not contain it)"
        )
    return candidate


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ValueError(f"dask config key {prefix}{key!r} is not a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted not in _FREE_MAPPINGS:
            out.update(_flatten(value, dotted + "."))
        elif isinstance(value, Mapping) and value:
            # A free mapping: each entry is a leaf, so that it merges into distributed's defaults.
            for k, v in value.items():
                out[f"{dotted}.{k}"] = v
        else:
            out[dotted] = value
    return out


def _check_keys(path: Path, flat: Mapping[str, Any]) -> None:
    import dask
    import distributed  # noqa: F401  (registers distributed's defaults in dask.config)

    defaults = dask.config.defaults
    reference: dict[str, Any] = {}
    for d in defaults:
        dask.config.update(reference, d, priority="new")
    for dotted in flat:
        parts = dotted.split(".")
        if parts[0] == "wfit":
            if len(parts) != 3 or parts[1] != "local-cluster" or parts[2] not in _LOCAL_CLUSTER_DEFAULTS:
                raise ValueError(
                    f"{path}: unknown key {dotted!r}; the wfit section knows wfit.local-cluster."
                    f"{{{', '.join(_LOCAL_CLUSTER_DEFAULTS)}}}"
                )
            continue
        if parts[0] == "jobqueue":
            continue  # dask-jobqueue's keys: checked by the tests (dask-jobqueue is optional)
        if parts[0] != "distributed":
            raise ValueError(f"{path}: key {dotted!r}: wfit's dask configs hold `distributed`, `jobqueue`, `wfit`")
        node: Any = reference
        for i, part in enumerate(parts):
            if ".".join(parts[:i]) in _FREE_MAPPINGS:
                break
            if not isinstance(node, Mapping):
                raise ValueError(f"{path}: key {dotted!r}: {'.'.join(parts[:i])!r} is not a section")
            name = dask.config.canonical_name(part, node)
            if name not in node:
                raise ValueError(
                    f"{path}: unknown key {dotted!r} ({part!r} is not one of {sorted(node)[:12]}...); "
                    "check the spelling against distributed's distributed.yaml"
                )
            node = node[name]


def load_dask_config(name: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a dask config of ``dask_configs/`` (by name, e.g. ``"gpu-worker"``) or a YAML file (by path).

    The result maps dotted keys to leaf values, so that ``dask.config.set(load_dask_config(...))`` merges
    into dask's configuration: setting a nested mapping would replace a whole section (e.g. drop
    distributed's ``OMP_NUM_THREADS=1`` when only ``MALLOC_TRIM_THRESHOLD_`` is unset). Every
    ``distributed`` key is checked against distributed's defaults and the ``wfit`` section against the
    keys that :func:`local_chain_cluster` reads: a misspelt key is an error, not silently ignored.
    ``$VARIABLES`` are expanded in ``distributed.comm.tls`` values (file paths this process opens) only.

    Args:
        name: A config name in ``dask_configs/`` (``$WFIT_DASK_CONFIGS`` overrides the folder) or a path.

    Returns:
        ``{"distributed.worker.resources.GPU": 1, ...}``.

    Example:
        >>> import dask
        >>> with dask.config.set(load_dask_config("gpu-worker")):  # doctest: +SKIP
        ...     dask.config.get("distributed.worker.resources")
        {'GPU': 1}
    """
    import dask

    from wfit.yamlfile import safe_load

    path = _config_file(name)
    with open(path) as f:
        tree = safe_load(f, source=str(path))
    if not isinstance(tree, Mapping):
        raise ValueError(f"{path}: a dask config is a YAML mapping (e.g. `distributed: ...`), got {type(tree)}")
    flat = _flatten(tree)
    _check_keys(path, flat)
    return {k: dask.config.expand_environment_variables(v) if k.startswith(_EXPANDED) else v for k, v in flat.items()}


# ----------------------------------------------------------------------------------------- cluster
@contextlib.contextmanager
def local_chain_cluster(
    cpu_workers: int | None = None,
    gpu_workers: int | None = None,
    *,
    host: str | None = None,
    threads_per_worker: int | None = None,
    trim_malloc: bool = False,
    tensorflow_log: bool = False,
) -> Iterator[Any]:
    """A local cluster for the whole chain: CPU workers plus workers that declare ``{"GPU": 1}``.

    Every worker is a process (a ``distributed.Nanny``), the scheduler and the workers listen on
    ``host`` only. Arguments left ``None`` come from the dask config section ``wfit.local-cluster``
    (``dask_configs/local.yaml``), else from its defaults: 127.0.0.1, 2 CPU workers, 1 GPU worker, one
    thread each. A "GPU worker" only declares the resource: on a machine without a GPU its fit runs on
    the CPU, which is how the chain is tested.

    Args:
        cpu_workers: Workers without resources (the coffea processing).
        gpu_workers: Workers with ``resources={"GPU": 1}`` (the fit).
        host: Interface to bind.
        threads_per_worker: Threads per worker.
        trim_malloc: Keep distributed's ``MALLOC_TRIM_THRESHOLD_`` worker setting (removed by default,
            as in :func:`wfit.processors.local_cluster`: it doubles the cost per chunk).
        tensorflow_log: Let the workers write TensorFlow's start-up and C++ log lines (the oneDNN notice,
            the CUDA plugin's cuInit attempt) to the terminal; by default the fit worker imports it quietly.

    Yields:
        A ``distributed.Client``; the cluster is closed on exit.
    """
    import dask
    from distributed import Client, Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    from wfit.fitter._tf import tf_environ
    from wfit.processors.cluster import worker_settings

    def option(value: Any, key: str) -> Any:
        return (
            value if value is not None else dask.config.get(f"wfit.local-cluster.{key}", _LOCAL_CLUSTER_DEFAULTS[key])
        )

    n_cpu, n_gpu = int(option(cpu_workers, "cpu-workers")), int(option(gpu_workers, "gpu-workers"))
    host = option(host, "host")
    nthreads = int(option(threads_per_worker, "threads-per-worker"))
    if n_cpu < 0 or n_gpu < 0 or n_cpu + n_gpu == 0 or nthreads < 1:
        raise ValueError(
            f"local_chain_cluster: cpu_workers={n_cpu}, gpu_workers={n_gpu}, threads_per_worker={nthreads}: "
            "give at least one worker and one thread"
        )
    worker = {
        "nthreads": nthreads,
        "host": host,
        "memory_limit": MEMORY_LIMIT // (n_cpu + n_gpu),
        "silence_logs": logging.WARNING,
    }
    if tensorflow_log:
        # A Nanny's `env` is set in its worker process over everything inherited, including the quiet
        # TF_CPP_MIN_LOG_LEVEL that an earlier cluster's pre-spawn environment left in this process.
        worker["env"] = tf_environ(verbose=True)
    spec = {f"cpu-{i}": {"cls": Nanny, "options": dict(worker)} for i in range(n_cpu)}
    for i in range(n_gpu):
        spec[f"gpu-{i}"] = {"cls": Nanny, "options": {**worker, "resources": {GPU_RESOURCE: 1}}}
    dashboard = option(None, "dashboard-address")
    # With no dashboard the scheduler still serves /health and /metrics, on port 8787 unless told
    # otherwise (a warning, an error under strict pytest, when another cluster holds it): a free port.
    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": host,
            "dashboard": dashboard is not None,
            "dashboard_address": dashboard if dashboard is not None else f"{host}:0",
        },
    }
    settings = worker_settings(trim_malloc)
    env = settings["distributed.nanny.pre-spawn-environ"]
    if not tensorflow_log:
        for key, value in tf_environ(verbose=False).items():  # read where the fit worker imports TensorFlow
            env.setdefault(key, value)
    with dask.config.set(settings):
        cluster = SpecCluster(workers=spec, scheduler=scheduler, silence_logs=logging.WARNING, name="wfit-chain")
        try:
            with Client(cluster) as client:
                client.wait_for_workers(n_cpu + n_gpu)
                yield client
        finally:
            cluster.close()


def _workers(client: Any) -> dict[str, dict[str, Any]]:
    return dict(client.scheduler_info(n_workers=-1)["workers"])


def gpu_workers(client: Any) -> list[str]:
    """Addresses of the workers that declare the resource ``GPU`` (exactly that name)."""
    return sorted(a for a, w in _workers(client).items() if (w.get("resources") or {}).get(GPU_RESOURCE, 0) >= 1)


def _cpu_workers(client: Any) -> list[str]:
    return sorted(a for a, w in _workers(client).items() if not (w.get("resources") or {}).get(GPU_RESOURCE, 0))


# ---------------------------------------------------------------------------------------- stages
def process_on_cluster(
    client: Any,
    fileset: Mapping[str, Any],
    processor_instance: Any,
    *,
    chunksize: int = 500_000,
    status: bool = True,
    retries: int = 3,
    checkpoint: str | os.PathLike[str] | None = None,
) -> Any:
    """Run a coffea processor over a fileset on the cluster's CPU workers.

    This is :func:`wfit.processors.run_templates` on the Dask executor, with its tasks restricted to the
    workers that declare no ``GPU`` resource (so that the GPU worker stays free for fits); on a cluster made
    of GPU workers only, all workers are used. A lost worker's chunks are rescheduled; bad files and chunks
    are collected and reported together at the end.

    Args:
        client: A ``distributed.Client``.
        fileset: ``{dataset: [NanoAOD files]}``; paths that every worker can open.
        processor_instance: The processor (e.g. :class:`wfit.processors.WTemplateProcessor`).
        chunksize: Events per chunk.
        status: Show progress bars.
        retries: Retries of a file opening or chunk that raised.
        checkpoint: File to save progress to and resume an interrupted run from (see ``run_templates``).

    Returns:
        The accumulated processor output.

    Raises:
        wfit.processors.IncompleteRunError: Files or chunks failed; it lists them with what to do, and its
            ``run`` holds the output of the others and the failures to rerun.
        wfit.processors.runner.FilesetError: Before any task: a file listed twice in a dataset (under any
            spelling, or one ROOT file UUID at two paths), or a path that is not a regular file.
    """
    import dask

    from wfit.processors import run_templates
    from wfit.processors.runner import check_fileset

    check_fileset(fileset)  # a file listed twice or a path that is not a file: refused before the cluster
    cpu = _cpu_workers(client) or sorted(_workers(client))
    with dask.annotate(workers=cpu, allow_other_workers=False):
        run = run_templates(
            fileset,
            processor_instance,
            client=client,
            chunksize=chunksize,
            status=status,
            retries=retries,
            checkpoint=checkpoint,
        )
    return run.output


def _fit_task(
    workspace: str, result: str, options: dict[str, Any], topic: str | None, products: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Runs on a worker: fit the workspace file with ``FitOptions.from_dict(options)``, compute the post-fit
    ``products`` (:func:`wfit.fitter.postfit.post_fit_products`' arguments, and ``plots``: a folder for
    :func:`wfit.fitter.plots.plot_all`) and write the result file (all on shared storage)."""
    from distributed import get_worker

    worker = get_worker()
    if not os.path.exists(workspace):
        raise FileNotFoundError(
            f"worker {worker.address}: no workspace {workspace!r}; the workspace must be on storage that the "
            "client and the workers share (give run_chain/fit_on_cluster a workdir there)"
        )
    # TensorFlow is imported here, quietly unless the worker's environment says otherwise (tf_environ).
    from wfit.fitter import FitOptions, fit_workspace

    def progress(it: int, nll: float, edm: float) -> None:
        if topic is not None:
            worker.log_event(topic, {"iteration": it, "nll": nll, "edm": edm})

    products = dict(products or {})
    plots = products.pop("plots", None)
    if products.get("derived"):
        from wfit.fitter.quantities import parse_quantity

        for text in products["derived"]:
            parse_quantity(text)  # a typo fails before the fit, not after it

    def post_fit(ll: Any, res: Any) -> None:
        from wfit.fitter.postfit import post_fit_products

        _, imp = post_fit_products(ll, res, **products)
        if plots is not None:
            from wfit.fitter.plots import plot_all

            plot_all(ll, res, plots, imp)

    hook = post_fit if products or plots is not None else None
    res = fit_workspace(workspace, FitOptions.from_dict(options), callback=progress, post_fit=hook)
    res.options.update({"worker": worker.address, "resources": dict(worker.state.total_resources)})
    res.write(result)
    return {"result": result, "worker": worker.address, "device": res.options.get("device"), "ok": res.ok}


def _placement(client: Any, allow_cpu: bool) -> dict[str, Any]:
    """``client.submit`` arguments that put the fit on a GPU worker (or a CPU one, when allowed)."""
    if gpu_workers(client):
        return {"resources": {GPU_RESOURCE: 1}}
    if allow_cpu:
        return {"workers": _cpu_workers(client), "allow_other_workers": False}
    workers = _workers(client)
    declared = {a: dict(w.get("resources") or {}) for a, w in workers.items()}
    lower = [a for a, r in declared.items() if any(k != GPU_RESOURCE and k.upper() == GPU_RESOURCE for k in r)]
    hint = (
        f" Workers {lower} declare a resource spelt differently ({[declared[a] for a in lower]}): that is "
        "what DASK_DISTRIBUTED__WORKER__RESOURCES__GPU=1 gives (dask lower-cases variable names); declare "
        "it as `--resources GPU=1` or with dask_configs/gpu-worker.yaml."
        if lower
        else ""
    )
    address = client.scheduler.address
    raise NoGPUWorkerError(
        f"no worker of the cluster at {address} declares the resource {GPU_RESOURCE!r} ({len(workers)} "
        f"workers, resources {sorted(declared.values(), key=str)}).{hint} Start one on the GPU machine with "
        f"`DASK_CONFIG=dask_configs/gpu-worker.yaml dask worker {address}` (or `dask worker ADDRESS "
        "--resources GPU=1`), or pass allow_cpu=True to fit on a CPU worker."
    )


def fit_on_cluster(
    client: Any,
    workspace: str | os.PathLike[str],
    result: str | os.PathLike[str] | None = None,
    *,
    options: FitOptions | None = None,
    allow_cpu: bool = False,
    progress: bool = False,
    derived: Sequence[str] = (),
    impacts: bool = False,
    yields: bool = False,
    plots: str | os.PathLike[str] | None = None,
    **changes: Any,
) -> Any:
    """Fit a workspace file on the cluster's GPU worker and read the result file back.

    The task is submitted with ``resources={"GPU": 1}``, so it runs only on a worker that declares that
    resource, one fit per GPU at a time; there :func:`wfit.fitter.fit_workspace` (``device=None``) uses the
    GPU that TensorFlow sees. The options are a :class:`wfit.fitter.FitOptions`, as for ``wfit fit``, and
    give the same result as that command on the same file. Only paths and the options (as a dict) travel:
    the worker reads ``workspace`` and writes ``result``.

    Args:
        client: A ``distributed.Client``.
        workspace: The workspace file, on storage shared by the client and the workers.
        result: The result file (default: ``fitresult.hdf5`` next to the workspace, as ``wfit fit``).
        options: The :class:`wfit.fitter.FitOptions` (defaults when ``None``).
        allow_cpu: Without a GPU worker, fit on a CPU worker instead of raising :class:`NoGPUWorkerError`.
        progress: Show a progress bar of the minimisation (events sent by the worker).
        derived, impacts, yields: Post-fit products computed on the worker, stored in the result's ``extra``
            (:func:`wfit.fitter.postfit.post_fit_products`; the ``derived`` expressions are parsed before the fit).
        plots: A folder (on shared storage) where the worker writes :func:`wfit.fitter.plots.plot_all`'s figures.
        **changes: Fit options that replace those of ``options``, by name (``asimov=True``); a name
            that is not a ``FitOptions`` field is a ``TypeError``.

    Returns:
        The :class:`wfit.fitter.FitResult`; ``options["worker"]`` is the address of the worker that fitted.

    Raises:
        NoGPUWorkerError: No worker declares ``GPU`` and ``allow_cpu`` is false.
    """
    from wfit.fitter.options import FitOptions

    fit_options = FitOptions.resolve(options, **changes)  # checked here, not on the worker
    workspace = os.path.abspath(os.fspath(workspace))
    products = {"derived": list(derived), "impacts": bool(impacts), "yields": bool(yields)}
    if plots is not None:
        products["plots"] = os.path.abspath(os.fspath(plots))
    result = (
        os.path.abspath(os.fspath(result))
        if result is not None
        else os.path.join(os.path.dirname(workspace), "fitresult.hdf5")
    )
    submit = _placement(client, allow_cpu)
    topic = f"wfit-fit-{uuid.uuid4().hex}" if progress else None
    bar = None
    if topic is not None:
        from tqdm.auto import tqdm

        bar = tqdm(desc="fit", unit="it", total=None)

        def show(event: Any) -> None:
            _, msg = event
            bar.update(1)
            bar.set_postfix(NLL=f"{msg['nll']:.6f}", EDM=f"{msg['edm']:.2g}")

        client.subscribe_topic(topic, show)
    try:
        future = client.submit(
            _fit_task,
            workspace,
            result,
            fit_options.to_dict(),
            topic,
            products,
            pure=False,
            key=f"wfit-fit-{uuid.uuid4().hex}",
            **submit,
        )
        done = future.result()
    finally:
        if topic is not None:
            client.unsubscribe_topic(topic)
            bar.close()
    from wfit.fitter import read_result

    res = read_result(done["result"])
    log.info("fit on %s (%s): %s", done["worker"], done["device"], res.status.describe())
    return res


def _cut_gradient_task(
    columns: str, samples: dict[str, Any], cuts: list[float], target: str, options: dict[str, Any]
) -> dict[str, Any]:
    """Runs on a worker: the expected uncertainty of ``target`` and its gradient with respect to the cuts."""
    from distributed import get_worker

    from wfit.fitter.cutopt import CutModel

    worker = get_worker()
    if not os.path.exists(columns):
        raise FileNotFoundError(
            f"worker {worker.address}: no event-columns file {columns!r}; it must be on storage that the client "
            "and the workers share"
        )
    model = CutModel(columns, samples, **{k: v for k, v in options.items() if k != "widths"})
    value, grad = model.value_and_gradient(cuts, target, options["widths"])
    return {"sigma": value, "gradient": grad.tolist(), "device": model.device, "worker": worker.address}


def cut_gradient_on_cluster(
    client: Any,
    columns: str | os.PathLike[str],
    samples: Mapping[str, Any],
    cuts: Any,
    target: str,
    *,
    lumi: float,
    widths: Any = None,
    allow_cpu: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """The expected uncertainty of a POI and its gradient with respect to the cuts
    (:meth:`wfit.fitter.cutopt.CutModel.value_and_gradient`), computed on the cluster's GPU worker: the same
    placement as :func:`fit_on_cluster` (``resources={"GPU": 1}``; a CPU worker with ``allow_cpu``). The columns
    file is written by the processor on the CPU workers (:func:`wfit.columns.write_columns`) on shared storage.

    Returns:
        ``{"sigma", "gradient" (CUT_NAMES order), "device" (TensorFlow's), "worker"}``.

    Raises:
        NoGPUWorkerError: No worker declares ``GPU`` and ``allow_cpu`` is false.
        FileNotFoundError: No columns file at ``columns`` (checked here, before anything is submitted).
        ValueError: Cuts or widths that are not 3 finite numbers (widths > 0), checked here.
    """
    from wfit.fitter.cuts import DEFAULT_WIDTHS, cut_vector, width_vector

    path = os.path.abspath(os.fspath(columns))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cut_gradient_on_cluster: no event-columns file {path}; write it with "
                                "wfit.columns.write_columns on storage that the workers share")  # fmt: skip
    x = cut_vector(cuts)
    w = width_vector(DEFAULT_WIDTHS if widths is None else widths)
    submit = _placement(client, allow_cpu)
    opts = {"lumi": lumi, "widths": w.tolist(), **options}
    future = client.submit(
        _cut_gradient_task,
        path,
        dict(samples),
        x.tolist(),
        target,
        opts,
        pure=False,
        key=f"wfit-cut-gradient-{uuid.uuid4().hex}",
        **submit,
    )
    out = future.result()
    log.info("cut gradient on %s (%s)", out["worker"], out["device"])
    return out


# ------------------------------------------------------------------------------------------ chain
@dataclass
class ChainResult:
    """What :func:`run_chain` made.

    Attributes:
        output: The processor output (``{dataset: Accumulator}``).
        workspace: Path of the workspace file.
        summary: :func:`wfit.processors.build_workspace`'s summary (signals, backgrounds, yields...).
        result_path: Path of the fit result file.
        fit: The :class:`wfit.fitter.FitResult` read from it.
    """

    output: Any
    workspace: str
    summary: dict[str, Any]
    result_path: str
    fit: Any

    @property
    def worker(self) -> str:
        """Address of the worker that ran the fit."""
        return str(self.fit.options["worker"])


def run_chain(
    client: Any,
    fileset: Mapping[str, Any],
    processor_instance: Any,
    *,
    samples: Mapping[str, Any],
    lumi: float,
    workdir: str | os.PathLike[str],
    systematics: Any = True,
    pseudo_data: Any = "asimov",
    fakes: bool = False,
    chunksize: int = 500_000,
    status: bool = True,
    options: FitOptions | None = None,
    allow_cpu: bool = False,
    cross_sections: Any = None,
    derived: Sequence[str] = (),
    impacts: bool = False,
    yields: bool = False,
    plots: str | os.PathLike[str] | None = None,
    **changes: Any,
) -> ChainResult:
    """NanoAOD to fit result on one cluster: process (CPU workers), write the workspace, fit (GPU worker).

    Args:
        client: A ``distributed.Client`` (e.g. from :func:`local_chain_cluster` or a batch cluster).
        fileset: ``{dataset: [NanoAOD files]}``.
        processor_instance: A :class:`wfit.processors.WTemplateProcessor`; its ``config`` is used for the
            workspace.
        samples, lumi, systematics, pseudo_data, fakes: As :func:`wfit.processors.build_workspace`.
        workdir: Folder of ``workspace.hdf5`` and ``fitresult.hdf5``, on storage that the client and the
            workers share.
        chunksize, status: As :func:`process_on_cluster`.
        options, allow_cpu, **changes: The fit's options, as :func:`fit_on_cluster`.
        cross_sections: As :func:`wfit.processors.build_workspace` (the masked cross-section channel).
        derived, impacts, yields, plots: The post-fit products, as :func:`fit_on_cluster`.

    Returns:
        A :class:`ChainResult`.
    """
    from wfit.fitter.options import FitOptions
    from wfit.processors import build_workspace
    from wfit.processors.runner import check_fileset
    from wfit.processors.workspace_builder import check_samples

    fit_options = FitOptions.resolve(options, **changes)  # a misspelt option fails before the processing
    check_fileset(fileset)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Fail before hours of processing rather than after them.
    _placement(client, allow_cpu)
    check_samples(samples, fileset, lumi)
    output = process_on_cluster(client, fileset, processor_instance, chunksize=chunksize, status=status)
    ws = workdir / "workspace.hdf5"
    summary = build_workspace(
        output,
        ws,
        samples=samples,
        config=getattr(processor_instance, "config", None),
        lumi=lumi,
        systematics=systematics,
        pseudo_data=pseudo_data,
        fakes=fakes,
        cross_sections=cross_sections,
    )
    out = workdir / "fitresult.hdf5"
    res = fit_on_cluster(
        client,
        ws,
        out,
        options=fit_options,
        allow_cpu=allow_cpu,
        progress=status,
        derived=derived,
        impacts=impacts,
        yields=yields,
        plots=plots,
    )
    return ChainResult(output=output, workspace=str(ws), summary=summary, result_path=str(out), fit=res)
