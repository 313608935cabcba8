"""The checkpoint file of a run: the output so far and the chunks in it, to resume an interrupted run.

A checkpoint is a dict ``{"version", "output", "done", "files"}`` in coffea's ``save`` format (cloudpickle,
lz4-compressed): ``done`` maps each accumulated chunk's key (``"dataset|file|start-stop"``) to its file's
UUID, ``files`` each file with accumulated chunks to its UUID. It is written atomically
(:func:`wfit.atomic.atomic_path`): an interruption leaves the previous checkpoint or the new one, never a
half-written file.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run.coffea")
    >>> save_checkpoint(path, Checkpoint(output={"n": 3}, done={"ds|f.root|0-3": b"u"}, files={"f.root": b"u"}))
    >>> load_checkpoint(path).done
    {'ds|f.root|0-3': b'u'}
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from wfit.atomic import atomic_path

__all__ = ["CHECKPOINT_VERSION", "Checkpoint", "load_checkpoint", "save_checkpoint"]

#: The ``version`` field of the checkpoints that this wfit writes and reads.
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class Checkpoint:
    """The state of a run.

    Attributes:
        output: The accumulated processor output.
        done: Chunk key -> file UUID, for every chunk in ``output``.
        files: File -> UUID, for the files with chunks in ``output``.
    """

    output: Any
    done: dict[str, bytes]
    files: dict[str, bytes]


def save_checkpoint(path: str | os.PathLike[str], state: Checkpoint) -> None:
    """Write ``state`` to ``path`` atomically."""
    from coffea.util import save

    with atomic_path(path) as tmp:
        save(
            {"version": CHECKPOINT_VERSION, "output": state.output, "done": state.done, "files": state.files},
            tmp,
        )


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: The file cannot be read, or is not a checkpoint of this version (the message says to
            delete it to start the run again).
    """
    from coffea.util import load

    where = os.fspath(path)
    try:
        state = load(where)
    except Exception as e:
        raise ValueError(
            f"checkpoint {where!r} cannot be read ({type(e).__name__}: {e}): delete it to start the run again"
        ) from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {where!r}: field 'version' is not {CHECKPOINT_VERSION} (not a run_templates checkpoint, "
            "or from another wfit version): delete it to start the run again"
        )
    return Checkpoint(output=state["output"], done=dict(state["done"]), files=dict(state["files"]))
