"""The feature specification of an exported calibration model: its inputs, and how an ONNX file carries it.

A calibration model has one input per :attr:`FeatureSpec.input_names` (:func:`model_inputs`: name, dtype and
axes, the batch axis ``n_jets`` and each constituent axis ``n_<type>`` dynamic) and the outputs of
:func:`model_outputs`: :data:`OUTPUT_NAME` of shape ``(n_jets, 1)``, the predicted ``log(pt_gen / pt)``, and,
for a model with a resolution head (:attr:`FeatureSpec.quantiles` not empty), :data:`QUANTILES_NAME` of shape
``(n_jets, K)``, the predicted quantiles of ``log(pt_gen / pt)`` at the K levels of ``FeatureSpec.quantiles``
(increasing; the specification's ``resolution: {quantiles: [...]}``). The same tables build the Keras inputs
(:mod:`wfit.calib.model`), the traced signature of the export (:mod:`wfit.calib.export`) and the check of a
file against its graph (:func:`check_graph`).

The specification (features, transform chains, padding caps) travels in the ONNX model's ``metadata_props``
as JSON under :data:`METADATA_KEY`; a sidecar ``<file>.features.yaml`` holds the same for people to read.
:func:`read_feature_spec` is the one reader: it takes the metadata (or the sidecar alone, for a file from
another converter), refuses a sidecar that disagrees with the metadata, and always checks the specification
against the graph's inputs and output, so that a model is never fed inputs built for another one.

This module imports neither TensorFlow nor coffea; ``onnx`` is imported when a file is read.

Example:
    >>> from wfit.calib import FeatureSpec, Transform
    >>> spec = FeatureSpec(("pt", "eta"), transform=Transform(numerical={"pt": [], "eta": []}))
    >>> [(i.name, i.dtype, i.dims) for i in model_inputs(spec)]
    [('jet_numerical', 'float32', ('n_jets', 2))]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .features import FeatureSpec

__all__ = [
    "METADATA_KEY",
    "OUTPUT_NAME",
    "QUANTILES_NAME",
    "ModelInput",
    "ModelOutput",
    "ModelSpecError",
    "check_graph",
    "embed_feature_spec",
    "interval_levels",
    "model_inputs",
    "model_outputs",
    "read_feature_spec",
    "sidecar_path",
    "write_sidecar",
]

#: Key of the feature specification (JSON) in the ONNX model's metadata_props.
METADATA_KEY = "wfit.calib.features"
#: Name of the model's first output, ``log(pt_gen / pt)`` per jet (the Keras layer and the ONNX output).
OUTPUT_NAME = "log_correction"
#: Name of the resolution head's output: quantiles of ``log(pt_gen / pt)`` per jet, one column per level.
QUANTILES_NAME = "log_quantiles"
_SIDECAR = ".features.yaml"
# ONNX TensorProto element types of the model's inputs and output.
_ONNX_TYPES = {"float32": 1, "int32": 6}


class ModelSpecError(ValueError):
    """An ONNX model's feature specification is missing, unreadable, or disagrees with its graph."""


@dataclass(frozen=True)
class ModelInput:
    """One input of a calibration model.

    Attributes:
        name: The input's name in Keras and in the ONNX graph.
        dtype: ``"float32"`` (numerical features, masks) or ``"int32"`` (embedding indices).
        dims: One entry per axis: a fixed size (the number of numerical features) or the name of a dynamic
            axis (``"n_jets"``, ``"n_<type>"``), as the ONNX file records it.
        field: The part of the feature specification the input is built from, e.g. ``"jet.numerical"`` or
            ``"constituents.ch.categorical"``, for error messages.
    """

    name: str
    dtype: str
    dims: tuple[int | str, ...]
    field: str

    @property
    def shape(self) -> tuple[int | None, ...]:
        """The shape with ``None`` for dynamic axes (a ``tf.TensorSpec``'s or ``keras.Input``'s)."""
        return tuple(d if isinstance(d, int) else None for d in self.dims)


@dataclass(frozen=True)
class ModelOutput:
    """One output of a calibration model (float32).

    Attributes:
        name: The output's name in Keras and in the ONNX graph.
        width: Its number of columns (1 for the correction, K quantile levels for the resolution head).
        field: The part of the feature specification that describes it, for error messages.
    """

    name: str
    width: int
    field: str

    @property
    def dims(self) -> tuple[int | str, ...]:
        """``("n_jets", width)``, as the ONNX file records it."""
        return ("n_jets", self.width)


def model_outputs(spec: FeatureSpec) -> list[ModelOutput]:
    """The outputs of a model for ``spec``, in graph order: the correction, then the resolution head's quantiles."""
    out = [ModelOutput(OUTPUT_NAME, 1, "the correction")]
    if spec.quantiles:
        out.append(ModelOutput(QUANTILES_NAME, len(spec.quantiles), "resolution.quantiles"))
    return out


def interval_levels(quantiles: Sequence[float]) -> tuple[int, int] | None:
    """Columns of the resolution head's quantiles that bound its central interval (the report's, the processor's
    ``jetReso`` variation): the lowest level and its mirror ``1 - tau`` (else the highest level); None without a
    level on each side of 0.5.

    Example:
        >>> interval_levels((0.05, 0.16, 0.84, 0.95)), interval_levels((0.16, 0.9)), interval_levels((0.84,))
        ((0, 3), (0, 1), None)
    """
    q = list(quantiles)
    low = [i for i, x in enumerate(q) if x < 0.5]
    high = [i for i, x in enumerate(q) if x > 0.5]
    if not low or not high:
        return None
    lo = low[0]
    mirror = [i for i in high if abs(q[i] - (1.0 - q[lo])) < 1e-9]
    return lo, mirror[0] if mirror else high[-1]


def model_inputs(spec: FeatureSpec) -> list[ModelInput]:
    """The inputs that :func:`wfit.calib.features.build_inputs` builds for ``spec``, in ``input_names`` order."""
    out = [ModelInput("jet_numerical", "float32", ("n_jets", len(spec.jet_numerical)), "jet.numerical")]
    out += [ModelInput(name, "int32", ("n_jets",), "jet.categorical") for name in spec.jet_categorical]
    for c in spec.constituents:
        axes = ("n_jets", f"n_{c.name}")
        where = f"constituents.{c.name}"
        out.append(ModelInput(f"{c.name}_numerical", "float32", (*axes, len(c.numerical)), f"{where}.numerical"))
        out.append(ModelInput(f"{c.name}_mask", "float32", axes, where))
        out += [ModelInput(name, "int32", axes, f"{where}.categorical") for name in c.categorical]
    return out


def embed_feature_spec(proto: Any, spec: FeatureSpec) -> None:
    """Write ``spec`` into an ``onnx.ModelProto``'s metadata_props (replacing what was there)."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(spec.to_dict(), sort_keys=True)


def sidecar_path(path: str | os.PathLike[str]) -> str:
    """The readable copy of a model's specification: ``<path>.features.yaml``."""
    return os.fspath(path) + _SIDECAR


def write_sidecar(path: str | os.PathLike[str], spec: FeatureSpec) -> str:
    """Write the sidecar of the model at ``path`` atomically; returns its path."""
    import yaml

    from wfit.atomic import write_text

    out = sidecar_path(path)
    write_text(out, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return out


def _dims(value: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _type_name(elem_type: int) -> str:
    names = {v: k for k, v in _ONNX_TYPES.items()}
    if elem_type in names:
        return names[elem_type]
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def check_graph(proto: Any, spec: FeatureSpec, path: str, where: str = f"metadata {METADATA_KEY!r}") -> None:
    """Check that a graph's inputs and output are those that ``spec`` builds and a calibration gives.

    Args:
        proto: The ``onnx.ModelProto``.
        spec: The feature specification read for it.
        path: The file, for messages.
        where: Where the specification came from, for messages.

    Raises:
        ModelSpecError: An input is missing or extra, or has another dtype, rank or number of features, or the
            outputs are not those of :func:`model_outputs` (names, order, float32, ``(n_jets, width)``); the
            message names the file, the input or output and the field of the specification.
    """
    fix = "the specification does not belong to this model: export the model again with wfit.calib.export_onnx"
    expected = {i.name: i for i in model_inputs(spec)}
    initializers = {i.name for i in proto.graph.initializer}
    graph = {i.name: i for i in proto.graph.input if i.name not in initializers}
    if set(graph) != set(expected):
        types = {c.name for c in spec.constituents}
        missing = {n: expected[n].field for n in sorted(set(expected) - set(graph))}
        # The field that would build an extra input: its constituent type's section, or the jet's.
        extra = {
            n: f"constituents.{n.split('_')[0]}" if n.split("_")[0] in types else "jet/constituents"
            for n in sorted(set(graph) - set(expected))
        }
        raise ModelSpecError(
            f"{path}: the graph's inputs {sorted(graph)} are not those of its feature specification "
            f"{sorted(expected)} ({where}: missing from the graph {missing}, not built by the specification "
            f"{extra}); the model and its features.yaml/metadata come from different exports: {fix}"
        )
    for name, want in expected.items():
        value = graph[name]
        got = _dims(value)
        elem = value.type.tensor_type.elem_type
        same = len(got) == len(want.dims) and all(
            g == w if isinstance(w, int) else not isinstance(g, int) for g, w in zip(got, want.dims, strict=False)
        )
        if elem != _ONNX_TYPES[want.dtype] or not same:
            width = want.dims[-1] if isinstance(want.dims[-1], int) else None
            raise ModelSpecError(
                f"{path}: input {name!r} has shape {got} of type {_type_name(elem)}, but the feature "
                f"specification ({where}, field {want.field}) builds shape {list(want.dims)} of type {want.dtype}"
                + (f", {width} features" if width is not None else "")
                + f"; {fix}"
            )
    outputs = list(proto.graph.output)
    wanted = model_outputs(spec)

    def matches(value: Any, want: ModelOutput) -> bool:
        got = _dims(value)
        return (
            value.name == want.name
            and value.type.tensor_type.elem_type == _ONNX_TYPES["float32"]
            and len(got) == 2
            and not isinstance(got[0], int)
            and (not isinstance(got[1], int) or got[1] == want.width)
        )

    if len(outputs) != len(wanted) or not all(matches(o, w) for o, w in zip(outputs, wanted, strict=False)):
        described = [(o.name, _dims(o), _type_name(o.type.tensor_type.elem_type)) for o in outputs]
        expected = [(w.name, list(w.dims), "float32") for w in wanted]
        detail = (
            f"the specification's resolution.quantiles {list(spec.quantiles)} give {len(spec.quantiles)} columns"
            if spec.quantiles
            else "the specification has no resolution head (resolution.quantiles)"
        )
        raise ModelSpecError(
            f"{path}: the graph's outputs {described} are not the calibration's outputs {expected} ({where}: "
            f"{detail}); {fix}"
        )


def read_feature_spec(path: str | os.PathLike[str]) -> FeatureSpec:
    """Read the feature specification of an exported ONNX model, checked against its graph.

    The specification is the metadata's; a sidecar ``<path>.features.yaml`` must agree with it, and is used
    alone only where the metadata has none.

    Args:
        path: A local ``.onnx`` file from :func:`wfit.calib.export_onnx`.

    Returns:
        The specification.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelSpecError: The file is not an ONNX model, has no specification, has a sidecar from another export,
            or its graph does not take the inputs that the specification builds (see :func:`check_graph`).
        wfit.calib.features.FeatureError: The specification itself is malformed (naming the field).
    """
    import onnx

    from wfit.yamlfile import safe_load

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: ONNX model not found; pass the .onnx file written by wfit.calib.export_onnx")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError names neither the file nor the fix
        raise ModelSpecError(
            f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); pass the .onnx file written by "
            "wfit.calib.export_onnx"
        ) from e
    meta = {p.key: p.value for p in proto.metadata_props}
    where = f"metadata {METADATA_KEY!r}"
    spec = None
    if METADATA_KEY in meta:
        try:
            data = json.loads(meta[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise ModelSpecError(
                f"{path}: metadata_props {METADATA_KEY!r} is not JSON ({e}); export the model again with "
                "wfit.calib.export_onnx"
            ) from None
        spec = FeatureSpec.from_dict(data, source=f"{path}: {where}")
    sidecar = sidecar_path(path)
    if os.path.exists(sidecar):
        with open(sidecar, encoding="utf-8") as f:
            side = FeatureSpec.from_dict(safe_load(f, source=str(sidecar)), source=sidecar)
        if spec is None:
            spec, where = side, sidecar
        elif side.to_dict() != spec.to_dict():
            raise ModelSpecError(
                f"{sidecar} disagrees with the feature specification embedded in {path} ({where}); "
                "the sidecar belongs to another export: delete it or export the model again"
            )
    if spec is None:
        raise ModelSpecError(
            f"{path}: no feature specification (metadata_props {METADATA_KEY!r} and no {sidecar}); "
            "export the model with wfit.calib.export_onnx"
        )
    check_graph(proto, spec, path, where)
    return spec
