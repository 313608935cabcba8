"""rabbit's metadata: the pickled ``meta`` group, read without running code, and written on request.

rabbit (0.2.5 and its main branch) keeps what the arrays do not say in a group ``meta`` that is
a Python pickle (``wums.ioutils.pickle_dump_h5py``: a byte dataset ``pickle_data``, compressed with
Blosc): the channel structure (``channel_info``: ``hist`` axes, masked and flow flags), whether
the log(kappa) tensor is symmetric, and the systematic type, ``"log_normal"`` (yields multiplied by
``exp(theta logk)``) or ``"normal"`` (yields shifted by ``theta * delta``). The last one changes the
model: a reader that ignores it fits the wrong likelihood.

:func:`read_rabbit_meta` reads the group with :func:`~wfit.workspace.safe_pickle.restricted_loads`,
which builds plain values, numpy arrays and hist axes only and refuses anything else before it is
called. A pickle that needs more (a user's own objects in ``meta_info``) is an error, since the
systematic type is then unknown, unless the caller trusts the file (``trust_pickle=True``, ``wfit
fit --trust-pickle``): then ``wums`` unpickles it, running whatever it names. A file without a
``meta`` group gets what rabbit itself assumes: log-normal systematics and the fallback channels of
:func:`default_channels`.

The writer can add the group (:func:`write_rabbit_meta`, needs ``wums``) so that rabbit reads
channel names and the symmetric layout of a wfit file.

Example:
    >>> from wfit.workspace.rabbit import default_channels
    >>> [(c.name, c.masked, c.start, c.stop) for c in default_channels(nbins=4, nbinsfull=6)]
    [('ch0', False, 0, 4), ('ch1_masked', True, 4, 6)]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from .compression import require_filters
from .safe_pickle import restricted_loads
from .schema import SYSTEMATIC_TYPES, Channel, WorkspaceError, axis_size, axis_to_json, dataset_error

__all__ = ["RabbitMeta", "default_channels", "read_rabbit_meta", "write_rabbit_meta"]


def write_rabbit_meta(f: h5py.File, channels: list[dict[str, Any]], symmetric: bool) -> None:
    """Write rabbit's pickled ``meta`` group for ``channels`` (the JSON channel records of ``wfit_meta``).

    Raises:
        ImportError: ``wums`` is not installed (it comes with ``pip install rabbit-fit``).
    """
    try:
        import hist
        from wums.ioutils import pickle_dump_h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("rabbit_meta=True needs wums (pip install rabbit-fit)") from err

    def to_hist_axis(a: Mapping[str, Any]) -> Any:
        kw = {"name": a["name"], "label": a.get("label", a["name"])}
        if "categories" in a:
            cls = (
                hist.axis.StrCategory
                if a["categories"] and isinstance(a["categories"][0], str)
                else hist.axis.IntCategory
            )
            return cls(a["categories"], **kw)
        return hist.axis.Variable(a["edges"], underflow=a["underflow"], overflow=a["overflow"], **kw)

    info = {
        c["name"]: {"axes": [to_hist_axis(a) for a in c["axes"]], "masked": c["masked"], "flow": c["flow"]}
        for c in channels
    }
    pickle_dump_h5py(
        "meta",
        {
            "meta_info": {},
            "channel_info": info,
            "symmetric_tensor": symmetric,
            "systematic_type": "log_normal",
        },
        f,
    )


def default_channels(nbins: int, nbinsfull: int) -> list[Channel]:
    """rabbit's fallback when no metadata can be read: one unmasked and (if any) one masked channel."""

    def integer_axis(name: str, n: int) -> dict[str, Any]:
        return {
            "name": name,
            "label": name,
            "type": "Integer",
            "edges": list(map(float, range(n + 1))),
            "underflow": False,
            "overflow": False,
        }

    chans = [Channel("ch0", (integer_axis("obs", nbins),), False, False, 0, nbins)]
    if nbinsfull > nbins:
        chans.append(
            Channel("ch1_masked", (integer_axis("masked", nbinsfull - nbins),), True, False, nbins, nbinsfull)
        )
    return chans


@dataclass(frozen=True)
class RabbitMeta:
    """What wfit takes from rabbit's ``meta`` group.

    Attributes:
        channels: The channels in bin order (unmasked first), checked against the array sizes.
        systematic_type: ``"log_normal"`` or ``"normal"``.
        symmetric_tensor: rabbit's record of whether log(kappa) has no half-differences.
        trusted: Whether the pickle was read with the unrestricted unpickler (``trust_pickle``).
    """

    channels: list[Channel]
    systematic_type: str
    symmetric_tensor: bool | None
    trusted: bool


_TRUST_HINT = (
    "if you trust the file, read it with trust_pickle=True (wfit fit --trust-pickle), which runs the "
    "pickle; or rewrite it with metadata of plain values and hist axes only"
)


def _load_pickle(path: str, f: h5py.File, trust_pickle: bool) -> tuple[Any, bool]:
    group = f["meta"]
    if not isinstance(group, h5py.Group) or "pickle_data" not in group:
        raise dataset_error(path, "meta", "is not a wums pickle group (no pickle_data); rewrite the file with rabbit")
    version = group.attrs.get("narf_h5py_pickle_protocol_version")
    if version is None or int(version) != 1:
        raise dataset_error(
            path, "meta", f"has pickle protocol version {version!r}; wfit reads version 1 (wums.ioutils)"
        )
    dset = group["pickle_data"]
    require_filters(path, dset)
    data = np.asarray(dset[...], dtype=np.uint8).tobytes()
    try:
        return restricted_loads(data, path, "meta/pickle_data", _TRUST_HINT), False
    except WorkspaceError:
        if not trust_pickle:
            raise
    from wums.ioutils import pickle_load_h5py  # only behind trust_pickle=True: runs code from the file

    return pickle_load_h5py(group), True


def _flow_size(axis: Any, flow: bool) -> int:
    # rabbit's channel size: extent (with flow bins) for flow channels, size otherwise
    n = getattr(axis, "extent" if flow else "size", None)
    if isinstance(n, (int, np.integer)) and n >= 0:
        return int(n)
    raise WorkspaceError(f"{axis!r} is not a histogram axis")


def _channels_from_info(path: str, info: Any, nbins: int, nbinsfull: int) -> list[Channel]:
    where = "meta/pickle_data"
    if not isinstance(info, Mapping):
        raise dataset_error(path, where, f"channel_info is a {type(info).__name__}, expected a dict")
    chans, start, seen_masked = [], 0, False
    for name, ch in info.items():
        if not isinstance(ch, Mapping) or not isinstance(ch.get("axes"), (list, tuple)) or not ch["axes"]:
            raise dataset_error(path, where, f"channel {name!r} has no list of axes")
        masked, flow = bool(ch.get("masked", False)), bool(ch.get("flow", False))
        try:
            # sizes first: an axis can claim any number of bins, so check them before reading its edges
            size = int(np.prod([_flow_size(a, flow) for a in ch["axes"]], dtype=np.int64))
        except WorkspaceError as err:
            raise dataset_error(path, where, f"channel {name!r}: {err}") from None
        if masked:
            seen_masked = True
        elif seen_masked:
            raise dataset_error(path, where, f"unmasked channel {name!r} comes after a masked one")
        if size == 0 or start + size > nbinsfull:
            raise dataset_error(
                path, where, f"channel {name!r} has {size} bins, which do not fit the {nbinsfull} bins of the arrays"
            )
        chans.append((str(name), ch, masked, flow, start, start + size))
        start += size
    nunmasked = sum(c[5] - c[4] for c in chans if not c[2])
    if start != nbinsfull or nunmasked != nbins:
        raise dataset_error(
            path,
            where,
            f"channel_info covers {start} bins ({nunmasked} unmasked) but the arrays have {nbinsfull} "
            f"({nbins} unmasked); the metadata does not belong to these arrays",
        )
    out = []
    for name, ch, masked, flow, b0, b1 in chans:
        axes = tuple(axis_to_json(a) for a in ch["axes"])
        if int(np.prod([axis_size(a, flow) for a in axes])) != b1 - b0:
            raise dataset_error(path, where, f"channel {name!r}: its axes do not give its {b1 - b0} bins")
        out.append(Channel(name, axes, masked, flow, b0, b1))
    return out


def read_rabbit_meta(path: str, f: h5py.File, nbins: int, nbinsfull: int, *, trust_pickle: bool = False) -> RabbitMeta:
    """Read rabbit's ``meta`` group (channels, systematic type), without running code unless trusted.

    Args:
        path: The file, for messages.
        f: The open file; it must have a ``meta`` group.
        nbins, nbinsfull: The unmasked and all bins of the arrays, to check the channels against.
        trust_pickle: If the restricted unpickler refuses the pickle, unpickle it with ``wums``
            (which runs the code it names).

    Raises:
        WorkspaceError: The pickle needs more than plain values, numpy arrays and hist axes (and
            ``trust_pickle`` is off), or its content does not describe these arrays, or it asks for
            a model wfit does not have (an unknown systematic type, rabbit's removed exponential
            transform).
    """
    meta, trusted = _load_pickle(path, f, trust_pickle)
    where = "meta/pickle_data"
    if not isinstance(meta, Mapping):
        raise dataset_error(path, where, f"holds a {type(meta).__name__}, expected rabbit's metadata dict")
    if meta.get("exponential_transform", False):
        raise dataset_error(
            path, where, "asks for rabbit's exponential transform, which rabbit removed and wfit does not model"
        )
    stype = meta.get("systematic_type", "log_normal")  # rabbit's default when the key is absent
    if stype not in SYSTEMATIC_TYPES:
        raise dataset_error(
            path, where, f"has systematic_type {stype!r}; wfit models {', '.join(map(repr, SYSTEMATIC_TYPES))}"
        )
    if "channel_info" in meta:
        channels = _channels_from_info(path, meta["channel_info"], nbins, nbinsfull)
    else:
        channels = default_channels(nbins, nbinsfull)
    sym = meta.get("symmetric_tensor")
    return RabbitMeta(channels, str(stype), None if sym is None else bool(sym), trusted)
