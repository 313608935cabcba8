"""DNN jet pT calibration: data, features, Deep Sets model, training, ONNX export and reports.

The pipeline: a data directory in ml-jec's layout (:func:`open_data_dir`) -> features built with numpy and
awkward only (:func:`build_inputs`, shared with the coffea processor) -> a Keras Deep Sets model
(:func:`build_model`, :func:`train_model`) -> an ONNX file (:func:`export_onnx`) run with onnxruntime
(:class:`OnnxCalibrator`) -> a calibration report (:func:`calibration_report`).

Importing this package does not import TensorFlow: names are resolved lazily, and only the model, training
and export code needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> submodule that defines it.
_EXPORTS = {
    # config
    "CalibConfig": "config",
    "ConfigError": "config",
    "default_config_path": "config",
    "load_config": "config",
    # data
    "DataDir": "data",
    "DataError": "data",
    "Shard": "data",
    "iterate": "data",
    "open_data_dir": "data",
    # transform
    "Transform": "transform",
    "TransformError": "transform",
    "build_transform": "transform",
    "load_transform": "transform",
    "save_transform": "transform",
    # features
    "ConstituentSpec": "features",
    "FeatureError": "features",
    "FeatureSpec": "features",
    "build_inputs": "features",
    "feature_columns": "features",
    "pad_constituents": "features",
    "target": "features",
    "wrap_phi": "features",
    # model (TensorFlow)
    "build_model": "model",
    "load_model": "model",
    # training (TensorFlow)
    "TrainResult": "train",
    "train_model": "train",
    # export
    "OnnxCalibrator": "export",
    "export_onnx": "export",
    # the specification an ONNX file carries
    "read_feature_spec": "onnx_spec",
    "interval_levels": "onnx_spec",
    # synthetic data
    "SyntheticTruth": "synthetic",
    "load_truth": "synthetic",
    "write_synthetic": "synthetic",
    # report
    "Report": "report",
    "calibration_report": "report",
    "flavour_class": "report",
    "response_summary": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
