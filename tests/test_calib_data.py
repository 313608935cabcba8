"""Reading ml-jec's data layout, transform.yaml chains, build_transform and bad-input errors (wfit.calib)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from wfit.calib import (
    ConfigError,
    DataError,
    FeatureSpec,
    Transform,
    TransformError,
    build_transform,
    feature_columns,
    iterate,
    load_config,
    load_transform,
    open_data_dir,
    wrap_phi,
)

DATA = Path(__file__).parent / "data" / "jetcalib"


def _hand_chain(steps: list[dict], x: np.ndarray) -> np.ndarray:
    """transform.yaml applied by hand: each step with its own parameters, in float64."""
    y = np.asarray(x, dtype=np.float64)
    for step in steps:
        p = step.get("params", {})
        if step["type"] == "abs":
            y = np.abs(y)
        elif step["type"] == "log":
            y = np.log(y)
        elif step["type"] == "arcsinh":
            y = np.arcsinh(y / p["scale"])
        elif step["type"] == "linear":
            y = (y - p["loc"]) / p["scale"]
        else:
            raise AssertionError(step)
    return y


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """A writable copy of tests/data/jetcalib."""
    dest = tmp_path / "jetcalib"
    shutil.copytree(DATA, dest)
    return dest


def test_import_does_not_load_tensorflow() -> None:
    code = (
        "import sys, wfit.calib as c; c.open_data_dir; c.build_inputs; c.OnnxCalibrator; c.write_synthetic; "
        "c.calibration_report; bad = [m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_dir_reads_as_plain_uproot() -> None:
    d = open_data_dir(str(DATA))
    assert [Path(s.path).name for s in d.shards] == [f"{i}.root" for i in range(1, 6)]
    assert d.num_jets == 50
    ref = uproot.concatenate({str(DATA / f"shards/{i}.root"): "Jets" for i in range(1, 6)}, library="ak")
    branches = list(d.branches)
    assert branches == ref.fields
    chunks = list(iterate(d.shards, branches, step_size=7))
    for name in branches:
        got = ak.concatenate([c[name] for c in chunks])
        assert ak.all(got == ref[name]), name
    assert isinstance(chunks[0]["pt"], np.ndarray)
    assert chunks[0]["pt"].dtype == np.float32


def test_data_dir_from_fsspec_url() -> None:
    local = open_data_dir(str(DATA))
    remote = open_data_dir(DATA.resolve().as_uri())  # file:// URL through fsspec and uproot
    assert remote.transform.to_dict() == local.transform.to_dict()
    a = next(iterate(remote.shards, ["pt", "ch_pt"], step_size=100))
    b = next(iterate(local.shards, ["pt", "ch_pt"], step_size=100))
    np.testing.assert_array_equal(a["pt"], b["pt"])
    assert ak.all(a["ch_pt"] == b["ch_pt"])


def test_transform_chains_match_hand_application() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    with open(DATA / "transform.yaml") as f:
        raw = yaml.safe_load(f)
    arrays = uproot.concatenate({str(DATA / "shards/1.root"): "Jets"}, library="ak")
    assert set(tr.numerical) == set(raw["numerical"])
    for name, steps in raw["numerical"].items():
        x = ak.to_numpy(ak.flatten(arrays[name], axis=None)).astype(np.float64)
        np.testing.assert_allclose(
            tr.apply(name, x), _hand_chain(steps, x), rtol=2e-6, atol=1e-6, err_msg=name
        )
    # Each step uses its own parameters (ml-jec's lambdas applied the last step's to all): a literal value.
    expected = (math.asinh(1.0 / 0.1) - 0.0002759695053100586) / 11.780537247657776
    assert tr.apply("ch_pt", np.array([1.0]))[0] == pytest.approx(expected, rel=1e-6)


def test_categorical_index() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    values = np.array([-211, 211, 13, 22, 0])
    np.testing.assert_array_equal(tr.index("ch_id", values), [0, 5, 4, 6, 6])  # unknown -> len(values)
    assert tr.cardinality("ch_id") == 7


def test_build_transform_reproduces_linear_params() -> None:
    d = open_data_dir(str(DATA))
    nonlinear = {
        "pt": [{"type": "arcsinh", "params": {"scale": 10.0}}],
        "eta": [],
        "ch_dxy": [{"type": "abs"}, {"type": "arcsinh", "params": {"scale": 0.001}}],
        "ch_rel_pt": [{"type": "arcsinh", "params": {"scale": 0.01}}],
    }
    chunks = iterate(d.shards, ["pt", "eta", "ch_dxy", "ch_pt"], step_size=13)
    tr = build_transform((feature_columns(c, list(nonlinear)) for c in chunks), nonlinear)

    ref = uproot.concatenate({s.path: "Jets" for s in d.shards}, library="ak")
    raw = {
        "pt": ak.to_numpy(ref["pt"]),
        "eta": ak.to_numpy(ref["eta"]),
        "ch_dxy": ak.to_numpy(ak.flatten(ref["ch_dxy"])),
        "ch_rel_pt": ak.to_numpy(ak.flatten(ref["ch_pt"] / ref["pt"])),
    }
    for name, steps in nonlinear.items():
        y = _hand_chain(steps, raw[name].astype(np.float64))
        chain = tr.numerical[name]
        assert chain[:-1] == steps
        assert chain[-1]["type"] == "linear"
        assert chain[-1]["params"]["loc"] == pytest.approx(y.min(), rel=1e-6, abs=1e-7), name
        assert chain[-1]["params"]["scale"] == pytest.approx(y.max() - y.min(), rel=1e-6), name
        scaled = tr.apply(name, raw[name])
        assert scaled.min() == pytest.approx(0.0, abs=1e-6)
        assert scaled.max() == pytest.approx(1.0, abs=1e-6)


def test_wrap_phi() -> None:
    rng = np.random.default_rng(11)
    d = rng.uniform(-20.0, 20.0, 10_000)
    d = d[np.abs(np.abs(np.remainder(d, 2 * np.pi)) - np.pi) > 1e-9]
    np.testing.assert_allclose(wrap_phi(d), np.arctan2(np.sin(d), np.cos(d)), atol=1e-9)
    w = wrap_phi(d)
    assert np.all(w >= -np.pi) and np.all(w < np.pi)
    assert wrap_phi(np.array([np.pi]))[0] == pytest.approx(-np.pi)
    # A jet at phi = 3.1 and a constituent at -3.1 are 2 pi - 6.2 apart, on the far side of the boundary.
    arrays = {"phi": np.array([3.1]), "ch_phi": ak.Array([[-3.1, 3.0]])}
    dphi = feature_columns(arrays, ["ch_dphi"])["ch_dphi"]
    np.testing.assert_allclose(dphi, [2 * np.pi - 6.2, -0.1], atol=1e-12)


def test_missing_shard_names_file_and_fix(data_copy: Path) -> None:
    (data_copy / "shards" / "3.root").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\.yaml: \[2\]\.path: shard .*shards/3\.root not found"):
        open_data_dir(str(data_copy))


def test_missing_data_yaml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.yaml: not found"):
        open_data_dir(str(tmp_path))


def test_count_mismatch(data_copy: Path) -> None:
    entries = yaml.safe_load((data_copy / "data.yaml").read_text())
    entries[1]["count"] = 11
    (data_copy / "data.yaml").write_text(yaml.safe_dump(entries))
    with pytest.raises(DataError, match=r"\[1\]\.count is 11 but .*2\.root holds 10 jets; fix the count"):
        open_data_dir(str(data_copy))


def test_transform_with_unknown_feature(data_copy: Path) -> None:
    raw = yaml.safe_load((data_copy / "transform.yaml").read_text())
    raw["numerical"]["ch_bogus"] = [{"type": "abs"}]
    (data_copy / "transform.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"transform\.yaml: feature\(s\) \['ch_bogus'\] are neither branches"):
        open_data_dir(str(data_copy))


def test_transform_with_bad_step(data_copy: Path) -> None:
    raw = yaml.safe_load((data_copy / "transform.yaml").read_text())
    raw["numerical"]["pt"][0]["type"] = "sqrt"
    (data_copy / "transform.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(
        TransformError, match=r"transform\.yaml: numerical\.pt\[0\]\.type: unknown step type 'sqrt'"
    ):
        open_data_dir(str(data_copy))
    with pytest.raises(TransformError, match=r"numerical\.x\[0\]\.params: step 'linear' takes parameters"):
        Transform(numerical={"x": [{"type": "linear", "params": {"loc": 0.0}}]})


def test_feature_without_chain_is_an_error() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    with pytest.raises(
        TransformError, match=r"numerical\.ch_rel_pt is missing but the model uses 'ch_rel_pt'"
    ):
        FeatureSpec.from_config(
            {"jet": {"numerical": ["pt"]}, "constituents": {"ch": {"numerical": ["ch_rel_pt"]}}}, tr
        )


def test_unknown_config_key(tmp_path: Path) -> None:
    path = tmp_path / "calib.yaml"
    path.write_text("train:\n  epochs: 2\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"calib\.yaml: unknown key 'train\.epoch'; allowed at this level"):
        load_config(str(path))
    path.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match=r"calib\.yaml: unknown key 'modle'"):
        load_config(str(path))
    with pytest.raises(
        ConfigError, match=r"model\.blocks has \['ch', 'ne', 'sv'\] but features\.constituents"
    ):
        load_config(overrides={"features": {"constituents": {"ch": {"numerical": ["ch_rel_pt"]}}}})


def test_default_config_is_valid() -> None:
    cfg = load_config()
    assert set(cfg.features["constituents"]) == {"ch", "ne", "sv"}
    assert cfg.train["seed"] == 1


def test_public_api_is_frozen() -> None:
    """A change to the public names of wfit.calib must be a visible decision."""
    import wfit.calib

    assert wfit.calib.__all__ == [
        "CalibConfig", "ConfigError", "ConstituentSpec", "DataDir", "DataError", "FeatureError",
        "FeatureSpec", "OnnxCalibrator", "Report", "Shard", "SyntheticTruth", "TrainResult", "Transform",
        "TransformError",
        "build_inputs", "build_model", "build_transform", "calibration_report", "default_config_path",
        "export_onnx", "feature_columns", "flavour_class", "interval_levels", "iterate", "load_config", "load_model",
        "load_transform", "load_truth", "open_data_dir", "pad_constituents", "read_feature_spec",
        "response_summary", "save_transform", "target", "train_model", "wrap_phi", "write_synthetic",
    ]  # fmt: skip
