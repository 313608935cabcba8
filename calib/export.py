"""ONNX export of the calibration model and an onnxruntime loader for batched inference.

The ONNX file has one named input per :attr:`FeatureSpec.input_names` with dynamic batch and constituent
axes, and one output ``log_correction`` of shape ``(n_jets, 1)``. The feature specification (features,
transform chains, padding caps) is embedded as JSON in the model's ``metadata_props`` under
:data:`METADATA_KEY`, so that inputs are rebuilt at inference with the same :mod:`wfit.calib.features` code
that built them for training; a sidecar ``<file>.features.yaml`` holds the same for people to read.

Export needs TensorFlow and tf2onnx; the loader needs onnxruntime only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import yaml

from .data import write_bytes_atomic, write_text_atomic
from .features import FeatureSpec, build_flat_inputs, chunks

__all__ = ["METADATA_KEY", "OnnxCalibrator", "export_onnx", "read_feature_spec"]

#: Key of the feature specification (JSON) in the ONNX model's metadata_props.
METADATA_KEY = "wfit.calib.features"
_OUTPUT_NAME = "log_correction"  # equals wfit.calib.model.OUTPUT_NAME; not imported, to keep TF out


def export_onnx(
    model: Any,
    spec: FeatureSpec,
    path: str,
    opset: int = 17,
    sidecar: bool = True,
) -> str:
    """Convert a Keras calibration model to ONNX and write it atomically.

    Args:
        model: The Keras model (from :func:`wfit.calib.model.build_model` or a ``.keras`` path).
        spec: The feature specification the model was trained with; embedded in the file.
        path: Output ``.onnx`` path (local or fsspec URL).
        opset: ONNX opset, 13 to 18 (tf2onnx 1.17 refuses 19 and above).
        sidecar: Also write ``<path>.features.yaml`` with the specification.

    Returns:
        The path written.
    """
    if not 13 <= opset <= 18:
        raise ValueError(f"export_onnx: opset={opset} is not supported; use 13 to 18 (tf2onnx limit)")
    try:
        import onnx
        import tensorflow as tf
        import tf2onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ONNX export needs tensorflow, tf2onnx and onnx: pip install 'tf2onnx>=1.16' 'onnx>=1.15'"
        ) from err
    if isinstance(model, str):
        from .model import load_model

        model = load_model(model)

    names = spec.input_names
    signature = []
    for name in names:
        if name == "jet_numerical":
            signature.append(tf.TensorSpec((None, len(spec.jet_numerical)), tf.float32, name=name))
        elif name in spec.jet_categorical:
            signature.append(tf.TensorSpec((None,), tf.int32, name=name))
        else:
            ctype = next(c for c in spec.constituents if name.startswith(c.name + "_"))
            if name == f"{ctype.name}_numerical":
                signature.append(tf.TensorSpec((None, None, len(ctype.numerical)), tf.float32, name=name))
            elif name == f"{ctype.name}_mask":
                signature.append(tf.TensorSpec((None, None), tf.float32, name=name))
            else:
                signature.append(tf.TensorSpec((None, None), tf.int32, name=name))

    @tf.function(input_signature=signature)
    def forward(*args: Any) -> Any:
        return model(list(args), training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
    graph = proto.graph
    if len(graph.output) != 1:  # pragma: no cover - the model has one output by construction
        raise RuntimeError(f"export_onnx: expected one output, got {[o.name for o in graph.output]}")
    old = graph.output[0].name
    if old != _OUTPUT_NAME:
        for node in graph.node:
            for i, out in enumerate(node.output):
                if out == old:
                    node.output[i] = _OUTPUT_NAME
            for i, inp in enumerate(node.input):
                if inp == old:
                    node.input[i] = _OUTPUT_NAME
        graph.output[0].name = _OUTPUT_NAME
    # Readable names for the dynamic axes: n_jets everywhere, n_<type> for each constituent axis.
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if axis == 0:
                dim.dim_param = "n_jets"
            elif axis == 1 and not dim.HasField("dim_value"):
                dim.dim_param = f"n_{value.name.split('_')[0]}"
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "n_jets"
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(spec.to_dict(), sort_keys=True)
    proto.producer_name = "wfit.calib"
    onnx.checker.check_model(proto)
    write_bytes_atomic(path, proto.SerializeToString())
    if sidecar:
        write_text_atomic(str(path) + ".features.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return str(path)


def read_feature_spec(path: str) -> FeatureSpec:
    """Read the feature specification embedded in an exported ONNX file."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise ValueError(
            f"{path}: metadata_props has no {METADATA_KEY!r}; export the model with wfit.calib.export_onnx"
        )
    return FeatureSpec.from_dict(json.loads(meta[METADATA_KEY]), source=f"{path}: {METADATA_KEY}")


class OnnxCalibrator:
    """Batched jet calibration with onnxruntime, from an exported file.

    The session is created lazily and left out of pickling, so that the object can be shipped to workers
    (coffea's processor contract).

    Args:
        path: The ``.onnx`` file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (1 for one core per worker).
        chunk_size: Jets per feature-building step (:func:`wfit.calib.features.build_flat_inputs`).
        sub_batch: Within a chunk, jets are sorted by their number of constituents and run in sub-batches of
            this many jets, each padded to its own largest count, so that little of the building or the
            network's work is spent on padding (outputs do not depend on padding: the model masks it). None
            pads and runs the chunk at once.
        providers: onnxruntime execution providers; default CPU.

    Example:
        >>> calib = OnnxCalibrator("model.onnx")                  # doctest: +SKIP
        >>> pt_corr = arrays["pt"] * calib.correction(arrays)    # doctest: +SKIP
    """

    def __init__(
        self,
        path: str,
        threads: int = 1,
        chunk_size: int = 100_000,
        sub_batch: int | None = 2048,
        providers: list[str] | None = None,
    ) -> None:
        if chunk_size < 1 or (sub_batch is not None and sub_batch < 1):
            raise ValueError(
                f"OnnxCalibrator: chunk_size and sub_batch must be positive, got {chunk_size}, {sub_batch}"
            )
        self.path = str(path)
        self.threads = int(threads)
        self.chunk_size = int(chunk_size)
        self.sub_batch = None if sub_batch is None else int(sub_batch)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self._session: Any = None
        self._spec: FeatureSpec | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    @property
    def session(self) -> Any:
        """The onnxruntime InferenceSession (graph optimisation on, ``threads`` intra-op threads)."""
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "OnnxCalibrator needs onnxruntime: pip install 'onnxruntime>=1.17'"
                ) from err
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self._session = ort.InferenceSession(self.path, sess_options=options, providers=self.providers)
        return self._session

    @property
    def spec(self) -> FeatureSpec:
        """The feature specification embedded in the file."""
        if self._spec is None:
            meta = self.session.get_modelmeta().custom_metadata_map
            if METADATA_KEY not in meta:
                raise ValueError(
                    f"{self.path}: metadata_props has no {METADATA_KEY!r}; export with wfit.calib.export_onnx"
                )
            self._spec = FeatureSpec.from_dict(
                json.loads(meta[METADATA_KEY]), source=f"{self.path}: metadata"
            )
        return self._spec

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run the network on already built inputs (sub-batches, see ``sub_batch``); returns ``(n_jets,)``."""
        spec = self.spec
        n = len(inputs["jet_numerical"])
        if self.sub_batch is None or n <= self.sub_batch or not spec.constituents:
            return self._run(inputs)
        # Padding sits after the real constituents, so a jet's count is its mask's sum.
        counts = {c.name: inputs[f"{c.name}_mask"].sum(axis=1).astype(np.int64) for c in spec.constituents}
        out = np.empty(n, dtype=np.float32)
        for rows in self._sub_batches(sum(counts.values())):
            feed = {"jet_numerical": inputs["jet_numerical"][rows]}
            for name in spec.jet_categorical:
                feed[name] = inputs[name][rows]
            for c in spec.constituents:
                m = max(1, int(counts[c.name][rows].max()))
                for name in (f"{c.name}_numerical", f"{c.name}_mask", *c.categorical):
                    feed[name] = np.ascontiguousarray(inputs[name][rows, :m])
            out[rows] = self._run(feed)
        return out

    def _sub_batches(self, counts: np.ndarray) -> Iterator[np.ndarray]:
        """Jet indices in sub-batches of ``sub_batch`` jets with similar constituent counts."""
        assert self.sub_batch is not None
        order = np.argsort(counts, kind="stable")
        for start in range(0, len(order), self.sub_batch):
            yield order[start : start + self.sub_batch]

    def _run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.spec.input_names}
        return self.session.run([_OUTPUT_NAME], feed)[0][:, 0]

    def predict(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """Predicted ``log(pt_gen / pt)`` per jet, built and inferred in chunks of ``chunk_size`` jets.

        Args:
            arrays: Feature arrays keyed by branch name, as :func:`wfit.calib.features.build_inputs` takes.

        Returns:
            float32 array, one value per jet.
        """
        spec = self.spec
        needed = {k: arrays[k] for k in spec.branches if k in arrays}
        out = []
        for chunk in chunks(needed, self.chunk_size):
            flat = build_flat_inputs(chunk, spec)
            if self.sub_batch is None or flat.n_jets <= self.sub_batch or not spec.constituents:
                out.append(self._run(flat.pad()))
                continue
            # Each sub-batch is padded on its own, to its jets' largest count: little padding to build or run.
            pred = np.empty(flat.n_jets, dtype=np.float32)
            for rows in self._sub_batches(flat.counts()):
                pred[rows] = self._run(flat.pad(rows))
            out.append(pred)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def correction(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """Multiplicative pT correction per jet, ``exp(predict(arrays))``."""
        return np.exp(self.predict(arrays))
