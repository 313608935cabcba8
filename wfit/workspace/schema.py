"""The workspace schema: dataset names, the version, channels and their axes, and the error type.

The layout is interchangeable with rabbit 0.2.5 (``rabbit-fit``, the successor of combinetf):

========================  ==========================================  ==========================================
dataset                   shape                                       meaning
========================  ==========================================  ==========================================
``hnorm``                 [nbinsfull, nproc]                          nominal expected events per bin and process
``hlogk``                 [nbinsfull, nproc, 2, nsyst] or             log(kappa): ``[..., 0, :]`` the average of
                          [nbinsfull, nproc, nsyst] (all symmetric)   up and -down, ``[..., 1, :]`` half their
                                                                      difference
``hdata_obs``             [nbins]                                     observed events in the unmasked bins
``hsumw``, ``hsumw2``     [nbinsfull, nproc]                          sum of weights and of squared weights (MC
                                                                      statistics, Barlow-Beeston lite)
``hprocs``, ``hsignals``  [nproc], [nsignal]                          process names; signals come first
``hsysts``                [nsyst]                                     nuisance names: unconstrained ones first
``hsystsnoconstraint``    [nnoconstraint]
``hsystgroups``           [ngroups] + ``hsystgroupidxs`` (vlen int32)  nuisance groups
``hnoiidxs``              [nnoi] int32                                nuisances of interest
``hconstraintweights``    [nsyst]                                     1 for Gaussian-constrained, 0 for free
``hnorm_sparse/``,        COO ``indices``/``values`` and a             sparse variants of ``hnorm``/``hlogk``
``hlogk_sparse/``         ``dense_shape`` attribute
``hpseudodata``           [nbins, npseudo] + ``hpseudodatanames``      named pseudo-data sets (optional)
``hdata_cov_inv``         [nbins, nbins]                              inverse covariance of the data, for the
                                                                      chi-square fit (optional, rabbit)
========================  ==========================================  ==========================================

Large arrays are stored flattened to 1-D with an ``original_shape`` attribute, chunked and
gzip-compressed (:mod:`wfit.workspace.encoding`). Unmasked channels come first in bin order, masked
channels (no data, used for cross sections) after them.

Expected yields follow one of two systematic types (:data:`SYSTEMATIC_TYPES`, rabbit's
``systematic_type``). ``"log_normal"``, the convention of CMS combine and wfit's writer: for a
nuisance ``theta`` the yield is multiplied by ``exp(theta * logk_avg + theta * alpha(theta) *
logk_halfdiff)``, so that ``theta = +1`` gives the up and ``theta = -1`` the down template
(``alpha`` is the smooth step of combine's asymmetric log-normal). ``"normal"`` (rabbit's
additive systematics): the arrays hold differences of yields, not logarithms, and ``theta *
logk_avg + theta * alpha(theta) * logk_halfdiff`` is added to the nominal yield (unscaled by the
signal strength). wfit records the type in ``wfit_meta``, rabbit in its pickled ``meta`` group
(:mod:`wfit.workspace.rabbit`).

Channel metadata (names, axes with their edges, masked and flow flags) is stored as JSON in the
``wfit_meta`` dataset, readable without executing anything; axes are described by
:func:`axis_to_json`.

Example:
    >>> import hist
    >>> from wfit.workspace.schema import axis_size, axis_to_json
    >>> ax = axis_to_json(hist.axis.Regular(3, 0.0, 3.0, name="x"))
    >>> ax["edges"], axis_size(ax, flow=True)
    ([0.0, 1.0, 2.0, 3.0], 5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FLOAT_DATASETS",
    "LOGK_EPSILON",
    "REQUIRED_DATASETS",
    "SCHEMA_VERSION",
    "SYSTEMATIC_TYPES",
    "Channel",
    "WorkspaceError",
    "axes_match",
    "axis_size",
    "axis_to_json",
    "dataset_error",
]

#: Version of the layout written in ``wfit_meta``; the reader refuses newer files.
SCHEMA_VERSION = 1

#: rabbit's cutoff for a variation that flips sign or vanishes: log(1e-3).
LOGK_EPSILON = math.log(1e-3)

#: Datasets that every workspace has, dense or sparse.
REQUIRED_DATASETS = (
    "hprocs",
    "hsignals",
    "hsysts",
    "hsystsnoconstraint",
    "hsystgroups",
    "hsystgroupidxs",
    "hconstraintweights",
    "hdata_obs",
    "hsumw",
    "hsumw2",
)
#: Datasets that must be float64, as the fitter computes in float64.
FLOAT_DATASETS = (
    "hconstraintweights",
    "hdata_obs",
    "hsumw",
    "hsumw2",
    "hnorm",
    "hlogk",
    "hpseudodata",
    "hdata_cov_inv",
)
#: How a nuisance changes the yields: multiplies them by exp(theta logk), or adds theta * delta.
SYSTEMATIC_TYPES = ("log_normal", "normal")


class WorkspaceError(ValueError):
    """A workspace file or a writer call is not valid; the message names the file, dataset and fix."""


def dataset_error(path: str, dataset: str, msg: str) -> WorkspaceError:
    """A :class:`WorkspaceError` naming the file and the dataset, for ``msg`` (what is wrong and the fix)."""
    return WorkspaceError(f"{path}: dataset '{dataset}': {msg}")


@dataclass(frozen=True)
class Channel:
    """One channel of the workspace: a block of consecutive bins.

    Attributes:
        name: Channel name.
        axes: JSON-able axis descriptions (``name``, ``label``, ``type``, and ``edges`` or
            ``categories``), in the order in which the bins are flattened (C order).
        masked: Masked channels have no data and do not enter the likelihood; they carry the
            generator-level templates from which post-fit cross sections are computed.
        flow: Whether under/overflow bins are included (only for masked channels, as in rabbit).
        start: First bin of the channel in the full bin list.
        stop: One past its last bin.
    """

    name: str
    axes: tuple[dict[str, Any], ...]
    masked: bool
    flow: bool
    start: int
    stop: int

    @property
    def shape(self) -> tuple[int, ...]:
        """The channel's histogram shape (with flow bins if ``flow``)."""
        return tuple(axis_size(a, self.flow) for a in self.axes)

    @property
    def size(self) -> int:
        return self.stop - self.start


def axis_to_json(axis: Any) -> dict[str, Any]:
    """Describe a ``hist`` axis as plain JSON (no pickling): name, label, type, flow flags, edges or categories."""
    kind = type(axis).__name__
    # boost-histogram axes (rabbit's --histType boost) have no name or label unless given metadata
    name = getattr(axis, "name", None) or ""
    label = getattr(axis, "label", None) or name
    out: dict[str, Any] = {"name": name, "label": label, "type": kind}
    traits = getattr(axis, "traits", None)
    out["underflow"] = bool(getattr(traits, "underflow", False))
    out["overflow"] = bool(getattr(traits, "overflow", False))
    if kind in ("StrCategory", "IntCategory"):
        out["categories"] = [c.item() if isinstance(c, np.generic) else c for c in axis]
    else:
        out["edges"] = [float(e) for e in np.asarray(axis.edges)]
    return out


def axis_size(axis: Mapping[str, Any], flow: bool) -> int:
    """Number of bins of a JSON axis, with its under/overflow bins if ``flow``."""
    n = len(axis["categories"]) if "categories" in axis else len(axis["edges"]) - 1
    if flow:
        n += int(axis.get("underflow", False)) + int(axis.get("overflow", False))
    return n


def axes_match(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two JSON axes have the same categories, or the same edges to 1e-12."""
    if ("categories" in a) != ("categories" in b):
        return False
    if "categories" in a:
        return list(a["categories"]) == list(b["categories"])
    return len(a["edges"]) == len(b["edges"]) and np.allclose(a["edges"], b["edges"], rtol=1e-12, atol=0)
