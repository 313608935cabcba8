"""Feature preprocessing described by ml-jec's ``transform.yaml``.

A transform file has two sections::

    categorical:
      ch_id: [-211, -13, -11, 11, 13, 211]     # allowed values -> embedding indices
    numerical:
      ch_pt:                                   # a chain of steps, applied in order
      - {type: arcsinh, params: {scale: 0.1}}
      - {type: linear, params: {loc: 0.0, scale: 11.8}}

Numerical steps are ``abs``, ``log``, ``arcsinh`` (``x -> arcsinh(x / scale)``) and ``linear``
(``x -> (x - loc) / scale``). Each step uses its own parameters, as the file is written (ml-jec's own
TensorFlow code captured the loop variable in its lambdas and so applied the last step's parameters to every
step; wfit reads the file as written).

Categorical values are mapped to their position in the list; a value not in the list maps to one extra index
(``len(values)``), so that an unexpected particle id at inference time does not crash a processor. Embedding
tables therefore have ``len(values) + 1`` rows (:meth:`Transform.cardinality`).

This module depends on numpy and PyYAML only (fsspec to read and write files).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from wfit.yamlfile import safe_load

__all__ = [
    "STEP_TYPES",
    "Transform",
    "TransformError",
    "apply_chain",
    "build_transform",
    "load_transform",
    "save_transform",
]

#: Step types of a numerical chain and the parameters each one requires.
STEP_TYPES: dict[str, tuple[str, ...]] = {
    "abs": (),
    "log": (),
    "arcsinh": ("scale",),
    "linear": ("loc", "scale"),
}


class TransformError(ValueError):
    """A transform file or transform definition is malformed."""


def _check_chain(chain: Any, where: str) -> list[dict[str, Any]]:
    """Validate one numerical chain and return it as a list of plain dicts.

    Args:
        chain: The chain as read from YAML.
        where: ``"<file>: numerical.<feature>"``, used in error messages.
    """
    if chain is None:
        return []
    if not isinstance(chain, list):
        raise TransformError(f"{where}: expected a list of steps, got {type(chain).__name__}")
    steps = []
    for i, step in enumerate(chain):
        here = f"{where}[{i}]"
        if not isinstance(step, Mapping):
            raise TransformError(f"{here}: a step must be a mapping with 'type' and optional 'params'")
        unknown = set(step) - {"type", "params"}
        if unknown:
            raise TransformError(
                f"{here}: unknown key(s) {sorted(unknown)}; a step has only 'type' and 'params'"
            )
        kind = step.get("type")
        if kind not in STEP_TYPES:
            raise TransformError(f"{here}.type: unknown step type {kind!r}; use one of {sorted(STEP_TYPES)}")
        params = dict(step.get("params") or {})
        needed = STEP_TYPES[kind]
        if set(params) != set(needed):
            raise TransformError(
                f"{here}.params: step {kind!r} takes parameters {list(needed)}, got {sorted(params)}"
            )
        for name in needed:
            value = params[name]
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TransformError(f"{here}.params.{name}: expected a finite number, got {value!r}")
            params[name] = float(value)
        if "scale" in params and params["scale"] == 0.0:
            raise TransformError(f"{here}.params.scale: must be non-zero (it divides the feature)")
        steps.append({"type": kind, "params": params} if needed else {"type": kind})
    return steps


@dataclass(frozen=True)
class Transform:
    """Preprocessing of input features, as in ml-jec's ``transform.yaml``.

    Attributes:
        categorical: Allowed values per categorical feature; the position is the embedding index.
        numerical: Chain of steps per numerical feature (see module docstring).
        source: Where the definition came from, for error messages.
    """

    categorical: dict[str, list[int]] = field(default_factory=dict)
    numerical: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source: str = "<transform>"

    def __post_init__(self) -> None:
        for name, chain in self.numerical.items():
            self.numerical[name] = _check_chain(chain, f"{self.source}: numerical.{name}")
        for name, values in self.categorical.items():
            where = f"{self.source}: categorical.{name}"
            if not isinstance(values, list) or not values:
                raise TransformError(f"{where}: expected a non-empty list of integer values")
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
                raise TransformError(f"{where}: all allowed values must be integers, got {values!r}")
            if len(set(values)) != len(values):
                raise TransformError(f"{where}: allowed values must be unique, got {values!r}")
            self.categorical[name] = [int(v) for v in values]
        both = set(self.categorical) & set(self.numerical)
        if both:
            raise TransformError(
                f"{self.source}: feature(s) {sorted(both)} are both categorical and numerical; keep one"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<transform>") -> Transform:
        """Build from the parsed YAML mapping, checking its structure."""
        if not isinstance(data, Mapping):
            raise TransformError(f"{source}: expected a mapping with 'categorical' and 'numerical'")
        unknown = set(data) - {"categorical", "numerical"}
        if unknown:
            raise TransformError(
                f"{source}: unknown top-level key(s) {sorted(unknown)}; "
                "allowed are 'categorical', 'numerical'"
            )
        categorical = dict(data.get("categorical") or {})
        numerical = dict(data.get("numerical") or {})
        return cls(categorical=categorical, numerical=copy.deepcopy(numerical), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The YAML-ready mapping (the inverse of :meth:`from_dict`)."""
        return {
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "numerical": copy.deepcopy(self.numerical),
        }

    @property
    def features(self) -> set[str]:
        """All feature names the transform mentions."""
        return set(self.categorical) | set(self.numerical)

    def cardinality(self, name: str) -> int:
        """Number of embedding rows for a categorical feature: allowed values plus one 'other' index."""
        return len(self.categorical[name]) + 1

    def apply(self, name: str, values: np.ndarray) -> np.ndarray:
        """Apply the numerical chain of ``name`` to a flat array; float32 out.

        A feature absent from ``numerical`` is an error: every numerical model input needs an explicit
        chain (an empty chain ``[]`` means identity).
        """
        if name not in self.numerical:
            raise TransformError(
                f"{self.source}: numerical.{name} is missing; add a chain for it "
                "(e.g. with wfit.calib.build_transform, or [] for identity)"
            )
        return apply_chain(self.numerical[name], values)

    def index(self, name: str, values: np.ndarray) -> np.ndarray:
        """Map a categorical feature to embedding indices (int32); unknown values map to ``len(values)``."""
        if name not in self.categorical:
            raise TransformError(
                f"{self.source}: categorical.{name} is missing; list its allowed values there"
            )
        allowed = np.asarray(self.categorical[name], dtype=np.int64)
        order = np.argsort(allowed, kind="stable")
        ordered = allowed[order]
        x = np.asarray(values).astype(np.int64, copy=False)
        pos = np.searchsorted(ordered, x).clip(0, len(ordered) - 1)
        found = ordered[pos] == x
        return np.where(found, order[pos], len(allowed)).astype(np.int32)


def apply_chain(chain: Sequence[Mapping[str, Any]], values: np.ndarray) -> np.ndarray:
    """Apply a chain of numerical steps to an array.

    Computation is in float64 and the result is float32 (the model's input type).

    Example:
        >>> chain = [{"type": "abs"}, {"type": "linear", "params": {"loc": 1.0, "scale": 2.0}}]
        >>> apply_chain(chain, np.array([-3.0, 1.0])).tolist()
        [1.0, 0.0]
    """
    x = np.asarray(values, dtype=np.float64)
    for step in chain:
        kind = step["type"]
        if kind == "abs":
            x = np.abs(x)
        elif kind == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.log(x)
        elif kind == "arcsinh":
            x = np.arcsinh(x / step["params"]["scale"])
        elif kind == "linear":
            x = (x - step["params"]["loc"]) / step["params"]["scale"]
        else:  # pragma: no cover - excluded by _check_chain
            raise TransformError(f"unknown step type {kind!r}")
    return x.astype(np.float32)


def load_transform(path: str) -> Transform:
    """Read a ``transform.yaml`` (local path or any fsspec URL)."""
    import fsspec

    try:
        with fsspec.open(path, "r") as f:
            data = safe_load(f, source=str(path))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: transform file not found; write one with wfit.calib.build_transform"
        ) from None
    return Transform.from_dict(data or {}, source=str(path))


def save_transform(transform: Transform, path: str) -> None:
    """Write a transform as YAML (local path or fsspec URL; atomically for local paths)."""
    from wfit.atomic import write_text

    write_text(path, yaml.safe_dump(transform.to_dict(), sort_keys=True))


def build_transform(
    arrays: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    nonlinear: Mapping[str, Sequence[Mapping[str, Any]]],
    categorical: Mapping[str, Sequence[int]] | None = None,
) -> Transform:
    """Build a transform from data, as ml-jec's ``build_transform``.

    For each feature in ``nonlinear`` the given (hand-chosen) non-linear steps are applied, then a final
    ``linear`` step maps the observed range to [0, 1]: ``loc = min(y)``, ``scale = max(y) - min(y)``, where
    ``y`` is the feature after the non-linear steps, computed in float32 as ml-jec did. A constant feature
    gets ``scale = 1``. Non-finite values (e.g. ``log(0)``) are ignored for the range.

    Args:
        arrays: Feature values keyed by name (numpy or awkward, jagged allowed), or an iterable of such
            mappings (chunks from :func:`wfit.calib.data.iterate`), so that the whole set is never held.
        nonlinear: Non-linear steps per feature (``[]`` for none); their keys are the features to build.
        categorical: Allowed values per categorical feature, copied into the result.

    Returns:
        The transform with the non-linear steps followed by the fitted ``linear`` step.
    """
    import awkward as ak

    chains = {
        name: _check_chain(list(steps), f"build_transform: nonlinear.{name}")
        for name, steps in nonlinear.items()
    }
    lo = dict.fromkeys(chains, np.inf)
    hi = dict.fromkeys(chains, -np.inf)
    chunks = [arrays] if isinstance(arrays, Mapping) else arrays
    seen = False
    for chunk in chunks:
        seen = True
        for name, chain in chains.items():
            if name not in chunk:
                raise TransformError(
                    f"build_transform: feature {name!r} is not in the data; available: {sorted(chunk)}"
                )
            flat = np.asarray(ak.flatten(chunk[name], axis=None), dtype=np.float32)
            y = apply_chain(chain, flat)
            y = y[np.isfinite(y)]
            if y.size:
                lo[name] = min(lo[name], float(y.min()))
                hi[name] = max(hi[name], float(y.max()))
    if not seen:
        raise TransformError("build_transform: no data given")
    numerical = {}
    for name, chain in chains.items():
        if not np.isfinite(lo[name]):
            raise TransformError(f"build_transform: feature {name!r} has no finite values to set its range")
        scale = hi[name] - lo[name]
        numerical[name] = [*chain, {"type": "linear", "params": {"loc": lo[name], "scale": scale or 1.0}}]
    return Transform(
        categorical={k: list(v) for k, v in (categorical or {}).items()},
        numerical=numerical,
        source="build_transform",
    )
