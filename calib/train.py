"""Training of the jet calibration model, streamed from the ROOT shards.

Shards are split into training, validation and test sets by whole shards (as ml-jec). Each epoch reads the
training shards in a shuffled order, chunk by chunk (``train.chunk_size`` jets), shuffles the jets within
a chunk, and feeds batches built by :func:`wfit.calib.features.build_inputs` (each batch padded to its own
largest constituent count) through a ``tf.data`` pipeline; the data set is never loaded whole.

With ``model.resolution`` in the config the model also has the resolution head (:mod:`wfit.calib.model`), trained
with the pinball loss beside the correction's loss (weight ``model.resolution.loss_weight``, default 1); the
feature specification then records its quantile levels.

Everything is seeded from ``train.seed``: numpy's ``default_rng`` for the shuffling and
``keras.utils.set_random_seed`` for weights. The best model (lowest validation loss) is checkpointed after
each improving epoch and written at the end, each time atomically (:mod:`wfit.atomic`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import awkward as ak
import numpy as np
import yaml

try:
    import keras
    import tensorflow as tf
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "wfit.calib.train needs TensorFlow and Keras 3: pip install 'tensorflow>=2.16' 'keras>=3.3'"
    ) from err

from wfit.atomic import atomic_path, write_text

from .config import CalibConfig, load_config
from .data import TREE_NAME, DataDir, Shard, open_data_dir, to_columns
from .features import FeatureSpec, build_inputs, target
from .model import build_model, load_model

__all__ = ["TrainResult", "count_batches", "make_dataset", "save_model_atomic", "train_model"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_model` produced.

    Attributes:
        model_path: The final ``.keras`` model (best validation loss).
        spec_path: ``features.yaml`` with the feature specification (transform included).
        spec: The feature specification.
        history: Per-epoch metrics (``loss``, ``val_loss``, ``learning_rate``).
        shards: The shards of each split (``train``, ``validation``, ``test``).
    """

    model_path: str
    spec_path: str
    spec: FeatureSpec
    history: dict[str, list[float]] = field(default_factory=dict)
    shards: dict[str, list[Shard]] = field(default_factory=dict)


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Save a Keras model to ``path`` (must end in ``.keras``) atomically (:func:`wfit.atomic.atomic_path`)."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"{path}: a Keras model file must end in '.keras'")
    with atomic_path(path) as tmp:
        model.save(tmp)


def count_batches(shards: Sequence[Shard], batch_size: int, chunk_size: int) -> int:
    """Number of batches :func:`make_dataset` yields per pass (batches never span chunks or shards)."""
    total = 0
    for s in shards:
        full, rest = divmod(s.count, chunk_size)
        total += full * math.ceil(chunk_size / batch_size) + math.ceil(rest / batch_size)
    return total


def _batches(
    shards: Sequence[Shard],
    spec: FeatureSpec,
    batch_size: int,
    chunk_size: int,
    rng: np.random.Generator | None,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    import uproot

    branches = list(dict.fromkeys([*spec.branches, "pt", "pt_gen"]))
    order = rng.permutation(len(shards)) if rng is not None else np.arange(len(shards))
    for i in order:
        shard = shards[i]
        with uproot.open(shard.path) as f:
            for chunk in f[TREE_NAME].iterate(branches, step_size=chunk_size, library="ak"):
                if rng is not None:
                    chunk = ak.to_packed(chunk[rng.permutation(len(chunk))])
                columns = to_columns(chunk)
                for start in range(0, len(chunk), batch_size):
                    batch = {k: v[start : start + batch_size] for k, v in columns.items()}
                    yield build_inputs(batch, spec), target(batch)[:, None]


def make_dataset(
    shards: Sequence[Shard],
    spec: FeatureSpec,
    batch_size: int,
    chunk_size: int = 100_000,
    rng: np.random.Generator | None = None,
) -> tf.data.Dataset:
    """A ``tf.data`` pipeline of ``(inputs, target)`` batches streamed from shards.

    Args:
        shards: Shards to read.
        spec: Feature specification.
        batch_size: Jets per batch.
        chunk_size: Jets read per uproot call; shuffling happens within a chunk.
        rng: Generator for shuffling shards and jets (None: file order, for validation).

    Returns:
        A data set with known cardinality; iterating it again reads the shards again, in a new order.
    """
    signature: dict[str, tf.TensorSpec] = {
        "jet_numerical": tf.TensorSpec((None, len(spec.jet_numerical)), tf.float32),
    }
    for name in spec.jet_categorical:
        signature[name] = tf.TensorSpec((None,), tf.int32)
    for c in spec.constituents:
        signature[f"{c.name}_numerical"] = tf.TensorSpec((None, None, len(c.numerical)), tf.float32)
        signature[f"{c.name}_mask"] = tf.TensorSpec((None, None), tf.float32)
        for name in c.categorical:
            signature[name] = tf.TensorSpec((None, None), tf.int32)
    ds = tf.data.Dataset.from_generator(
        lambda: _batches(shards, spec, batch_size, chunk_size, rng),
        output_signature=(signature, tf.TensorSpec((None, 1), tf.float32)),
    )
    ds = ds.apply(tf.data.experimental.assert_cardinality(count_batches(shards, batch_size, chunk_size)))
    return ds.prefetch(2)


class _AtomicCheckpoint(keras.callbacks.Callback):
    """Save the model atomically whenever the monitored loss improves by more than ``min_delta``."""

    def __init__(self, path: str, monitor: str, min_delta: float) -> None:
        super().__init__()
        self.path, self.monitor, self.min_delta = path, monitor, min_delta
        self.best = math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best - self.min_delta:
            self.best = float(value)
            save_model_atomic(self.model, self.path)


def train_model(
    data: str | DataDir,
    output_dir: str,
    config: CalibConfig | str | None = None,
    verbose: int = 1,
) -> TrainResult:
    """Train the calibration model on a data directory.

    Args:
        data: Data directory (path/URL or opened) in ml-jec's layout.
        output_dir: Where ``model.keras``, ``checkpoint.keras``, ``features.yaml``, ``config.yaml`` and
            ``history.csv`` are written (local).
        config: Config (object or YAML path); None for the shipped default.
        verbose: Keras progress output (0 silent, 1 progress bar per epoch, 2 one line per epoch).

    Returns:
        The paths written, the feature specification and the training history.
    """
    if not isinstance(config, CalibConfig):
        config = load_config(config)
    if not isinstance(data, DataDir):
        data = open_data_dir(data)
    tcfg = config.train
    seed = int(tcfg["seed"])
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    spec = replace(
        FeatureSpec.from_config(config.features, data.transform, source=config.source), quantiles=config.quantiles
    )
    missing = sorted({*spec.branches, "pt", "pt_gen"} - set(data.branches))
    if missing:
        raise ValueError(
            f"{data.location}: shards lack branch(es) {missing} needed by {config.source}: features; "
            "remove those features from the config or add the branches"
        )
    train_shards, val_shards, test_shards = data.split(
        tcfg["validation_fraction"], tcfg.get("test_fraction") or 0.0
    )

    os.makedirs(output_dir, exist_ok=True)
    spec_path = os.path.join(output_dir, "features.yaml")
    write_text(spec_path, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_text(os.path.join(output_dir, "config.yaml"), config.to_yaml())

    batch, chunk = int(tcfg["batch_size"]), int(tcfg["chunk_size"])
    train_ds = make_dataset(train_shards, spec, batch, chunk, rng)
    val_ds = make_dataset(val_shards, spec, max(batch, 4096), chunk) if val_shards else None
    if spec.quantiles:  # the resolution head is trained on the same target, log(pt_gen / pt)
        train_ds = train_ds.map(lambda x, y: (x, (y, y)))
        val_ds = val_ds.map(lambda x, y: (x, (y, y))) if val_ds is not None else None
    monitor = "val_loss" if val_ds is not None else "loss"

    model = build_model(config, spec)
    checkpoint = os.path.join(output_dir, "checkpoint.keras")
    es = tcfg.get("early_stopping") or {}
    callbacks: list[keras.callbacks.Callback] = [
        _AtomicCheckpoint(checkpoint, monitor, float(es.get("min_delta") or 0.0)),
    ]
    if es:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor,
                patience=int(es.get("patience", 5)),
                min_delta=float(es.get("min_delta") or 0.0),
                restore_best_weights=True,
            )
        )
    lr = tcfg.get("reduce_lr_on_plateau")
    if lr:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                patience=int(lr.get("patience", 2)),
                factor=float(lr.get("factor", 0.3)),
                min_delta=float(lr.get("min_delta") or 0.0),
                verbose=0,
            )
        )
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=int(tcfg["epochs"]),
        steps_per_epoch=tcfg.get("steps_per_epoch"),
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # shuffling is done by the pipeline (shards and jets within chunks)
    )
    if os.path.exists(checkpoint):
        model = load_model(checkpoint)  # the best epoch (EarlyStopping restores only when it stops early)
    model_path = os.path.join(output_dir, "model.keras")
    save_model_atomic(model, model_path)
    history = {k: [float(x) for x in v] for k, v in hist.history.items()}
    buf = io.StringIO()
    writer = csv.writer(buf)
    keys = sorted(history)
    writer.writerow(["epoch", *keys])
    for i in range(len(history.get("loss", []))):
        writer.writerow([i, *(history[k][i] for k in keys)])
    write_text(os.path.join(output_dir, "history.csv"), buf.getvalue())
    return TrainResult(
        model_path=model_path,
        spec_path=spec_path,
        spec=spec,
        history=history,
        shards={"train": train_shards, "validation": val_shards, "test": test_shards},
    )
