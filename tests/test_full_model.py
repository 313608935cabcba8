"""The systematics model of the CMS W helicity/rapidity analysis (``TemplateConfig.with_full_model``), piece by
piece against independent references: Legendre polynomials, the undecorrelated variations that the decorrelated
ones decompose, an exact per-bin momentum-scale re-selection written here with uproot and numpy, and the model's
stated log(kappa)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot
from numpy.polynomial import legendre

from wfit.processors import AngularCoefficients, Sample, TemplateConfig, WTemplateProcessor, build_workspace
from wfit.processors import ToyConfig, run_templates, write_toy
from wfit.processors.config import CurvatureVariation
from wfit.processors.selection import Leptons, select_events
from wfit.processors.systematics import SYSTEMATICS, scale_curvature
from wfit.processors.weights import smooth_modes
from wfit.workspace import read_workspace

# Eight eta bins, six pT bins, two |y_W| bins (with the overflow) and three W pT bins: small, every piece present.
SMALL = dict(eta_bins=(8, -2.4, 2.4), pt_bins=(6, 26.0, 56.0), absy_edges=(0.0, 1.0), eff_groups=8)
PTW = (0.0, 5.0, 15.0)
STAT = 0.01  # a large statistical curvature shift, so that events migrate in the tests
TOY = ToyConfig(absy_edges=SMALL["absy_edges"], a0=(0.1, 0.45), a4=(-0.3, -1.2))  # the injected coefficients


def _config(**changes: Any) -> TemplateConfig:
    cfg = TemplateConfig(**SMALL).with_full_model(fake_eta_groups=4, qcd_ptw_edges=PTW)
    return cfg.replace(curvature=CurvatureVariation(stat_scale=STAT), **changes)


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("full")
    files = {}
    for name, process, n, seed in (("W", "W", 20_000, 31), ("Z", "Z", 8_000, 32)):
        write_toy(d / f"{name}.root", n, process=process, seed=seed, config=TOY)
        files[name] = [str(d / f"{name}.root")]
    write_toy(d / "data.root", {"W": 20_000, "Z": 2_000, "fakes": 8_000}, seed=33, is_data=True, config=TOY)
    files["data"] = [str(d / "data.root")]
    return files


SAMPLES = {"W": Sample("signal", 20_000.0), "Z": Sample("background", 2_000.0), "data": Sample("data")}


def _process(files: dict[str, list[str]], cfg: TemplateConfig, **options: Any) -> Any:
    coef = AngularCoefficients.constant(cfg, 0.2, -0.6)
    proc = WTemplateProcessor(cfg, signal_datasets={"W"} & set(files), coefficients=coef, **options)
    return run_templates(files, proc, status=False).output


@pytest.fixture(scope="module")
def built(toys: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict, Any]:
    cfg = _config()
    out = _process(toys, cfg)
    path = tmp_path_factory.mktemp("ws") / "ws.hdf5"
    summary = build_workspace(out, path, samples=SAMPLES, config=cfg, lumi=1.0, fakes=True)
    return cfg, out, summary, read_workspace(path)


def _logk_up(ws: Any, nuisance: str, process: str) -> np.ndarray:
    """log(up / nominal) per bin of one process and nuisance."""
    i, p = ws.systs.index(nuisance), ws.procs.index(process)
    avg = ws.logk_avg[:, p, i]
    asym = list(ws.asym_idx)
    return avg + ws.logk_halfdiff[:, p, asym.index(i)] if i in asym else avg


def _bin_labels(cfg: TemplateConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(eta index, pt index, charge) of each flat bin of the (eta, pt, charge) channel."""
    n_eta, n_pt = cfg.eta_bins[0], cfg.pt_bins[0]
    eta, pt, q = np.meshgrid(np.arange(n_eta), np.arange(n_pt), np.array([-1, 1]), indexing="ij")
    return eta.ravel(), pt.ravel(), q.ravel()


# ------------------------------------------------------------------------------------------- efficiencies
def test_smooth_modes_are_normalised_legendre_polynomials() -> None:
    cfg = _config()
    pt = np.linspace(20.0, 60.0, 41)  # beyond the template range at both ends: clipped there
    modes = smooth_modes(pt, cfg)
    x = np.clip((pt - 41.0) / 15.0, -1.0, 1.0)
    reference = np.stack([legendre.legval(x, np.eye(3)[k]) for k in range(3)])
    reference /= np.sqrt((reference**2).sum(axis=0))
    np.testing.assert_allclose(modes, reference, rtol=1e-14)
    np.testing.assert_allclose((modes**2).sum(axis=0), 1.0, rtol=1e-14)


def test_efficiency_modes_act_in_their_eta_bin_and_charge(built: Any) -> None:
    cfg, out, summary, ws = built
    eta, _, q = _bin_labels(cfg)
    h = out["Z"]["templates_syst"][{"component": 0}].project("syst", "eta", "pt", "charge")
    nominal = h[{"syst": "nominal"}].values().ravel()
    for k, g, charge in ((0, 2, 1), (1, 5, -1), (2, 0, 1)):
        name = SYSTEMATICS["effStatPar{index}"].nuisance(k, eta_group=g, charge=charge)
        up = h[{"syst": f"effStatPar{k}Up"}].values().ravel()
        inside = (eta == g) & (q == charge) & (nominal > 0)
        got = _logk_up(ws, name, "Z")
        np.testing.assert_allclose(got[inside], np.log(up[inside] / nominal[inside]), rtol=1e-10, atol=1e-14)
        assert np.all(got[~inside] == 0.0) and np.any(got[inside] != 0.0)
    # 8 eta bins x 2 charges x 3 modes
    assert sum(s.startswith("effStatPar") for s in ws.systs) == 8 * 2 * 3


# ------------------------------------------------------------------------------------------- QCD scales
def test_qcd_scales_in_w_pt_bins_decompose_the_undecorrelated_variation(toys: Any, built: Any) -> None:
    cfg, out, _, _ = built
    h = out["W"]["templates_syst"]
    nominal = h[{"syst": "nominal"}].values()
    for scale, shift in (("QCDscale_muR", "Up"), ("QCDscale_muRmuF", "Down")):
        total = sum(h[{"syst": f"{scale}_ptW{b}{shift}"}].values() - nominal for b in range(len(PTW)))
        reference = h[{"syst": f"{scale}{shift}"}].values() - nominal
        np.testing.assert_allclose(total, reference, rtol=1e-9, atol=1e-9 * np.abs(nominal).max())
        assert np.abs(reference).max() > 0
    # One W pT bin: the bin's variation is the undecorrelated one, sums of weights and of squared weights.
    one = _process({"W": toys["W"]}, cfg.replace(qcd_ptw_edges=(0.0,)))["W"]["templates_syst"]
    for field in ("value", "variance"):
        a = one[{"syst": "QCDscale_muF_ptW0Up"}].view()[field]
        b = one[{"syst": "QCDscale_muFUp"}].view()[field]
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_qcd_scales_are_decorrelated_by_charge_and_helicity(built: Any) -> None:
    cfg, _, _, ws = built
    for nuisance, charge, helicity in (("QCDscale_muR_ptW1_Wminus_R", "Wminus", "R"), ("QCDscale_muF_ptW0_Wplus_0", "Wplus", "0")):
        i = ws.systs.index(nuisance)
        acts = {p for j, p in enumerate(ws.procs) if np.any(ws.logk_avg[:, j, i] != 0)}
        assert acts and all(p.startswith(charge + "_") and p.endswith("_" + helicity) for p in acts), acts
    # The undecorrelated variations act on the backgrounds only, none on a W component.
    i = ws.systs.index("QCDscale_muR")
    acts = {p for j, p in enumerate(ws.procs) if np.any(ws.logk_avg[:, j, i] != 0)}
    assert acts == {"Z"}
    assert sum(s.startswith("QCDscale_") and "_ptW" in s for s in ws.systs) == 3 * len(PTW) * 2 * 3


# ------------------------------------------------------------------------------------------- momentum scale
def _exact_scale_templates(
    path: str, cfg: TemplateConfig, eta_bin: int, charge: int, scale: float
) -> tuple[np.ndarray, int]:
    """Signal-region (eta, pt, charge) counts of unit-weight events after scaling the curvature of the muons in
    one template eta bin with one charge, the MET balancing the change: read and selected here. Also the number of
    events, selected with or without the change, that have another muon besides one in that bin and charge."""
    t = uproot.open(path)["Events"]
    a = t.arrays(library="np", how=dict)

    def leptons(prefix: str, iso: str, tight: Any, loose: Any) -> Leptons:
        counts = a[f"n{prefix}"].astype(np.int64)
        flat = {k: np.concatenate(a[f"{prefix}_{k}"]).astype(np.float64) for k in ("pt", "eta", "phi", iso, "dxy", "dz")}
        return Leptons(counts, flat["pt"], flat["eta"], flat["phi"], np.concatenate(a[f"{prefix}_charge"]).astype(np.int64),
                       flat[iso], tight(a), loose(a), flat["dxy"], flat["dz"])  # fmt: skip

    muons = leptons("Muon", "pfRelIso04_all", lambda a: np.concatenate(a["Muon_tightId"]).astype(bool),
                    lambda a: np.concatenate(a["Muon_looseId"]).astype(bool))  # fmt: skip
    electrons = leptons("Electron", "pfRelIso03_all",
                        lambda a: np.concatenate(a["Electron_cutBased"]) >= cfg.electron_id_min,
                        lambda a: np.concatenate(a["Electron_cutBased"]) >= cfg.veto_electron_id_min)  # fmt: skip
    n_eta, lo, hi = cfg.eta_bins
    ieta = np.floor((muons.eta - lo) / (hi - lo) * n_eta).astype(np.int64)
    region = (ieta == eta_bin) & (muons.charge == charge)
    pt = scale_curvature(muons.pt, region, scale)
    evt = muons.event_index
    met, phi = a["MET_pt"].astype(np.float64), a["MET_phi"].astype(np.float64)
    met_x = met * np.cos(phi) - np.bincount(evt, (pt - muons.pt) * np.cos(muons.phi), len(muons.counts))
    met_y = met * np.sin(phi) - np.bincount(evt, (pt - muons.pt) * np.sin(muons.phi), len(muons.counts))
    sel = select_events(muons.with_pt(pt), electrons, np.hypot(met_x, met_y), np.arctan2(met_y, met_x), cfg)
    nominal = select_events(muons, electrons, met, phi, cfg)
    in_region = np.bincount(evt[region], minlength=len(muons.counts)) > 0
    ambiguous = int(np.count_nonzero(in_region & (muons.counts >= 2) & (sel.mask | nominal.mask)))
    sr = sel.in_signal_region(cfg)
    counts, _ = np.histogramdd(
        (sel.eta[sr], sel.pt[sr], sel.charge[sr]),
        bins=(np.linspace(lo, hi, n_eta + 1), np.linspace(cfg.pt_bins[1], cfg.pt_bins[2], cfg.pt_bins[0] + 1), [-2, 0, 2]),
    )
    return counts.ravel(), ambiguous


@pytest.mark.parametrize("dataset", ["W", "Z"])
def test_momentum_scale_per_eta_bin_and_charge_against_an_exact_reselection(toys: Any, tmp_path: Path, dataset: str) -> None:
    """The workspace takes nuisance (eta bin, charge) from the variation of every muon, in the bins of its selected
    muon; the exact variation scales only the muons of that bin and charge. They can differ only by the events
    with a second muon (Z's lost muon, an extra soft one), whose change moves the MET or crosses the veto
    threshold: at most one entry moved in each, counted in the reference."""
    cfg = _config(pileup=False, prefire=False, qcd_scale=False, pdf=False)  # unit weights
    out = _process({dataset: toys[dataset]}, cfg, corrections=None)
    path = tmp_path / "ws.hdf5"
    kind = "signal" if dataset == "W" else "background"
    build_workspace(out, path, samples={dataset: Sample(kind, 1.0)}, config=cfg, lumi=1.0, systematics=["muon"])
    ws = read_workspace(path)
    scale = float(out[dataset]["sumw_sign"])  # the templates are normalised to xsec x lumi = 1
    procs = [p for p in ws.procs if not p.endswith("_unmatched")]
    nominal = ws.norm[:, [ws.procs.index(p) for p in procs]].sum(axis=1) * scale
    reference_nominal, _ = _exact_scale_templates(toys[dataset][0], cfg, 0, 1, 0.0)
    np.testing.assert_allclose(nominal, reference_nominal, rtol=1e-9)
    for eta_bin, charge in ((3, 1), (4, -1), (0, -1)):
        name = SYSTEMATICS["muonScaleStat"].nuisance(eta_group=eta_bin, charge=charge)
        up = sum(ws.norm[:, ws.procs.index(p)] * np.exp(_logk_up(ws, name, p)) for p in procs) * scale
        exact, ambiguous = _exact_scale_templates(toys[dataset][0], cfg, eta_bin, charge, STAT)
        change = np.abs(exact - reference_nominal).sum()
        assert change > 10
        # Only an event with a second muon can differ, and it moves one entry of each.
        assert np.abs(up - exact).sum() <= 2 * ambiguous + 1e-9, (np.abs(up - exact).sum(), ambiguous, change)


# ------------------------------------------------------------------------------------------- normalisations
def test_longitudinal_components_are_constrained_not_free(built: Any) -> None:
    cfg, _, summary, ws = built
    longitudinal = [p for p in summary["signals"] if p.endswith("_0")]
    assert len(longitudinal) == 2 * cfg.n_absy
    assert set(ws.signals) == set(summary["pois"]) == set(summary["signals"]) - set(longitudinal)
    for p in longitudinal:
        name = f"longitudinal_{p[:-2]}"
        i, j = ws.systs.index(name), ws.procs.index(p)
        filled = ws.norm[:, j] > 0
        np.testing.assert_allclose(ws.logk_avg[filled, j, i], math.log(1.3), rtol=1e-14)
        others = np.delete(ws.logk_avg[:, :, i], j, axis=1)
        assert np.all(others == 0.0)


def test_fake_estimate_normalisation_and_shape_terms(built: Any) -> None:
    cfg, _, _, ws = built
    eta, pt, q = _bin_labels(cfg)
    j = ws.procs.index("Fakes")
    filled = ws.norm[:, j] > 0
    group = eta // (cfg.eta_bins[0] // cfg.fake_eta_groups)
    for g, charge in ((1, -1), (3, 1)):
        got = _logk_up(ws, SYSTEMATICS["fakeNormEta"].nuisance(eta_group=g, charge=charge), "Fakes")
        inside = (group == g) & (q == charge) & filled
        np.testing.assert_allclose(got[inside], math.log(1.1), rtol=1e-12)
        assert np.all(got[~inside] == 0.0)
    centres = 26.0 + 5.0 * (pt + 0.5)
    tilt = np.log(1 + 0.1 * (centres - 41.0) / 15.0)
    np.testing.assert_allclose(_logk_up(ws, "fakeShape", "Fakes")[filled], tilt[filled], rtol=1e-12)
    got = _logk_up(ws, "fakeShapeEta_eta2", "Fakes")
    np.testing.assert_allclose(got[filled & (group == 2)], tilt[filled & (group == 2)], rtol=1e-12)
    assert np.all(got[group != 2] == 0.0)
    assert sum(s.startswith("fake") for s in ws.systs) == 1 + 4 * 2 + 1 + 4


def test_model_size_by_group(built: Any) -> None:
    """The nuisances of each group, counted from the configuration."""
    cfg, _, _, ws = built
    n_pdf = 33 - 1  # the toy's LHEPdfWeight members after the nominal
    expected = {
        "eff": 8 * 2 * 3,
        "QCDscale": 3 * len(PTW) * 2 * 3 + 3,  # the signal's, and the undecorrelated ones of the background
        "pdf": n_pdf,
        "muon": 2 + 2 + 8 * 2,  # |eta| region scales and resolutions, the statistical scales
        "fakes": 1 + 4 * 2 + 1 + 4,
        "longitudinal": 2 * cfg.n_absy,
        "pileup": 1,
        "prefire": 1,
        "lumi": 1,
    }
    assert {g: len(ws.syst_groups[g]) for g in expected} == expected
    assert ws.nsyst == sum(expected.values())


def test_event_columns_refuse_w_pt_binned_scales() -> None:
    with pytest.raises(ValueError, match="qcd_ptw_edges=None"):
        WTemplateProcessor(_config(), event_columns=True)


def test_differentiable_model_has_the_full_models_terms(tmp_path: Path) -> None:
    """The cut-dependent expected precision (wfit.fitter.cutopt) with the eta-bin-and-charge terms (efficiency
    modes, statistical momentum scale) and the constrained longitudinal components equals the fitter's Asimov fit
    of the workspace built from the same events with hard cuts."""
    from tests.builders import write_column_toys
    from wfit.fitter import fit_workspace
    from wfit.fitter.cutopt import CutModel, Cuts, scan_by_refit

    cfg = _config(qcd_ptw_edges=None, lepton_pt_min=20.0, pt_bins=(6, 20.0, 56.0), pdf=False)
    _, columns = write_column_toys(tmp_path, 4000, config=cfg)
    samples = {"W": Sample("signal", 20000.0), "Z": Sample("background", 2000.0),
               "QCD": Sample("background", 20000.0, process="QCD")}  # fmt: skip
    model = CutModel(columns, samples, lumi=1.0)
    assert not any(n.endswith("_0") for n in model.signals)
    assert sum(n.startswith("muonScaleStat_") for n in model.nuisances) == 8 * 2
    assert sum(n.startswith("effStatPar") for n in model.nuisances) == 8 * 2 * 3
    cuts = Cuts(40.0, 0.15, 26.0)
    poi = "Wplus_y0_L"
    (sigma_fit,) = scan_by_refit(columns, samples, [cuts], poi, lumi=1.0, workdir=tmp_path)
    res = fit_workspace(tmp_path / "scan0.hdf5", asimov=True)
    assert res.ok and set(res.names) == set(model.names)
    for name in (poi, "Wminus_y1_R"):
        np.testing.assert_allclose(model.expected_uncertainty(cuts, name, None), res.errors[res.names.index(name)],
                                   rtol=1e-9)  # fmt: skip


# ------------------------------------------------------------------------------------------- results
@pytest.fixture(scope="module")
def measured(toys: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[TemplateConfig, Any, dict, Path]:
    """The W toy's templates split with its measured angular coefficients, and an Asimov workspace with the
    cross-section channel."""
    from wfit.processors import AngularCoefficientsProcessor

    cfg = _config()
    moments = run_templates({"W": toys["W"]}, AngularCoefficientsProcessor(cfg), status=False).output
    coef = AngularCoefficients.from_moments(moments["W"]["moments"])
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=coef)
    out = run_templates({"W": toys["W"], "Z": toys["Z"]}, proc, status=False).output
    path = tmp_path_factory.mktemp("xsec") / "ws.hdf5"
    samples = {"W": SAMPLES["W"], "Z": SAMPLES["Z"]}
    summary = build_workspace(out, path, samples=samples, config=cfg, lumi=1.0, cross_sections=coef)
    return cfg, coef, summary, path


def test_cross_section_channel_holds_the_generator_cross_sections(measured: Any) -> None:
    cfg, _, summary, path = measured
    xsec = summary["cross_sections"]
    # Every toy W event has a generator W: the components add up to the sample's cross section.
    np.testing.assert_allclose(sum(xsec.values()), SAMPLES["W"].xsec, rtol=1e-12)
    # Their helicity fractions per |y_W| bin are the toy's injected ones, within the moments' statistical precision.
    sigma = np.array([xsec[n] for n in cfg.component_names]).reshape(2, cfg.n_absy, 3)
    truth = TOY.fractions()
    np.testing.assert_allclose(sigma / sigma.sum(axis=2, keepdims=True), np.broadcast_to(truth.T, sigma.shape), atol=0.05)
    ws = read_workspace(path)
    ch = ws.channel("xsec")
    assert ch.masked and [a["name"] for a in ch.axes] == ["charge", "absy", "helicity"]
    block = ws.norm[ch.start : ch.stop]
    for i, name in enumerate(cfg.component_names):
        j = ws.procs.index(name)
        assert block[i, j] == pytest.approx(xsec[name], rel=1e-12)
        assert np.count_nonzero(block[:, j]) == 1
    # A longitudinal component's constraint acts on its cross section too; nothing else acts there.
    i = ws.systs.index("longitudinal_Wplus_y1")
    j = ws.procs.index("Wplus_y1_0")
    assert ws.logk_avg[ch.start + cfg.component_names.index("Wplus_y1_0"), j, i] == pytest.approx(math.log(1.3))
    others = [k for k, s in enumerate(ws.systs) if not s.startswith("longitudinal_")]
    assert np.all(ws.logk_avg[ch.start : ch.stop][:, :, others] == 0.0)


def test_the_measurement_on_the_cluster(measured: Any, dask_client: Any, tmp_path: Path) -> None:
    """The fit of the Asimov data on a worker with the measurement's quantities, impacts and yields: each measured
    quantity is its prediction, computed here from the generator cross sections; the breakdown has every group of
    the model and the figures are written."""
    from wfit.fitter.measurement import BREAKDOWN, QUANTITIES, Measurement, plot_measurement
    from wfit.pipeline import fit_on_cluster

    cfg, _, summary, path = measured
    res = fit_on_cluster(dask_client, path, tmp_path / "fit.hdf5", allow_cpu=True, derived=QUANTITIES, impacts=True,
                         yields=True, plots=tmp_path / "fit_plots")  # fmt: skip
    assert res.ok
    m = Measurement.from_result(res, cfg.absy_edges)
    pred = np.array([summary["cross_sections"][n] for n in cfg.component_names]).reshape(2, cfg.n_absy, 3)
    np.testing.assert_allclose(m.xsec, pred, rtol=1e-6)
    np.testing.assert_allclose(m.unpolarised, pred.sum(axis=2), rtol=1e-6)
    np.testing.assert_allclose(m.fractions, pred / pred.sum(axis=2, keepdims=True), rtol=1e-6)
    unpol = pred.sum(axis=2)
    np.testing.assert_allclose(m.asymmetry, (unpol[0] - unpol[1]) / (unpol[0] + unpol[1]), rtol=1e-6, atol=1e-9)
    assert np.all(m.xsec_err > 0) and np.all(m.asymmetry_err > 0)
    # The longitudinal cross section's uncertainty is at most its 30% constraint.
    assert np.all(m.xsec_err[:, :, 2] <= 0.3 * pred[:, :, 2] * 1.0001)
    assert set(m.breakdown) == set(BREAKDOWN) - {"fakes"}  # no fake estimate in this workspace
    assert all(np.all(v >= 0) for v in m.breakdown.values()) and np.all(m.breakdown["stat"] > 0)
    paths = plot_measurement(res, cfg.absy_edges, summary["cross_sections"], tmp_path / "figures",
                             eta_pt_bins=cfg.eta_bins[0:1] + cfg.pt_bins[0:1], component_names=cfg.component_names)  # fmt: skip
    assert len(paths) == 6 and all(Path(p).stat().st_size > 10_000 for p in paths)
    assert (tmp_path / "fit_plots" / "pulls.png").is_file()


@pytest.mark.slow
def test_closure_of_the_full_model_over_seeds(tmp_path: Path) -> None:
    """The analysis's model and binning (48 x 30 x 2 bins, 44 POIs, every nuisance group but the fakes) on toys:
    pseudo-data with injected cross sections (an acceptance ``s`` per |y_W| bin) and helicity fractions (A0 / s, so
    that the constrained longitudinal component keeps its prediction, and A4 moved), three seeds. The POIs, and the
    measured cross sections and helicity fractions of the |y_W| bins measured to 20%, are within 4 sigma of the
    truth, and their pulls pooled over the seeds have a mean within 0.25 of 0 and an RMS between 0.5 and 1.25: below
    1 by the systematic uncertainties, whose nuisances the pseudo-data hold at their nominal values (measured:
    0.93 for the POIs, 0.77 and 0.75 for the cross sections and the fractions)."""
    from wfit.fitter import fit_workspace
    from wfit.fitter.measurement import QUANTITIES, Measurement
    from wfit.fitter.postfit import post_fit_products
    from wfit.processors import AngularCoefficientsProcessor

    cfg = TemplateConfig().with_full_model()
    edges, ny = cfg.absy_edges, cfg.n_absy
    base = ToyConfig(absy_edges=edges)
    write_toy(tmp_path / "mc.root", 3_000_000, process="W", seed=40, config=base)
    moments = run_templates({"W": [str(tmp_path / "mc.root")]}, AngularCoefficientsProcessor(cfg), status=False).output
    coef = AngularCoefficients.from_moments(moments["W"]["moments"])
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=coef)
    mc = run_templates({"W": [str(tmp_path / "mc.root")]}, proc, status=False).output
    n_data = 100_000  # the MC 30 times larger: no bin of the sparse tail with data and no MC
    pulls: dict[str, list[np.ndarray]] = {"poi": [], "xsec": [], "fractions": []}
    for seed in (41, 42, 43):
        rng = np.random.default_rng(seed)
        s = rng.uniform(0.8, 1.0, ny)
        injected = ToyConfig(absy_edges=edges, a0=tuple(np.array(base.a0) / s),
                             a4=tuple(np.array(base.a4) + rng.uniform(-0.1, 0.1, ny)), yield_scale=(tuple(s), tuple(s)))  # fmt: skip
        data_file = tmp_path / f"data{seed}.root"
        write_toy(data_file, {"W": n_data}, seed=seed, config=injected, is_data=True)
        out = {**mc, **run_templates({"data": [str(data_file)]}, proc, status=False).output}
        ws = tmp_path / f"ws{seed}.hdf5"
        samples = {"W": Sample("signal", xsec=1.0), "data": Sample("data")}
        # xsec x lumi = n_data: the templates predict the pseudo-data before the injected acceptance.
        summary = build_workspace(out, ws, samples=samples, config=cfg, lumi=float(n_data), cross_sections=coef)
        res = fit_workspace(ws, post_fit=lambda ll, r: post_fit_products(ll, r, derived=QUANTITIES, impacts=True))
        assert res.ok, res.status
        f_mc, f_data = base.fractions(), injected.fractions()
        names = list(res.names[: res.npoi])
        truth = np.array([s[int(n.split("_")[1][1:])] * f_data["LR0".index(n[-1]), int(n.split("_")[1][1:])]
                          / f_mc["LR0".index(n[-1]), int(n.split("_")[1][1:])] for n in names])  # fmt: skip
        pulls["poi"].append((np.asarray(res.values[: res.npoi]) - truth) / np.asarray(res.errors[: res.npoi]))
        m = Measurement.from_result(res, edges)
        predicted = np.array([summary["cross_sections"][n] for n in cfg.component_names]).reshape(2, ny, 3)
        total = predicted.sum(axis=2, keepdims=True)
        xsec_truth = total * s[None, :, None] * f_data.T[None]
        # Cross sections and fractions where the linearised uncertainty holds: the |y_W| bins whose unpolarised cross
        # section is measured to better than 20% (beyond, the fractions are ratios of poorly constrained yields).
        linear = np.repeat((m.unpolarised_err / m.unpolarised < 0.2)[:, :, None], 3, axis=2)
        assert linear[:, :7].all()  # |y_W| < 1.75 at least
        pulls["xsec"].append(((m.xsec - xsec_truth) / m.xsec_err)[linear])
        pulls["fractions"].append(((m.fractions - f_data.T[None]) / m.fractions_err)[linear])
    for what, values in pulls.items():
        z = np.concatenate(values)
        print(what, len(z), f"mean {z.mean():+.3f} rms {np.sqrt(np.mean(z**2)):.3f} max |z| {np.abs(z).max():.2f}")
        assert np.all(np.isfinite(z)) and np.all(np.abs(z) < 4.0), (what, z)
        assert abs(z.mean()) < 0.25 and 0.5 < np.sqrt(np.mean(z**2)) < 1.25, (what, z.mean(), np.sqrt(np.mean(z**2)))


def test_bad_inputs_of_the_full_model_are_refused_by_name(measured: Any, tmp_path: Path) -> None:
    from wfit.fitter.measurement import Measurement, plot_measurement
    from wfit.fitter.result import read_result

    for bad, match in (
        (dict(eff_parameters=4), "eff_parameters"),
        (dict(fake_norm_uncertainty=float("nan")), "fake_norm_uncertainty"),
        (dict(longitudinal_uncertainty=float("nan")), "longitudinal_uncertainty"),
        (dict(qcd_ptw_edges=(0.0, float("nan"))), "qcd_ptw_edges"),
        (dict(qcd_ptw_edges=(5.0, 5.0)), "qcd_ptw_edges"),
        (dict(fake_eta_groups=7), "fake_eta_groups"),
    ):
        with pytest.raises(ValueError, match=match):
            _config(**bad)
    with pytest.raises(ValueError, match="stat_scale"):
        CurvatureVariation(stat_scale=float("nan"))
    with pytest.raises(ValueError, match="lepton"):
        ToyConfig(lepton="tau")
    cfg, coef, _, path = measured
    # The cross sections need the coefficients of the same |y_W| bins, and one signal dataset.
    out = {"W": {"sumw_sign": 1.0}}
    with pytest.raises(ValueError, match="AngularCoefficientsProcessor"):
        from wfit.processors.workspace_builder import generator_cross_sections

        generator_cross_sections(out, {"W": SAMPLES["W"]}, cfg.replace(absy_edges=(0.0, 2.0)), coef)
    with pytest.raises(ValueError, match="exactly one signal"):
        generator_cross_sections(out, {"W": SAMPLES["W"], "W2": SAMPLES["W"]}, cfg, coef)
    # A result without the measurement's products says how to make them; nothing is written.
    from wfit.fitter import fit_workspace

    res = fit_workspace(path, asimov=True)
    res.write(tmp_path / "bare.hdf5")
    with pytest.raises(KeyError, match="derived=QUANTITIES"):
        Measurement.from_result(read_result(tmp_path / "bare.hdf5"), cfg.absy_edges)
    with pytest.raises(KeyError, match="impacts=True"):
        plot_measurement(res, cfg.absy_edges, {}, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()
