"""The event-columns file (wfit.columns): written by the processor with a loosened preselection, the hard-cut
templates filled from it equal the processor's own templates bit for bit; bad files are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from wfit.columns import ColumnsError, read_columns, write_columns
from wfit.processors import (
    AngularCoefficients,
    TemplateConfig,
    WTemplateProcessor,
    columns_config,
    hard_templates,
    run_templates,
    write_toy,
)

STANDARD = TemplateConfig(pdf=True)
#: The preselection loosened in the lepton pT (the pT axis starts at the loose threshold), the rest the same.
LOOSE = TemplateConfig(pdf=True, lepton_pt_min=20.0, pt_bins=(36, 20.0, 56.0))
CUTS = {"mt_min": STANDARD.signal_region[0], "iso_max": STANDARD.signal_region[1], "pt_min": STANDARD.lepton_pt_min}


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("columns")
    out = {}
    for name, process, seed in (("W", "W", 11), ("Z", "Z", 12), ("QCD", "fakes", 13)):
        path = d / f"{name}.root"
        write_toy(path, 6000, process=process, seed=seed, block_size=2000)
        out[name] = [str(path)]
    return out


def _processor(config: TemplateConfig, **kw: Any) -> WTemplateProcessor:
    coef = AngularCoefficients.constant(config, 0.2, -0.6)
    return WTemplateProcessor(config, signal_datasets={"W"}, coefficients=coef, **kw)


@pytest.fixture(scope="module")
def columns_file(toys: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory) -> str:
    out = run_templates(toys, _processor(LOOSE, event_columns=True), chunksize=2000, align_clusters=False).output
    path = str(tmp_path_factory.mktemp("cols") / "columns.h5")
    assert write_columns(path, out, LOOSE) == path
    return path


def test_hard_cut_templates_from_the_columns_equal_the_processor_templates(
    toys: dict[str, list[str]], columns_file: str
) -> None:
    """Three 2000-event chunks per file: every variation of every dataset (signal split, MC background, the
    fakes toy), bit for bit, including the events that the loosened pT threshold added and the cut removes."""
    reference = run_templates(toys, _processor(STANDARD), chunksize=2000, align_clusters=False).output
    cols = read_columns(columns_file)
    assert set(cols.datasets) == set(toys)
    for ds in toys:
        got = hard_templates(cols.datasets[ds], STANDARD, **CUTS)
        want = reference[ds]["templates_syst"]
        assert list(got.axes["syst"]) == list(want.axes["syst"]), ds
        assert len(want.axes["syst"]) > 20  # weight, LHE and momentum variations
        np.testing.assert_array_equal(got.values(flow=True), want.values(flow=True), err_msg=ds)
        np.testing.assert_array_equal(got.variances(flow=True), want.variances(flow=True), err_msg=ds)
        # The loosened selection holds more events than the cut keeps: the threshold can move.
        nominal = cols.datasets[ds].tables["nominal"].columns
        assert np.sum(nominal["pt"] <= CUTS["pt_min"]) > 0, ds
        assert cols.datasets[ds].sumw_sign == reference[ds]["sumw_sign"]


def test_the_columns_hold_what_the_cuts_act_on(columns_file: str) -> None:
    cols = read_columns(columns_file)
    w = cols.datasets["W"]
    nominal = w.tables["nominal"]
    assert w.kind == "signal" and len(nominal) > 1000
    assert nominal.columns["component"].max() == LOOSE.unmatched_component or nominal.columns["component"].max() < (
        LOOSE.n_components)  # fmt: skip
    assert {"pileupUp", "effStatDown", "QCDscale_muRUp"} <= set(nominal.ratio_names)
    assert "muonScale_eta0Up" in w.tables and any(t.startswith("muonResolution") for t in w.tables)
    assert nominal.chunks.tolist() and int(nominal.chunks.sum()) == len(nominal)
    assert columns_config(cols).lepton_pt_min == LOOSE.lepton_pt_min
    # Every entry's weight ratios are positive here and not all one.
    assert np.all(nominal.ratios > 0) and np.any(np.abs(nominal.ratios - 1) > 1e-3)


def test_writing_without_columns_names_the_option(toys: dict[str, list[str]], tmp_path: Path) -> None:
    out = run_templates({"Z": toys["Z"]}, _processor(STANDARD)).output
    with pytest.raises(ColumnsError, match=r"event_columns=True"):
        write_columns(tmp_path / "c.h5", out, STANDARD)
    assert not (tmp_path / "c.h5").exists()


def _damaged(src: str, dst: Path, damage: str) -> str:
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        t = f["W"]["nominal"]
        if damage == "nan":
            v = t["mt"][()]
            v[3] = np.nan
            del t["mt"]
            t.create_dataset("mt", data=v)
        elif damage == "component":
            v = t["component"][()]
            v[0] = 999
            del t["component"]
            t.create_dataset("component", data=v)
        elif damage == "missing":
            del t["iso"]
        elif damage == "length":
            v = t["eta"][()]
            del t["eta"]
            t.create_dataset("eta", data=v[:-1])
        elif damage == "duplicate":
            names = json.loads(t["ratios"].attrs["names"])
            t["ratios"].attrs["names"] = json.dumps([names[0], *names[:-1]])
        elif damage == "version":
            f.attrs["version"] = 99
        elif damage == "charge":
            v = t["charge"][()]
            v[1] = 0
            del t["charge"]
            t.create_dataset("charge", data=v)
    return str(dst)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("nan", r"table 'nominal', column 'mt'.*non-finite"),
        ("component", r"column 'component'.*outside"),
        ("missing", r"columns \['iso'\] are missing"),
        ("length", r"different lengths"),
        ("duplicate", r"ratios attribute 'names'.*named twice"),
        ("version", r"attribute 'version'.*99"),
        ("charge", r"column 'charge'"),
    ],
)
def test_a_bad_columns_file_is_refused_by_name(columns_file: str, tmp_path: Path, damage: str, message: str) -> None:
    path = _damaged(columns_file, tmp_path / f"{damage}.h5", damage)
    with pytest.raises(ColumnsError, match=message) as err:
        read_columns(path)
    assert path in str(err.value) and "dataset 'W'" in str(err.value) or damage == "version"


def test_jet_calibration_columns_and_unchanged_outputs(tmp_path: Path) -> None:
    """With the DNN jet calibration (a random constituent model through onnxruntime): the columns hold mT under
    each jet-calibration variation, the hard-cut templates from them equal the processor's bit for bit (jetCalib
    included), and every other output of the processor is the same with and without event columns."""
    from tests.builders import random_constituent_models
    from wfit.processors import JetCalibration, ToyConfig

    model = random_constituent_models(tmp_path / "model", {"m": 1})["m"]
    toy = str(tmp_path / "w.root")
    write_toy(toy, 3000, process="W", seed=21, config=ToyConfig(pfnano=True, n_pdf=3), block_size=1000)
    fast = {"curvature": None, "qcd_scale": False, "pdf": False}
    standard = TemplateConfig(**fast)
    loose = TemplateConfig(**fast, lepton_pt_min=20.0, pt_bins=(36, 20.0, 56.0))

    def run(config: TemplateConfig, **kw: Any) -> Any:
        proc = WTemplateProcessor(config, jet_calibration=JetCalibration(model), **kw)
        return run_templates({"W": [toy]}, proc, chunksize=1000, align_clusters=False).output["W"]

    with_columns, without = run(loose, event_columns=True), run(loose)
    assert set(with_columns) == set(without) | {"columns"}
    for key, value in without.items():
        if hasattr(value, "axes"):
            np.testing.assert_array_equal(with_columns[key].values(flow=True), value.values(flow=True), err_msg=key)
            np.testing.assert_array_equal(with_columns[key].variances(flow=True), value.variances(flow=True))
        elif key != "jet_calibration":
            assert with_columns[key] == value, key

    path = write_columns(tmp_path / "columns.h5", {"W": with_columns}, loose)
    nominal = read_columns(path).datasets["W"].tables["nominal"]
    assert {"jetCalibUp", "jetCalibDown"} <= set(nominal.mt_names)
    assert np.any(nominal.mt_variations[:, nominal.mt_names.index("jetCalibUp")] != nominal.columns["mt"])
    got = hard_templates(read_columns(path).datasets["W"], standard, **CUTS)
    want = run(standard)["templates_syst"]
    assert "jetCalibUp" in list(want.axes["syst"])
    assert list(got.axes["syst"]) == list(want.axes["syst"])
    np.testing.assert_array_equal(got.values(flow=True), want.values(flow=True))
    np.testing.assert_array_equal(got.variances(flow=True), want.variances(flow=True))


def test_a_chunk_added_twice_and_an_unwritable_path_are_refused(tmp_path: Path) -> None:
    from wfit.columns import ColumnChunks

    entry = {"pt": [30.0], "eta": [0.1], "charge": [1], "mt": [60.0], "iso": [0.01], "component": [0],
             "fac": [1.0], "w": [1.0], "ratios": {}, "mt_variations": {}}  # fmt: skip
    chunk = ColumnChunks.from_chunk({"filename": "a.root", "entrystart": 0}, {"nominal": entry})
    with pytest.raises(ColumnsError, match=r"\('a.root', 0\).*added twice"):
        (chunk + chunk).tables()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    out = {"W": {"columns": chunk, "kind": {"mc"}, "sumw_sign": 1.0}}
    with pytest.raises(OSError, match="not-a-folder"):
        write_columns(blocker / "c.h5", out, STANDARD)
    assert blocker.read_text() == ""
