"""Calibration report numbers against independent numpy computations (wfit.calib.report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot

from wfit.calib import calibration_report, flavour_class, response_summary
from wfit.calib.report import summarise

DATA = Path(__file__).parent / "data" / "jetcalib"


def _quantile(x: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile written out: position q (n - 1) in the sorted sample."""
    s = np.sort(x)
    pos = q * (len(s) - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (pos - lo) * (s[hi] - s[lo]))


def _summary(x: np.ndarray) -> tuple[float, float]:
    q16, q50, q84 = (_quantile(x, q) for q in (0.16, 0.5, 0.84))
    return q50, (q84 - q16) / (2 * q50)


def test_response_summary_matches_sorted_quantiles() -> None:
    rng = np.random.default_rng(2)
    for n in (1, 2, 5, 101, 1000):
        x = rng.lognormal(0.0, 0.1, n)
        median, resolution = response_summary(x)
        ref_median, ref_resolution = _summary(x)
        assert median == pytest.approx(ref_median, rel=1e-12)
        assert resolution == pytest.approx(ref_resolution, rel=1e-12, abs=1e-15)


def test_response_summary_of_a_gaussian_is_sigma_over_mean() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0.95, 0.08, 400_000)
    median, resolution = response_summary(x)
    # 16-84% of a Gaussian is mean -/+ 0.9945 sigma.
    assert median == pytest.approx(0.95, abs=1e-3)
    assert resolution == pytest.approx(0.9945 * 0.08 / 0.95, rel=1e-2)


def test_flavour_classes() -> None:
    hadron = np.array([5, 4, 0, 0, 0, 0, 5])
    parton = np.array([5, -4, 21, -2, 0, 6, 21])
    assert flavour_class(hadron, parton).tolist() == ["b", "c", "gluon", "light", "unknown", "unknown", "b"]


def test_summarise_on_known_input() -> None:
    rng = np.random.default_rng(8)
    n = 5000
    values = {
        "pt_gen": rng.uniform(20, 200, n),
        "abs_eta_gen": rng.uniform(0, 2.5, n),
        "flavour": rng.choice(np.array(["b", "c", "light", "gluon"]), n),
    }
    shift = {"b": 0.97, "c": 0.98, "light": 1.0, "gluon": 1.02}
    base = np.array([shift[f] for f in values["flavour"]])
    values["dnn"] = base * rng.normal(1.0, 0.05, n)
    rows = summarise(values, pt_edges=(20, 50, 200), abs_eta_edges=(0, 1, 2.5), methods=("dnn",))

    def row(variable: str, label: str) -> dict:
        (r,) = [r for r in rows if r["variable"] == variable and r["bin"] == label]
        return r

    for (lo, hi), label in (((20, 50), "[20, 50)"), ((50, 200), "[50, 200)")):
        sel = (values["pt_gen"] >= lo) & (values["pt_gen"] < hi)
        r = row("pt_gen", label)
        assert r["n"] == sel.sum()
        assert (r["median"], r["resolution"]) == pytest.approx(_summary(values["dnn"][sel]), rel=1e-12)
        medians = [_quantile(values["dnn"][sel & (values["flavour"] == f)], 0.5) for f in shift]
        assert row("flavour_spread", label)["median"] == pytest.approx(max(medians) - min(medians), rel=1e-12)
        assert row("flavour_spread", label)["median"] == pytest.approx(0.05, abs=0.01)  # injected 1.02 - 0.97
    sel = values["abs_eta_gen"] >= 1
    assert row("abs_eta_gen", "[1, 2.5)")["median"] == pytest.approx(
        _quantile(values["dnn"][sel], 0.5), rel=1e-12
    )
    for f in shift:
        assert row("flavour", f)["median"] == pytest.approx(
            _quantile(values["dnn"][values["flavour"] == f], 0.5), rel=1e-12
        )


def test_report_on_real_shards(tmp_path: Path) -> None:
    """A callable 'model' that predicts the truth gives response 1; standard and none match uproot+numpy."""
    arrays = uproot.concatenate({str(DATA / f"shards/{i}.root"): "Jets" for i in range(1, 6)}, library="np")

    def perfect(chunk: dict) -> np.ndarray:
        return np.log(chunk["pt_gen"].astype(np.float64) / chunk["pt"])

    report = calibration_report(
        perfect,
        str(DATA),
        str(tmp_path),
        pt_edges=(20, 100, 5000),
        abs_eta_edges=(0, 2.5, 5.2),
        branches=["pt_gen"],
    )
    assert report.n_jets == 50
    names = sorted(Path(p).name for p in report.files)
    assert "table.csv" in names and "table.md" in names and "resolution_vs_pt_gen.png" in names
    assert all(Path(p).stat().st_size > 0 for p in report.files)

    for r in report.select("dnn", "pt_gen"):
        if r["n"]:
            assert r["median"] == pytest.approx(1.0, abs=1e-12)
            assert r["resolution"] == pytest.approx(0.0, abs=1e-12)
    pt_gen = arrays["pt_gen"].astype(np.float64)
    for method, num in (("standard", arrays["pt_full_corr"]), ("uncorrected", arrays["pt"])):
        response = num.astype(np.float64) / pt_gen
        for r in report.select(method, "pt_gen"):
            sel = (pt_gen >= r["lo"]) & (pt_gen < r["hi"])
            assert r["n"] == sel.sum()
            assert (r["median"], r["resolution"]) == pytest.approx(_summary(response[sel]), rel=1e-12)
        flavour = flavour_class(arrays["hadron_flavor"], arrays["parton_flavor"])
        for r in report.select(method, "flavour"):
            sel = flavour == r["bin"]
            if sel.any():
                assert r["median"] == pytest.approx(_quantile(response[sel], 0.5), rel=1e-12)
    csv_lines = (tmp_path / "table.csv").read_text().splitlines()
    assert csv_lines[0] == "method,variable,bin,lo,hi,n,median,resolution"
    assert len(csv_lines) == 1 + len(report.rows)


def test_report_of_a_resolution_head(tmp_path: Path) -> None:
    """Predicted resolution and coverage per bin against numpy on the model's own outputs; observed and
    standard resolution against the sorted-quantile reference."""
    import dataclasses

    import keras

    from tests.reference_features import real_features
    from wfit.calib import FeatureSpec, OnnxCalibrator, build_model, export_onnx, load_config, load_transform

    features = real_features()
    keras.utils.set_random_seed(4)
    spec = dataclasses.replace(
        FeatureSpec.from_config(features, load_transform(str(DATA / "transform.yaml"))), quantiles=(0.16, 0.84)
    )
    blocks = {t: {"type": "plain", "units": [8], "embeddings": {n: 2 for n in c.get("categorical", [])}}
              for t, c in features["constituents"].items()}  # fmt: skip
    config = load_config(overrides={"features": features, "model": {"blocks": blocks, "resolution": {
        "quantiles": [0.16, 0.84]}}})  # fmt: skip
    model = build_model(config, spec, compile=False)
    path = export_onnx(model, spec, str(tmp_path / "head.onnx"))
    edges = (20.0, 100.0, 5000.0)
    report = calibration_report(
        path, str(DATA), str(tmp_path / "report"), pt_edges=edges, abs_eta_edges=(0, 2.5, 5.2)
    )
    names = {Path(p).name for p in report.files}
    assert {"resolution.csv", "resolution.md", "predicted_resolution_vs_pt_gen.png"} <= names

    arrays = uproot.concatenate({str(DATA / f"shards/{i}.root"): "Jets" for i in range(1, 6)}, library="ak")
    columns = {f: (arrays[f].to_numpy() if arrays[f].ndim == 1 else arrays[f]) for f in arrays.fields}
    out = OnnxCalibrator(path).predict_outputs(columns)
    c, q = out["log_correction"].astype(np.float64), out["log_quantiles"].astype(np.float64)
    pt, pt_gen = columns["pt"].astype(np.float64), columns["pt_gen"].astype(np.float64)
    predicted = 0.5 * (np.exp(c - q[:, 0]) - np.exp(c - q[:, 1]))
    y = np.log(pt_gen / pt)
    inside = (y >= q[:, 0]) & (y <= q[:, 1])
    rows = [r for r in report.resolution_rows if r["variable"] == "pt_gen"]
    assert [r["bin"] for r in rows] == ["[20, 100)", "[100, 5000)"]
    for r in rows:
        sel = (pt_gen >= r["lo"]) & (pt_gen < r["hi"])
        assert r["n"] == sel.sum() > 0
        assert r["predicted"] == pytest.approx(_quantile(predicted[sel], 0.5), rel=1e-6)
        assert r["coverage"] == pytest.approx(inside[sel].mean(), abs=1e-12)
        assert r["expected"] == pytest.approx(0.68)
        assert r["observed"] == pytest.approx(_summary((pt * np.exp(c) / pt_gen)[sel])[1], rel=1e-5)
        assert r["standard"] == pytest.approx(_summary(columns["pt_full_corr"][sel] / pt_gen[sel])[1], rel=1e-6)
    header = (tmp_path / "report" / "resolution.csv").read_text().splitlines()[0]
    assert header == "variable,bin,lo,hi,n,observed,predicted,standard,coverage,expected"
    assert {r["variable"] for r in report.resolution_rows} == {"pt_gen", "abs_eta_gen", "flavour"}
