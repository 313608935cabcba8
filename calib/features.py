"""The one definition of the jet calibration model's inputs (numpy and awkward only).

Training (:mod:`wfit.calib.train`) and inference (the ONNX loader here and the coffea processor in
``wfit.processors``) all build model inputs with :func:`build_inputs`, so the two cannot drift apart.

Input: a mapping from feature (branch) name to an array, one entry per jet:

* jet-level features (``pt``, ``eta``, ``phi``, ``area``, ``rho``, ``num_pv``, ...): 1-d numpy or
  awkward arrays;
* constituent features (``ch_pt``, ``ch_eta``, ``ne_id``, ``sv_mass``, ...): jagged awkward arrays
  (``var * number``), all fields of one constituent type with the same counts. Option types (from coffea
  cross-references) are accepted: missing entries are dropped.

Derived features, computed on the fly from the constituent's and the jet's kinematics (pT in GeV):

* ``<t>_rel_pt = <t>_pt / pt``;
* ``<t>_deta = (<t>_eta - eta) * sign(eta)``, with sign(0) = +1: positive away from the beam line's centre,
  so that the two endcaps look alike (ml-jec's convention);
* ``<t>_dphi = <t>_phi - phi`` wrapped to [-pi, pi).

Output (the model's named inputs):

* ``jet_numerical``: float32 ``(n_jets, n_jet_features)``;
* one int32 ``(n_jets,)`` array per jet-level categorical feature (embedding index);
* per constituent type ``t``: ``<t>_numerical`` float32 ``(n_jets, m, n_features)``, ``<t>_mask`` float32
  ``(n_jets, m)`` (1 for a real constituent, 0 for padding) and one int32 ``(n_jets, m)`` array per
  categorical feature, where ``m`` is the largest constituent count in the batch capped at the type's
  ``max_count`` (at least 1). Jets with more constituents keep the first ``max_count`` as given (ml-jec's
  shards are ordered by decreasing pT; sort NanoAOD candidates the same way). Padding is filled with zeros,
  never NaN: tf2onnx turns masking into arithmetic, and NaN times zero is NaN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import awkward as ak
import numpy as np

from .transform import Transform, TransformError

__all__ = [
    "CONSTITUENT_TYPES",
    "DERIVED_FEATURES",
    "ConstituentSpec",
    "FeatureError",
    "FeatureSpec",
    "FlatInputs",
    "build_flat_inputs",
    "build_inputs",
    "chunks",
    "derived_feature",
    "feature_columns",
    "pad_constituents",
    "target",
    "wrap_phi",
]

#: Constituent types of ml-jec's data: charged and neutral particle-flow candidates, secondary vertices.
CONSTITUENT_TYPES = ("ch", "ne", "sv")

_DERIVED = {"rel_pt": ("pt", "pt"), "deta": ("eta", "eta"), "dphi": ("phi", "phi")}

#: Names of the features computed on the fly (``<type>_rel_pt``, ``<type>_deta``, ``<type>_dphi``).
DERIVED_FEATURES = frozenset(f"{t}_{d}" for t in CONSTITUENT_TYPES for d in _DERIVED)


class FeatureError(ValueError):
    """The inputs do not match the feature specification."""


def derived_feature(name: str) -> tuple[str, str] | None:
    """The (constituent branch, jet branch) a derived feature is computed from, or None if not derived.

    Example:
        >>> derived_feature("ch_rel_pt")
        ('ch_pt', 'pt')
    """
    prefix, _, kind = name.partition("_")
    if kind in _DERIVED:
        constituent, jet = _DERIVED[kind]
        return f"{prefix}_{constituent}", jet
    return None


def wrap_phi(dphi: np.ndarray) -> np.ndarray:
    """Wrap an azimuthal difference (radians) to [-pi, pi).

    Example:
        >>> float(wrap_phi(np.array([3.5]))[0]) == 3.5 - 2 * np.pi
        True
    """
    return np.remainder(np.asarray(dphi) + np.pi, 2 * np.pi) - np.pi


@dataclass(frozen=True)
class ConstituentSpec:
    """Inputs from one constituent type.

    Attributes:
        name: Type prefix, e.g. ``"ch"``; every feature name starts with ``"<name>_"``.
        numerical: Numerical features, in the order of the last axis of ``<name>_numerical``.
        categorical: Categorical features, each an input of its own.
        max_count: Cap on the padded constituent axis.
    """

    name: str
    numerical: tuple[str, ...]
    categorical: tuple[str, ...] = ()
    max_count: int = 64

    @property
    def branches(self) -> list[str]:
        """Constituent branches needed to compute this type's features."""
        out = []
        for feature in (*self.numerical, *self.categorical):
            base = derived_feature(feature)
            out.append(base[0] if base else feature)
        return list(dict.fromkeys(out))


@dataclass(frozen=True)
class FeatureSpec:
    """Which features feed the model, how they are transformed and padded.

    Attributes:
        jet_numerical: Jet-level numerical features, in the order of ``jet_numerical``'s columns.
        jet_categorical: Jet-level categorical features.
        constituents: One entry per constituent type (may be empty: a jet-level model).
        transform: Preprocessing of every feature above.
        quantiles: Levels (in (0, 1), increasing, without 0.5) of the resolution head, which predicts these
            quantiles of ``log(pt_gen / pt)`` beside the correction (the model's second output
            ``log_quantiles``, see :mod:`wfit.calib.onnx_spec`); empty for a model without one.
    """

    jet_numerical: tuple[str, ...]
    jet_categorical: tuple[str, ...] = ()
    constituents: tuple[ConstituentSpec, ...] = ()
    transform: Transform = field(default_factory=Transform)
    quantiles: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        src = self.transform.source
        if not self.jet_numerical:
            raise FeatureError("features.jet.numerical: at least one jet-level numerical feature is needed")
        q = self.quantiles
        if any(not 0.0 < x < 1.0 or x == 0.5 for x in q) or any(b <= a for a, b in zip(q, q[1:], strict=False)):
            raise FeatureError(
                f"resolution.quantiles {list(q)}: levels must be increasing, in (0, 1) and not 0.5 (the correction "
                "itself is the central value), e.g. [0.16, 0.84]"
            )
        for name in self.jet_numerical:
            if name not in self.transform.numerical:
                raise TransformError(
                    f"{src}: numerical.{name} is missing but the model uses {name!r}; add a chain for it"
                )
        for name in self.jet_categorical:
            if name not in self.transform.categorical:
                raise TransformError(
                    f"{src}: categorical.{name} is missing but the model uses {name!r}; list its values"
                )
        seen = set()
        for c in self.constituents:
            if c.name in seen:
                raise FeatureError(f"features.constituents: type {c.name!r} appears twice")
            seen.add(c.name)
            if c.max_count < 1:
                raise FeatureError(
                    f"features.constituents.{c.name}.max_count must be >= 1, got {c.max_count}"
                )
            if not c.numerical:
                raise FeatureError(
                    f"features.constituents.{c.name}.numerical: at least one feature is needed"
                )
            for name in (*c.numerical, *c.categorical):
                if not name.startswith(c.name + "_"):
                    raise FeatureError(
                        f"features.constituents.{c.name}: feature {name!r} must start with {c.name + '_'!r}"
                    )
            for name in c.numerical:
                if name not in self.transform.numerical:
                    raise TransformError(
                        f"{src}: numerical.{name} is missing but the model uses {name!r}; add a chain for it "
                        "(wfit.calib.build_transform builds one from data)"
                    )
            for name in c.categorical:
                if name not in self.transform.categorical:
                    raise TransformError(
                        f"{src}: categorical.{name} is missing but the model uses {name!r}; list its values"
                    )

    @property
    def branches(self) -> list[str]:
        """All branches to read to build the inputs (jet kinematics for derived features included)."""
        out = list(self.jet_numerical) + list(self.jet_categorical)
        for c in self.constituents:
            out += c.branches
            for feature in (*c.numerical, *c.categorical):
                base = derived_feature(feature)
                if base:
                    out.append(base[1])
        return list(dict.fromkeys(out))

    @property
    def input_names(self) -> list[str]:
        """Names of the model inputs, in a fixed order."""
        names = ["jet_numerical", *self.jet_categorical]
        for c in self.constituents:
            names += [f"{c.name}_numerical", f"{c.name}_mask", *c.categorical]
        return names

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-ready mapping, the inverse of :meth:`from_dict`."""
        return {
            "jet": {"numerical": list(self.jet_numerical), "categorical": list(self.jet_categorical)},
            "constituents": {
                c.name: {
                    "numerical": list(c.numerical),
                    "categorical": list(c.categorical),
                    "max_count": c.max_count,
                }
                for c in self.constituents
            },
            "transform": self.transform.to_dict(),
            # Written only for a model with a resolution head: older files and readers stay as they were.
            **({"resolution": {"quantiles": list(self.quantiles)}} if self.quantiles else {}),
        }

    @classmethod
    def from_config(
        cls, features: Mapping[str, Any], transform: Transform, source: str = "<config>"
    ) -> FeatureSpec:
        """Build from the ``features`` section of a calibration config and a transform.

        Args:
            features: ``{jet: {numerical, categorical}, constituents: {<type>: {numerical, categorical,
                max_count}}}``.
            transform: Preprocessing for the features.
            source: File the section came from, for error messages.
        """
        _check_keys(features, {"jet", "constituents"}, f"{source}: features")
        jet = features.get("jet") or {}
        _check_keys(jet, {"numerical", "categorical"}, f"{source}: features.jet")
        constituents = []
        for name, c in (features.get("constituents") or {}).items():
            _check_keys(
                c, {"numerical", "categorical", "max_count"}, f"{source}: features.constituents.{name}"
            )
            constituents.append(
                ConstituentSpec(
                    name=str(name),
                    numerical=tuple(c.get("numerical") or ()),
                    categorical=tuple(c.get("categorical") or ()),
                    max_count=int(c.get("max_count", 64)),
                )
            )
        return cls(
            jet_numerical=tuple(jet.get("numerical") or ()),
            jet_categorical=tuple(jet.get("categorical") or ()),
            constituents=tuple(constituents),
            transform=transform,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<feature spec>") -> FeatureSpec:
        """Rebuild from :meth:`to_dict`'s output (e.g. read from ONNX metadata)."""
        _check_keys(data, {"jet", "constituents", "transform", "resolution"}, source)
        transform = Transform.from_dict(data["transform"], source=f"{source}: transform")
        spec = cls.from_config({"jet": data["jet"], "constituents": data["constituents"]}, transform, source=source)
        if "resolution" in data:
            resolution = data["resolution"]
            _check_keys(resolution, {"quantiles"}, f"{source}: resolution")
            spec = replace(spec, quantiles=tuple(float(x) for x in resolution.get("quantiles") or ()))
        return spec


def _check_keys(section: Any, allowed: set[str], where: str) -> None:
    if not isinstance(section, Mapping):
        raise FeatureError(f"{where}: expected a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise FeatureError(f"{where}: unknown key(s) {unknown}; allowed are {sorted(allowed)}")


def _jet_column(arrays: Mapping[str, Any], name: str) -> np.ndarray:
    if name not in arrays:
        raise FeatureError(f"jet feature {name!r} is missing from the inputs; provide the branch {name!r}")
    x = arrays[name]
    if isinstance(x, ak.Array):
        if x.ndim != 1:
            raise FeatureError(f"jet feature {name!r} must be one value per jet, got type {x.type}")
        x = ak.to_numpy(x)
    return np.asarray(x)


def _flat_offsets(arrays: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat content and offsets (length n_jets + 1, starting at 0) of a jagged constituent field.

    The common layout (a list-offset array of numbers, as uproot and ak.unflatten give) is read without
    copies; anything else (option types, indexed or sliced layouts) goes through ``ak.flatten``.
    """
    if name not in arrays:
        raise FeatureError(
            f"constituent feature {name!r} is missing from the inputs; provide the jagged branch {name!r}"
        )
    x = arrays[name]
    layout = x.layout if isinstance(x, ak.Array) else ak.to_layout(x)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(layout.content, ak.contents.NumpyArray):
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        flat = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        return flat, offsets - offsets[0]
    x = ak.Array(layout)
    if x.ndim != 2:
        raise FeatureError(f"constituent feature {name!r} must be jagged (n_jets * var), got type {x.type}")
    if isinstance(
        x.layout,
        ak.contents.IndexedOptionArray
        | ak.contents.ByteMaskedArray
        | ak.contents.BitMaskedArray
        | ak.contents.UnmaskedArray,
    ):
        raise FeatureError(f"constituent feature {name!r}: a missing jet (None) is not allowed")
    x = ak.drop_none(x, axis=1)
    counts = ak.to_numpy(ak.num(x, axis=1)).astype(np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return ak.to_numpy(ak.flatten(x, axis=1)), offsets


def _flat_counts(arrays: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat content and per-jet counts of a jagged constituent field."""
    flat, offsets = _flat_offsets(arrays, name)
    return flat, np.diff(offsets)


def _within(counts: np.ndarray) -> np.ndarray:
    """Each constituent's position within its jet, for jets with these counts laid out one after another."""
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def _cap(offsets: np.ndarray, max_count: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Rows kept (None: all) and the new offsets when each jet keeps its first ``max_count`` constituents."""
    counts = np.diff(offsets)
    if not len(counts) or counts.max() <= max_count:
        return None, offsets
    within = _within(counts)
    capped = np.zeros_like(offsets)
    np.cumsum(np.minimum(counts, max_count), out=capped[1:])
    return within < max_count, capped


def _pad(
    values: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scatter flat rows ``values`` (one per constituent, ``(total, k)``) of the jets ``rows`` (all by
    default) into a zero-padded ``(n, m, k)`` array, ``m`` the largest count among them (at least 1) or
    ``width`` when given (at least that count).

    Returns the padded array, the float32 ``(n, m)`` mask, and ``(dst, src)`` index arrays for other
    columns of the same constituents (see :meth:`FlatInputs.pad`).
    """
    if rows is None:
        starts, counts = offsets[:-1], np.diff(offsets)
    else:
        starts = offsets[:-1][rows]
        counts = offsets[1:][rows] - starts
    n = len(counts)
    m = max(1, int(counts.max(initial=0)))
    if width is not None:
        if width < m:
            raise FeatureError(f"padding width {width} is below the largest constituent count {m} of the jets")
        m = int(width)
    within = _within(counts)
    src = np.repeat(starts, counts) + within
    dst = np.repeat(np.arange(n, dtype=np.int64) * m, counts) + within
    out = np.zeros((n * m, values.shape[1]), dtype=values.dtype)
    out[dst] = values[src]
    mask = np.zeros(n * m, dtype=np.float32)
    mask[dst] = 1.0
    return out.reshape(n, m, values.shape[1]), mask.reshape(n, m), np.stack([dst, src])


@dataclass(frozen=True)
class _FlatType:
    """One constituent type's features, flat over its constituents (after the ``max_count`` cap)."""

    numerical: np.ndarray  # float32 (total, n_numerical)
    categorical: np.ndarray  # int32 (total, n_categorical)
    categorical_names: tuple[str, ...]
    offsets: np.ndarray  # int64 (n_jets + 1,)


class FlatInputs:
    """The model's inputs before padding: per-jet arrays and each constituent type's flat rows.

    :meth:`pad` turns any subset of the jets into the model's named inputs, each constituent type padded
    to the largest count among those jets only; :func:`build_inputs` is ``build_flat_inputs(...).pad()``.
    Inference sorts the jets by their number of constituents and pads small groups of similar jets, so
    that neither building nor the network spends time on padding.
    """

    def __init__(self, jet: dict[str, np.ndarray], types: dict[str, _FlatType]) -> None:
        self.jet = jet
        self.types = types
        self.n_jets = len(jet["jet_numerical"])

    def counts(self) -> np.ndarray:
        """Constituents per jet (all types, after the caps)."""
        total = np.zeros(self.n_jets, dtype=np.int64)
        for t in self.types.values():
            total += np.diff(t.offsets)
        return total

    def pad(self, rows: np.ndarray | None = None, widths: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """The model's named inputs of the jets ``rows`` (indices, in that order; all jets by default).

        Args:
            rows: Jets to take.
            widths: Padded length of each constituent type's axis (at least its largest count among
                ``rows``); by default that largest count.
        """
        out = {name: (v if rows is None else v[rows]) for name, v in self.jet.items()}
        for name, t in self.types.items():
            width = None if widths is None else widths[name]
            numerical, mask, (dst, src) = _pad(t.numerical, t.offsets, rows, width)
            out[f"{name}_numerical"], out[f"{name}_mask"] = numerical, mask
            for j, feature in enumerate(t.categorical_names):
                cat = np.zeros(mask.size, dtype=np.int32)
                cat[dst] = t.categorical[src, j]
                out[feature] = cat.reshape(mask.shape)
        return out


def pad_constituents(
    columns: Sequence[np.ndarray], counts: np.ndarray, max_count: int, dtype: Any = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter flat constituent columns into a zero-padded ``(n_jets, m, n_columns)`` array.

    Args:
        columns: Flat arrays (all constituents of all jets, jet after jet), one per feature.
        counts: Constituents per jet.
        max_count: Cap ``m`` is ``min(max(counts), max_count)``, at least 1.
        dtype: Output dtype.

    Returns:
        The padded array and the float32 mask ``(n_jets, m)``.

    Example:
        >>> x, mask = pad_constituents([np.array([1.0, 2.0, 3.0])], np.array([2, 0, 1]), 8)
        >>> x[..., 0].tolist(), mask.tolist()
        ([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]], [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    """
    counts = np.asarray(counts, dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    values = np.empty((int(offsets[-1]), len(columns)), dtype=dtype)
    for j, column in enumerate(columns):
        values[:, j] = column
    keep, offsets = _cap(offsets, max_count)
    if keep is not None:
        values = values[keep]
    padded, mask, _ = _pad(values, offsets, None)
    return padded, mask


def _check_finite(name: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise FeatureError(
            f"feature {name!r}: {bad} value(s) are NaN or infinite after its transform chain "
            "(e.g. log of 0); "
            "fix the input or the chain in transform.yaml"
        )
    return values


def _derive(name: str, constituent: np.ndarray, jet: np.ndarray) -> np.ndarray:
    """Compute derived feature ``name`` from flat constituent values and the jet's value repeated per
    constituent (float64)."""
    x = np.asarray(constituent, dtype=np.float64)
    kind = name.partition("_")[2]
    if kind == "rel_pt":
        return x / jet
    if kind == "deta":
        return (x - jet) * np.where(jet < 0, -1.0, 1.0)
    if kind == "dphi":
        return wrap_phi(x - jet)
    raise FeatureError(f"{name!r} is not a derived feature")  # pragma: no cover


def feature_columns(arrays: Mapping[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Raw (untransformed) values of features: per jet, or flat over all constituents.

    Derived features are computed as in :func:`build_inputs`; this is the input that
    :func:`wfit.calib.build_transform` takes to fit its linear steps.

    Args:
        arrays: Feature arrays keyed by branch name, as :func:`build_inputs` takes.
        names: Features wanted (branches or derived features).
    """
    out = {}
    for name in names:
        base = derived_feature(name)
        if base is not None:
            flat, counts = _flat_counts(arrays, base[0])
            out[name] = _derive(
                name, flat, np.repeat(_jet_column(arrays, base[1]).astype(np.float64), counts)
            )
        elif name in arrays and isinstance(arrays[name], ak.Array) and arrays[name].ndim == 2:
            out[name] = _flat_counts(arrays, name)[0]
        else:
            out[name] = _jet_column(arrays, name)
    return out


def build_inputs(arrays: Mapping[str, Any], spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Turn jets and their constituents into the model's named inputs.

    Args:
        arrays: Feature arrays keyed by branch name (see the module docstring); pT in GeV, angles in
            radians. Only ``spec.branches`` are read.
        spec: The feature specification (features, transform, padding caps).

    Returns:
        The model inputs keyed by :attr:`FeatureSpec.input_names`.

    Raises:
        FeatureError: A branch is missing, the counts of one constituent type disagree, or a transformed
            value is not finite.
    """
    return build_flat_inputs(arrays, spec).pad()


def build_flat_inputs(arrays: Mapping[str, Any], spec: FeatureSpec) -> FlatInputs:
    """The model's inputs before padding (transformed, checked and capped as :func:`build_inputs`'s).

    Args and raises as :func:`build_inputs`.
    """
    tr = spec.transform
    jet_cols = [_check_finite(n, tr.apply(n, _jet_column(arrays, n))) for n in spec.jet_numerical]
    jet: dict[str, np.ndarray] = {"jet_numerical": np.stack(jet_cols, axis=1).astype(np.float32, copy=False)}
    n_jets = len(jet_cols[0])
    for name in spec.jet_categorical:
        jet[name] = tr.index(name, _jet_column(arrays, name))

    jet_cache: dict[str, np.ndarray] = {}
    types: dict[str, _FlatType] = {}
    for c in spec.constituents:
        flats: dict[str, np.ndarray] = {}
        offsets = None
        for branch in c.branches:
            flat, off = _flat_offsets(arrays, branch)
            if offsets is None:
                offsets = off
            elif not np.array_equal(offsets, off):
                raise FeatureError(
                    f"constituent branches {c.branches[0]!r} and {branch!r} have different counts per jet; "
                    f"all {c.name}_* fields must describe the same constituents"
                )
            flats[branch] = flat
        if len(offsets) - 1 != n_jets:
            raise FeatureError(
                f"{c.name}_* fields have {len(offsets) - 1} jets but {spec.jet_numerical[0]!r} has {n_jets}"
            )
        counts = np.diff(offsets)
        repeated: dict[str, np.ndarray] = {}  # jet value per constituent, for derived features

        def per_constituent(jet_branch: str, counts: np.ndarray = counts, repeated: dict = repeated) -> Any:
            if jet_branch not in repeated:
                if jet_branch not in jet_cache:
                    jet_cache[jet_branch] = _jet_column(arrays, jet_branch).astype(np.float64)
                repeated[jet_branch] = np.repeat(jet_cache[jet_branch], counts)
            return repeated[jet_branch]

        total = int(offsets[-1])
        numerical = np.empty((total, len(c.numerical)), dtype=np.float32)
        for j, feature in enumerate(c.numerical):
            base = derived_feature(feature)
            if base is None:
                raw = flats[feature]
            else:
                raw = _derive(feature, flats[base[0]], per_constituent(base[1]))
            numerical[:, j] = _check_finite(feature, tr.apply(feature, raw))
        categorical = np.empty((total, len(c.categorical)), dtype=np.int32)
        for j, feature in enumerate(c.categorical):
            categorical[:, j] = tr.index(feature, flats[feature])
        keep, offsets = _cap(offsets, c.max_count)
        if keep is not None:
            numerical, categorical = numerical[keep], categorical[keep]
        types[c.name] = _FlatType(numerical, categorical, tuple(c.categorical), offsets)
    return FlatInputs(jet, types)


def target(arrays: Mapping[str, Any]) -> np.ndarray:
    """Regression target ``log(pt_gen / pt)`` (float32, per jet)."""
    pt_gen = _jet_column(arrays, "pt_gen").astype(np.float64)
    pt = _jet_column(arrays, "pt").astype(np.float64)
    return np.log(pt_gen / pt).astype(np.float32)


def chunks(arrays: Mapping[str, Any], size: int) -> Iterator[dict[str, Any]]:
    """Slice a mapping of per-jet arrays into consecutive chunks of at most ``size`` jets."""
    if not arrays:
        return
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: v[start : start + size] for k, v in arrays.items()}
