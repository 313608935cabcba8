"""What a run reads, checked: the fileset before any chunk (regular files, each listed once by its resolved
path and by its ROOT file UUID), and each chunk's jagged branches against their collection's counter.

Every check raises before anything is counted twice or attached to the wrong object, naming the dataset, the
file and the fix (:class:`FilesetError`, ``ValueError``).
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "FilesetError",
    "check_counters",
    "check_fileset",
    "check_local_files",
    "check_uuids",
    "fileset_entries",
    "preloaded_arrays",
]

Wanted = tuple[str, str, int | None, int | None]  # dataset, file, entry range (None: the whole file)


class FilesetError(ValueError):
    """A fileset that cannot be processed as given (a file listed twice, a path that is not a regular file);
    raised before any chunk is processed, naming the dataset, the path(s) and the fix."""


def fileset_entries(fileset: Mapping[str, Sequence[str]]) -> list[Wanted]:
    """(dataset, file, None, None) for every file of a fileset ``{dataset: [files]}``, checked
    (:func:`check_local_files`, duplicates included)."""
    wanted: list[Wanted] = []
    for ds, files in fileset.items():
        if isinstance(files, (str, os.PathLike, Mapping)):
            raise TypeError(
                f"run_templates: dataset {ds!r} maps to {type(files).__name__} {files!r}; the fileset is "
                "{dataset: [file paths]}: put the file(s) in a list"
            )
        wanted += [(ds, os.fspath(f), None, None) for f in files]
    check_local_files(wanted, duplicates=True)
    return wanted


def local_path(name: str) -> str | None:
    """The local path of a file name (plain or ``file://``); None for a remote URL (root://, https://)."""
    if name.startswith("file://"):
        return name[len("file://") :]
    if "://" in name:
        return None
    return name


def check_local_files(wanted: Sequence[Wanted], duplicates: bool) -> None:
    """Refuse local paths that are not regular files and, with ``duplicates``, a file listed twice in a
    dataset (by its resolved path: another spelling, ``..``, a symlink). A missing file is left to the open
    stage, where it becomes a listed failure to rerun."""
    seen: dict[tuple[str, str], str] = {}
    checked: set[str] = set()
    for ds, name, _, _ in wanted:
        path = local_path(name)
        if path is None:
            continue
        if name not in checked:
            checked.add(name)
            try:
                mode = os.stat(path).st_mode  # stat, not open: opening a FIFO would block
            except FileNotFoundError:
                mode = None
            except OSError as err:
                raise FilesetError(
                    f"dataset {ds!r}: file {name!r} cannot be inspected ({err.strerror}); fix its permissions or "
                    "drop it from the fileset"
                ) from err
            if mode is not None and not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a file"
                raise FilesetError(
                    f"dataset {ds!r}: {name!r} is {kind}, not a regular ROOT file; list the ROOT files "
                    "themselves (e.g. sorted(glob.glob('dir/*.root')))"
                )
        if not duplicates:
            continue
        key = (ds, os.path.realpath(path))
        if key in seen:
            first = seen[key]
            same = "twice" if first == name else f"twice, as {first!r} and {name!r}"
            raise FilesetError(
                f"dataset {ds!r}: the file {key[1]!r} is listed {same} (one file by its resolved path); its "
                "events would be counted twice: list every file once per dataset"
            )
        seen[key] = name


def check_fileset(fileset: Mapping[str, Sequence[str]]) -> None:
    """Check a fileset ``{dataset: [files]}`` before anything runs (what :func:`run_templates` does first):
    local paths must be regular files, and no file may be listed twice in a dataset under any spelling.

    Raises:
        FilesetError: Naming the dataset, the path(s) and the fix.
        TypeError: A dataset does not map to a list of paths.
    """
    fileset_entries(fileset)


def check_uuids(metas: Mapping[tuple[str, str], Any]) -> None:
    """Refuse two paths of one dataset that hold one ROOT file (the same UUID: a copy, or a remote and a
    local spelling)."""
    seen: dict[tuple[str, bytes], str] = {}
    for (ds, name), meta in metas.items():
        if not hasattr(meta, "metadata"):  # a file that failed to open
            continue
        key = (ds, bytes(meta.metadata["uuid"]))
        if key in seen:
            raise FilesetError(
                f"dataset {ds!r}: {seen[key]!r} and {name!r} are the same ROOT file (file UUID "
                f"{uuid.UUID(bytes=key[1])}): a copy listed twice would count its events twice; list it once"
            )
        seen[key] = name


def preloaded_arrays(factory: Any) -> dict[str, Any]:
    """The arrays of a NanoEvents factory's bulk read (uproot's, each jagged branch with its own offsets)."""
    arrays = getattr(getattr(factory, "_mapping", None), "preloaded_arrays", None) or {}
    return {name: getattr(a, "_array", a) for name, a in arrays.items()}


def check_counters(arrays: Mapping[str, Any], filename: str, start: int, stop: int) -> None:
    """Check that every jagged branch ``<Coll>_<field>`` has, in every entry, as many values as its
    collection's counter ``n<Coll>`` says.

    NanoEvents builds a collection from the counter's offsets and each branch's flat values, so a file whose
    counts disagree (written by a broken skimmer or merger) would attach values to the wrong objects without
    an error; uproot reads each jagged branch with the offsets stored beside its own values.

    Raises:
        ValueError: Naming the file, the entry range, the branch, the first disagreeing entry and the fix.
    """
    import awkward as ak
    import numpy as np

    for counter, values in arrays.items():
        coll = counter[1:]
        if not counter.startswith("n") or not coll:
            continue
        n = None
        for name, branch in arrays.items():
            if not name.startswith(coll + "_") or getattr(branch, "ndim", 1) < 2:
                continue
            if n is None:
                n = np.asarray(values, dtype=np.int64)
            own = np.asarray(ak.num(branch, axis=1), dtype=np.int64)
            bad = np.flatnonzero(own != n) if len(own) == len(n) else np.array([0])
            if len(bad):
                e = int(bad[0])
                raise ValueError(
                    f"file {filename!r}, entries [{start}, {stop}): branch {name!r} has {own[e]} values in entry "
                    f"{start + e} but {counter!r} says {n[e]} ({len(bad)} entries disagree); the file is "
                    "inconsistent (a broken skim or merge): regenerate it, or leave it out of the fileset"
                )
