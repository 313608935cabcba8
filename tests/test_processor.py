"""WTemplateProcessor on the real NanoAOD files of tests/data/nanoaod against an independent
per-event uproot + numpy implementation of the same selection and weights."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

from wfit.processors import (
    Accumulator,
    AngularCoefficients,
    IncompleteRunError,
    Leptons,
    TemplateConfig,
    WTemplateProcessor,
    default_corrections_path,
    load_corrections,
    run_templates,
    select_events,
)
from wfit.processors.systematics import deterministic_normal, scale_curvature, smear_curvature

# coffea's NanoAODSchema warns about optional cross-reference branches that a file lacks (v15, PFNano)
# and about the Photon mass/charge it overwrites in v15: harmless for this selection.

DATA = Path(__file__).parent / "data" / "nanoaod"
WHOLE_PLANE = dict(signal_region=(0.0, float("inf")))


def _reference(path: Path, cfg: TemplateConfig, mc: bool) -> dict[str, np.ndarray]:
    """Per-event loop over the file: the selection, mT, weights and LHE variations written out plainly."""
    t = uproot.open(path)["Events"]
    keys = set(t.keys())
    met = "MET" if "MET_pt" in keys else "PFMET"
    names = [
        "Muon_pt",
        "Muon_eta",
        "Muon_phi",
        "Muon_charge",
        "Muon_tightId",
        "Muon_looseId",
        "Muon_dxy",
        "Muon_dz",
        "Muon_pfRelIso04_all",
        "Electron_pt",
        "Electron_eta",
        "Electron_cutBased",
        f"{met}_pt",
        f"{met}_phi",
    ]
    if mc:
        names += ["genWeight", "Pileup_nTrueInt"] + [
            b for b in ("LHEScaleWeight", "LHEPdfWeight") if b in keys
        ]
    a = t.arrays(names, library="np")
    cset = load_corrections(default_corrections_path())
    n_eta, lo_eta, hi_eta = cfg.eta_bins
    n_pt, lo_pt, hi_pt = cfg.pt_bins
    h = {}
    rows = []
    for i in range(t.num_entries):
        pt, eta = a["Muon_pt"][i].astype(float), a["Muon_eta"][i].astype(float)
        cand = [
            j
            for j in range(len(pt))
            if pt[j] > 26
            and abs(eta[j]) < 2.4
            and a["Muon_tightId"][i][j]
            and abs(a["Muon_dxy"][i][j]) < 0.05
            and abs(a["Muon_dz"][i][j]) < 0.2
        ]
        if len(cand) != 1:
            continue
        c = cand[0]
        if any(
            j != c and pt[j] > 15 and abs(eta[j]) < 2.4 and a["Muon_looseId"][i][j] for j in range(len(pt))
        ):
            continue
        ept, eeta, ecut = a["Electron_pt"][i], a["Electron_eta"][i], a["Electron_cutBased"][i]
        if any(ept[j] > 10 and abs(eeta[j]) < 2.5 and ecut[j] >= 1 for j in range(len(ept))):
            continue
        mpt, mphi = float(a[f"{met}_pt"][i]), float(a[f"{met}_phi"][i])
        phi = float(a["Muon_phi"][i][c])
        mt = math.sqrt(2 * pt[c] * mpt * (1 - math.cos(phi - mphi)))
        iso = float(a["Muon_pfRelIso04_all"][i][c])
        if not (mt >= cfg.signal_region[0] and iso < cfg.signal_region[1]):
            continue
        w = 1.0
        lhe = {}
        if mc:
            w = float(np.sign(np.float64(a["genWeight"][i])))
            w = w * float(cset["pileup"].evaluate(float(a["Pileup_nTrueInt"][i]), "nominal"))
            w = w * float(cset["muon_id_iso_sf"].evaluate(float(eta[c]), float(pt[c]), "nominal"))
            if "LHEScaleWeight" in a and len(a["LHEScaleWeight"][i]) == 9:
                s = a["LHEScaleWeight"][i].astype(float)
                lhe.update(
                    {
                        "QCDscale_muRUp": s[7],
                        "QCDscale_muRDown": s[1],
                        "QCDscale_muFUp": s[5],
                        "QCDscale_muFDown": s[3],
                        "QCDscale_muRmuFUp": s[8],
                        "QCDscale_muRmuFDown": s[0],
                    }
                )
            if "LHEPdfWeight" in a and len(a["LHEPdfWeight"][i]):
                p = a["LHEPdfWeight"][i].astype(float)
                lhe.update({f"pdf{k}": p[k] / p[0] for k in range(1, len(p))})
        ieta = math.floor((eta[c] - lo_eta) / (hi_eta - lo_eta) * n_eta)
        ipt = min(math.floor((pt[c] - lo_pt) / (hi_pt - lo_pt) * n_pt), n_pt)  # n_pt: overflow
        iq = 0 if a["Muon_charge"][i][c] < 0 else 1
        rows.append((ieta, ipt, iq, w, lhe))
    for name in ["nominal"] + sorted({k for r in rows for k in r[4]}):
        arr = np.zeros((n_eta, n_pt + 1, 2))
        for ieta, ipt, iq, w, lhe in rows:
            arr[ieta, ipt, iq] += w * (1.0 if name == "nominal" else lhe[name])
        h[name] = arr
    h["_count"] = np.array(len(rows))
    h["_yield"] = np.zeros(2)
    for _, _, iq, w, _ in rows:  # per-charge yield summed in event order
        h["_yield"][iq] += w
    return h


def _processor_view(out: dict, dataset: str, syst: str) -> np.ndarray:
    hs = out[dataset]["templates_syst"][{"syst": syst, "component": 0}]
    v = hs.project("eta", "pt", "charge").values(flow=True)  # (eta+2, pt+2, charge+1)
    return v[1:-1, 1:, :2]  # eta in range, pt with overflow, charge (-1, +1)


@pytest.mark.parametrize(
    ("fname", "mc", "whole_plane"),
    [
        ("nano_tt_v12.root", True, False),  # 15 events in the signal region, 9 scale and 103 PDF weights
        ("NanoAODv5_sample.root", True, False),  # 64 signal-region events, LHE branches empty
        ("nano_dy.root", True, True),  # 2 selected events (none at high mT), 9 scale and 33 PDF weights
        ("nano_tt_v15.root", True, True),  # NanoAOD v15: PFMET_*; 6 selected events
        ("nano_dimuon.root", False, True),  # collision data: 4 selected events
    ],
)
def test_matches_independent_implementation(fname: str, mc: bool, whole_plane: bool) -> None:
    cfg = TemplateConfig(**(WHOLE_PLANE if whole_plane else {}))
    out = run_templates({"ds": [str(DATA / fname)]}, WTemplateProcessor(cfg)).output
    ref = _reference(DATA / fname, cfg, mc)
    assert int(ref["_count"]) > 0
    assert out["ds"]["kind"] == ({"mc"} if mc else {"data"})
    syst_names = set(out["ds"]["templates_syst"].axes["syst"])
    for name, expected in ref.items():
        if name.startswith("_"):
            continue
        assert name in syst_names, name
        got = _processor_view(out, "ds", name)
        np.testing.assert_array_equal(got, expected, err_msg=f"{fname} {name}")
    # Signal-region yield per charge (summed in another order: 1e-14), and the count of selected events.
    nominal = _processor_view(out, "ds", "nominal")
    np.testing.assert_allclose(nominal.sum(axis=(0, 1)), ref["_yield"], rtol=1e-14)
    assert out["ds"]["cutflow"]["signal_region"] == int(ref["_count"])
    # The nominal templates summed over the signal-region cells equal the systematic histogram's nominal.
    t = out["ds"]["templates"][{"component": 0}]
    i_mt = list(t.axes["mt"].edges).index(cfg.signal_region[0])
    j_iso = (
        list(t.axes["iso"].edges).index(cfg.signal_region[1]) if math.isfinite(cfg.signal_region[1]) else None
    )
    sr = t.values(flow=True)[1 + i_mt : -1, 1 : (1 + j_iso) if j_iso is not None else -1].sum(axis=(0, 1))
    np.testing.assert_allclose(sr.transpose(1, 2, 0)[1:-1, 1:, :2], nominal, rtol=1e-12, atol=1e-12)


def test_lhe_variations_present_where_branches_exist() -> None:
    cfg = TemplateConfig(**WHOLE_PLANE)
    out = run_templates({"ds": [str(DATA / "nano_dy.root")]}, WTemplateProcessor(cfg)).output
    systs = set(out["ds"]["templates_syst"].axes["syst"])
    assert {"QCDscale_muRUp", "QCDscale_muFDown", "pdf1", "pdf32"} <= systs
    assert "pdf33" not in systs  # 33 members: nominal + 32 variations
    assert {"effStatUp", "effStatDown", "pileupUp", "pileupDown"} <= systs


def test_missing_variation_branches_are_recorded() -> None:
    out = run_templates(
        {"v5": [str(DATA / "NanoAODv5_sample.root")], "pf": [str(DATA / "pfnano.root")]}, WTemplateProcessor()
    ).output
    v5 = out["v5"]["skipped"]
    assert "QCDscale: LHEScaleWeight has 0 entries per event (NanoAODv5_sample.root)" in v5
    assert "pdf: LHEPdfWeight has 0 entries per event (NanoAODv5_sample.root)" in v5
    assert any(s.startswith("prefire: no L1PreFiringWeight") for s in v5)
    pf = out["pf"]["skipped"]
    assert "QCDscale: no LHEScaleWeight branch (pfnano.root)" in pf
    assert not any(s.startswith("prefire") for s in pf)  # PFNano has L1PreFiringWeight_Nom/Up/Dn
    systs = set(out["v5"]["templates_syst"].axes["syst"])
    assert not any(s.startswith(("QCDscale", "pdf")) for s in systs)
    assert {"muonScale_eta0Up", "muonScale_eta1Down", "muonResolution_eta1Up"} <= systs


def test_data_has_no_mc_weights() -> None:
    out = run_templates(
        {"data": [str(DATA / "nano_dimuon.root")]}, WTemplateProcessor(TemplateConfig(**WHOLE_PLANE))
    ).output
    res = out["data"]
    assert list(res["templates_syst"].axes["syst"]) == ["nominal"]
    assert res["skipped"] == set()
    assert res["sumw"] == 0.0
    h = res["templates"]
    np.testing.assert_array_equal(h.values(flow=True), h.variances(flow=True))  # unit weights


def test_empty_file_adds_nothing() -> None:
    empty = run_templates({"ds": [str(DATA / "nano_dy_empty.root")]}, WTemplateProcessor()).output
    assert empty["ds"]["nevents"] == 0
    assert empty["ds"]["templates"].sum().value == 0.0
    both = run_templates(
        {"ds": [str(DATA / "nano_dy_empty.root"), str(DATA / "nano_dy.root")]}, WTemplateProcessor()
    ).output
    alone = run_templates({"ds": [str(DATA / "nano_dy.root")]}, WTemplateProcessor()).output
    np.testing.assert_array_equal(
        both["ds"]["templates"].values(flow=True), alone["ds"]["templates"].values(flow=True)
    )
    assert both["ds"]["nevents"] == alone["ds"]["nevents"] == 40
    assert both["ds"]["sumw"] == alone["ds"]["sumw"]


def test_missing_luminosity_block_is_refused() -> None:
    # The runner lists NanoAODSchema's RuntimeError as a failure of the file's chunk, then raises with the list
    with pytest.raises(IncompleteRunError, match=r"missing_luminosityBlock\.root.*luminosityBlock") as err:
        run_templates({"ds": [str(DATA / "missing_luminosityBlock.root")]}, WTemplateProcessor(), retries=0)
    assert type(err.value) is IncompleteRunError
    (failure,) = err.value.run.failures
    assert failure.stage == "process" and failure.error.startswith("RuntimeError: ")
    assert "missing event ID fields: ['luminosityBlock']" in failure.error
    assert err.value.run.processed == []


def test_outputs_add_with_plus() -> None:
    p = WTemplateProcessor()
    a = run_templates({"ds": [str(DATA / "nano_tt_v12.root")]}, p).output
    b = run_templates({"ds": [str(DATA / "NanoAODv5_sample.root")]}, p).output
    both = run_templates({"ds": [str(DATA / "nano_tt_v12.root"), str(DATA / "NanoAODv5_sample.root")]}, p).output
    s = a + b
    assert isinstance(s, Accumulator)
    for key in ("templates",):
        np.testing.assert_allclose(
            s["ds"][key].values(flow=True), both["ds"][key].values(flow=True), rtol=1e-14
        )
    assert s["ds"]["sumw"] == pytest.approx(both["ds"]["sumw"], rel=1e-14)
    assert s["ds"]["cutflow"] == both["ds"]["cutflow"]
    assert s["ds"]["skipped"] == both["ds"]["skipped"]
    ta, tb = s["ds"]["templates_syst"], both["ds"]["templates_syst"]
    assert set(ta.axes["syst"]) == set(tb.axes["syst"])
    for name in ta.axes["syst"]:
        np.testing.assert_allclose(
            ta[{"syst": name}].values(), tb[{"syst": name}].values(), rtol=1e-13, atol=1e-13
        )
    # a + b leaves a unchanged
    assert a["ds"]["nevents"] == 200


def test_processor_is_picklable_without_correction_object() -> None:
    import pickle

    p = WTemplateProcessor()
    _ = p.cset  # load it
    q = pickle.loads(pickle.dumps(p))
    assert q._cset is None and q.corrections == p.corrections


# ---------------------------------------------------------------------- curvature variations
def _toy_muons(rng: np.random.Generator, n: int) -> tuple[Leptons, Leptons, np.ndarray, np.ndarray]:
    counts = np.ones(n, dtype=np.int64)
    pt = rng.uniform(20.0, 35.0, n)
    mu = Leptons(
        counts=counts,
        pt=pt,
        eta=rng.uniform(-2.4, 2.4, n),
        phi=rng.uniform(-np.pi, np.pi, n),
        charge=np.where(rng.random(n) < 0.5, 1, -1),
        iso=np.zeros(n),
        tight=np.ones(n, bool),
        loose=np.ones(n, bool),
        dxy=np.zeros(n),
        dz=np.zeros(n),
    )
    return mu, Leptons.empty(n), rng.uniform(20.0, 40.0, n), rng.uniform(-np.pi, np.pi, n)


def test_momentum_scale_moves_events_across_threshold_both_ways() -> None:
    rng = np.random.default_rng(3)
    mu, ele, met, metphi = _toy_muons(rng, 20000)
    cfg = TemplateConfig()
    nominal = select_events(mu, ele, met, metphi, cfg).mask
    region = np.abs(mu.eta) < 1.2
    for s in (1e-2, -1e-2):
        pt = scale_curvature(mu.pt, region, s)
        np.testing.assert_allclose(pt[region], mu.pt[region] / (1 + s), rtol=1e-15)
        assert np.array_equal(pt[~region], mu.pt[~region])
        varied = select_events(mu.with_pt(pt), ele, met, metphi, cfg).mask
        gained, lost = int((varied & ~nominal).sum()), int((~varied & nominal).sum())
        # Only one direction per sign for a pure scale; the sign decides which.
        assert (gained > 0) == (s < 0) and (lost > 0) == (s > 0)
    # Smearing moves events both ways at once, and the curvature spread is the configured one.
    z = deterministic_normal(5, np.ones(20000), np.ones(20000), np.arange(20000), np.zeros(20000))
    pt, q = smear_curvature(mu.pt, mu.charge, region, 3e-3, z)
    varied = select_events(mu.with_pt(pt, q), ele, met, metphi, cfg).mask
    assert (varied & ~nominal).sum() > 0 and (~varied & nominal).sum() > 0
    dk = (q / pt - mu.charge / mu.pt)[region]
    assert np.std(dk) == pytest.approx(3e-3, rel=3 * (1 / np.sqrt(2 * region.sum())))
    assert not np.any(dk[~np.isfinite(dk)])


def test_deterministic_normal_is_standard_normal() -> None:
    n = 200_000
    z = deterministic_normal(11, np.full(n, 1), np.full(n, 7), np.arange(n), np.zeros(n))
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert z.std() == pytest.approx(1.0, abs=4 / np.sqrt(2 * n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = deterministic_normal(11, np.full(10, 1), np.full(10, 7), np.arange(10), np.zeros(10))
    np.testing.assert_array_equal(again, z[:10])


def test_processors_public_api() -> None:
    import wfit.processors

    assert sorted(wfit.processors.__all__) == sorted(
        [
            "FEATURE_SOURCES",
            "HELICITIES",
            "Accumulator",
            "AngularCoefficients",
            "AngularCoefficientsProcessor",
            "ChunkFailure",
            "CurvatureVariation",
            "JetCacheError",
            "JetCalibration",
            "JetMET",
            "Leptons",
            "IncompleteRunError",
            "RobustRun",
            "SYSTEMATICS",
            "Sample",
            "Selection",
            "TemplateConfig",
            "ToyConfig",
            "UnknownVariationError",
            "WTemplateProcessor",
            "build_jet_cache",
            "build_workspace",
            "collins_soper_costheta",
            "columns_config",
            "default_corrections_path",
            "fake_estimate",
            "gen_w_from_events",
            "generate_events",
            "hard_templates",
            "helicity_fractions",
            "load_corrections",
            "local_cluster",
            "make_example_corrections",
            "polarization_weights",
            "process_templates",
            "run_templates",
            "select_events",
            "transverse_mass",
            "type1_met",
            "write_toy",
        ]
    )
    for name in wfit.processors.__all__:
        assert getattr(wfit.processors, name) is not None


@pytest.mark.parametrize(
    ("fname", "signal", "variations"),
    [
        ("nano_tt_v12.root", False, True),
        ("nano_tt_v12.root", False, False),
        ("nano_tt_v15.root", False, True),
        ("nano_dimuon.root", False, True),
        ("nano_dy.root", True, True),
    ],
)
def test_declared_branches_are_those_that_processing_reads(
    fname: str, signal: bool, variations: bool, branches_read: Any
) -> None:
    """The branches run_templates preloads equal what NanoEvents' access log records for one chunk: none
    is read lazily behind the bulk read, and none that the file has is read for nothing."""
    cfg = TemplateConfig(variations=variations)
    extra = {"signal_datasets": {"ds"}, "coefficients": AngularCoefficients.constant(cfg, 0.1, 0.2)} if signal else {}
    proc = WTemplateProcessor(cfg, **extra)
    path = str(DATA / fname)
    read = branches_read(proc, path, "ds")
    declared = set(proc.branches("ds"))
    in_file = declared & set(uproot.open(path)["Events"].keys())
    assert read - declared == set()
    if "genWeight" not in in_file:  # data: the list cannot tell data from MC; the smearing's event IDs are spare
        in_file -= {"run", "luminosityBlock", "event"}
    assert in_file - read == set()
