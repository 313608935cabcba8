"""The calibration configuration: one YAML file for features, model, loss, optimiser and training.

A user file is merged over the shipped default (``wfit/calib/configs/default.yaml``): a key that is given
replaces the default's, except that sections are merged key by key. Maps keyed by names (constituent types,
blocks, embeddings) are replaced as a whole, so that a config can drop a constituent type. Every key is
checked against the schema below: an unknown key is an error that names the file and the key.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from wfit.yamlfile import safe_load

__all__ = ["CalibConfig", "ConfigError", "default_config_path", "load_config"]


class ConfigError(ValueError):
    """A calibration config has an unknown key or a bad value."""


_NAMED = object()  # marks a map whose keys are free names (replaced, not merged)
_BLOCK = {"type": str, "units": list, "embeddings": _NAMED}
_SCHEMA: dict[str, Any] = {
    "features": {
        "jet": {"numerical": list, "categorical": list},
        "constituents": (_NAMED, {"numerical": list, "categorical": list, "max_count": int}),
    },
    "model": {
        "blocks": (_NAMED, _BLOCK),
        "jet_embeddings": _NAMED,
        "head": {"type": str, "units": list},
        "activation": str,
        # The resolution head: quantiles of log(pt_gen / pt) predicted beside the correction (absent: none).
        "resolution": {"quantiles": list, "loss_weight": float},
    },
    "loss": {"name": str, "delta": float},
    "optimizer": {"name": str, "learning_rate": float, "clipnorm": float, "weight_decay": float},
    "train": {
        "epochs": int,
        "batch_size": int,
        "steps_per_epoch": int,
        "validation_fraction": float,
        "test_fraction": float,
        "chunk_size": int,
        "shuffle_buffer_chunks": int,
        "early_stopping": {"patience": int, "min_delta": float},
        "reduce_lr_on_plateau": {"patience": int, "factor": float, "min_delta": float},
        "seed": int,
    },
}
BLOCK_TYPES = ("plain", "resnet")
ACTIVATIONS = ("relu", "softplus", "gelu", "tanh")
LOSSES = ("mae", "mse", "huber", "logcosh")
OPTIMIZERS = ("adam", "adamw", "sgd")


def default_config_path(name: str = "default") -> str:
    """Path of a shipped config: ``"default"`` (deployed model), ``"large"`` (benchmark reference) or
    ``"pfnano"`` (only features with a NanoAOD/PFNano source, for the processor's jet calibration)."""
    return str(resources.files("wfit.calib").joinpath("configs", f"{name}.yaml"))


def _check(node: Any, schema: Any, where: str, source: str) -> None:
    """Check ``node`` against ``schema``; raise ConfigError naming source and dotted key."""
    if schema is _NAMED:
        if node is not None and not isinstance(node, Mapping):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(node).__name__}")
        return
    if isinstance(schema, tuple):  # (_NAMED, child schema): free keys, each with the child schema
        if node is None:
            return
        if not isinstance(node, Mapping):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(node).__name__}")
        for key, child in node.items():
            _check(child, schema[1], f"{where}.{key}", source)
        return
    if isinstance(schema, dict):
        if node is None:
            return
        if not isinstance(node, Mapping):
            raise ConfigError(f"{source}: {where} must be a mapping, got {type(node).__name__}")
        for key, child in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key not in schema:
                raise ConfigError(f"{source}: unknown key {here!r}; allowed at this level: {sorted(schema)}")
            _check(child, schema[key], here, source)
        return
    if node is None:
        return
    if schema is float and isinstance(node, int) and not isinstance(node, bool):
        return
    if not isinstance(node, schema) or isinstance(node, bool):
        raise ConfigError(f"{source}: {where} must be of type {schema.__name__}, got {node!r}")


def _merge(base: Any, update: Any, schema: Any) -> Any:
    if isinstance(schema, dict) and isinstance(base, Mapping) and isinstance(update, Mapping):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(base.get(key), value, schema.get(key))
        return out
    return copy.deepcopy(update)


@dataclass(frozen=True)
class CalibConfig:
    """A validated calibration config.

    Attributes:
        data: The merged configuration mapping (sections ``features``, ``model``, ``loss``,
            ``optimizer``, ``train``).
        source: The file (or files) it was read from.
    """

    data: dict[str, Any]
    source: str

    @property
    def features(self) -> dict[str, Any]:
        return self.data["features"]

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    @property
    def quantiles(self) -> tuple[float, ...]:
        """Levels of the resolution head (``model.resolution.quantiles``); empty without one."""
        return tuple(float(q) for q in ((self.model.get("resolution") or {}).get("quantiles") or ()))

    @property
    def loss(self) -> dict[str, Any]:
        return self.data["loss"]

    @property
    def optimizer(self) -> dict[str, Any]:
        return self.data["optimizer"]

    @property
    def train(self) -> dict[str, Any]:
        return self.data["train"]

    def to_yaml(self) -> str:
        """The merged config as YAML."""
        return yaml.safe_dump(self.data, sort_keys=False)

    def validate(self) -> None:
        """Check values and cross-references (blocks vs constituent types, embeddings vs features)."""
        src = self.source
        _check(self.data, _SCHEMA, "", src)
        types = set(self.features.get("constituents") or {})
        blocks = self.model.get("blocks") or {}
        if set(blocks) != types:
            raise ConfigError(
                f"{src}: model.blocks has {sorted(blocks)} but features.constituents has {sorted(types)}; "
                "give one block per constituent type"
            )
        for name, block in blocks.items():
            if block.get("type") not in BLOCK_TYPES:
                raise ConfigError(f"{src}: model.blocks.{name}.type must be one of {BLOCK_TYPES}")
            units = block.get("units") or []
            if not units or not all(isinstance(u, int) and u > 0 for u in units):
                raise ConfigError(
                    f"{src}: model.blocks.{name}.units must be a non-empty list of positive ints"
                )
            cats = set(self.features["constituents"][name].get("categorical") or [])
            emb = block.get("embeddings") or {}
            if set(emb) != cats:
                raise ConfigError(
                    f"{src}: model.blocks.{name}.embeddings has {sorted(emb)} but the categorical features "
                    f"of {name!r} are {sorted(cats)}; give one embedding size per categorical feature"
                )
        jet_cats = set(self.features.get("jet", {}).get("categorical") or [])
        if set(self.model.get("jet_embeddings") or {}) != jet_cats:
            raise ConfigError(
                f"{src}: model.jet_embeddings must give one size per jet categorical feature "
                f"{sorted(jet_cats)}"
            )
        head = self.model.get("head") or {}
        if head.get("type") not in BLOCK_TYPES or not head.get("units"):
            raise ConfigError(f"{src}: model.head needs type in {BLOCK_TYPES} and a non-empty units list")
        resolution = self.model.get("resolution") or {}
        levels = resolution.get("quantiles")
        numbers = all(isinstance(q, float | int) and not isinstance(q, bool) for q in levels or ())
        if resolution and (
            not levels
            or not numbers
            or not all(0 < q < 1 and q != 0.5 for q in levels)
            or any(b <= a for a, b in zip(levels, levels[1:], strict=False))
        ):
            raise ConfigError(
                f"{src}: model.resolution.quantiles must be an increasing list of levels in (0, 1) without 0.5, "
                f"e.g. [0.16, 0.84]; got {levels!r}"
            )
        if resolution.get("loss_weight") is not None and not float(resolution["loss_weight"]) > 0:
            raise ConfigError(f"{src}: model.resolution.loss_weight must be positive")
        if self.model.get("activation") not in ACTIVATIONS:
            raise ConfigError(f"{src}: model.activation must be one of {ACTIVATIONS}")
        if self.loss.get("name") not in LOSSES:
            raise ConfigError(f"{src}: loss.name must be one of {LOSSES}, got {self.loss.get('name')!r}")
        if self.optimizer.get("name") not in OPTIMIZERS:
            raise ConfigError(f"{src}: optimizer.name must be one of {OPTIMIZERS}")
        for key in ("epochs", "batch_size", "chunk_size"):
            if not (isinstance(self.train.get(key), int) and self.train[key] > 0):
                raise ConfigError(f"{src}: train.{key} must be a positive integer")


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> CalibConfig:
    """Read a calibration config, merged over the shipped default, and validate it.

    Args:
        path: YAML file (local path or fsspec URL); None for the default alone.
        overrides: Mapping merged last (e.g. ``{"train": {"epochs": 2}}``), checked like a file.

    Returns:
        The validated config.

    Raises:
        ConfigError: Unknown key or bad value, naming the file and the key.
    """
    import fsspec

    default = default_config_path()
    with open(default) as f:
        data = safe_load(f, source=str(default))
    sources = [default]
    layers = []
    if path is not None:
        try:
            with fsspec.open(str(path), "r") as f:
                layers.append((safe_load(f, source=str(path)) or {}, str(path)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: calibration config not found") from None
    if overrides:
        layers.append((dict(overrides), "<overrides>"))
    for layer, source in layers:
        _check(layer, _SCHEMA, "", source)
        data = _merge(data, layer, _SCHEMA)
        sources.append(source)
    config = CalibConfig(data=data, source=" + ".join(sources) if len(sources) > 1 else sources[0])
    config.validate()
    return config
