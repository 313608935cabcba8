"""ONNX export and onnxruntime inference against Keras (wfit.calib.export)."""

from __future__ import annotations

import pickle
from pathlib import Path

import awkward as ak
import numpy as np
import onnx
import pytest
import uproot
import yaml

from tests.reference_features import real_features
from wfit.calib import (
    FeatureSpec,
    OnnxCalibrator,
    build_inputs,
    load_config,
    load_transform,
    read_feature_spec,
)

DATA = Path(__file__).parent / "data" / "jetcalib"
TOLERANCE = 1e-5  # max |ONNX - Keras| on log(pt_gen / pt)

REAL_FEATURES = real_features()
MODEL = {
    "blocks": {
        "ch": {"type": "resnet", "units": [32, 32, 32], "embeddings": {"ch_id": 3, "ch_pv_ass": 2}},
        "ne": {"type": "plain", "units": [16, 16], "embeddings": {"ne_id": 2}},
        "sv": {"type": "plain", "units": [8], "embeddings": {}},
    },
    "head": {"type": "plain", "units": [32, 32]},
    "activation": "softplus",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A seeded, randomly initialised model on the real features, exported to ONNX."""
    import keras

    from wfit.calib import build_model, export_onnx

    keras.utils.set_random_seed(5)
    spec = FeatureSpec.from_config(REAL_FEATURES, load_transform(str(DATA / "transform.yaml")))
    config = load_config(overrides={"features": REAL_FEATURES, "model": MODEL})
    model = build_model(config, spec, compile=False)
    # Scale the output layer so that predictions have a calibration's size (|log correction| < 1).
    out = model.get_layer("log_correction")
    kernel, bias = out.get_weights()
    out.set_weights([kernel * 0.2, bias])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, spec, str(path))
    return model, spec, str(path)


def _keras(model, inputs: dict, spec: FeatureSpec) -> np.ndarray:
    return np.asarray(model.predict_on_batch([inputs[n] for n in spec.input_names]))[:, 0]


def _real_arrays() -> dict:
    arrays = uproot.concatenate({str(DATA / f"shards/{i}.root"): "Jets" for i in range(1, 6)}, library="ak")
    return {f: (ak.to_numpy(arrays[f]) if arrays[f].ndim == 1 else arrays[f]) for f in arrays.fields}


def _random_arrays(rng: np.random.Generator, n: int, max_counts: dict[str, int]) -> dict:
    """Random jets in the shards' ranges; constituent counts from 0 (often) to max_counts[type]."""
    arrays: dict = {
        "pt": rng.uniform(15, 2000, n),
        "eta": rng.uniform(-4.7, 4.7, n),
        "phi": rng.uniform(-np.pi, np.pi, n),
        "mass": rng.uniform(0, 200, n),
        "area": rng.uniform(0.3, 0.8, n),
        "num_pv": rng.integers(1, 100, n),
        "rho": rng.uniform(0, 60, n),
    }
    spec = {
        "ch": {
            "pt": (0.1, 500),
            "eta": (-2.9, 2.9),
            "phi": (-np.pi, np.pi),
            "dxy": (-2, 2),
            "dxy_significance": (0, 50),
            "dz": (-10, 10),
            "num_hits": (0, 30),
            "num_pixel_hits": (0, 4),
            "lost_hits": (-1, 2),
            "norm_chi2": (0, 100),
        },
        "ne": {"pt": (0.1, 500), "eta": (-5, 5), "phi": (-np.pi, np.pi), "hcal_frac": (0, 1)},
        "sv": {
            "mass": (0.1, 6),
            "pt": (1, 300),
            "distance": (0, 5),
            "significance": (0, 100),
            "num_tracks": (2, 10),
        },
    }
    categorical = {
        "ch": {"id": [-211, -13, -11, 11, 13, 211, 321], "pv_ass": [0, 1, 4, 5, 6, 7]},  # 321: unknown id
        "ne": {"id": [1, 2, 22, 130]},
        "sv": {},
    }
    for ctype, fields in spec.items():
        counts = rng.integers(0, max_counts[ctype] + 1, n)
        counts[rng.random(n) < 0.3] = 0  # many jets without constituents of this type
        total = int(counts.sum())
        for field, (lo, hi) in fields.items():
            values = rng.uniform(lo, hi, total)
            if field in ("num_hits", "num_pixel_hits", "lost_hits", "num_tracks"):
                values = np.round(values).astype(np.int32)
            arrays[f"{ctype}_{field}"] = ak.unflatten(values, counts)
        for field, choices in categorical[ctype].items():
            arrays[f"{ctype}_{field}"] = ak.unflatten(rng.choice(choices, total).astype(np.int32), counts)
    return arrays


def counts_of(arrays: dict, ctype: str) -> np.ndarray:
    return ak.to_numpy(ak.num(arrays[f"{ctype}_pt"]))


def test_onnx_matches_keras_on_real_shards(exported: tuple) -> None:
    model, spec, path = exported
    arrays = _real_arrays()
    calib = OnnxCalibrator(path, threads=1)
    onnx_pred = calib.predict(arrays)
    keras_pred = _keras(model, build_inputs(arrays, spec), spec)
    assert np.abs(keras_pred).max() > 0.05  # the comparison is not trivially between zeros
    print(
        "max |Keras| =",
        np.abs(keras_pred).max(),
        "; max |ONNX - Keras| =",
        np.abs(onnx_pred - keras_pred).max(),
    )
    assert np.abs(onnx_pred - keras_pred).max() < TOLERANCE
    np.testing.assert_allclose(calib.correction(arrays), np.exp(onnx_pred), rtol=1e-6)


@pytest.mark.parametrize(("n", "caps"), [(1, (3, 2, 1)), (37, (64, 64, 8)), (400, (20, 5, 0))])
def test_onnx_matches_keras_on_random_inputs(exported: tuple, n: int, caps: tuple) -> None:
    model, spec, path = exported
    rng = np.random.default_rng(n)
    arrays = _random_arrays(rng, n, dict(zip(("ch", "ne", "sv"), caps, strict=True)))
    inputs = build_inputs(arrays, spec)
    assert inputs["ch_numerical"].shape[:2] == (n, max(1, min(int(counts_of(arrays, "ch").max()), 64)))
    calib = OnnxCalibrator(path)
    diff = np.abs(calib.run(inputs) - _keras(model, inputs, spec))
    assert diff.max() < TOLERANCE


def test_padding_and_chunking_do_not_change_predictions(exported: tuple) -> None:
    """Deep Sets with a mask: a jet's output is independent of how far its batch is padded."""
    _, _, path = exported
    arrays = _random_arrays(np.random.default_rng(3), 200, {"ch": 40, "ne": 30, "sv": 4})
    whole = OnnxCalibrator(path, chunk_size=10_000, sub_batch=None).predict(arrays)
    chunked = OnnxCalibrator(path, chunk_size=7, sub_batch=None).predict(arrays)
    one_by_one = OnnxCalibrator(path, chunk_size=1, sub_batch=None).predict(arrays)
    sorted_sub_batches = OnnxCalibrator(path, chunk_size=10_000, sub_batch=16).predict(arrays)
    np.testing.assert_allclose(chunked, whole, atol=2e-6)
    np.testing.assert_allclose(one_by_one, whole, atol=2e-6)
    np.testing.assert_allclose(sorted_sub_batches, whole, atol=2e-6)


def test_onnx_file_layout(exported: tuple) -> None:
    _, spec, path = exported
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == spec.input_names
    assert [o.name for o in proto.graph.output] == ["log_correction"]
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input
    }
    assert dims["ch_numerical"] == ["n_jets", "n_ch", 10]
    assert dims["sv_mask"] == ["n_jets", "n_sv"]
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) <= 18
    assert read_feature_spec(path).to_dict() == spec.to_dict()
    with open(path + ".features.yaml") as f:
        assert yaml.safe_load(f) == spec.to_dict()


def test_calibrator_pickles_without_session(exported: tuple) -> None:
    _, _, path = exported
    arrays = _random_arrays(np.random.default_rng(9), 20, {"ch": 5, "ne": 5, "sv": 2})
    calib = OnnxCalibrator(path)
    before = calib.predict(arrays)
    clone = pickle.loads(pickle.dumps(calib))
    assert clone._session is None
    np.testing.assert_array_equal(clone.predict(arrays), before)


def test_export_refuses_unsupported_opset(exported: tuple, tmp_path: Path) -> None:
    from wfit.calib import export_onnx

    model, spec, _ = exported
    with pytest.raises(ValueError, match=r"opset=19 is not supported; use 13 to 18"):
        export_onnx(model, spec, str(tmp_path / "m.onnx"), opset=19)
