"""The toy W generator: file format, seeding and the physics it injects, against analytic truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot

from wfit.processors import (
    AngularCoefficients,
    AngularCoefficientsProcessor,
    TemplateConfig,
    ToyConfig,
    collins_soper_costheta,
    helicity_fractions,
    polarization_weights,
    run_templates,
    write_toy,
)
from wfit.processors.kinematics import decay_cs
from wfit.processors.toy import _boson

# coffea's NanoAODSchema warns about optional cross-reference branches that a toy file lacks.


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "w.root"
    write_toy(path, 200_000, process="W", seed=42)
    return path


def test_file_is_a_nanoaod_ttree(toy: Path) -> None:
    t = uproot.open(toy)["Events"]
    assert isinstance(t, uproot.TTree)  # not an RNTuple
    keys = set(t.keys())
    for b in (
        "run",
        "luminosityBlock",
        "event",
        "PV_x",
        "PV_y",
        "PV_z",
        "nMuon",
        "Muon_pt",
        "Muon_tightId",
        "nElectron",
        "Electron_cutBased",
        "MET_pt",
        "MET_phi",
        "nJet",
        "Jet_pt",
        "nGenPart",
        "GenPart_statusFlags",
        "GenPart_pdgId",
        "genWeight",
        "nLHEScaleWeight",
        "LHEScaleWeight",
        "nLHEPdfWeight",
        "LHEPdfWeight",
        "Pileup_nTrueInt",
        "L1PreFiringWeight_Nom",
    ):
        assert b in keys, b
    assert set(np.unique(t["nLHEScaleWeight"].array(library="np"))) == {9}


def test_same_seed_same_file(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{x}.root" for x in "abc")
    write_toy(a, 3000, process="Z", seed=7)
    write_toy(b, 3000, process="Z", seed=7)
    write_toy(c, 3000, process="Z", seed=8)
    ta, tb, tc = (uproot.open(p)["Events"].arrays(["Muon_pt", "MET_pt"], library="np") for p in (a, b, c))
    np.testing.assert_array_equal(np.concatenate(ta["Muon_pt"]), np.concatenate(tb["Muon_pt"]))
    assert not np.array_equal(ta["MET_pt"], tc["MET_pt"])


def test_collins_soper_frame_round_trip() -> None:
    # The generator builds the decay from boosted beam axes; the light-cone formula must give back cos theta*.
    rng = np.random.default_rng(1)
    n = 50_000
    boson = _boson(rng, n, ToyConfig(), 80.379, 2.085, np.full(n, 2.0), (50.0, 150.0))
    c = rng.uniform(-1.0, 1.0, n)
    d1, d2 = decay_cs(boson, c, rng.uniform(-np.pi, np.pi, n))
    np.testing.assert_allclose(d1 + d2, boson, rtol=0, atol=1e-6)
    np.testing.assert_allclose(collins_soper_costheta(d1, d2), c, rtol=0, atol=1e-9)


def test_polarization_weights_analytic() -> None:
    c = np.linspace(-1, 1, 101)
    a0, a4 = 0.3, -0.8
    w = polarization_weights(c, np.full_like(c, a0), np.full_like(c, a4))
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=1e-14)
    f = helicity_fractions(a0, a4)
    np.testing.assert_allclose(f.sum(), 1.0)
    # Integrating w_k x (the full distribution) over c gives f_k.
    x = np.linspace(-1, 1, 200_001)
    dist = 0.375 * ((1 + x * x) + a0 / 2 * (1 - 3 * x * x) + a4 * x)
    wk = polarization_weights(x, np.full_like(x, a0), np.full_like(x, a4))
    np.testing.assert_allclose(np.trapezoid(wk * dist, x, axis=1), f, rtol=1e-6)


def test_injected_angular_coefficients_and_shapes(toy: Path) -> None:
    cfg = TemplateConfig()
    out = run_templates({"W": [str(toy)]}, AngularCoefficientsProcessor(cfg)).output
    h = out["W"]["moments"]
    coef = AngularCoefficients.from_moments(h)
    # Measured A0/A4 per |y| bin (pT integrated) against the injected values, within 4 sigma.
    v = h.values().sum(axis=2)  # [charge, absy, moment]
    truth = ToyConfig()
    for iq in range(2):
        for iy in range(cfg.n_absy):
            s0, s1, s2 = v[iq, iy]
            mc, mc2 = s1 / s0, s2 / s0
            # sigma(<c>) = sqrt(Var c / N): Var(c) <= 1/2 is a safe bound.
            assert 4 * mc == pytest.approx(truth.a4[iy], abs=4 * 4 * np.sqrt(0.5 / s0))
            assert 4 - 10 * mc2 == pytest.approx(truth.a0[iy], abs=4 * 10 * np.sqrt(0.2 / s0))
    assert coef.a0.shape == (2, cfg.n_absy, len(cfg.coeff_pt_edges))
    # W mass: Breit-Wigner peak; W+ fraction.
    t = uproot.open(toy)["Events"]
    g = t.arrays(
        [
            "GenPart_mass",
            "GenPart_pdgId",
            "Muon_pt",
            "Muon_eta",
            "Muon_genPartIdx",
            "GenPart_pt",
            "GenPart_eta",
        ],
        library="ak",
    )
    import awkward as ak

    mw = ak.to_numpy(g.GenPart_mass[:, 0]).astype(float)
    assert np.median(mw) == pytest.approx(80.379, abs=0.1)
    # Half of a Breit-Wigner lies within M +- Gamma/2 (slightly less after truncation).
    assert np.mean(np.abs(mw - 80.379) < 2.085 / 2) == pytest.approx(0.5, abs=0.03)
    wplus = ak.to_numpy(g.GenPart_pdgId[:, 0]) > 0
    assert wplus.mean() == pytest.approx(0.58, abs=4 * np.sqrt(0.25 / len(wplus)))
    # Muon curvature resolution about 1% in the barrel and 3% in the endcaps at 35-45 GeV.
    m = g.Muon_genPartIdx == 1
    reco = ak.to_numpy(ak.flatten(g.Muon_pt[m])).astype(float)
    eta = ak.to_numpy(ak.flatten(g.Muon_eta[m])).astype(float)
    gen = ak.to_numpy(g.GenPart_pt[:, 1])[ak.to_numpy(ak.any(m, axis=1))].astype(float)
    rel = gen / reco - 1.0  # (k_reco - k_gen) / k_gen
    win = (gen > 35) & (gen < 45)
    barrel = win & (np.abs(eta) < 1.2)
    endcap = win & (np.abs(eta) > 1.2)
    assert np.std(rel[barrel]) == pytest.approx(0.01, rel=0.05)
    assert np.std(rel[endcap]) == pytest.approx(0.03, rel=0.05)


def test_backgrounds_are_what_they_claim(tmp_path: Path) -> None:
    import awkward as ak

    write_toy(tmp_path / "z.root", 20_000, process="Z", seed=3)
    write_toy(tmp_path / "f.root", 20_000, process="fakes", seed=4)
    z = uproot.open(tmp_path / "z.root")["Events"].arrays(["Muon_looseId", "Muon_genPartIdx"], library="ak")
    # Exactly one loose muon from the Z decay at most: the other one is lost.
    loose = ak.sum(z.Muon_looseId & (z.Muon_genPartIdx >= 1), axis=1)
    assert ak.max(loose) == 1
    f = uproot.open(tmp_path / "f.root")["Events"].arrays(["Muon_pfRelIso04_all", "MET_pt"], library="np")
    iso = np.concatenate(f["Muon_pfRelIso04_all"])
    assert np.mean(iso > 0.15) > 0.5  # mostly non-isolated
    assert np.median(f["MET_pt"]) < 15.0  # small MET -> low mT


def test_pfnano_option_adds_constituents_and_changes_nothing_else(tmp_path: Path) -> None:
    plain = write_toy(tmp_path / "plain.root", 3000, process="W", seed=4)["path"]
    pf = write_toy(tmp_path / "pf.root", 3000, process="W", seed=4, config=ToyConfig(pfnano=True))["path"]
    a = uproot.open(plain)["Events"]
    b = uproot.open(pf)["Events"]
    extra = set(b.keys()) - set(a.keys())
    assert {"Jet_rawFactor", "Jet_area", "fixedGridRhoFastjetAll", "PFCands_pt", "JetPFCands_jetIdx"} <= extra
    assert set(a.keys()) <= set(b.keys())
    # The extra draws come last: every branch of the plain file is identical.
    xa, xb = a.arrays(library="np"), b.arrays(list(a.keys()), library="np")
    for key in a.keys():
        va, vb = xa[key], xb[key]
        if va.dtype == object:  # jagged
            va, vb = np.concatenate(list(va)), np.concatenate(list(vb))
        np.testing.assert_array_equal(va, vb, err_msg=key)
    # The constituents of each jet carry its raw pT (checked jet by jet through the link table).
    c = b.arrays(
        ["Jet_pt", "Jet_rawFactor", "JetPFCands_jetIdx", "JetPFCands_pFCandsIdx", "PFCands_pt"], library="np"
    )
    for i in range(200):
        raw = c["Jet_pt"][i].astype(float) * (1 - c["Jet_rawFactor"][i].astype(float))
        total = np.zeros(len(raw))
        for j, k in zip(c["JetPFCands_jetIdx"][i], c["JetPFCands_pFCandsIdx"][i], strict=True):
            total[j] += c["PFCands_pt"][i][k]
        np.testing.assert_allclose(total, raw, rtol=1e-5)
