"""Run a processor over NanoAOD files so that bad inputs, lost workers and interruptions do not lose the run.

:func:`run_templates` is the one way to run a coffea processor here (the template processor, the angular
coefficients, any other ``ProcessorABC``). It splits the fileset into coffea ``WorkItem`` chunks (coffea's
``Runner.metadata_fetcher_root`` and ``FileMeta.chunks``, cut at cluster boundaries by default), processes
every chunk in isolation as NanoEvents (``NanoAODSchema``, virtual mode, the processor's ``branches`` read in
one bulk read) on one of three executors, and folds the outputs in plan order:

* ``"iterative"``: in this process, chunk after chunk;
* ``"futures"``: ``workers`` processes of a ``loky`` pool on this machine;
* ``"dask"``: one task per chunk (and per file to open) on a ``distributed.Client`` (``client``, or a
  :func:`~wfit.processors.cluster.local_cluster` of ``workers`` made and closed here). Tasks honour
  ``dask.annotate`` restrictions (e.g. to CPU workers).

The three give the same sums bit for bit, as does a resumed run. Behaviour:

* **Bad files and chunks.** A file that cannot be opened (corrupt or truncated ROOT, not ROOT at all, no
  ``Events`` tree) and a chunk whose processing raises (a branch the selection needs is missing, a file
  without ``luminosityBlock``) do not stop the run: each becomes a :class:`ChunkFailure` (dataset, file,
  entry range, the error and what to do). When the run ends with failures, :func:`run_templates` raises an
  :class:`IncompleteRunError` that lists them and holds the :class:`RobustRun` of the chunks that succeeded
  (``allow_failures=True`` returns that result instead). After fixing or dropping those files,
  ``run_templates(run.failures, ...)`` processes exactly the failed files and chunks, and
  ``run.output + rerun.output`` equals a clean run over the good files.
* **Lost workers.** On Dask, when a worker dies, the scheduler reschedules its tasks on the remaining (or
  restarted) workers, and ``retries`` re-runs a task that raised. A chunk that kills its worker every time
  ends as a ``KilledWorker`` failure instead of hanging the run. (A process of the ``"futures"`` pool that
  dies fails the chunks in flight, listed as failures.)
* **Interruption and resume.** With ``checkpoint=path`` the accumulated output and the keys of the chunks
  already in it are saved atomically (:mod:`wfit.processors.checkpoint`) every ``checkpoint_every`` chunks; a
  later call with the same path skips those chunks. No chunk is counted twice: each key is recorded once,
  a fileset that lists a chunk twice is refused, and a resumed run refuses a checkpoint whose file UUIDs no
  longer match the files.
* **Pre-flight.** A processor with a ``preflight(fileset)`` method (the template processor's check of the
  jet calibration's branches) has it called on the files that opened, before any chunk is processed: an
  input that cannot work with the processor's configuration raises there, naming the file and the fix.

Example:
    >>> from wfit.processors import WTemplateProcessor, run_templates  # doctest: +SKIP
    >>> run = run_templates({"data": files}, WTemplateProcessor(), checkpoint="run.coffea")  # doctest: +SKIP
    >>> run.output["data"]["templates"].sum()  # doctest: +SKIP
    >>> # on an IncompleteRunError err: fix or drop the files that err.run.failures names, then
    >>> total = err.run.output + run_templates(err.run.failures, WTemplateProcessor()).output  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from .accumulator import Accumulator
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .cluster import local_cluster
from .inputs import (
    FilesetError,
    Wanted,
    check_counters,
    check_fileset,
    check_local_files,
    check_uuids,
    fileset_entries,
    preloaded_arrays,
)

__all__ = [
    "ChunkFailure",
    "FilesetError",
    "IncompleteRunError",
    "RobustRun",
    "check_fileset",
    "chunk_key",
    "process_chunk",
    "run_templates",
]

_TREE = "Events"
_EXECUTORS = ("iterative", "futures", "dask")
_LISTED_FAILURES = 20  # failures written out in an IncompleteRunError's message

_Calls = Sequence[tuple[Any, ...]]  # the argument tuples of the calls of one function
_Outcomes = Iterator[tuple[int, Any]]  # (position in the calls, return value or _Failed)
_Run = Callable[[str, Callable[..., Any], _Calls], _Outcomes]


@dataclasses.dataclass(frozen=True)
class ChunkFailure:
    """A file that could not be opened, or a chunk (entry range) whose processing raised.

    Attributes:
        dataset: Dataset name in the fileset.
        file: File path or URL.
        entrystart: First entry of the chunk; None when the file itself could not be opened.
        entrystop: One past the last entry of the chunk; None when the file could not be opened.
        stage: ``"open"`` (reading the file's metadata) or ``"process"`` (reading and processing a chunk).
        error: The exception, as ``"Type: message"``.
    """

    dataset: str
    file: str
    entrystart: int | None
    entrystop: int | None
    stage: str
    error: str

    @property
    def message(self) -> str:
        """What failed, why, and what to do."""
        where = (
            f"file {self.file!r} (dataset {self.dataset!r})"
            if self.entrystart is None
            else f"file {self.file!r} (dataset {self.dataset!r}), entries [{self.entrystart}, {self.entrystop})"
        )
        if self.stage == "open":
            fix = (
                f"the file cannot be opened as ROOT with a TTree {_TREE!r} (corrupt, truncated, not ROOT, or "
                "another tree name): check it with uproot.open, replace it with a good copy or drop it from "
                "the fileset"
            )
        else:
            fix = "fix or replace the file (or drop it from the fileset)"
        return (
            f"{where}: {self.error}; {fix}, then rerun only the failures with "
            "run_templates(previous.failures, processor) and add the outputs with +"
        )


@dataclasses.dataclass
class RobustRun:
    """The result of :func:`run_templates`.

    Attributes:
        output: The accumulated processor output (for :class:`~wfit.processors.WTemplateProcessor`,
            ``{dataset: Accumulator}``) over the chunks that succeeded.
        failures: The files and chunks that failed, in plan order (a result returned without
            ``allow_failures=True`` has none: the run raised :class:`IncompleteRunError` instead).
        processed: The keys (``"dataset|file|start-stop"``) of the chunks in ``output``, each once.
    """

    output: Accumulator
    failures: list[ChunkFailure]
    processed: list[str]


class IncompleteRunError(RuntimeError):
    """Files or chunks of a run failed; ``run`` holds the output of the others and the failures to rerun.

    Attributes:
        run: The :class:`RobustRun` of the chunks that succeeded, with its ``failures``.
    """

    def __init__(self, run: RobustRun) -> None:
        self.run = run
        n = len(run.failures)
        listed = "\n".join(f"  {f.message}" for f in run.failures[:_LISTED_FAILURES])
        more = f"\n  ... and {n - _LISTED_FAILURES} more (all in .run.failures)" if n > _LISTED_FAILURES else ""
        super().__init__(
            f"{n} file(s)/chunk(s) failed ({len(run.processed)} chunk(s) processed):\n{listed}{more}\n"
            "The output of the processed chunks is in this error's .run.output: after fixing or dropping the "
            "files, run_templates(.run.failures, processor) processes exactly the failures (add the outputs "
            "with +); run_templates(..., allow_failures=True) returns the partial result instead of raising"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run,))


def chunk_key(dataset: str, filename: str, start: int, stop: int) -> str:
    """The key of a chunk in :attr:`RobustRun.processed` and in checkpoints."""
    return f"{dataset}|{filename}|{start}-{stop}"


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


@dataclasses.dataclass(frozen=True)
class _Failed:
    """The outcome of a call that raised (the error as ``"Type: message"``)."""

    error: str


def _file_meta(dataset: str, filename: str, align_clusters: bool) -> Any:
    """coffea's FileMeta of one file with its metadata (entries, UUID, clusters); raises if unreadable.

    What coffea's ``Runner.metadata_fetcher_root`` reads, without its set of FileMeta: that hashes the path as
    ASCII and fails on a path such as ``données/ü.root``.
    """
    import uproot
    from coffea.processor.executor import FileMeta, UprootMissTreeError

    with uproot.open({filename: None}, timeout=60) as file:
        try:
            tree = file[_TREE]
        except uproot.exceptions.KeyInFileError as e:
            raise UprootMissTreeError(str(e)) from e
        metadata: dict[str, Any] = {"numentries": tree.num_entries, "uuid": file.file.fUUID}
        if align_clusters:
            metadata["clusters"] = tree.common_entry_offsets()
    return FileMeta(dataset, filename, _TREE, metadata)


def process_chunk(item: Any, processor_instance: Any) -> Any:
    """Read one WorkItem as NanoEvents (NanoAODSchema, virtual mode) and return ``processor.process(events)``.

    The branches that the processor declares (``branches(dataset)``) are read in one bulk read (coffea's
    preload), which is faster than NanoEvents' reading of one branch at a time; a branch left out is still
    read when it is accessed.
    """
    import uproot
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    metadata = {
        "dataset": item.dataset,
        "filename": item.filename,
        "treename": item.treename,
        "entrystart": item.entrystart,
        "entrystop": item.entrystop,
        "fileuuid": str(uuid.UUID(bytes=item.fileuuid)) if len(item.fileuuid) else "",
    }
    branches = getattr(processor_instance, "branches", None)
    with uproot.open({item.filename: None}) as f, warnings.catch_warnings():
        # NanoAODSchema warns, once per chunk and worker, about optional cross-references that a file lacks
        # and about the Photon mass/charge it overwrites (NanoAOD v15); processors that need such a
        # collection fail on it by name. Keep the user's terminal for what matters.
        warnings.filterwarnings("ignore", "Missing cross-reference", RuntimeWarning, "coffea.nanoevents")
        warnings.filterwarnings("ignore", "Branch Photon_.* already exists", RuntimeWarning, "coffea.nanoevents")
        factory = NanoEventsFactory.from_root(
            file=f,
            treepath=item.treename,
            schemaclass=NanoAODSchema,
            metadata=metadata,
            mode="virtual",
            entry_start=item.entrystart,
            entry_stop=item.entrystop,
            preload=branches(item.dataset) if branches is not None else None,
        )
        check_counters(preloaded_arrays(factory), item.filename, item.entrystart, item.entrystop)
        out = processor_instance.process(factory.events())
    if out is None:
        raise ValueError(f"{type(processor_instance).__name__}.process returned None: return an accumulator")
    return out


def _attempt(fn: Callable[..., Any], args: tuple[Any, ...], retries: int) -> Any:
    """``fn(*args)``, tried ``1 + retries`` times; the last error as a :class:`_Failed`."""
    failed = _Failed("")
    for _ in range(retries + 1):
        try:
            return fn(*args)
        except Exception as e:  # recorded with file, range and fix; KeyboardInterrupt still stops the run
            failed = _Failed(_error(e))
    return failed


# ---------------------------------------------------------------------------------------------- executors
# Each yields (position in calls, outcome) in completion order; an outcome is the return value or a _Failed.
def _iterative(fn: Callable[..., Any], calls: _Calls, retries: int) -> _Outcomes:
    for pos, args in enumerate(calls):
        yield pos, _attempt(fn, args, retries)


def _pool(pool: Any, fn: Callable[..., Any], calls: _Calls, retries: int) -> _Outcomes:
    futures = {pool.submit(_attempt, fn, args, retries): pos for pos, args in enumerate(calls)}
    try:
        for fut in concurrent.futures.as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as e:  # the pool lost the process running it
                outcome = _Failed(_error(e))
            yield futures.pop(fut), outcome
    finally:
        for fut in futures:
            fut.cancel()


def _dask(client: Any, name: str, fn: Callable[..., Any], calls: _Calls, retries: int) -> _Outcomes:
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:8]  # keys unique per call: an earlier run's forgotten tasks cannot collide
    futures = {
        client.submit(fn, *args, key=f"wfit-{name}-{run_id}-{pos}", pure=False, retries=retries): pos
        for pos, args in enumerate(calls)
    }
    try:
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as e:  # a chunk's error, or KilledWorker for a chunk that keeps killing workers
                outcome = _Failed(_error(e))
            fut.release()
            yield futures[fut], outcome
    finally:
        for fut in futures:
            fut.cancel()


def _in_plan_order(outcomes: Iterable[tuple[int, Any]]) -> _Outcomes:
    """The outcomes by position, whatever the completion order, so that sums do not depend on scheduling."""
    pending: dict[int, Any] = {}
    next_pos = 0
    for pos, outcome in outcomes:
        pending[pos] = outcome
        while next_pos in pending:
            yield next_pos, pending.pop(next_pos)
            next_pos += 1


@contextlib.contextmanager
def _executor(executor: str, client: Any, workers: int, retries: int) -> Iterator[_Run]:
    """``run(name, fn, calls)``: the outcomes of ``fn(*args)`` for every ``args`` of ``calls``, in plan order."""
    if executor == "iterative":
        yield lambda name, fn, calls: _iterative(fn, calls, retries)
    elif executor == "futures":
        import loky

        with loky.ProcessPoolExecutor(max_workers=workers) as pool:
            yield lambda name, fn, calls: _in_plan_order(_pool(pool, fn, calls, retries))
    elif client is not None:
        yield lambda name, fn, calls: _in_plan_order(_dask(client, name, fn, calls, retries))
    else:
        with local_cluster(workers) as made:
            yield lambda name, fn, calls: _in_plan_order(_dask(made, name, fn, calls, retries))


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# ---------------------------------------------------------------------------------------------- planning
def _wanted(inputs: Mapping[str, Sequence[str]] | Sequence[ChunkFailure]) -> list[Wanted]:
    """(dataset, file, entrystart, entrystop) to process; whole files have no entry range."""
    if isinstance(inputs, Mapping):
        return fileset_entries(inputs)
    wanted: list[Wanted] = []
    for f in inputs:
        if not isinstance(f, ChunkFailure):
            raise TypeError(
                f"run_templates takes a fileset {{dataset: [files]}} or a list of ChunkFailure, got an element "
                f"{type(f).__name__}: pass previous.failures"
            )
        wanted.append((f.dataset, f.file, f.entrystart, f.entrystop))
    check_local_files(wanted, duplicates=False)  # a failure list names one file once per failed range
    return wanted


def _plan(
    wanted: Sequence[Wanted],
    metas: Mapping[tuple[str, str], Any],
    chunksize: int,
    align_clusters: bool,
) -> tuple[list[Any], list[ChunkFailure]]:
    """WorkItems for the wanted files and ranges, and the files that could not be opened (once each)."""
    from coffea.processor.executor import WorkItem

    items: list[Any] = []
    failures: list[ChunkFailure] = []
    reported: set[tuple[str, str]] = set()
    for ds, fname, start, stop in wanted:
        meta = metas[(ds, fname)]
        if isinstance(meta, _Failed):
            if (ds, fname) not in reported:
                reported.add((ds, fname))
                failures.append(ChunkFailure(ds, fname, None, None, "open", meta.error))
            continue
        if start is None:
            items.extend(meta.chunks(chunksize, align_clusters))
            continue
        n = meta.metadata["numentries"]
        if stop is None or stop > n:
            failures.append(ChunkFailure(ds, fname, start, stop, "open", f"ValueError: the file has {n} entries only"))
            continue
        items.append(WorkItem(ds, fname, _TREE, start, stop, meta.metadata["uuid"]))
    return items, failures


def _check_resume(path: str, state: Checkpoint, items: Sequence[Any]) -> None:
    for item in items:
        if state.files.get(item.filename, item.fileuuid) != item.fileuuid:
            raise ValueError(
                f"checkpoint {path!r}: file {item.filename!r} changed since chunks of it were checkpointed "
                "(another file UUID): delete the checkpoint to start again, or restore the file"
            )


# ---------------------------------------------------------------------------------------------- the run
def run_templates(
    fileset: Mapping[str, Sequence[str]] | Sequence[ChunkFailure],
    processor_instance: Any,
    *,
    executor: Literal["iterative", "futures", "dask"] | None = None,
    workers: int = 2,
    client: Any = None,
    chunksize: int = 500_000,
    align_clusters: bool = True,
    retries: int = 1,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    allow_failures: bool = False,
    status: bool = False,
) -> RobustRun:
    """Run a processor over ``{dataset: [files]}`` (or over the failures of an earlier run), chunk by chunk.

    See the module docstring for the executors and for what happens to bad files, lost workers and
    interruptions.

    Args:
        fileset: Datasets and their NanoAOD files (tree ``Events``), each file listed once per dataset, or the
            :attr:`RobustRun.failures` of an earlier run to process exactly those files and entry ranges again.
        processor_instance: A coffea processor (its ``process`` is called on NanoEvents per chunk, its
            ``postprocess`` on the accumulated output).
        executor: ``"iterative"``, ``"futures"`` or ``"dask"``; default ``"dask"`` with a ``client``,
            else ``"iterative"``.
        workers: Processes of the futures pool, and workers of the Dask cluster made when ``executor="dask"``
            comes without a ``client``.
        client: A ``distributed.Client`` for the Dask executor.
        chunksize: Events per chunk; large chunks amortise file opening and NanoEvents construction.
        align_clusters: Cut chunks at the file's cluster (basket) boundaries, so that no basket is read and
            decompressed by two chunks (chunks may then exceed ``chunksize`` by up to one cluster). Measured on
            1M toy events in 250k-event baskets with 150k-event chunks: 2.4 s without, 1.6 s with it.
        retries: Re-runs of a file opening or chunk that raised (on Dask a lost worker is rescheduled by the
            scheduler and does not use these). Processing errors are mostly deterministic: keep it small.
        checkpoint: File to save progress to and resume from (:mod:`wfit.processors.checkpoint`).
        checkpoint_every: Save after this many newly accumulated chunks (and always at the end).
        allow_failures: Return the result with its failures listed instead of raising.
        status: Show progress bars.

    Returns:
        A :class:`RobustRun`: the output, the failures (with ``allow_failures``) and the processed chunk keys.

    Raises:
        IncompleteRunError: Some files or chunks failed (unless ``allow_failures``); it lists them and holds
            the result of the others.
        FilesetError: Before any chunk: a local path that is not a regular file (a directory, a FIFO), or a
            file listed twice in a dataset (another spelling of its path, a symlink, or another path to the
            same ROOT file UUID).
        ValueError: A bad option, a fileset listing a chunk twice, an unusable checkpoint, or the processor's
            pre-flight check.
    """
    if executor is None:
        executor = "dask" if client is not None else "iterative"
    if executor not in _EXECUTORS:
        raise ValueError(f"run_templates(executor={executor!r}): must be one of {_EXECUTORS}")
    if client is not None and executor != "dask":
        raise ValueError(f"run_templates(executor={executor!r}, client=...): a client is for executor='dask'")
    if checkpoint_every < 1 or retries < 0 or workers < 1 or chunksize < 1:
        raise ValueError(
            f"run_templates(checkpoint_every={checkpoint_every}, retries={retries}, workers={workers}, "
            f"chunksize={chunksize}): retries must be >= 0, the others >= 1"
        )
    wanted = _wanted(fileset)
    with _executor(executor, client, workers, retries) as run:
        files = list(dict.fromkeys((ds, f) for ds, f, _, _ in wanted))
        metas: dict[tuple[str, str], Any] = {}
        with _progress(status, "Opening", len(files)) as advance:
            for pos, meta in run("open", _file_meta, [(ds, f, align_clusters) for ds, f in files]):
                metas[files[pos]] = meta
                advance()
        if isinstance(fileset, Mapping):
            check_uuids(metas)
        items, failures = _plan(wanted, metas, chunksize, align_clusters)
        preflight = getattr(processor_instance, "preflight", None)
        if preflight is not None:  # inputs that cannot work fail here, not inside a worker
            opened: dict[str, dict[str, None]] = {}
            for item in items:
                opened.setdefault(item.dataset, {})[item.filename] = None
            preflight({ds: list(names) for ds, names in opened.items()})
        result = _process(items, processor_instance, run, checkpoint, checkpoint_every, status)
    result.failures[:0] = failures
    postprocess = getattr(processor_instance, "postprocess", None)
    if postprocess is not None:
        final = postprocess(result.output)
        result.output = result.output if final is None else final
    if result.failures and not allow_failures:
        raise IncompleteRunError(result)
    return result


def _process(
    items: Sequence[Any],
    processor_instance: Any,
    run: _Run,
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_every: int,
    status: bool,
) -> RobustRun:
    """Process the chunks not yet in the checkpoint and fold their outputs in plan order."""
    keys = [chunk_key(i.dataset, i.filename, i.entrystart, i.entrystop) for i in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"the fileset lists chunks {dup[:3]} more than once: list every file once per dataset")
    path = None if checkpoint is None else os.fspath(checkpoint)
    state = Checkpoint(output=Accumulator(), done={}, files={})
    if path is not None and os.path.exists(path):
        state = load_checkpoint(path)
        _check_resume(path, state, items)
    todo = [(i, k) for i, k in zip(items, keys, strict=True) if k not in state.done]
    processed = [k for k in keys if k in state.done]
    failures: list[ChunkFailure] = []
    since_save = 0
    with _progress(status, "Processing", len(todo)) as advance:
        for pos, outcome in run("chunk", process_chunk, [(item, processor_instance) for item, _ in todo]):
            item, key = todo[pos]
            advance()
            if isinstance(outcome, _Failed):
                failures.append(
                    ChunkFailure(item.dataset, item.filename, item.entrystart, item.entrystop, "process", outcome.error)
                )
                continue
            state.output += outcome
            state.done[key] = item.fileuuid
            state.files[item.filename] = item.fileuuid
            processed.append(key)
            since_save += 1
            if path is not None and since_save >= checkpoint_every:
                save_checkpoint(path, state)
                since_save = 0
    if path is not None and since_save:
        save_checkpoint(path, state)
    return RobustRun(output=state.output, failures=failures, processed=processed)
