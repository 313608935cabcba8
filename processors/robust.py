"""Run a processor over many files so that bad inputs, lost workers and interruptions do not lose the run.

:func:`run_robust` splits the fileset into coffea ``WorkItem`` chunks itself (coffea's
``Runner.metadata_fetcher_root`` and ``FileMeta.chunks``, the same chunking as :func:`run_templates`) and
processes every chunk in isolation:

* **Bad files and chunks.** A file that cannot be opened (corrupt or truncated ROOT, not ROOT at all, no
  ``Events`` tree) and a chunk whose processing raises (a branch the selection needs is missing, a file
  without ``luminosityBlock``) do not stop the run: each becomes a :class:`ChunkFailure` (dataset, file,
  entry range, the error and what to do) in :attr:`RobustRun.failures`. After fixing or dropping those
  files, ``run_robust(first.failures, ...)`` processes exactly the failed files and chunks, and
  ``first.output + rerun.output`` equals a clean run over the good files.
* **Lost workers.** With a ``distributed.Client`` each chunk is one task; when a worker dies, the scheduler
  reschedules its tasks on the remaining (or restarted) workers, and ``retries`` re-runs a task that raised.
  A chunk that kills its worker every time ends as a ``KilledWorker`` failure instead of hanging the run.
* **Interruption and resume.** With ``checkpoint=path`` the accumulated output and the keys of the chunks
  already in it are saved (``coffea.util.save``, written to a temporary file and moved into place with
  ``os.replace``, so an interruption never leaves a half-written checkpoint) every ``checkpoint_every``
  chunks; a later call with the same path skips those chunks. Results are folded in the plan's order, also
  on a cluster, so a resumed run, a Dask run and an iterative run give the same sums bit for bit, and no
  chunk is counted twice (each key is recorded once; a resumed run refuses a checkpoint whose file UUIDs
  no longer match the files).

Example:
    >>> from wfit.processors import WTemplateProcessor, run_robust  # doctest: +SKIP
    >>> first = run_robust({"data": files}, WTemplateProcessor(), checkpoint="run.coffea")  # doctest: +SKIP
    >>> for f in first.failures: print(f.message)  # doctest: +SKIP
    >>> # fix or drop the files named there, then
    >>> total = first.output + run_robust(first.failures, WTemplateProcessor()).output  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .processor import Accumulator

__all__ = ["ChunkFailure", "RobustRun", "run_robust"]

_TREE = "Events"
_CHECKPOINT_VERSION = 1


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
            "run_robust(previous.failures, processor) and add the outputs with +"
        )


@dataclasses.dataclass
class RobustRun:
    """The result of :func:`run_robust`.

    Attributes:
        output: The accumulated processor output (for :class:`WTemplateProcessor`, ``{dataset: Accumulator}``)
            over the chunks that succeeded.
        failures: The files and chunks that failed, in plan order.
        processed: The keys (``"dataset|file|start-stop"``) of the chunks in ``output``, each once.
    """

    output: Accumulator
    failures: list[ChunkFailure]
    processed: list[str]


def chunk_key(dataset: str, filename: str, start: int, stop: int) -> str:
    """The key of a chunk in :attr:`RobustRun.processed` and in checkpoints."""
    return f"{dataset}|{filename}|{start}-{stop}"


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _file_meta(dataset: str, filename: str, align_clusters: bool) -> Any:
    """coffea's FileMeta of one file with its metadata (entries, UUID, clusters); raises if unreadable."""
    from coffea import processor
    from coffea.processor.executor import FileMeta

    (meta,) = processor.Runner.metadata_fetcher_root(60, align_clusters, {}, FileMeta(dataset, filename, _TREE))
    return meta


def _plan(
    inputs: Mapping[str, Sequence[str]] | Sequence[ChunkFailure], chunksize: int, align_clusters: bool
) -> tuple[list[Any], list[ChunkFailure]]:
    """WorkItems for the inputs, and the files that could not be opened."""
    from coffea.processor.executor import WorkItem

    if isinstance(inputs, Mapping):
        wanted: list[tuple[str, str, int | None, int | None]] = [
            (ds, str(f), None, None) for ds, files in inputs.items() for f in files
        ]
    else:
        wanted = []
        for f in inputs:
            if not isinstance(f, ChunkFailure):
                raise TypeError(
                    f"run_robust takes a fileset {{dataset: [files]}} or a list of ChunkFailure, got an element "
                    f"{type(f).__name__}: pass previous.failures"
                )
            wanted.append((f.dataset, f.file, f.entrystart, f.entrystop))
    items: list[Any] = []
    failures: list[ChunkFailure] = []
    metas: dict[tuple[str, str], Any] = {}
    for ds, fname, start, stop in wanted:
        key = (ds, fname)
        if key not in metas:
            try:
                metas[key] = _file_meta(ds, fname, align_clusters)
            except Exception as e:  # any unreadable file becomes a failure of that file, never of the run
                metas[key] = None
                failures.append(ChunkFailure(ds, fname, None, None, "open", _error(e)))
        meta = metas[key]
        if meta is None:
            continue
        if start is None:
            items.extend(meta.chunks(chunksize, align_clusters))
        else:
            n = meta.metadata["numentries"]
            if stop is None or stop > n:
                failures.append(
                    ChunkFailure(ds, fname, start, stop, "open", f"ValueError: the file has {n} entries only")
                )
                continue
            items.append(WorkItem(ds, fname, _TREE, start, stop, meta.metadata["uuid"]))
    return items, failures


def process_chunk(item: Any, processor_instance: Any) -> Any:
    """Read one WorkItem as NanoEvents (NanoAODSchema, virtual mode) and return ``processor.process(events)``."""
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
    branches = getattr(processor_instance, "branches", None)  # preloaded in one bulk read (see run_templates)
    with uproot.open({item.filename: None}) as f:
        events = NanoEventsFactory.from_root(
            file=f,
            treepath=item.treename,
            schemaclass=NanoAODSchema,
            metadata=metadata,
            mode="virtual",
            entry_start=item.entrystart,
            entry_stop=item.entrystop,
            preload=branches(item.dataset) if branches is not None else None,
        ).events()
        out = processor_instance.process(events)
    if out is None:
        raise ValueError(f"{type(processor_instance).__name__}.process returned None: return an accumulator")
    return out


def _save_checkpoint(path: str, state: dict[str, Any]) -> None:
    from coffea.util import save

    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save(state, tmp)
        os.replace(tmp, path)  # atomic: the checkpoint is either the old one or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _state(output: Any, done: dict[str, bytes], files: dict[str, bytes]) -> dict[str, Any]:
    return {"version": _CHECKPOINT_VERSION, "output": output, "done": done, "files": files}


def _load_checkpoint(path: str) -> dict[str, Any]:
    from coffea.util import load

    try:
        state = load(path)
    except Exception as e:
        raise ValueError(
            f"checkpoint {path!r} cannot be read ({_error(e)}): delete it to start the run again"
        ) from e
    if not isinstance(state, dict) or state.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {path!r}: field 'version' is not {_CHECKPOINT_VERSION} (not a run_robust checkpoint, or "
            "from another wfit version): delete it to start the run again"
        )
    return state


def run_robust(
    fileset: Mapping[str, Sequence[str]] | Sequence[ChunkFailure],
    processor_instance: Any,
    *,
    client: Any = None,
    chunksize: int = 500_000,
    align_clusters: bool = True,
    retries: int = 1,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
) -> RobustRun:
    """Run a processor over ``{dataset: [files]}`` (or over the failures of an earlier run), chunk by chunk.

    See the module docstring for what happens to bad files, lost workers and interruptions.

    Args:
        fileset: Datasets and their NanoAOD files (tree ``Events``), or the :attr:`RobustRun.failures` of an
            earlier run to process exactly those files and entry ranges again.
        processor_instance: A coffea processor (its ``process`` is called on NanoEvents per chunk).
        client: A ``distributed.Client`` (one task per chunk), or None to run the chunks in this process.
        chunksize: Events per chunk (see :func:`run_templates`).
        align_clusters: Cut chunks at cluster boundaries (see :func:`run_templates`).
        retries: Re-runs of a chunk whose task raised on a Dask worker (a lost worker is rescheduled by the
            scheduler and does not use these). Processing errors are mostly deterministic: keep it small.
        checkpoint: File to save progress to and resume from (coffea's ``save`` format).
        checkpoint_every: Save after this many newly accumulated chunks (and always at the end).

    Returns:
        A :class:`RobustRun`: the output, the failures and the processed chunk keys.
    """
    if checkpoint_every < 1:
        raise ValueError(f"run_robust(checkpoint_every={checkpoint_every}): must be >= 1")
    items, failures = _plan(fileset, chunksize, align_clusters)
    keys = [chunk_key(i.dataset, i.filename, i.entrystart, i.entrystop) for i in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"the fileset lists chunks {dup[:3]} more than once: list every file once per dataset")

    output = Accumulator()
    done: dict[str, bytes] = {}  # chunk key -> file UUID
    done_files: dict[str, bytes] = {}  # file -> UUID, for the files with checkpointed chunks
    path = None if checkpoint is None else os.fspath(checkpoint)
    if path is not None and os.path.exists(path):
        state = _load_checkpoint(path)
        output, done = state["output"], dict(state["done"])
        done_files.update(state["files"])
        for item in items:
            if done_files.get(item.filename, item.fileuuid) != item.fileuuid:
                raise ValueError(
                    f"checkpoint {path!r}: file {item.filename!r} changed since chunks of it were checkpointed "
                    "(another file UUID): delete the checkpoint to start again, or restore the file"
                )
    todo = [(i, k) for i, k in zip(items, keys, strict=True) if k not in done]
    processed = [k for k in keys if k in done]
    chunk_failures: dict[int, ChunkFailure] = {}
    since_save = 0

    def fold(pos: int, result: Any) -> None:
        nonlocal output, since_save
        item, key = todo[pos]
        output += result
        done[key] = item.fileuuid
        done_files[item.filename] = item.fileuuid
        processed.append(key)
        since_save += 1
        if path is not None and since_save >= checkpoint_every:
            _save_checkpoint(path, _state(output, done, done_files))
            since_save = 0

    def fail(pos: int, e: BaseException) -> None:
        item = todo[pos][0]
        chunk_failures[pos] = ChunkFailure(
            item.dataset, item.filename, item.entrystart, item.entrystop, "process", _error(e)
        )

    if client is None:
        for pos, (item, _) in enumerate(todo):
            try:
                result = process_chunk(item, processor_instance)
            except Exception as e:  # recorded with file, range and fix; KeyboardInterrupt still stops the run
                fail(pos, e)
                continue
            fold(pos, result)
    else:
        from distributed import as_completed

        run_id = uuid.uuid4().hex[:8]  # keys unique per call: an earlier run's forgotten tasks cannot collide
        futures = {
            client.submit(
                process_chunk, item, processor_instance, key=f"wfit-chunk-{run_id}-{pos}", pure=False, retries=retries
            ): pos
            for pos, (item, _) in enumerate(todo)
        }
        # Fold in plan order whatever the completion order, so that the sums do not depend on scheduling.
        pending: dict[int, Any] = {}
        next_pos = 0
        try:
            for fut in as_completed(futures):
                pos = futures[fut]
                try:
                    pending[pos] = fut.result()
                except Exception as e:  # a chunk's error, or KilledWorker for a chunk that keeps killing workers
                    fail(pos, e)
                    pending[pos] = None
                fut.release()
                while next_pos in pending:
                    result = pending.pop(next_pos)
                    if result is not None:
                        fold(next_pos, result)
                    next_pos += 1
        finally:
            for fut in futures:
                fut.cancel()
    if path is not None and since_save:
        _save_checkpoint(path, _state(output, done, done_files))
    failures += [chunk_failures[p] for p in sorted(chunk_failures)]
    return RobustRun(output=output, failures=failures, processed=processed)
