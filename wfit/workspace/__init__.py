"""The HDF5 workspace: the one file format between the processors and the fitter.

The format is defined in this package and every other module goes through it; the layout is
interchangeable with rabbit 0.2.5 (``rabbit-fit``). One concept per module:

* :mod:`wfit.workspace.schema`: the datasets and their meaning, the schema version, :class:`Channel`
  and its JSON axes, :class:`WorkspaceError`;
* :mod:`wfit.workspace.writer`: :class:`WorkspaceWriter`, templates to log(kappa) and to the file;
* :mod:`wfit.workspace.encoding`: how arrays are stored (flat and compressed, sparse COO, strings);
* :mod:`wfit.workspace.compression`: gzip or hdf5plugin's Blosc2/Zstd/LZ4, and the filters a reader needs;
* :mod:`wfit.workspace.safe_pickle`: an unpickler that builds plain values, arrays and hist axes only;
* :mod:`wfit.workspace.rabbit`: rabbit's pickled metadata, read without running code, written on request;
* :mod:`wfit.workspace.reader`: :class:`Workspace` and :func:`read_workspace` with its validation;
* :mod:`wfit.workspace.streaming`: :func:`iter_logk_blocks`, the log(kappa) tensor block by block.

Channel metadata (names, axes with their edges, masked and flow flags) is stored as JSON in the
``wfit_meta`` dataset, readable without executing anything. rabbit keeps its metadata (channels
and the systematic type, log-normal or additive) in a group ``meta`` that is a Python pickle: the
reader builds it with a restricted unpickler that runs nothing, and unpickles it in full only when
``trust_pickle=True`` is passed explicitly. The writer can add such a group (``rabbit_meta=True``,
needs ``wums``) so that rabbit reads the channel structure.

Example:
    >>> import hist, numpy as np
    >>> from wfit.workspace import WorkspaceWriter, read_workspace
    >>> ax = hist.axis.Regular(3, 0.0, 3.0, name="x")
    >>> sig = hist.Hist(ax, storage=hist.storage.Weight()); _ = sig.fill([0.5, 1.5, 1.5])
    >>> w = WorkspaceWriter()
    >>> w.add_channel("ch0", [ax])
    >>> w.add_process("sig", "ch0", sig, signal=True)
    >>> w.add_norm_systematic("lumi", ["sig"], "ch0", 1.02)
    >>> w.add_data("ch0", sig)
    >>> import tempfile, os; path = os.path.join(tempfile.mkdtemp(), "ws.hdf5")
    >>> w.write(path)
    >>> ws = read_workspace(path)
    >>> ws.procs, ws.systs, ws.norm[:, 0].tolist()
    (['sig'], ['lumi'], [1.0, 2.0, 0.0])
"""

from __future__ import annotations

from .encoding import aligned_empty as aligned_empty
from .reader import Workspace, read_workspace
from .reader import file_sha256 as file_sha256
from .schema import LOGK_EPSILON as LOGK_EPSILON
from .schema import SCHEMA_VERSION, Channel, WorkspaceError
from .streaming import iter_logk_blocks
from .writer import WorkspaceWriter

__all__ = [
    "SCHEMA_VERSION",
    "Channel",
    "Workspace",
    "WorkspaceError",
    "WorkspaceWriter",
    "iter_logk_blocks",
    "read_workspace",
]
