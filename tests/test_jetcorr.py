"""The DNN jet calibration inside the processor (wfit.processors.jetcorr) against a second implementation:
features built per jet with plain uproot + numpy loops, the ONNX model run directly with onnxruntime, the
type-1 MET and mT written out per event."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import onnx
import pytest
import uproot

from tests.reference_features import transform_chain
from wfit.calib.onnx_spec import ModelSpecError
from wfit.processors import (
    JetCalibration,
    Sample,
    TemplateConfig,
    ToyConfig,
    WTemplateProcessor,
    build_workspace,
    run_templates,
    write_toy,
)

DATA = Path(__file__).parent / "data" / "nanoaod"
PT_MIN = 15.0
VARIATION = 0.05


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three tiny models trained with calib's own API on seeded synthetic jets (about 15 s): ``deep`` on the
    PFNano-mappable features (configs/pfnano.yaml), ``flat`` on the same jet-level features only, ``reso`` as
    ``deep`` with a resolution head (quantiles 0.16 and 0.84)."""
    from wfit.calib import default_config_path, export_onnx, load_config, load_model, train_model, write_synthetic

    d = tmp_path_factory.mktemp("jetmodels")
    write_synthetic(str(d / "syn"), 6000, n_shards=3, seed=5, calibration_jets=5000)
    common = {
        "train": {
            "epochs": 2,
            "batch_size": 256,
            "validation_fraction": 0.34,
            "early_stopping": None,
            "reduce_lr_on_plateau": None,
            "seed": 3,
        }
    }
    out = {}
    variants = (
        ("deep", {}),
        ("flat", {"features": {"constituents": {}}, "model": {"blocks": {}}}),
        ("reso", {"model": {"resolution": {"quantiles": [0.16, 0.84]}}}),
    )
    for name, extra in variants:
        cfg = load_config(default_config_path("pfnano"), overrides={**common, **extra})
        result = train_model(str(d / "syn"), str(d / name), cfg, verbose=0)
        out[name] = export_onnx(load_model(result.model_path), result.spec, str(d / f"{name}.onnx"))
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("jettoy") / "w.root"
    write_toy(path, 3000, process="W", seed=11, config=ToyConfig(pfnano=True, n_pdf=3))
    return str(path)


# ---------------------------------------------------------------------- the second implementation


def _reference(path: str, model: str) -> dict[str, np.ndarray]:
    """Per-jet corrected pT and per-event type-1 MET (nominal, up, down), by loops over uproot arrays."""
    import onnxruntime as ort

    spec = json.loads({p.key: p.value for p in onnx.load(model).metadata_props}["wfit.calib.features"])
    numerical, categorical = spec["transform"]["numerical"], spec["transform"]["categorical"]
    a = uproot.open(path)["Events"].arrays(library="np")
    n_events = len(a["Jet_pt"])
    rows: dict[str, list] = {"jet": [], **{t: [] for t in spec["constituents"]}}
    raw_pt, nano_pt, jet_phi, jet_event = [], [], [], []
    for i in range(n_events):
        for j in range(len(a["Jet_pt"][i])):
            nano = float(a["Jet_pt"][i][j])
            raw = nano * (1.0 - float(a["Jet_rawFactor"][i][j]))
            eta, phi = float(a["Jet_eta"][i][j]), float(a["Jet_phi"][i][j])
            source = {
                "pt": raw,
                "eta": eta,
                "phi": phi,
                "area": float(a["Jet_area"][i][j]),
                "rho": float(a["fixedGridRhoFastjetAll"][i]),
                "num_pv": float(a["PV_npvs"][i]),
            }
            rows["jet"].append([transform_chain(source[f], numerical[f]) for f in spec["jet"]["numerical"]])
            raw_pt.append(raw)
            nano_pt.append(nano)
            jet_phi.append(phi)
            jet_event.append(i)
            for t, c in spec["constituents"].items():
                cands = []
                if t in ("ch", "ne"):
                    for k in range(len(a["JetPFCands_jetIdx"][i])):
                        if a["JetPFCands_jetIdx"][i][k] != j:
                            continue
                        m = int(a["JetPFCands_pFCandsIdx"][i][k])
                        if (a["PFCands_charge"][i][m] != 0) != (t == "ch"):
                            continue
                        d0err = float(a["PFCands_d0Err"][i][m])
                        cands.append(
                            {
                                "pt": float(a["PFCands_pt"][i][m]),
                                "eta": float(a["PFCands_eta"][i][m]),
                                "phi": float(a["PFCands_phi"][i][m]),
                                "id": int(a["PFCands_pdgId"][i][m]),
                                "pv_ass": int(a["PFCands_pvAssocQuality"][i][m]),
                                "dxy": float(a["PFCands_d0"][i][m]),
                                "dz": float(a["PFCands_dz"][i][m]),
                                "dxy_significance": float(a["PFCands_d0"][i][m]) / d0err if d0err > 0 else 0.0,
                            }
                        )
                else:
                    for k in range(len(a["JetSVs_jetIdx"][i])):
                        if a["JetSVs_jetIdx"][i][k] == j:
                            cands.append(
                                {
                                    "pt": float(a["JetSVs_pt"][i][k]),
                                    "mass": float(a["JetSVs_mass"][i][k]),
                                    "distance": float(a["JetSVs_d3d"][i][k]),
                                    "significance": float(a["JetSVs_d3dsig"][i][k]),
                                    "num_tracks": float(a["JetSVs_ntracks"][i][k]),
                                }
                            )
                cands = sorted(cands, key=lambda x: -np.float32(x["pt"]))[: c["max_count"]]  # stable
                per = []
                for x in cands:
                    x = dict(x)
                    x["rel_pt"] = x["pt"] / raw
                    if "eta" in x:
                        x["deta"] = (x["eta"] - eta) * (-1.0 if eta < 0 else 1.0)
                        x["dphi"] = (x["phi"] - phi + math.pi) % (2 * math.pi) - math.pi
                    num = [transform_chain(x[f[len(t) + 1 :]], numerical[f]) for f in c["numerical"]]
                    cat = []
                    for f in c["categorical"]:
                        values = categorical[f]
                        v = x[f[len(t) + 1 :]]
                        cat.append(values.index(v) if v in values else len(values))
                    per.append((num, cat))
                rows[t].append(per)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feed: dict[str, np.ndarray] = {"jet_numerical": np.array(rows["jet"], dtype=np.float32)}
    n = len(rows["jet"])
    for t, c in spec["constituents"].items():
        width = max(1, max((len(p) for p in rows[t]), default=0))
        x = np.zeros((n, width, len(c["numerical"])), dtype=np.float32)
        mask = np.zeros((n, width), dtype=np.float32)
        cats = np.zeros((len(c["categorical"]), n, width), dtype=np.int32)
        for r, per in enumerate(rows[t]):
            for k, (num, cat) in enumerate(per):
                x[r, k], mask[r, k] = num, 1.0
                cats[:, r, k] = cat
        feed[f"{t}_numerical"], feed[f"{t}_mask"] = x, mask
        for f, v in zip(c["categorical"], cats, strict=True):
            feed[f] = v
    outputs = session.run(None, feed)
    pred = outputs[0][:, 0].astype(np.float64)
    out = {"pt": np.array(raw_pt) * np.exp(pred), "nano_pt": np.array(nano_pt)}
    shifted = {tag: out["pt"] * (1.0 + s) for tag, s in (("nominal", 0.0), ("up", VARIATION), ("down", -VARIATION))}
    if len(outputs) > 1:  # the resolution head: each jet at its predicted 16% / 84% quantile of pt_gen
        assert spec["resolution"]["quantiles"] == [0.16, 0.84]
        q = outputs[1].astype(np.float64)
        shifted["resoDown"], shifted["resoUp"] = np.array(raw_pt) * np.exp(q[:, 0]), np.array(raw_pt) * np.exp(q[:, 1])
    met = "MET"
    for tag, pts in shifted.items():
        mx = np.zeros(n_events)
        my = np.zeros(n_events)
        for i in range(n_events):
            mx[i] = float(a[f"{met}_pt"][i]) * math.cos(float(a[f"{met}_phi"][i]))
            my[i] = float(a[f"{met}_pt"][i]) * math.sin(float(a[f"{met}_phi"][i]))
        for k in range(n):
            if pts[k] > PT_MIN:
                mx[jet_event[k]] -= (pts[k] - nano_pt[k]) * math.cos(jet_phi[k])
                my[jet_event[k]] -= (pts[k] - nano_pt[k]) * math.sin(jet_phi[k])
        out[f"met_{tag}"] = np.hypot(mx, my)
        out[f"metphi_{tag}"] = np.arctan2(my, mx)
    return out


def _events(path: str) -> Any:
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    return NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema, mode="virtual").events()


def _calibration(models: dict[str, str], fallback: bool = True) -> JetCalibration:
    return JetCalibration(
        models["deep"],
        fallback_model=models["flat"] if fallback else None,
        variation=VARIATION,
        met_jet_pt_min=PT_MIN,
        batch_size=7,  # several inference batches even on the small files
    )


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    ("fname", "role"),
    [
        ("pfnano.root", "deep"),  # real PF candidates and SVs: the constituent model
        ("nano_dy.root", "flat"),  # no constituents: the jet-level fallback model
        ("toy", "deep"),  # toy PFNano: candidates written in random pT order, SVs
    ],
)
def test_corrected_jets_and_met_match_second_implementation(
    models: dict[str, str], toy: str, fname: str, role: str
) -> None:
    path = toy if fname == "toy" else str(DATA / fname)
    calib = _calibration(models)
    assert calib.check_file(path) == ("model" if role == "deep" else "fallback")
    events = _events(path)
    met_pt = np.asarray(events.MET.pt, dtype=np.float64)
    met_phi = np.asarray(events.MET.phi, dtype=np.float64)
    jets = calib.evaluate(events, met_pt, met_phi)
    assert jets.model == models[role]
    everything = np.ones(len(met_pt), dtype=bool)
    ref = _reference(path, models[role])
    # Nothing is evaluated before it is asked for.
    assert np.isnan(jets.pt()).all()
    for tag in ("nominal", "up", "down"):
        got_pt, got_phi = jets.met(everything, tag)
        # float32 inputs to onnxruntime, padding to another width: 1e-5 on the jet pT, hence on the MET.
        np.testing.assert_allclose(got_pt, ref[f"met_{tag}"], rtol=2e-5, atol=1e-4, err_msg=tag)
        np.testing.assert_allclose(np.cos(got_phi - ref[f"metphi_{tag}"]), 1.0, atol=1e-8)
    np.testing.assert_allclose(jets.pt(), ref["pt"], rtol=1e-5)
    np.testing.assert_allclose(jets.pt("up"), ref["pt"] * (1 + VARIATION), rtol=1e-5)
    np.testing.assert_array_equal(jets.nano_pt, ref["nano_pt"])
    assert np.any(np.abs(jets.pt() / jets.nano_pt - 1) > 0.01)  # the correction does something


def test_mt_shift_direction(models: dict[str, str], toy: str) -> None:
    """A larger correction moves the MET against the jets; mT moves the way the analytic formula says."""
    events = _events(toy)
    met_pt = np.asarray(events.MET.pt, dtype=np.float64)
    met_phi = np.asarray(events.MET.phi, dtype=np.float64)
    jets = _calibration(models).evaluate(events, met_pt, met_phi)
    import awkward as ak

    mu_pt = ak.to_numpy(ak.fill_none(ak.firsts(events.Muon.pt), 30.0)).astype(np.float64)
    mu_phi = ak.to_numpy(ak.fill_none(ak.firsts(events.Muon.phi), 0.0)).astype(np.float64)
    everything = np.ones(len(met_pt), dtype=bool)
    m0, p0 = jets.met(everything)
    m1, p1 = jets.met(everything, "up")

    def mt(m: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.sqrt(2 * mu_pt * m * (1 - np.cos(mu_phi - p)))

    d_met = np.stack([m1 * np.cos(p1) - m0 * np.cos(p0), m1 * np.sin(p1) - m0 * np.sin(p0)])
    # The jets' pT increase as a vector (a jet crossing the threshold enters with its whole change from
    # NanoAOD's pT): the MET change is its opposite.
    pt0, pt1 = jets.pt(), jets.pt("up")
    use = pt1 > PT_MIN
    dpt = (pt1 - np.where(pt0 > PT_MIN, pt0, jets.nano_pt))[use]
    dj = np.stack(
        [
            np.bincount(jets.jet_event[use], dpt * np.cos(jets.phi[use]), len(m0)),
            np.bincount(jets.jet_event[use], dpt * np.sin(jets.phi[use]), len(m0)),
        ]
    )
    moved = np.hypot(*dj) > 1e-6
    assert moved.sum() > 1000
    np.testing.assert_allclose(d_met, -dj, atol=1e-9)
    assert np.all(np.sum(d_met * dj, axis=0)[moved] < 0)
    # mT^2 = 2 pT_l (|MET| - lepton_hat . MET): its change has the sign of |MET'| - |MET| - lepton_hat . dMET.
    mt0 = mt(m0, p0)
    predicted = m1 - m0 - (np.cos(mu_phi) * d_met[0] + np.sin(mu_phi) * d_met[1])
    shift = mt(m1, p1) - mt0
    clear = moved & (np.abs(predicted) > 1e-6)
    assert clear.sum() > 1000
    np.testing.assert_array_equal(np.sign(shift[clear]), np.sign(predicted[clear]))
    assert 0 < (shift[clear] > 0).mean() < 1  # both directions occur: jets are not aligned with the W here


@pytest.mark.parametrize("model", ["deep", "reso"])
def test_processor_mt_and_variations_match_reference(models: dict[str, str], toy: str, model: str) -> None:
    """End to end: the mT axis of the templates and the jetCalib variations (and, for a model with a resolution
    head, jetReso), against the reference MET and a per-event selection (unit weights: no corrections, no
    pileup/prefiring weights)."""
    edges = (*np.arange(0.0, 201.0, 10.0), float("inf"))
    cfg = TemplateConfig(
        mt_edges=edges, pileup=False, prefire=False, curvature=None, qcd_scale=False, pdf=False
    )
    calib = JetCalibration(models[model], variation=VARIATION, met_jet_pt_min=PT_MIN, batch_size=7)
    proc = WTemplateProcessor(cfg, corrections=None, jet_calibration=calib)
    out = run_templates({"W": [toy]}, proc).output["W"]
    assert out["jet_calibration"] == {f"{model}.onnx (w.root)"}
    ref = _reference(toy, models[model])
    a = uproot.open(toy)["Events"].arrays(
        ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_tightId", "Muon_looseId", "Muon_dxy", "Muon_dz",
         "Muon_pfRelIso04_all", "Electron_pt", "Electron_eta", "Electron_cutBased"],
        library="np",
    )  # fmt: skip
    variations = {"nominal": "nominal", "up": "jetCalibUp", "down": "jetCalibDown"}
    if model == "reso":
        variations.update(resoUp="jetResoUp", resoDown="jetResoDown")
    mts: dict[str, list[float]] = {tag: [] for tag in variations}
    iso = []
    for i in range(len(a["Muon_pt"])):
        pt, eta = a["Muon_pt"][i], a["Muon_eta"][i]
        cand = [
            j
            for j in range(len(pt))
            if pt[j] > 26 and abs(eta[j]) < 2.4 and a["Muon_tightId"][i][j]
            and abs(a["Muon_dxy"][i][j]) < 0.05 and abs(a["Muon_dz"][i][j]) < 0.2
        ]  # fmt: skip
        if len(cand) != 1:
            continue
        c = cand[0]
        if any(j != c and pt[j] > 15 and abs(eta[j]) < 2.4 and a["Muon_looseId"][i][j] for j in range(len(pt))):
            continue
        e = a["Electron_pt"][i], a["Electron_eta"][i], a["Electron_cutBased"][i]
        if any(e[0][j] > 10 and abs(e[1][j]) < 2.5 and e[2][j] >= 1 for j in range(len(e[0]))):
            continue
        for tag in mts:
            m, p = ref[f"met_{tag}"][i], ref[f"metphi_{tag}"][i]
            mts[tag].append(math.sqrt(2 * float(pt[c]) * m * (1 - math.cos(float(a["Muon_phi"][i][c]) - p))))
        iso.append(float(a["Muon_pfRelIso04_all"][i][c]))
    assert len(iso) > 1000
    got = out["templates"].project("mt").values()
    np.testing.assert_array_equal(got, np.histogram(mts["nominal"], bins=np.array(edges))[0])
    iso_ok = np.array(iso) < 0.15
    syst = out["templates_syst"]
    assert sorted(n for n in syst.axes["syst"] if n.startswith("jet")) == sorted(set(variations.values()) - {"nominal"})
    for tag, name in variations.items():
        expected = int(np.sum((np.array(mts[tag]) >= 40.0) & iso_ok))
        assert syst[{"syst": name}].sum(flow=True).value == expected, name
    assert syst[{"syst": "jetCalibUp"}].sum().value != syst[{"syst": "nominal"}].sum().value
    if model == "reso":
        assert syst[{"syst": "jetResoUp"}].sum().value != syst[{"syst": "jetResoDown"}].sum().value


@pytest.mark.parametrize("which", ["toy", "nano_dy.root"])
def test_declared_branches_cover_the_jet_calibration(
    models: dict[str, str], toy: str, which: str, branches_read: Any
) -> None:
    """The preloaded branch list holds every branch the corrected processor reads (NanoEvents' access log),
    on PFNano constituents (toy) and through the jet-level fallback (nano_dy.root)."""
    proc = WTemplateProcessor(TemplateConfig(), jet_calibration=_calibration(models))
    read = branches_read(proc, toy if which == "toy" else str(DATA / which), "W")
    assert any(b.startswith("PFCands_") for b in read) == (which == "toy")
    assert read - set(proc.branches("W")) == set()


def test_jet_calibration_nuisance_reaches_the_workspace(models: dict[str, str], toy: str, tmp_path: Path) -> None:
    from wfit.workspace import read_workspace

    cfg = TemplateConfig(curvature=None, qcd_scale=False, pdf=False)
    out = run_templates({"W": [toy]}, WTemplateProcessor(cfg, jet_calibration=_calibration(models))).output
    summary = build_workspace(
        out, tmp_path / "ws.hdf5", samples={"W": Sample("background", xsec=1.0)}, config=cfg, lumi=1.0
    )
    assert "jetCalib" in summary["systematics"]
    ws = read_workspace(tmp_path / "ws.hdf5")
    assert "jetCalib" in ws.systs
    k = ws.systs.index("jetCalib")
    # logkavg = (log(up/nom) - log(down/nom)) / 2 per bin: compare with the histograms themselves.
    h = out["W"]["templates_syst"]
    nom, up, down = (h[{"syst": s, "component": 0}].project("eta", "pt", "charge").values() for s in
                     ("nominal", "jetCalibUp", "jetCalibDown"))  # fmt: skip
    ok = (nom > 0) & (up > 0) & (down > 0)
    assert ws.logk_avg is not None and np.any(ws.logk_avg[:, 0, k] != 0)
    assert ok.sum() > 50


def test_dask_workers_create_their_own_session(models: dict[str, str], toy: str, dask_client: Any) -> None:
    cfg = TemplateConfig(curvature=None, pdf=False)
    proc = WTemplateProcessor(cfg, jet_calibration=_calibration(models))
    it = run_templates({"W": [toy]}, proc, chunksize=1000).output
    _ = proc.jet_calibration.model.session  # a session in the driver is not shipped
    state = pickle.loads(pickle.dumps(proc))
    assert state.jet_calibration.model._session is None
    dk = run_templates({"W": [toy]}, proc, executor="dask", client=dask_client, chunksize=1000).output
    for name in ("nominal", "jetCalibUp", "jetCalibDown"):
        np.testing.assert_allclose(
            dk["W"]["templates_syst"][{"syst": name}].values(flow=True),
            it["W"]["templates_syst"][{"syst": name}].values(flow=True),
            rtol=1e-12,
        )
    np.testing.assert_allclose(dk["W"]["templates"].values(flow=True), it["W"]["templates"].values(flow=True))


# ---------------------------------------------------------------------- pre-flight errors
def test_missing_model_file_is_reported_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx: jet calibration model not found.*export_onnx"):
        JetCalibration(tmp_path / "nope.onnx")


def _rewrite_spec(src: str, dst: Path, edit: Any) -> str:
    proto = onnx.load(src)
    entry = next(p for p in proto.metadata_props if p.key == "wfit.calib.features")
    spec = json.loads(entry.value)
    edit(spec)
    entry.value = json.dumps(spec)
    onnx.save(proto, str(dst))
    return str(dst)


def test_shape_mismatch_is_reported_at_construction(models: dict[str, str], tmp_path: Path) -> None:
    def drop_jet_feature(spec: dict) -> None:
        spec["jet"]["numerical"].remove("num_pv")

    bad = _rewrite_spec(models["deep"], tmp_path / "bad.onnx", drop_jet_feature)
    with pytest.raises(ValueError, match=r"bad\.onnx: input 'jet_numerical' has shape \['n_jets', 5\].*4 features"):
        JetCalibration(bad)
    # A sidecar from another export is refused too.
    other = tmp_path / "other.onnx"
    shutil.copy(models["deep"], other)
    shutil.copy(models["flat"] + ".features.yaml", str(other) + ".features.yaml")
    with pytest.raises(ValueError, match=r"other\.onnx\.features\.yaml disagrees"):
        JetCalibration(other)


def test_specification_errors_name_the_file_and_field(models: dict[str, str], tmp_path: Path) -> None:
    """The processor reads its models through wfit.calib's one reader: the same exception and message."""
    bad = _rewrite_spec(models["flat"], tmp_path / "short.onnx", lambda spec: spec["jet"]["numerical"].pop())
    with pytest.raises(ModelSpecError) as err:
        JetCalibration(models["flat"], fallback_model=bad)
    assert type(err.value) is ModelSpecError
    assert str(err.value).startswith(f"{bad}: input 'jet_numerical' has shape")
    assert "field jet.numerical" in str(err.value)


def test_unmapped_feature_and_bad_fallback_are_refused(models: dict[str, str], tmp_path: Path) -> None:
    def rename(spec: dict) -> None:
        spec["constituents"]["ne"]["numerical"][1] = "ne_hcal_frac"
        spec["transform"]["numerical"]["ne_hcal_frac"] = spec["transform"]["numerical"].pop("ne_pt")

    bad = _rewrite_spec(models["deep"], tmp_path / "hcal.onnx", rename)
    with pytest.raises(ValueError, match=r"hcal\.onnx: feature\(s\) \['ne_hcal_frac'\] have no NanoAOD source"):
        JetCalibration(bad)
    with pytest.raises(ValueError, match="fallback model needs constituents"):
        JetCalibration(models["flat"], fallback_model=models["deep"])


def test_file_without_constituents_fails_before_processing(
    models: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = WTemplateProcessor(jet_calibration=_calibration(models, fallback=False))

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a chunk was processed")

    monkeypatch.setattr(WTemplateProcessor, "process", never)
    fileset = {"pf": [str(DATA / "pfnano.root")], "dy": [str(DATA / "nano_dy.root")]}
    with pytest.raises(ValueError, match=r"nano_dy\.root.*JetPFCands.*pass fallback_model="):
        run_templates(fileset, proc, retries=0)
    assert proc.preflight({"pf": [str(DATA / "pfnano.root")]}) == {str(DATA / "pfnano.root"): "model"}


def test_resolution_variation_of_the_jets_and_met(models: dict[str, str], toy: str) -> None:
    """resoUp/resoDown put every jet at its predicted 84%/16% quantile of pt_gen (the reference runs the ONNX
    graph's second output directly); a model without a head has no such variation."""
    events = _events(toy)
    met_pt = np.asarray(events.MET.pt, dtype=np.float64)
    met_phi = np.asarray(events.MET.phi, dtype=np.float64)
    calib = JetCalibration(models["reso"], variation=VARIATION, met_jet_pt_min=PT_MIN)
    assert calib.has_resolution and not _calibration(models).has_resolution
    jets = calib.evaluate(events, met_pt, met_phi)
    everything = np.ones(len(met_pt), dtype=bool)
    ref = _reference(toy, models["reso"])
    for tag in ("resoUp", "resoDown"):
        got_pt, got_phi = jets.met(everything, tag)
        np.testing.assert_allclose(got_pt, ref[f"met_{tag}"], rtol=2e-5, atol=1e-4, err_msg=tag)
    up, nominal, down = jets.pt("resoUp"), jets.pt(), jets.pt("resoDown")
    assert np.all(down < nominal) and np.all(nominal < up)
    with pytest.raises(ValueError, match="the resolution variations need a model with a resolution head"):
        _calibration(models).evaluate(events, met_pt, met_phi).met(everything, "resoUp")


def test_charged_neutral_split_falls_back_to_the_charge(models: dict[str, str], toy: str) -> None:
    """pdgId splits charged from neutral where every id is a PF candidate type; any other id reads the charge."""
    events = _events(toy)
    jets = _calibration(models).evaluate(events, np.zeros(len(events)), np.zeros(len(events)))
    rows = np.arange(2000)
    pid = np.asarray(jets._inputs._column("PFCands", "pdgId")).copy()
    charge = np.asarray(events.PFCands.charge.layout.content.data)
    np.testing.assert_array_equal(jets._inputs._charged("PFCands", rows), charge[rows] != 0)
    assert ("PFCands", "charge") not in jets._inputs._columns  # not read while every id is known
    pid[7] = 321  # a charged kaon: not a MiniAOD PF candidate type
    jets._inputs._columns[("PFCands", "pdgId")] = pid
    np.testing.assert_array_equal(jets._inputs._charged("PFCands", rows), charge[rows] != 0)
    assert ("PFCands", "charge") in jets._inputs._columns


def test_jets_below_min_raw_pt_are_not_corrected(models: dict[str, str], toy: str) -> None:
    """They stay out of the type-1 MET: the MET equals the reference's with those jets left out."""
    events = _events(toy)
    met_pt = np.asarray(events.MET.pt, dtype=np.float64)
    met_phi = np.asarray(events.MET.phi, dtype=np.float64)
    threshold = 30.0
    calib = JetCalibration(models["deep"], met_jet_pt_min=PT_MIN, min_raw_pt=threshold)
    jets = calib.evaluate(events, met_pt, met_phi)
    everything = np.ones(len(met_pt), dtype=bool)
    mx, my = jets.met_xy(everything)
    soft = jets.raw_pt < threshold
    assert 0.2 < soft.mean() < 0.8
    assert np.isnan(jets.correction[soft]).all() and not np.isnan(jets.correction[~soft]).any()
    ref = _reference(toy, models["deep"])
    pt_ref = ref["pt"]
    use = ~soft & (pt_ref > PT_MIN)
    d = pt_ref[use] - jets.nano_pt[use]
    ex = met_pt * np.cos(met_phi) - np.bincount(jets.jet_event[use], d * np.cos(jets.phi[use]), len(met_pt))
    ey = met_pt * np.sin(met_phi) - np.bincount(jets.jet_event[use], d * np.sin(jets.phi[use]), len(met_pt))
    np.testing.assert_allclose(np.hypot(mx, my), np.hypot(ex, ey), rtol=2e-5, atol=1e-4)
    assert JetCalibration(models["deep"]).min_raw_pt == 7.5  # met_jet_pt_min / 2 by default


def test_a_non_finite_model_output_is_an_error_naming_file_and_input(models: dict[str, str], tmp_path: Path) -> None:
    """A NaN in one jet's input (Jet_eta) makes the model return NaN for it: an error that names the file, the
    entries, the model and the input, rather than a jet silently left uncorrected (and recorded as corrected)."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    from wfit.processors import generate_events

    cols = generate_events("W", 400, np.random.default_rng(5), ToyConfig(pfnano=True))
    jets = cols["Jet"]
    flat_pt = ak.to_numpy(ak.flatten(jets.pt))
    bad = int(np.argmax(flat_pt))  # a hard jet: evaluated whatever the selection
    eta = ak.to_numpy(ak.flatten(jets.eta)).astype(np.float32)
    eta[bad] = np.nan
    cols["Jet"] = ak.with_field(jets, ak.unflatten(eta, ak.num(jets, axis=1)), "eta")
    path = tmp_path / "nan_eta.root"
    with uproot.recreate(path) as f:
        types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in cols.items()}
        f.mktree("Events", types).extend(cols)
    events = NanoEventsFactory.from_root(
        {str(path): "Events"}, schemaclass=NanoAODSchema, mode="virtual",
        metadata={"filename": str(path), "entrystart": 0, "entrystop": 400},
    ).events()  # fmt: skip
    zeros = np.zeros(len(events))
    jm = _calibration(models).evaluate(events, zeros, zeros)
    with pytest.raises(ValueError) as err:
        jm.met(np.ones(len(events), dtype=bool))
    msg = str(err.value)
    for words in ("nan_eta.root", "entries [0, 400)", "feature 'eta'", "NaN or infinite", "fix the input"):
        assert words in msg, (words, msg)


def test_a_model_that_returns_nan_is_an_error_not_a_no_op(models: dict[str, str], toy: str, tmp_path: Path) -> None:
    """A model whose output is NaN for finite inputs (here the exported graph times NaN) is an error naming the
    file, the entries and the model, before any MET is made from it."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
    from onnx import TensorProto, helper

    from wfit.calib.onnx_spec import OUTPUT_NAME

    model = onnx.load(models["deep"])
    graph = model.graph
    for node in graph.node:
        node.output[:] = [f"{o}_raw" if o == OUTPUT_NAME else o for o in node.output]
    graph.initializer.append(helper.make_tensor("nan_factor", TensorProto.FLOAT, [], [float("nan")]))
    graph.node.append(helper.make_node("Mul", [f"{OUTPUT_NAME}_raw", "nan_factor"], [OUTPUT_NAME]))
    bad = tmp_path / "nan_model.onnx"
    onnx.save(model, bad)
    calib = JetCalibration(bad, met_jet_pt_min=PT_MIN)
    events = NanoEventsFactory.from_root(
        {toy: "Events"}, schemaclass=NanoAODSchema, mode="virtual",
        metadata={"filename": toy, "entrystart": 0, "entrystop": 3000},
    ).events()  # fmt: skip
    zeros = np.zeros(len(events))
    jm = calib.evaluate(events, zeros, zeros)
    with pytest.raises(ValueError) as err:
        jm.met(np.ones(len(events), dtype=bool))
    msg = str(err.value)
    for words in (Path(toy).name, "entries [0, 3000)", "nan_model.onnx", "non-finite value for", "inputs are finite"):
        assert words in msg, (words, msg)
    assert np.isnan(jm.correction).all()  # nothing was recorded as corrected
