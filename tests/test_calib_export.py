"""ONNX export and onnxruntime inference against Keras (wfit.calib.export)."""

from __future__ import annotations

import pickle
import re
import shutil
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
from wfit.calib.onnx_spec import ModelSpecError, embed_feature_spec, write_sidecar

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


def _export_seeded(tmp_path_factory: pytest.TempPathFactory, seed: int, spec: FeatureSpec, model_config: dict) -> tuple:
    """A randomly initialised model (seeded) on the real features, exported to ONNX: (model, spec, path)."""
    import keras

    from wfit.calib import build_model, export_onnx

    keras.utils.set_random_seed(seed)
    config = load_config(overrides={"features": REAL_FEATURES, "model": model_config})
    model = build_model(config, spec, compile=False)
    # Scale the output layer so that predictions have a calibration's size (|log correction| < 1).
    out = model.get_layer("log_correction")
    kernel, bias = out.get_weights()
    out.set_weights([kernel * 0.2, bias])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, spec, str(path))
    return model, spec, str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A seeded, randomly initialised model on the real features, exported to ONNX."""
    spec = FeatureSpec.from_config(REAL_FEATURES, load_transform(str(DATA / "transform.yaml")))
    return _export_seeded(tmp_path_factory, 5, spec, MODEL)


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


# ---------------------------------------------------------------------- a specification that disagrees
def _spec_without(spec: FeatureSpec, section: str, name: str) -> FeatureSpec:
    """``spec`` without one feature: ``section`` is "jet" or a constituent type."""
    data = spec.to_dict()
    part = data["jet"] if section == "jet" else data["constituents"][section]
    for kind in ("numerical", "categorical"):
        if name in part[kind]:
            part[kind].remove(name)
    return FeatureSpec.from_dict(data)


def _another_spec(spec: FeatureSpec, edit: str) -> FeatureSpec:
    return _spec_without(spec, "jet", "num_pv") if edit == "jet feature" else _spec_without(spec, "ch", "ch_pv_ass")


def _edited_model(path: str, tmp_path: Path, edit: str) -> str:
    """A copy of the exported model with one disagreement between its specification and its graph."""
    proto = onnx.load(path)
    spec = read_feature_spec(path)
    if edit in ("jet feature", "constituent input"):
        embed_feature_spec(proto, _another_spec(spec, edit))
    elif edit == "input dtype":
        value = next(i for i in proto.graph.input if i.name == "ch_id")
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    elif edit == "output":
        proto.graph.output[0].name = "prediction"
    out = tmp_path / f"{edit.replace(' ', '_')}.onnx"
    onnx.save(proto, str(out))
    return str(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # the metadata lists 6 jet features, the graph takes 7
        ("jet feature", r"input 'jet_numerical' has shape \['n_jets', 7\] of type float32, but the feature "
         r"specification \(metadata 'wfit\.calib\.features', field jet\.numerical\) builds shape "
         r"\['n_jets', 6\] of type float32, 6 features; .*export the model again"),
        # the metadata no longer has the categorical ch_pv_ass, the graph still takes it
        ("constituent input", r"the graph's inputs .* not built by the specification "
         r"\{'ch_pv_ass': 'constituents\.ch'\}\); .*export the model again"),
        ("input dtype", r"input 'ch_id' has shape \['n_jets', 'n_ch'\] of type float32, but the feature "
         r"specification \(metadata 'wfit\.calib\.features', field constituents\.ch\.categorical\) builds "
         r"shape \['n_jets', 'n_ch'\] of type int32"),
        ("output", r"the graph's outputs \[\('prediction', \['n_jets', 1\], 'float32'\)\] are not the "
         r"calibration's outputs \[\('log_correction', \['n_jets', 1\], 'float32'\)\] \(metadata "
         r"'wfit\.calib\.features': the specification has no resolution head"),
    ],
)  # fmt: skip
def test_specification_that_disagrees_with_the_graph_is_refused(
    exported: tuple, tmp_path: Path, edit: str, message: str
) -> None:
    """The one reader checks every file against its graph, whoever reads it: read_feature_spec and the
    calibrator (the processor's JetCalibration and the report read through it)."""
    _, _, path = exported
    bad = _edited_model(path, tmp_path, edit)
    for read in (read_feature_spec, lambda p: OnnxCalibrator(p).spec):
        with pytest.raises(ModelSpecError) as err:
            read(bad)
        assert type(err.value) is ModelSpecError
        text = str(err.value)
        assert text.startswith(f"{bad}: "), text
        assert re.search(message, text), text


def test_sidecar_from_another_export_is_refused(exported: tuple, tmp_path: Path) -> None:
    _, spec, path = exported
    copy = tmp_path / "copy.onnx"
    shutil.copy(path, copy)
    assert read_feature_spec(copy).to_dict() == spec.to_dict()  # no sidecar: the metadata alone
    sidecar = write_sidecar(copy, _another_spec(spec, "jet feature"))
    with pytest.raises(ModelSpecError) as err:
        read_feature_spec(copy)
    assert type(err.value) is ModelSpecError
    assert str(err.value).startswith(f"{sidecar} disagrees with the feature specification embedded in {copy} "
                                     "(metadata 'wfit.calib.features'); the sidecar belongs to another export")


def test_unreadable_or_unspecified_models_are_refused(exported: tuple, tmp_path: Path) -> None:
    _, _, path = exported
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf")
    with pytest.raises(ModelSpecError, match=r"junk\.onnx: not a readable ONNX model .* wfit\.calib\.export_onnx"):
        read_feature_spec(junk)
    proto = onnx.load(path)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelSpecError, match=r"bare\.onnx: no feature specification \(metadata_props "
                       r"'wfit\.calib\.features' and no .*bare\.onnx\.features\.yaml\)"):
        read_feature_spec(bare)
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx: ONNX model not found"):
        read_feature_spec(tmp_path / "nope.onnx")


# ---------------------------------------------------------------------- the resolution head
QUANTILES = (0.16, 0.84)


@pytest.fixture(scope="module")
def exported_with_head(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A seeded, randomly initialised model with a resolution head (quantiles 0.16, 0.84), exported."""
    import dataclasses

    spec = dataclasses.replace(
        FeatureSpec.from_config(REAL_FEATURES, load_transform(str(DATA / "transform.yaml"))), quantiles=QUANTILES
    )
    return _export_seeded(tmp_path_factory, 6, spec, {**MODEL, "resolution": {"quantiles": list(QUANTILES)}})


def test_resolution_head_matches_keras_and_is_described_by_the_spec(exported_with_head: tuple) -> None:
    from wfit.calib.model import predict_outputs

    model, spec, path = exported_with_head
    proto = onnx.load(path)
    assert [o.name for o in proto.graph.output] == ["log_correction", "log_quantiles"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.output[1].type.tensor_type.shape.dim]
    assert dims == ["n_jets", 2]
    assert read_feature_spec(path).quantiles == QUANTILES
    assert read_feature_spec(path).to_dict()["resolution"] == {"quantiles": list(QUANTILES)}
    arrays = _real_arrays()
    calib = OnnxCalibrator(path)
    onnx_out = calib.predict_outputs(arrays)
    keras_out = predict_outputs(model, arrays, spec)
    for name in ("log_correction", "log_quantiles"):
        assert np.abs(onnx_out[name] - keras_out[name]).max() < TOLERANCE, name
    np.testing.assert_array_equal(calib.predict(arrays), onnx_out["log_correction"])
    # The quantiles bracket the correction and never cross (by construction, whatever the weights).
    q, c = onnx_out["log_quantiles"], onnx_out["log_correction"]
    assert np.all(q[:, 0] < c) and np.all(c < q[:, 1])


def test_resolution_head_of_another_width_is_refused(exported_with_head: tuple, tmp_path: Path) -> None:
    import dataclasses

    _, spec, path = exported_with_head
    proto = onnx.load(path)
    embed_feature_spec(proto, dataclasses.replace(spec, quantiles=(0.05, 0.16, 0.84)))
    bad = tmp_path / "three.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ModelSpecError, match=r"three\.onnx: the graph's outputs .*'log_quantiles', \['n_jets', 2\].*"
                       r"resolution\.quantiles \[0\.05, 0\.16, 0\.84\] give 3 columns"):  # fmt: skip
        read_feature_spec(bad)
    proto = onnx.load(path)
    embed_feature_spec(proto, dataclasses.replace(spec, quantiles=()))
    onnx.save(proto, str(bad))
    with pytest.raises(ModelSpecError, match="the specification has no resolution head"):
        read_feature_spec(bad)


def test_predictions_do_not_depend_on_the_other_jets(exported_with_head: tuple) -> None:
    """Bit for bit: a jet's outputs are the same alone, in any subset, in any chunking (what lets the processor
    cache them)."""
    _, _, path = exported_with_head
    arrays = _random_arrays(np.random.default_rng(11), 300, {"ch": 40, "ne": 30, "sv": 4})
    whole = OnnxCalibrator(path).predict_outputs(arrays)
    rows = np.sort(np.random.default_rng(2).choice(300, 37, replace=False))
    subset = {k: v[rows] for k, v in arrays.items()}
    for calib, part, index in (
        (OnnxCalibrator(path, chunk_size=7), arrays, slice(None)),
        (OnnxCalibrator(path, sub_batch=5), arrays, slice(None)),
        (OnnxCalibrator(path, sub_batch=None), arrays, slice(None)),
        (OnnxCalibrator(path), subset, rows),
        (OnnxCalibrator(path, chunk_size=1), subset, rows),
    ):
        got = calib.predict_outputs(part)
        for name in whole:
            np.testing.assert_array_equal(got[name], whole[name][index], err_msg=name)


def test_quantile_levels_are_checked() -> None:
    import dataclasses

    from wfit.calib import ConfigError
    from wfit.calib.features import FeatureError

    spec = FeatureSpec.from_config(REAL_FEATURES, load_transform(str(DATA / "transform.yaml")))
    message = r"resolution\.quantiles .* must be increasing, in \(0, 1\) and not 0\.5"
    for bad in ((0.84, 0.16), (0.5,), (0.0, 0.9), (0.2, 0.2)):
        with pytest.raises(FeatureError, match=message):
            dataclasses.replace(spec, quantiles=bad)

    with pytest.raises(ConfigError, match=r"model\.resolution\.quantiles must be an increasing list"):
        load_config(overrides={"model": {"resolution": {"quantiles": [0.84, 0.16]}}})
