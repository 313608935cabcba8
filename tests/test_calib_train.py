"""Synthetic jets and training (wfit.calib.synthetic, wfit.calib.train)."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from wfit.calib import (
    SyntheticTruth,
    feature_columns,
    load_config,
    load_truth,
    open_data_dir,
    response_summary,
    write_synthetic,
)

DATA = Path(__file__).parent / "data" / "jetcalib"
JET_LEVEL = {"features": {"constituents": {}}, "model": {"blocks": {}}}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticTruth]:
    location = tmp_path_factory.mktemp("synthetic")
    truth = write_synthetic(str(location), 20_000, n_shards=5, seed=21, calibration_jets=40_000)
    return location, truth


def test_synthetic_layout_matches_real_shards(synthetic: tuple) -> None:
    location, _ = synthetic
    real = uproot.open(DATA / "shards/1.root")["Jets"]
    fake = uproot.open(location / "shards/1.root")["Jets"]
    assert [(b.name, b.typename) for b in fake.branches] == [(b.name, b.typename) for b in real.branches]
    d = open_data_dir(str(location))
    assert d.num_jets == 20_000 and [s.count for s in d.shards] == [4000] * 5
    arrays = fake.arrays(["ch_size", "ch_pt", "ne_size", "ne_pt", "sv_size", "sv_mass"])
    for t, f in (("ch", "pt"), ("ne", "pt"), ("sv", "mass")):
        np.testing.assert_array_equal(ak.num(arrays[f"{t}_{f}"]), arrays[f"{t}_size"])
    # Constituents are ordered by decreasing pT, as in ml-jec's shards.
    assert ak.all(ak.flatten(arrays["ch_pt"][:, 1:] <= arrays["ch_pt"][:, :-1]))


def test_synthetic_is_seeded(synthetic: tuple, tmp_path: Path) -> None:
    location, _ = synthetic
    write_synthetic(str(tmp_path), 20_000, n_shards=5, seed=21, calibration_jets=40_000)
    a = uproot.open(location / "shards/2.root")["Jets"].arrays(["pt", "ne_pt", "pt_full_corr"])
    b = uproot.open(tmp_path / "shards/2.root")["Jets"].arrays(["pt", "ne_pt", "pt_full_corr"])
    assert (
        ak.all(a.pt == b.pt)
        and ak.all(ak.flatten(a.ne_pt == b.ne_pt))
        and ak.all(a.pt_full_corr == b.pt_full_corr)
    )
    assert (tmp_path / "transform.yaml").read_text() == (location / "transform.yaml").read_text()


def test_synthetic_transform_is_built_from_the_data(synthetic: tuple) -> None:
    location, _ = synthetic
    tr = yaml.safe_load((location / "transform.yaml").read_text())
    arrays = uproot.concatenate(
        {str(p): "Jets" for p in sorted((location / "shards").glob("*.root"))},
        ["pt", "ne_pt", "ne_eta", "eta"],
        library="ak",
    )
    columns = {k: (ak.to_numpy(arrays[k]) if arrays[k].ndim == 1 else arrays[k]) for k in arrays.fields}
    for name in ("pt", "ne_pt", "ne_deta"):
        raw = feature_columns(columns, [name])[name].astype(np.float64)
        steps = tr["numerical"][name]
        y = np.arcsinh(raw / steps[0]["params"]["scale"]) if steps[0]["type"] == "arcsinh" else raw
        assert steps[-1]["params"]["loc"] == pytest.approx(y.min(), rel=1e-6, abs=1e-6)
        assert steps[-1]["params"]["scale"] == pytest.approx(y.max() - y.min(), rel=1e-6)


def test_synthetic_truth(synthetic: tuple) -> None:
    location, truth = synthetic
    assert load_truth(str(location)) == truth
    # Analytic floor: one pT value, Gaussian smearing -> (q84 - q16) / 2 = 0.9945 sigma.
    sigma = float(np.sqrt(truth.stochastic**2 / 100.0 + truth.constant**2))
    floor = truth.floor_in_bins(np.full(2000, 100.0), np.array([50.0, 200.0]), samples=200)
    assert floor[0] == pytest.approx(0.9945 * sigma, rel=0.02)
    # The standard-like correction is flavour-averaged: median response near 1 at any pT.
    arrays = uproot.open(location / "shards/1.root")["Jets"].arrays(["pt_gen", "pt_full_corr"], library="np")
    response = arrays["pt_full_corr"] / arrays["pt_gen"]
    for lo, hi in ((50, 150), (150, 500), (500, 2000)):
        sel = (arrays["pt_gen"] >= lo) & (arrays["pt_gen"] < hi)
        median, resolution = response_summary(response[sel])
        assert median == pytest.approx(1.0, abs=0.02)
        assert resolution > 0.9 * np.median(truth.resolution_floor(arrays["pt_gen"][sel]))


def test_count_batches_matches_the_pipeline(synthetic: tuple) -> None:
    from wfit.calib.train import count_batches, make_dataset

    location, _ = synthetic
    d = open_data_dir(str(location))
    from wfit.calib import FeatureSpec

    spec = FeatureSpec.from_config(load_config().features, d.transform)
    shards = list(d.shards[:2])
    ds = make_dataset(shards, spec, batch_size=700, chunk_size=1500, rng=np.random.default_rng(0))
    sizes = [int(y.shape[0]) for _, y in ds]
    assert len(sizes) == count_batches(shards, 700, 1500) == ds.cardinality().numpy()
    assert sum(sizes) == 8000


def test_constituent_model_beats_jet_level_model(synthetic: tuple, tmp_path: Path) -> None:
    """On jets whose response depends on composition, Deep Sets over constituents must win."""
    from wfit.calib import train_model as train

    location, _ = synthetic
    common = {
        "train": {
            "epochs": 4,
            "batch_size": 256,
            "validation_fraction": 0.2,
            "early_stopping": None,
            "reduce_lr_on_plateau": None,
        }
    }
    deep = train(str(location), str(tmp_path / "deep"), load_config(overrides=common), verbose=0)
    flat = train(
        str(location), str(tmp_path / "flat"), load_config(overrides={**common, **JET_LEVEL}), verbose=0
    )
    # Reference: the Huber loss (delta 0.1, the default config's) of predicting no correction, by numpy.
    val = uproot.open(deep.shards["validation"][0].path)["Jets"].arrays(["pt", "pt_gen"], library="np")
    d = np.abs(np.log(val["pt_gen"].astype(np.float64) / val["pt"]))
    no_correction = np.mean(np.where(d < 0.1, 0.5 * d**2, 0.1 * (d - 0.05)))
    best_deep, best_flat = min(deep.history["val_loss"]), min(flat.history["val_loss"])
    assert best_flat < 0.8 * no_correction, (best_flat, no_correction)
    assert deep.history["val_loss"][-1] < deep.history["val_loss"][0]
    assert best_deep < 0.9 * best_flat, (best_deep, best_flat)
    for name in ("model.keras", "checkpoint.keras", "features.yaml", "config.yaml", "history.csv"):
        assert (tmp_path / "deep" / name).exists()
    assert [
        p.name for p in (tmp_path / "deep").iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")
    ] == []


@pytest.mark.slow
def test_acceptance_resolution_near_floor(tmp_path: Path) -> None:
    """Larger set: DNN resolution within 10% of the injected floor, flavour spread below the standard one."""
    from wfit.calib import export_onnx, load_model
    from wfit.calib import train_model as train
    from wfit.calib.report import evaluate, summarise

    truth = write_synthetic(str(tmp_path / "data"), 200_000, n_shards=10, seed=3)
    cfg = load_config(overrides={"train": {"epochs": 25, "validation_fraction": 0.1, "test_fraction": 0.1}})
    result = train(str(tmp_path / "data"), str(tmp_path / "out"), cfg, verbose=0)
    onnx_path = export_onnx(load_model(result.model_path), result.spec, str(tmp_path / "out" / "model.onnx"))
    values = evaluate(onnx_path, result.shards["test"])
    edges = (30.0, 50.0, 80.0, 120.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0)
    rows = summarise(values, pt_edges=edges, methods=("dnn", "standard"))
    floor = truth.floor_in_bins(values["pt_gen"], np.array(edges))
    dnn = np.array([r["resolution"] for r in rows if r["method"] == "dnn" and r["variable"] == "pt_gen"])
    std = np.array([r["resolution"] for r in rows if r["method"] == "standard" and r["variable"] == "pt_gen"])
    print("floor", np.round(floor, 4), "\ndnn", np.round(dnn, 4), "\nstandard", np.round(std, 4))
    assert np.mean(dnn / floor) < 1.10
    assert np.all(dnn / floor < 1.25)
    spread = {
        m: np.array([r["median"] for r in rows if r["method"] == m and r["variable"] == "flavour_spread"])
        for m in ("dnn", "standard")
    }
    print("flavour spread dnn", np.round(spread["dnn"], 4), "\nstandard", np.round(spread["standard"], 4))
    assert np.mean(spread["dnn"]) < np.mean(spread["standard"])


def test_resolution_head_learns_the_injected_resolution(synthetic: tuple, tmp_path: Path) -> None:
    """The quantiles of log(pt_gen / pt) that the head predicts: about 68% of the validation jets fall between
    q16 and q84, the predicted width falls with pT as the injected smearing does, and lies near it (above:
    the correction itself is not perfect; the floor is the generator's own smearing)."""
    from wfit.calib import OnnxCalibrator, default_config_path, export_onnx, load_model
    from wfit.calib import train_model as train
    from wfit.calib.data import iterate

    location, truth = synthetic
    overrides = {
        "model": {"resolution": {"quantiles": [0.16, 0.84]}},
        "train": {"epochs": 4, "batch_size": 256, "validation_fraction": 0.2, "early_stopping": None,
                  "reduce_lr_on_plateau": None, "seed": 3},
    }  # fmt: skip
    config = load_config(default_config_path("pfnano"), overrides)
    result = train(str(location), str(tmp_path / "out"), config, verbose=0)
    assert result.spec.quantiles == (0.16, 0.84)
    assert {"log_correction_loss", "log_quantiles_loss", "val_loss"} <= set(result.history)
    assert result.history["val_log_quantiles_loss"][-1] < result.history["val_log_quantiles_loss"][0]
    path = export_onnx(load_model(result.model_path), result.spec, str(tmp_path / "out" / "model.onnx"))
    calib = OnnxCalibrator(path)
    branches = [*result.spec.branches, "pt", "pt_gen"]
    chunk = next(iter(iterate(result.shards["validation"], branches, step_size=10**6)))
    out = calib.predict_outputs(chunk)
    y = np.log(chunk["pt_gen"].astype(np.float64) / chunk["pt"])
    q, c = out["log_quantiles"].astype(np.float64), out["log_correction"].astype(np.float64)
    inside = (y >= q[:, 0]) & (y <= q[:, 1])
    assert 0.58 < inside.mean() < 0.78, inside.mean()
    predicted = 0.5 * (np.exp(c - q[:, 0]) - np.exp(c - q[:, 1]))
    pt_gen = chunk["pt_gen"].astype(np.float64)
    medians, floors = [], []
    for lo, hi in ((20, 50), (50, 150), (150, 500), (500, 2000)):
        sel = (pt_gen >= lo) & (pt_gen < hi)
        medians.append(np.median(predicted[sel]))
        floors.append(np.median(truth.resolution_floor(pt_gen[sel])))
    print("predicted", np.round(medians, 4), "floor", np.round(floors, 4))
    assert np.all(np.diff(medians) < 0)
    np.testing.assert_allclose(medians, floors, rtol=0.4)
