"""Reading NanoAOD: the leptons, the MET and the per-event vectors of a NanoEvents chunk as flat numpy arrays.

The leptons of both collections are built by one function, :func:`read_leptons`, with the collection's role
in the configured channel: the **candidate** collection (``Muon`` in the muon channel, ``Electron`` in the
electron channel) is read with its kinematics, isolation, identification and impact parameters; the
**veto** collection with pT, eta and the veto identification only (the selection reads nothing else of it;
the other fields are zeros). Identification per collection:

* ``Muon``: candidate ``tightId``, veto ``looseId`` (isolation ``pfRelIso04_all``);
* ``Electron``: candidate ``cutBased >= TemplateConfig.electron_id_min``, veto
  ``cutBased >= TemplateConfig.veto_electron_id_min`` (isolation ``pfRelIso03_all``).

A missing collection or branch is a ``ValueError`` naming the file, the branches and the fix. NanoAOD v15
calls the MET ``PFMET``: ``MET_*`` is read when present, ``PFMET_*`` otherwise.

Example:
    >>> from wfit.processors.config import TemplateConfig
    >>> lepton_branches(TemplateConfig())[:3]
    ['nMuon', 'Muon_pt', 'Muon_eta']
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

import awkward as ak
import numpy as np

from .config import TemplateConfig
from .selection import Leptons

__all__ = [
    "EVENT_ID_BRANCHES",
    "FINITE_FIELDS",
    "MET_NAMES",
    "event_branches",
    "event_ids",
    "finite_events",
    "jagged_matrix",
    "lepton_branches",
    "lepton_fields",
    "read_leptons",
    "read_met",
]

#: MET collections, in order of preference (NanoAOD v15 renamed MET to PFMET).
MET_NAMES: tuple[str, ...] = ("MET", "PFMET")
#: Lepton fields whose NaN or inf drops an event (:func:`finite_events`).
FINITE_FIELDS: tuple[str, ...] = ("pt", "eta", "phi")

_COLLECTIONS = ("Muon", "Electron")
_CANDIDATE = {"mu": "Muon", "e": "Electron"}
_ISOLATION = {"Muon": "pfRelIso04_all", "Electron": "pfRelIso03_all"}
#: The event identification branches (the resolution smearing's seeds).
EVENT_ID_BRANCHES: tuple[str, ...] = ("run", "luminosityBlock", "event")

Role = Literal["candidate", "veto"]


def _role(collection: str, config: TemplateConfig) -> Role:
    return "candidate" if _CANDIDATE[config.channel] == collection else "veto"


def lepton_fields(collection: str, role: Role) -> list[str]:
    """The fields of ``Muon`` or ``Electron`` that the selection reads for a collection in this role."""
    if collection == "Electron":
        ids = ["cutBased"]
    else:
        ids = ["tightId", "looseId"] if role == "candidate" else ["looseId"]
    if role == "veto":
        return ["pt", "eta", *ids]
    return ["pt", "eta", "phi", "charge", *ids, _ISOLATION[collection], "dxy", "dz"]


def lepton_branches(config: TemplateConfig) -> list[str]:
    """The branches of both lepton collections that :func:`read_leptons` reads."""
    out: list[str] = []
    for c in _COLLECTIONS:
        out += [f"n{c}", *(f"{c}_{f}" for f in lepton_fields(c, _role(c, config)))]
    return out


def event_branches(config: TemplateConfig) -> list[str]:
    """The branches that every chunk reads here: both lepton collections, the fields of the finite-value
    check, the MET (either name) and ``genWeight``."""
    out = lepton_branches(config)
    out += [f"{c}_{v}" for c in _COLLECTIONS for v in FINITE_FIELDS]
    out += [f"{m}_{v}" for m in MET_NAMES for v in ("pt", "phi")]
    out.append("genWeight")
    return out


def _require(events: Any, collection: str, fields: Collection[str]) -> Any:
    fname = events.metadata.get("filename", "?")
    if collection not in events.fields:
        raise ValueError(
            f"file {fname!r}: no {collection} collection (branches n{collection}/{collection}_*); the W "
            "selection needs it: use NanoAOD with this collection"
        )
    coll = events[collection]
    missing = [f for f in fields if f not in coll.fields]
    if missing:
        raise ValueError(
            f"file {fname!r}: branches {[f'{collection}_{m}' for m in missing]} are missing; the W selection "
            "needs them: use a NanoAOD version that has them or adjust TemplateConfig"
        )
    return coll


def _flat(coll: Any, field: str, dtype: Any = np.float64) -> np.ndarray:
    return np.asarray(ak.to_numpy(ak.flatten(coll[field], axis=1)), dtype=dtype)


def _identification(coll: Any, collection: str, role: Role, config: TemplateConfig) -> tuple[np.ndarray, np.ndarray]:
    """(candidate ID, veto ID) per lepton; the candidate ID of a veto collection is all False."""
    if collection == "Electron":
        cut = _flat(coll, "cutBased", np.int64)
        tight = cut >= config.electron_id_min if role == "candidate" else np.zeros(len(cut), dtype=bool)
        return tight, cut >= config.veto_electron_id_min
    loose = _flat(coll, "looseId", bool)
    return (_flat(coll, "tightId", bool) if role == "candidate" else np.zeros(len(loose), dtype=bool)), loose


def _read_collection(events: Any, collection: str, config: TemplateConfig) -> Leptons:
    role = _role(collection, config)
    coll = _require(events, collection, lepton_fields(collection, role))
    counts = ak.to_numpy(ak.num(coll, axis=1))
    tight, loose = _identification(coll, collection, role, config)
    pt, eta = _flat(coll, "pt"), _flat(coll, "eta")
    if role == "veto":
        zeros = np.zeros(len(pt))
        return Leptons(counts, pt, eta, zeros, zeros.astype(np.int64), zeros, tight, loose, zeros, zeros)
    return Leptons(
        counts=counts,
        pt=pt,
        eta=eta,
        phi=_flat(coll, "phi"),
        charge=_flat(coll, "charge", np.int64),
        iso=_flat(coll, _ISOLATION[collection]),
        tight=tight,
        loose=loose,
        dxy=_flat(coll, "dxy"),
        dz=_flat(coll, "dz"),
    )


def read_leptons(events: Any, config: TemplateConfig) -> tuple[Leptons, Leptons]:
    """The muons and the electrons of a chunk (kinematics in GeV, impact parameters in cm), each read for
    its role in ``config.channel`` (see the module docstring).

    Raises:
        ValueError: A collection or one of its branches that the selection needs is missing.
    """
    muons, electrons = (_read_collection(events, c, config) for c in _COLLECTIONS)
    return muons, electrons


def finite_events(events: Any, is_mc: bool, culprits: dict[str, int] | None = None) -> np.ndarray:
    """Per event: genWeight (MC), MET and every muon's and electron's pT, eta and phi are finite.

    Args:
        culprits: Filled with ``{branch: first event (index in the chunk) where it is not finite}``.
    """
    ok = np.ones(len(events), dtype=bool)
    fields = set(events.fields)

    def check(branch: str, finite: np.ndarray) -> np.ndarray:
        if culprits is not None and not finite.all():
            culprits[branch] = int(np.argmin(finite))
        return finite

    if is_mc:
        ok &= check("genWeight", np.isfinite(np.asarray(ak.to_numpy(events.genWeight), dtype=np.float64)))
    for name in MET_NAMES:
        if name in fields and {"pt", "phi"} <= set(events[name].fields):
            for var in ("pt", "phi"):
                ok &= check(f"{name}_{var}", np.isfinite(np.asarray(ak.to_numpy(events[name][var]), dtype=np.float64)))
            break
    for coll in _COLLECTIONS:  # missing collections/fields are reported by read_leptons
        if coll in fields:
            event_index = None
            for var in FINITE_FIELDS:
                if var in events[coll].fields:
                    bad = ~np.isfinite(ak.to_numpy(ak.flatten(events[coll][var], axis=1)))
                    if bad.any():  # (flat numpy: awkward's jagged ufuncs would cost more than the check)
                        if event_index is None:
                            counts = ak.to_numpy(ak.num(events[coll], axis=1))
                            event_index = np.repeat(np.arange(len(counts)), counts)
                        ok[event_index[bad]] = False
                        if culprits is not None:
                            culprits[f"{coll}_{var}"] = int(event_index[bad][0])
    return ok


def read_met(events: Any) -> tuple[np.ndarray, np.ndarray]:
    """The MET (pt in GeV, phi) per event, from ``MET_*`` or else ``PFMET_*``."""
    for name in MET_NAMES:
        if name in events.fields and {"pt", "phi"} <= set(events[name].fields):
            met = events[name]
            return (
                np.asarray(ak.to_numpy(met.pt), dtype=np.float64),
                np.asarray(ak.to_numpy(met.phi), dtype=np.float64),
            )
    raise ValueError(
        f"file {events.metadata.get('filename', '?')!r}: neither MET_pt/MET_phi nor PFMET_pt/PFMET_phi "
        "exists; the mT computation needs the missing transverse momentum"
    )


def event_ids(events: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(run, luminosityBlock, event) per event as int64."""
    run, lumi, event = (np.asarray(ak.to_numpy(events[b]), dtype=np.int64) for b in EVENT_ID_BRANCHES)
    return run, lumi, event


def jagged_matrix(events: Any, branch: str, mask: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """A ``[n_selected, m]`` matrix of a per-event vector branch, or (None, reason)."""
    if branch not in events.fields:
        return None, f"no {branch} branch"
    arr = events[branch]
    counts = ak.to_numpy(ak.num(arr, axis=1))
    sel_counts = counts[mask]
    if sel_counts.size == 0:
        return np.zeros((0, 0)), None
    m = int(sel_counts[0])
    if m == 0:
        return None, f"{branch} has 0 entries per event"
    if np.any(sel_counts != m):
        return None, f"{branch} has a varying number of entries per event ({sorted(set(sel_counts))[:5]})"
    if np.all(counts == m):  # the usual case: a row gather of the file's values, in their own dtype
        return ak.to_numpy(ak.flatten(arr, axis=1)).reshape(-1, m)[mask], None
    return ak.to_numpy(ak.flatten(arr[mask], axis=1)).reshape(-1, m), None
