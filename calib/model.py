"""The Deep Sets jet calibration model (Keras 3 on TensorFlow).

For each constituent type (charged ``ch``, neutral ``ne``, secondary vertices ``sv``) a shared
per-constituent network (plain MLP or ResNet) maps every constituent's features, numerical and embedded
categorical, to a vector; a masked sum over the jet's constituents makes the block invariant to their order
(Zaheer et al., "Deep Sets", NeurIPS 2017, Theorem 2). The sums are concatenated with the jet-level features
and embeddings, and a head network with one linear output predicts ``log(pt_gen / pt)``: the corrected pT is
``pt * exp(output)``. The architecture follows ml-jec (A. Popov), with padded, masked arrays in place of
ragged tensors so that the model exports to ONNX.

A resolution head (``model.resolution.quantiles`` in the config, :attr:`FeatureSpec.quantiles`) adds a second
output ``log_quantiles``: the predicted quantiles ``q_1 < ... < q_K`` of ``log(pt_gen / pt)`` at the given
levels, as CMS regressions store a resolution beside the correction. They are built around the correction
``c`` so that they never cross and bracket it: ``q_i = c - sum_{j=i}^{L-1} s_j`` below the median and
``c + sum_{j=L}^{i} s_j`` above it, with ``s = softplus(W h + b)`` from the head's last hidden layer ``h``
(:class:`QuantileHead`). They are trained with the pinball loss (Koenker and Bassett, "Regression quantiles",
Econometrica 46 (1978) 33, eq. 1.3; :class:`PinballLoss`) on ``c`` held fixed (a stopped gradient): the
quantile loss does not move the correction itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import keras
    from keras import ops
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "wfit.calib.model needs TensorFlow and Keras 3: pip install 'tensorflow>=2.16' 'keras>=3.3'"
    ) from err

from .config import CalibConfig
from .features import FeatureSpec, build_inputs, chunks
from .onnx_spec import OUTPUT_NAME, QUANTILES_NAME, model_inputs

__all__ = [
    "OUTPUT_NAME",
    "QUANTILES_NAME",
    "MaskedSum",
    "PinballLoss",
    "QuantileHead",
    "build_model",
    "load_model",
    "log_cosh",
    "predict",
    "predict_outputs",
    "stable_softplus",
]

@keras.saving.register_keras_serializable(package="wfit")
def stable_softplus(x: Any) -> Any:
    """Softplus as ``max(x, 0) + log(1 + exp(-|x|))``: no overflow for large ``|x|``.

    ``log1p`` would be the textbook form, but tf2onnx has no converter for TensorFlow's Log1p. Since
    ``exp(-|x|) <= 1`` the plain log's absolute error is at most about one float32 ulp of 1 (6e-8), which is
    what counts once ``max(x, 0)`` is added.
    """
    return ops.maximum(x, 0.0) + ops.log(1.0 + ops.exp(-ops.abs(x)))


@keras.saving.register_keras_serializable(package="wfit")
def log_cosh(y_true: Any, y_pred: Any) -> Any:
    """Mean ``log(cosh(d))`` with ``d = y_pred - y_true``, as ``|d| + log1p(exp(-2|d|)) - log 2``."""
    d = ops.abs(ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    return ops.mean(d + ops.log1p(ops.exp(-2.0 * d)) - math.log(2.0), axis=-1)


@keras.saving.register_keras_serializable(package="wfit")
class MaskedSum(keras.layers.Layer):
    """Sum of per-constituent vectors over the constituent axis, padding excluded, times a fixed scale.

    Call with ``[values (n, m, k), mask (n, m)]``; returns ``(n, k)``. The scale (``1 / max_count`` in
    :func:`build_model`) keeps the pooled values of jets with tens of constituents at the size of the
    jet-level inputs; without it the head starts far off and training is several times slower. It is a
    constant, so the block stays a sum (it still counts constituents).
    """

    def __init__(self, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs: list[Any]) -> Any:
        values, mask = inputs
        return ops.sum(values * ops.expand_dims(mask * self.scale, -1), axis=1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        values_shape = input_shape[0]
        return (values_shape[0], values_shape[2])


def _offsets_matrix(quantiles: tuple[float, ...]) -> np.ndarray:
    """The constant ``A`` of :class:`QuantileHead`: ``q = c + s @ A`` (see the module docstring)."""
    k = len(quantiles)
    n_low = sum(q < 0.5 for q in quantiles)
    a = np.zeros((k, k), dtype=np.float32)
    for i in range(k):
        if i < n_low:
            a[i:n_low, i] = -1.0
        else:
            a[n_low : i + 1, i] = 1.0
    return a


@keras.saving.register_keras_serializable(package="wfit")
class QuantileHead(keras.layers.Layer):
    """Quantiles of ``log(pt_gen / pt)`` around the correction: call with ``[c (n, 1), raw (n, K)]``.

    Returns ``stop_gradient(c) + softplus(raw) @ A`` (``(n, K)``), increasing along the last axis, below ``c``
    for levels under 0.5 and above it for the others (see the module docstring).

    Example:
        >>> head = QuantileHead((0.16, 0.84))
        >>> q = head([np.array([[0.1]], "float32"), np.array([[0.0, 0.0]], "float32")])
        >>> [round(float(x), 4) for x in np.asarray(q)[0]]
        [-0.5931, 0.7931]
    """

    def __init__(self, quantiles: tuple[float, ...] | list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quantiles = tuple(float(q) for q in quantiles)
        self._offsets = _offsets_matrix(self.quantiles)

    def call(self, inputs: list[Any]) -> Any:
        c, raw = inputs
        return ops.stop_gradient(c) + ops.matmul(stable_softplus(raw), ops.convert_to_tensor(self._offsets))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "quantiles": list(self.quantiles)}

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return (input_shape[1][0], len(self.quantiles))


@keras.saving.register_keras_serializable(package="wfit")
class PinballLoss(keras.losses.Loss):
    """Mean pinball loss of the quantiles ``y_pred (n, K)`` at ``quantiles`` for targets ``y_true (n, 1)``:
    ``max(tau d, (tau - 1) d)`` with ``d = y_true - y_pred`` (Koenker and Bassett 1978, eq. 1.3), averaged over
    the levels; its minimum is at the conditional quantiles."""

    def __init__(self, quantiles: tuple[float, ...] | list[float], name: str = "pinball", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.quantiles = tuple(float(q) for q in quantiles)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        tau = ops.convert_to_tensor(np.asarray(self.quantiles, dtype=np.float32))
        d = ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")
        return ops.mean(ops.maximum(tau * d, (tau - 1.0) * d), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "quantiles": list(self.quantiles)}


def _activation(name: str) -> Any:
    return stable_softplus if name == "softplus" else name


def _dense_stack(x: Any, block: dict[str, Any], activation: str, prefix: str) -> Any:
    """A plain MLP or a ResNet (pairs of layers with a skip connection, projected if widths differ)."""
    units = list(block["units"])
    act = _activation(activation)
    if block["type"] == "plain":
        for i, n in enumerate(units):
            x = keras.layers.Dense(
                n, activation=act, kernel_initializer="he_uniform", name=f"{prefix}dense_{i}"
            )(x)
        return x
    for i in range(0, len(units) - 1, 2):
        n1, n2 = units[i], units[i + 1]
        y = keras.layers.Dense(n1, activation=act, kernel_initializer="he_uniform", name=f"{prefix}res{i}_a")(
            x
        )
        y = keras.layers.Dense(n2, kernel_initializer="he_uniform", name=f"{prefix}res{i}_b")(y)
        if x.shape[-1] != n2:
            x = keras.layers.Dense(n2, use_bias=False, name=f"{prefix}res{i}_proj")(x)
        x = keras.layers.Activation(act, name=f"{prefix}res{i}_act")(
            keras.layers.Add(name=f"{prefix}res{i}_add")([x, y])
        )
    if len(units) % 2 == 1:
        x = keras.layers.Dense(
            units[-1], activation=act, kernel_initializer="he_uniform", name=f"{prefix}last"
        )(x)
    return x


def build_model(config: CalibConfig, spec: FeatureSpec, compile: bool = True) -> keras.Model:
    """Build (and compile) the model described by a config for a feature specification.

    Args:
        config: The calibration config (``model``, ``loss``, ``optimizer`` sections are used).
        spec: The features; input shapes and embedding cardinalities come from it.
        compile: Compile with the configured loss and optimiser.

    Returns:
        A functional Keras model with one named input per :attr:`FeatureSpec.input_names` (dynamic batch
        and constituent axes) and the output ``log_correction`` of shape ``(n_jets, 1)``; with
        ``spec.quantiles`` (the config's ``model.resolution.quantiles``, set by :func:`wfit.calib.train_model`)
        a second output ``log_quantiles`` of shape ``(n_jets, K)``.

    Raises:
        ValueError: The config's resolution quantiles differ from ``spec.quantiles``.
    """
    if config.quantiles and config.quantiles != spec.quantiles:
        raise ValueError(
            f"{config.source}: model.resolution.quantiles {list(config.quantiles)} but the feature specification "
            f"has {list(spec.quantiles)}: build the specification with quantiles=config.quantiles"
        )
    mcfg = config.model
    act = mcfg["activation"]
    tr = spec.transform
    # Keras shapes leave out the batch axis.
    inputs = {i.name: keras.Input(shape=i.shape[1:], name=i.name, dtype=i.dtype) for i in model_inputs(spec)}

    jet_num = inputs["jet_numerical"]
    head_parts = [jet_num]
    for name in spec.jet_categorical:
        x = inputs[name]
        emb = keras.layers.Embedding(
            tr.cardinality(name), int(mcfg["jet_embeddings"][name]), name=f"{name}_emb"
        )
        head_parts.append(emb(x))

    for c in spec.constituents:
        block = mcfg["blocks"][c.name]
        num, mask = inputs[f"{c.name}_numerical"], inputs[f"{c.name}_mask"]
        parts = [num]
        for name in c.categorical:
            x = inputs[name]
            size = int(block["embeddings"][name])
            parts.append(keras.layers.Embedding(tr.cardinality(name), size, name=f"{name}_emb")(x))
        x = keras.layers.Concatenate(name=f"{c.name}_concat")(parts) if len(parts) > 1 else num
        x = _dense_stack(x, block, act, prefix=f"{c.name}_")
        head_parts.append(MaskedSum(scale=1.0 / c.max_count, name=f"{c.name}_sum")([x, mask]))

    x = keras.layers.Concatenate(name="head_concat")(head_parts) if len(head_parts) > 1 else jet_num
    x = _dense_stack(x, mcfg["head"], act, prefix="head_")
    out = keras.layers.Dense(1, name=OUTPUT_NAME)(x)
    outputs: Any = out
    if spec.quantiles:
        raw = keras.layers.Dense(len(spec.quantiles), name="quantile_widths")(x)
        outputs = [out, QuantileHead(spec.quantiles, name=QUANTILES_NAME)([out, raw])]
    model = keras.Model(inputs=[inputs[n] for n in spec.input_names], outputs=outputs, name="jet_calibration")
    if compile:
        if spec.quantiles:
            weight = float((config.model.get("resolution") or {}).get("loss_weight") or 1.0)
            model.compile(
                optimizer=_optimizer(config),
                loss=[_loss(config), PinballLoss(spec.quantiles)],
                loss_weights=[1.0, weight],
                jit_compile=False,
            )
        else:
            model.compile(optimizer=_optimizer(config), loss=_loss(config), jit_compile=False)
    return model


def _loss(config: CalibConfig) -> Any:
    cfg = config.loss
    name = cfg["name"]
    if name == "huber":
        return keras.losses.Huber(delta=float(cfg.get("delta") or math.log(2.0)))
    if name == "logcosh":
        return log_cosh
    return {"mae": "mean_absolute_error", "mse": "mean_squared_error"}[name]


def _optimizer(config: CalibConfig) -> keras.optimizers.Optimizer:
    cfg = config.optimizer
    kwargs: dict[str, Any] = {"learning_rate": float(cfg["learning_rate"])}
    if cfg.get("clipnorm"):
        kwargs["clipnorm"] = float(cfg["clipnorm"])
    if cfg["name"] == "adamw":
        return keras.optimizers.AdamW(weight_decay=float(cfg.get("weight_decay") or 1e-4), **kwargs)
    if cfg.get("weight_decay"):
        kwargs["weight_decay"] = float(cfg["weight_decay"])
    if cfg["name"] == "sgd":
        return keras.optimizers.SGD(momentum=0.9, **kwargs)
    return keras.optimizers.Adam(**kwargs)


def load_model(path: str) -> keras.Model:
    """Load a model written by :func:`wfit.calib.train.train_model` (a ``.keras`` file)."""
    return keras.saving.load_model(path, compile=False)


def predict(model: keras.Model, arrays: Any, spec: FeatureSpec, chunk_size: int = 10_000) -> np.ndarray:
    """Predicted ``log(pt_gen / pt)`` per jet with Keras, inputs built chunk by chunk.

    Args:
        model: The Keras model.
        arrays: Feature arrays keyed by branch name (see :func:`wfit.calib.features.build_inputs`).
        spec: The feature specification the model was trained with.
        chunk_size: Jets per call; each chunk is padded to its own largest constituent count.
    """
    return predict_outputs(model, arrays, spec, chunk_size)[OUTPUT_NAME]


def predict_outputs(
    model: keras.Model, arrays: Any, spec: FeatureSpec, chunk_size: int = 10_000
) -> dict[str, np.ndarray]:
    """All outputs per jet with Keras (``log_correction`` ``(n,)``; ``log_quantiles`` ``(n, K)`` with a
    resolution head), as :meth:`wfit.calib.OnnxCalibrator.predict_outputs` gives them."""
    needed = {k: arrays[k] for k in spec.branches if k in arrays}
    parts: dict[str, list[np.ndarray]] = {OUTPUT_NAME: []}
    if spec.quantiles:
        parts[QUANTILES_NAME] = []
    for chunk in chunks(needed, chunk_size):
        inputs = build_inputs(chunk, spec)
        got = model.predict_on_batch([inputs[n] for n in spec.input_names])
        got = got if isinstance(got, list | tuple) else [got]
        parts[OUTPUT_NAME].append(np.asarray(got[0])[:, 0])
        if spec.quantiles:
            parts[QUANTILES_NAME].append(np.asarray(got[1]))
    width = {OUTPUT_NAME: (), QUANTILES_NAME: (len(spec.quantiles),)}
    return {
        k: np.concatenate(v) if v else np.zeros((0, *width[k]), dtype=np.float32) for k, v in parts.items()
    }
