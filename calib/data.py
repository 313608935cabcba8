"""A jet data directory in ml-jec's layout, and streaming reads from it.

Layout (local path or any fsspec URL, e.g. ``root://``, ``s3://``, ``gs://``)::

    data.yaml          # [{path: shards/1.root, count: 10}, ...], paths relative to the directory
    transform.yaml     # see wfit.calib.transform
    shards/*.root      # TTree "Jets": jet branches (pt, eta, ...) and jagged ch_*, ne_*, sv_* branches

Reads go through ``uproot.iterate`` in chunks so that a data set is never loaded whole.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import awkward as ak
import numpy as np

from wfit.yamlfile import safe_load

from .transform import Transform, load_transform

__all__ = [
    "TREE_NAME",
    "DataDir",
    "DataError",
    "Shard",
    "iterate",
    "open_data_dir",
    "to_columns",
]

#: Name of the TTree in every shard.
TREE_NAME = "Jets"


class DataError(ValueError):
    """A data directory or shard is malformed or missing."""


@dataclass(frozen=True)
class Shard:
    """One ROOT file of a data set.

    Attributes:
        path: Full path or URL of the file.
        count: Number of jets in it, as declared in data.yaml.
    """

    path: str
    count: int


def _join(base: str, relative: str) -> str:
    """Join a directory and a relative path for local paths and URLs alike."""
    if "://" in relative or os.path.isabs(relative):
        return relative
    if "://" in base:
        return posixpath.join(base, relative)
    return os.path.join(base, relative)


@dataclass(frozen=True)
class DataDir:
    """A data directory: its shards, its transform and the branches its shards hold.

    Attributes:
        location: The directory (path or URL).
        shards: Shards in data.yaml order.
        transform: The preprocessing read from transform.yaml.
        branches: Branch names of the ``Jets`` tree of the first shard.
    """

    location: str
    shards: tuple[Shard, ...]
    transform: Transform
    branches: tuple[str, ...]

    @property
    def num_jets(self) -> int:
        """Total number of jets declared in data.yaml."""
        return sum(s.count for s in self.shards)

    def split(self, validation: float, test: float = 0.0) -> tuple[list[Shard], list[Shard], list[Shard]]:
        """Split the shards into training, validation and test sets, by whole shards.

        The last ``round(test * n)`` shards are the test set, the ``round(validation * n)`` before them the
        validation set (at least one each when the fraction is positive), the rest training, as ml-jec did.

        Args:
            validation: Fraction of shards for validation.
            test: Fraction of shards for testing.
        """
        n = len(self.shards)
        n_test = max(1, round(test * n)) if test > 0 else 0
        n_val = max(1, round(validation * n)) if validation > 0 else 0
        if n - n_test - n_val < 1:
            raise DataError(
                f"{self.location}/data.yaml: {n} shard(s) cannot be split into {n_val} validation and "
                f"{n_test} test shard(s) with at least one for training; write more, smaller shards"
            )
        train = list(self.shards[: n - n_test - n_val])
        val = list(self.shards[n - n_test - n_val : n - n_test])
        tst = list(self.shards[n - n_test :])
        return train, val, tst


def open_data_dir(location: str, check_shards: bool = True) -> DataDir:
    """Open a data directory in ml-jec's layout.

    Args:
        location: The directory, a local path or an fsspec URL.
        check_shards: Open every shard to check that it exists and holds ``Jets`` with the declared number
            of jets (one metadata read per shard).

    Returns:
        The data directory.

    Raises:
        FileNotFoundError: data.yaml, transform.yaml or a shard is missing.
        DataError: data.yaml is malformed, a shard's count disagrees with its tree, or transform.yaml names
            features that the shards do not provide.
    """
    import fsspec
    import uproot

    location = str(location).rstrip("/")
    data_path = _join(location, "data.yaml")
    try:
        with fsspec.open(data_path, "r") as f:
            entries = safe_load(f, source=data_path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{data_path}: not found; a data directory needs data.yaml listing its shards "
            "as [{path: shards/1.root, count: N}, ...]"
        ) from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{data_path}: expected a non-empty list of {{path, count}} entries")
    shards = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"path", "count"}:
            raise DataError(
                f"{data_path}: entry [{i}] must have exactly the keys 'path' and 'count', got {entry!r}"
            )
        count = entry["count"]
        if not isinstance(count, int) or count < 0:
            raise DataError(f"{data_path}: [{i}].count must be a non-negative integer, got {count!r}")
        shards.append(Shard(path=_join(location, str(entry["path"])), count=count))

    branches: tuple[str, ...] = ()
    for i, shard in enumerate(shards):
        if not check_shards and i > 0:
            break
        try:
            with uproot.open(shard.path) as f:
                if TREE_NAME not in f:
                    raise DataError(
                        f"{shard.path}: no TTree {TREE_NAME!r} (keys: {f.keys()}); shards must hold "
                        f"a tree named {TREE_NAME!r}"
                    )
                tree = f[TREE_NAME]
                if i == 0:
                    branches = tuple(tree.keys())
                if tree.num_entries != shard.count:
                    raise DataError(
                        f"{data_path}: [{i}].count is {shard.count} but {shard.path} holds "
                        f"{tree.num_entries} jets; fix the count in data.yaml"
                    )
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{data_path}: [{i}].path: shard {shard.path} not found; fix the path or remove the entry"
            ) from None

    transform = load_transform(_join(location, "transform.yaml"))
    from .features import DERIVED_FEATURES

    known = set(branches) | set(DERIVED_FEATURES)
    unknown = sorted(transform.features - known)
    if unknown:
        raise DataError(
            f"{transform.source}: feature(s) {unknown} are neither branches of {shards[0].path} nor derived "
            f"features ({sorted(DERIVED_FEATURES)}); remove them or fix their names"
        )
    return DataDir(location=location, shards=tuple(shards), transform=transform, branches=branches)


def iterate(
    shards: Sequence[Shard | str],
    branches: Sequence[str],
    step_size: int = 100_000,
) -> Iterator[dict[str, np.ndarray | ak.Array]]:
    """Stream shards in chunks of jets.

    Args:
        shards: Shards (or paths/URLs) in the order to read.
        branches: Branches to read.
        step_size: Jets per chunk (uproot's ``step_size`` as an entry count).

    Yields:
        One mapping per chunk: jet-level branches as numpy arrays, jagged ones as awkward arrays.
    """
    import uproot

    files = {(s.path if isinstance(s, Shard) else str(s)): TREE_NAME for s in shards}
    if not files:
        return
    for chunk in uproot.iterate(files, expressions=list(branches), step_size=step_size, library="ak"):
        yield to_columns(chunk)


def to_columns(chunk: ak.Array) -> dict[str, np.ndarray | ak.Array]:
    """Split an awkward record array into columns: flat fields to numpy, jagged fields stay awkward."""
    out: dict[str, np.ndarray | ak.Array] = {}
    for name in chunk.fields:
        column = chunk[name]
        out[name] = ak.to_numpy(column) if column.ndim == 1 else column
    return out
