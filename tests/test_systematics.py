"""The systematics registry: every name the processor fills is declared once and read back by the workspace
builder through the same declaration; an undeclared name is an error, not an ungrouped nuisance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wfit.processors import SYSTEMATICS, Sample, TemplateConfig, UnknownVariationError, WTemplateProcessor
from wfit.processors import build_workspace as build
from wfit.processors.processor import syst_histogram
from wfit.processors.systematics import NOMINAL, Registry, Systematic, pdf_variations, qcd_scale_variations


def _output(names: list[str]) -> dict:
    """A processor output of one MC dataset with one event in the signal region per variation ``names``."""
    proc = WTemplateProcessor(TemplateConfig(eta_bins=(4, -2.4, 2.4), pt_bins=(2, 26.0, 56.0), eff_groups=2))
    out = proc.empty_output("dy", "mc")
    res = out["dy"]
    h = syst_histogram(proc.config, False, [NOMINAL, *names])
    for name in (NOMINAL, *names):
        h.fill(syst=name, component=0, charge=1, eta=0.3, pt=30.0, weight=2.0)
    res["templates_syst"] = h
    res["sumw_sign"] = 10.0
    return out


def test_an_unknown_variation_is_an_error_that_lists_the_known_ones(tmp_path: Path) -> None:
    out = _output(["pileupUp", "pileupDown", "pilupUp"])  # a misspelled pileup variation
    cfg = TemplateConfig(eta_bins=(4, -2.4, 2.4), pt_bins=(2, 26.0, 56.0), eff_groups=2)
    with pytest.raises(UnknownVariationError) as err:
        build(out, tmp_path / "ws.hdf5", samples={"dy": Sample("background")}, config=cfg, lumi=1.0)
    assert type(err.value) is UnknownVariationError and isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "'pilupUp'" in msg and "dataset 'dy'" in msg
    assert "pileupUp" in msg.replace("'pilupUp'", "") and "pdf{index}" in msg
    assert not (tmp_path / "ws.hdf5").exists()


def test_declared_variations_reach_the_workspace_in_their_groups(tmp_path: Path) -> None:
    from wfit.workspace import read_workspace

    names = [
        "effStatUp", "effStatDown", "pileupUp", "pileupDown", "QCDscale_muFUp", "QCDscale_muFDown", "pdf7",
        "muonScale_eta1Up", "muonScale_eta1Down", "muonResolution_eta0Up", "jetCalibUp", "jetCalibDown",
    ]  # fmt: skip
    cfg = TemplateConfig(eta_bins=(4, -2.4, 2.4), pt_bins=(2, 26.0, 56.0), eff_groups=2)
    summary = build(_output(names), tmp_path / "ws.hdf5", samples={"dy": Sample("background")}, config=cfg, lumi=1.0)
    expected = {
        "pileup": "pileup", "QCDscale_muF": "QCDscale", "pdf7": "pdf", "muonScale_eta1": "muon",
        "muonResolution_eta0": "muon", "jetCalib": "jet", "effStat_eta0": "eff", "effStat_eta1": "eff",
        "lumi": "lumi",
    }  # fmt: skip
    assert summary["systematics"] == sorted(expected)
    ws = read_workspace(tmp_path / "ws.hdf5")
    assert list(ws.systs) == list(expected)  # booking order: the histograms' order, the eta groups, lumi
    for nuisance, group in expected.items():
        assert ws.syst_groups[group] == sorted(i for i, s in enumerate(ws.systs) if expected[s] == group), nuisance


def test_histogram_names_and_resolution_are_inverse() -> None:
    seen: set[str] = set()
    for s in SYSTEMATICS:
        for shift in s.shifts:
            for index in (0, 3, 12) if s.indexed else (None,):
                name = s.histogram(shift, index)
                assert name not in seen and name != NOMINAL
                seen.add(name)
                v = SYSTEMATICS.resolve(name)
                assert (v.systematic, v.shift, v.index) == (s, shift, index)
                assert v.nuisance == s.nuisance(index)
    # 24 fixed names (jetReso, muonScaleStat and the fakes' three derived pairs included); 12 family shifts (pdf,
    # muonScale x 2, muonResolution, effStatPar x 2, three QCD scales in W pT bins x 2) at 3 indices.
    assert len(seen) == 24 + 12 * 3
    for bad in ("pdf01", "pdf1Up", "muonResolution_eta0Down", "lumi", "effStat", "jetCalib_Up", NOMINAL):
        with pytest.raises(UnknownVariationError, match=repr(bad)):
            SYSTEMATICS.resolve(bad)
    with pytest.raises(UnknownVariationError, match="'pilup'.*pileup"):
        SYSTEMATICS["pilup"]
    with pytest.raises(UnknownVariationError, match="shifts"):
        SYSTEMATICS["pdf{index}"].histogram("Up", index=1)


def test_the_fillers_name_through_the_registry() -> None:
    """The weight variations computed from LHE weights come out under declared names, and the QCD scale
    pairs of the configuration are declared systematics."""
    assert set(TemplateConfig().qcd_scale_pairs) <= {s.name for s in SYSTEMATICS}
    lhe = np.linspace(0.5, 1.5, 18).reshape(2, 9)
    for name in qcd_scale_variations(lhe, TemplateConfig().qcd_scale_pairs):
        assert SYSTEMATICS.resolve(name).systematic.group == "QCDscale"
    pdf = pdf_variations(np.ones((3, 4)))
    assert list(pdf) == ["pdf1", "pdf2", "pdf3"]
    with pytest.raises(UnknownVariationError, match="QCDscale_muX"):
        qcd_scale_variations(lhe, {"QCDscale_muX": (7, 1)})


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        Registry([Systematic("a", "weight", "g", ("Up", "Down")), Systematic("a", "weight", "g", ("Up",))])
    with pytest.raises(ValueError, match="already taken"):
        Registry([Systematic("aUp", "weight", "g", ("",)), Systematic("a", "weight", "g", ("Up", "Down"))])
    with pytest.raises(ValueError, match="no shifts"):
        Systematic("n", "norm", "g", ("Up",))
    assert SYSTEMATICS.groups == (
        "eff", "pileup", "prefire", "QCDscale", "pdf", "muon", "jet", "lumi", "fakes", "longitudinal"
    )  # fmt: skip
    assert SYSTEMATICS["fakeNorm"].applies_to("fakes") and not SYSTEMATICS["lumi"].applies_to("fakes")
    assert not SYSTEMATICS["pileup"].filled_for("data") and SYSTEMATICS["pileup"].filled_for("mc")
