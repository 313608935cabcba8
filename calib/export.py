"""ONNX export of the calibration model and an onnxruntime loader for batched inference.

The ONNX file has one named input per :func:`wfit.calib.onnx_spec.model_inputs` (dynamic batch and constituent
axes) and the outputs of :func:`wfit.calib.onnx_spec.model_outputs`: ``log_correction`` of shape
``(n_jets, 1)`` and, for a model with a resolution head, ``log_quantiles`` of shape ``(n_jets, K)``. The
feature specification (features, transform chains, padding caps, quantile levels) is embedded in the file
(:mod:`wfit.calib.onnx_spec`), so that inputs are rebuilt at inference with the same :mod:`wfit.calib.features`
code that built them for training; a sidecar ``<file>.features.yaml`` holds the same for people to read.

Inference is deterministic per jet: a jet's outputs are the same bits whichever other jets share its call
(see :class:`OnnxCalibrator`; for one onnxruntime build and thread count), so that results cached from one pass
equal those computed in another.

Export needs TensorFlow and tf2onnx; the loader needs onnx and onnxruntime only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from wfit.atomic import write_bytes

from .features import FeatureSpec, FlatInputs, build_flat_inputs, chunks
from .onnx_spec import (
    OUTPUT_NAME,
    ModelSpecError,
    check_graph,
    embed_feature_spec,
    model_inputs,
    model_outputs,
    read_feature_spec,
    write_sidecar,
)

__all__ = ["NonFiniteOutputError", "OnnxCalibrator", "export_onnx"]


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
        spec: The feature specification the model was trained with (with ``quantiles`` when the model has a
            resolution head); embedded in the file.
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

    inputs = model_inputs(spec)
    signature = [tf.TensorSpec(i.shape, getattr(tf, i.dtype), name=i.name) for i in inputs]

    outputs = model_outputs(spec)

    @tf.function(input_signature=signature)
    def forward(*args: Any) -> Any:
        out = model(list(args), training=False)
        # One tensor per output, in model_outputs order (a Keras model with several outputs returns a list
        # or a dict keyed by the output layers' names).
        if isinstance(out, Mapping):
            return tuple(out[o.name] for o in outputs)
        return tuple(out) if isinstance(out, list | tuple) else (out,)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=signature, opset=opset)
    graph = proto.graph
    if len(graph.output) != len(outputs):  # pragma: no cover - the model's outputs follow the spec
        raise RuntimeError(
            f"export_onnx: expected outputs {[o.name for o in outputs]}, got {[o.name for o in graph.output]}"
        )
    for value, want in zip(graph.output, outputs, strict=True):
        old = value.name
        if old != want.name:
            for node in graph.node:
                for i, out in enumerate(node.output):
                    if out == old:
                        node.output[i] = want.name
                for i, inp in enumerate(node.input):
                    if inp == old:
                        node.input[i] = want.name
            value.name = want.name
        value.type.tensor_type.shape.dim[0].dim_param = "n_jets"
    # The dynamic axes get the names that the specification gives them (n_jets, n_<type>).
    by_name = {i.name: i for i in inputs}
    for value in graph.input:
        for dim, want in zip(value.type.tensor_type.shape.dim, by_name[value.name].dims, strict=True):
            if isinstance(want, str):
                dim.dim_param = want
    embed_feature_spec(proto, spec)
    proto.producer_name = "wfit.calib"
    onnx.checker.check_model(proto)
    check_graph(proto, spec, str(path), where="export_onnx(spec=...)")
    write_bytes(path, proto.SerializeToString())
    if sidecar:
        write_sidecar(path, spec)
    return str(path)


#: Constituent axes are padded to a multiple of this many slots (capped at the type's ``max_count``), chosen
#: from each jet's own counts: see :class:`OnnxCalibrator`.
PAD_STEP = 4
# Rows per onnxruntime call are a multiple of this (zero jets are added): onnxruntime's kernels handle a
# remainder of a vector's width, and a single row (a matrix-vector product), on other code paths whose float32
# rounding differs, and which elements fall in such a remainder depends on the call's number of rows.
_ROW_MULTIPLE = 16


def _file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class NonFiniteOutputError(ValueError):
    """The model returned NaN or infinity for some jets although their inputs are finite (non-finite inputs are
    refused earlier, by the feature building): a fault of the model.

    Attributes:
        jets: Positions (in the arrays given to the model) of the jets with a non-finite output.
    """

    def __init__(self, path: str, jets: np.ndarray) -> None:
        self.jets = jets
        super().__init__(
            f"{path}: the model returned a non-finite value for {len(jets)} jet(s) (the first: jet {int(jets[0])}) "
            "whose inputs are finite: the model is faulty; retrain or re-export it"
        )


class OnnxCalibrator:
    """Batched jet calibration with onnxruntime, from an exported file.

    The session is created lazily and left out of pickling, so that the object can be shipped to workers
    (coffea's processor contract).

    Inference is deterministic per jet. Jets are grouped by padded widths chosen from each jet's own
    constituent counts (per type, the count rounded up to a multiple of :data:`PAD_STEP`, capped at the type's
    ``max_count``), each group runs in calls of at most ``sub_batch`` jets (zero jets added up to a multiple of
    16 rows), and a jet's outputs are then the same bits whichever other jets are in the chunk or the call
    (onnxruntime's float32 results depend on the padded width and on where a jet falls in its call's vectors;
    the model itself ignores padding). Little is spent on padding: a jet gets fewer than :data:`PAD_STEP` empty
    slots per type.

    Args:
        path: The ``.onnx`` file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (1 for one core per worker).
        chunk_size: Jets per feature-building step (:func:`wfit.calib.features.build_flat_inputs`).
        sub_batch: Most jets per onnxruntime call (None: a whole width group at once).
        providers: onnxruntime execution providers; default CPU.

    Attributes:
        path: The model file.

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
        self._sha256: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    @property
    def sha256(self) -> str:
        """SHA-256 (hex) of the model file, read once; the session is checked against it when it is created."""
        if self._sha256 is None:
            with open(self.path, "rb") as f:
                self._sha256 = _file_sha256(f.read())
        return self._sha256

    @property
    def session(self) -> Any:
        """The onnxruntime InferenceSession (graph optimisation on, ``threads`` intra-op threads).

        Raises:
            wfit.calib.onnx_spec.ModelSpecError: The file changed since :attr:`sha256` was read (a worker would
                run another model than the one its results are recorded for).
        """
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "OnnxCalibrator needs onnxruntime: pip install 'onnxruntime>=1.17'"
                ) from err
            with open(self.path, "rb") as f:
                data = f.read()
            digest = _file_sha256(data)
            if self._sha256 is not None and digest != self._sha256:
                raise ModelSpecError(
                    f"{self.path}: the model file changed since it was first read (SHA-256 {self._sha256[:12]}... "
                    f"then, {digest[:12]}... now); construct the calibration again from the new file"
                )
            self._sha256 = digest
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            self._session = ort.InferenceSession(data, sess_options=options, providers=self.providers)
        return self._session

    @property
    def spec(self) -> FeatureSpec:
        """The feature specification embedded in the file, checked against its graph (``read_feature_spec``)."""
        if self._spec is None:
            self._spec = read_feature_spec(self.path)
        return self._spec

    @property
    def output_names(self) -> list[str]:
        """The model's outputs (:func:`wfit.calib.onnx_spec.model_outputs`): ``log_correction``, then
        ``log_quantiles`` for a model with a resolution head."""
        return [o.name for o in model_outputs(self.spec)]

    @property
    def quantiles(self) -> tuple[float, ...]:
        """Levels of the resolution head's quantiles (empty without one)."""
        return self.spec.quantiles

    # ------------------------------------------------------------------ batching
    def _widths(self, counts: Mapping[str, np.ndarray]) -> np.ndarray:
        """Padded width of each jet per constituent type (columns in ``spec.constituents`` order)."""
        cols = []
        for c in self.spec.constituents:
            n = np.asarray(counts[c.name], dtype=np.int64)
            cols.append(np.minimum(np.maximum(1, -(-n // PAD_STEP) * PAD_STEP), max(c.max_count, 1)))
        return np.stack(cols, axis=1) if cols else np.zeros((0, 0), dtype=np.int64)

    def _groups(self, counts: Mapping[str, np.ndarray], n: int) -> Iterator[tuple[np.ndarray, dict[str, int]]]:
        """(jet indices, padded width per type) of each call: jets grouped by their own widths."""
        step = self.sub_batch or max(n, 1)
        if not self.spec.constituents:
            for start in range(0, n, step):
                yield np.arange(start, min(n, start + step)), {}
            return
        widths = self._widths(counts)
        # One integer per combination of widths (each below base): a 1-d sort, much faster than unique rows.
        base = int(widths.max(initial=0)) + 1
        key = np.zeros(n, dtype=np.int64)
        for j in range(widths.shape[1]):
            key = key * base + widths[:, j]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        cuts = np.flatnonzero(np.diff(sorted_key)) + 1
        bounds = np.concatenate([[0], cuts, [n]])
        names = [c.name for c in self.spec.constituents]
        for g in range(len(bounds) - 1):
            rows = order[bounds[g] : bounds[g + 1]]
            w = {name: int(x) for name, x in zip(names, widths[rows[0]], strict=True)}
            for start in range(0, len(rows), step):
                yield rows[start : start + step], w

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs for one call's inputs; ``(n,)`` for the correction, ``(n, K)`` for the quantiles."""
        names = self.output_names
        n = len(feed["jet_numerical"])
        inputs = {name: feed[name] for name in self.spec.input_names}
        extra = -n % _ROW_MULTIPLE
        if extra:
            inputs = {
                k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), dtype=v.dtype)]) for k, v in inputs.items()
            }
        values = self.session.run(names, inputs)
        out = {name: np.asarray(v[:n]) for name, v in zip(names, values, strict=True)}
        out[OUTPUT_NAME] = out[OUTPUT_NAME][:, 0]
        return out

    @staticmethod
    def _allocate(outputs: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        return {k: np.empty((n, *v.shape[1:]), dtype=np.float32) for k, v in outputs.items()}

    def _run_flat(self, flat: FlatInputs) -> dict[str, np.ndarray]:
        counts = {name: np.diff(t.offsets) for name, t in flat.types.items()}
        out: dict[str, np.ndarray] | None = None
        for rows, widths in self._groups(counts, flat.n_jets):
            part = self._run(flat.pad(rows, widths if widths else None))
            if out is None:
                out = self._allocate(part, flat.n_jets)
            for k, v in part.items():
                out[k][rows] = v
        return out if out is not None else self._empty(0)

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        return {
            o.name: np.zeros((n,) if o.name == OUTPUT_NAME else (n, o.width), np.float32)
            for o in model_outputs(self.spec)
        }

    # ------------------------------------------------------------------ inference
    def run_outputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All outputs for already built (padded) inputs, e.g. :func:`wfit.calib.build_inputs`'s."""
        spec = self.spec
        n = len(inputs["jet_numerical"])
        # Padding sits after the real constituents, so a jet's count is its mask's sum.
        counts = {c.name: inputs[f"{c.name}_mask"].sum(axis=1).astype(np.int64) for c in spec.constituents}
        out: dict[str, np.ndarray] | None = None
        for rows, widths in self._groups(counts, n):
            feed = {"jet_numerical": inputs["jet_numerical"][rows]}
            for name in spec.jet_categorical:
                feed[name] = inputs[name][rows]
            for c in spec.constituents:
                w = widths[c.name]
                for name in (f"{c.name}_numerical", f"{c.name}_mask", *c.categorical):
                    x = inputs[name][rows, :w]
                    if x.shape[1] < w:  # the inputs were padded less far than this jet's group
                        extra = np.zeros((x.shape[0], w - x.shape[1], *x.shape[2:]), dtype=x.dtype)
                        x = np.concatenate([x, extra], axis=1)
                    feed[name] = np.ascontiguousarray(x)
            part = self._run(feed)
            if out is None:
                out = self._allocate(part, n)
            for k, v in part.items():
                out[k][rows] = v
        return out if out is not None else self._empty(0)

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The predicted ``log(pt_gen / pt)`` for already built (padded) inputs; returns ``(n_jets,)``."""
        return self.run_outputs(inputs)[OUTPUT_NAME]

    def predict_outputs(self, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """All outputs per jet (``log_correction`` ``(n,)``, and ``log_quantiles`` ``(n, K)`` for a model with
        a resolution head), built and inferred in chunks of ``chunk_size`` jets.

        Args:
            arrays: Feature arrays keyed by branch name, as :func:`wfit.calib.features.build_inputs` takes.
        """
        spec = self.spec
        needed = {k: arrays[k] for k in spec.branches if k in arrays}
        parts = [self._run_flat(build_flat_inputs(chunk, spec)) for chunk in chunks(needed, self.chunk_size)]
        if not parts:
            return self._empty(0)
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        bad = np.zeros(len(out[OUTPUT_NAME]), dtype=bool)
        for v in out.values():
            bad |= ~np.isfinite(v).reshape(len(bad), -1).all(axis=1)
        if bad.any():
            raise NonFiniteOutputError(self.path, np.flatnonzero(bad))
        return out

    def predict(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """Predicted ``log(pt_gen / pt)`` per jet, built and inferred in chunks of ``chunk_size`` jets.

        Args:
            arrays: Feature arrays keyed by branch name, as :func:`wfit.calib.features.build_inputs` takes.

        Returns:
            float32 array, one value per jet.
        """
        return self.predict_outputs(arrays)[OUTPUT_NAME]

    def correction(self, arrays: Mapping[str, Any]) -> np.ndarray:
        """Multiplicative pT correction per jet, ``exp(predict(arrays))``."""
        return np.exp(self.predict(arrays))
