"""Turn the template processor's output into an HDF5 workspace (through :mod:`wfit.workspace`).

The signal-region channel has axes (eta, pT, charge). Processes:

* signal: one process per W component (``Wplus_y0_L`` ...), a parameter of interest ``mu`` (the
  signal strength relative to the template normalisation); components with no selected events are
  left out and listed in the returned summary;
* backgrounds: MC datasets grouped by :attr:`Sample.process`, the signal datasets' events without
  a generator W -> l nu (``{dataset}_unmatched``) and, with ``fakes=True``, a data-driven ``Fakes``
  estimate (:func:`fake_estimate`);
* data: the sum of the data datasets, or pseudo-data: the Asimov sum of all processes
  (``pseudo_data="asimov"``) or a Poisson fluctuation of it (``pseudo_data=<seed>``).

MC templates are normalised by ``xsec * lumi / sumw_sign`` (the histograms are filled with
sign(genWeight); see :mod:`wfit.processors.processor`). Systematics, each read through its declaration in
:data:`~wfit.processors.systematics.SYSTEMATICS` (name, group, shifts, processes, bins):

* ``lumi``: lnN ``1 + config.lumi_uncertainty`` on every MC process;
* ``effStat_eta{g}``: the ``effStat`` variation restricted to eta group ``g`` (``config.eff_groups``
  nuisances, see :mod:`wfit.processors.systematics`);
* ``X`` from ``XUp``/``XDown`` pairs; ``pdf{i}`` and ``muonResolution_eta{r}`` (one-sided) mirrored;
* ``jetCalib``: the DNN jet calibration's ``jetCalibUp``/``jetCalibDown`` (group ``jet``; with a
  :class:`~wfit.processors.jetcorr.JetCalibration` in the processor);
* ``fakeNorm``: lnN 1.3 on the fake estimate;
* with :meth:`TemplateConfig.with_full_model` (the analysis's model, README): ``effStatPar{k}_eta{i}_{plus,minus}``
  (smooth pT modes of the efficiencies per eta bin and charge), ``QCDscale_*_ptW{b}_{Wplus,Wminus}_{L,R,0}`` (the
  signal's QCD scales per generator W pT bin, W charge and helicity; the undecorrelated ones stay on the
  backgrounds), ``muonScaleStat_eta{i}_{plus,minus}``, ``fakeNormEta``/``fakeShape``/``fakeShapeEta`` on the fake
  estimate (:func:`fake_variations`) and ``longitudinal_W{plus,minus}_y{i}`` (the helicity-0 components constrained,
  not POIs).

A variation on the ``syst`` axis that the registry does not declare is an
:class:`~wfit.processors.systematics.UnknownVariationError` naming the dataset, the name and the declared ones.

Example:
    >>> from wfit.processors.workspace_builder import Sample
    >>> Sample("signal", xsec=20000.0).kind
    'signal'
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import hist
import numpy as np

from .config import TemplateConfig, component_labels
from .systematics import NOMINAL, OTHER_GROUPS, SYSTEMATICS

__all__ = [
    "NormTerm",
    "Sample",
    "ShapeTerm",
    "XSEC_CHANNEL",
    "build_workspace",
    "cross_section_axes",
    "fake_estimate",
    "generator_cross_sections",
    "fake_variations",
    "model_terms",
    "process_templates",
]


@dataclass(frozen=True)
class Sample:
    """What a dataset of the processor output is.

    Attributes:
        kind: ``"signal"`` (W MC split into components), ``"background"`` (MC) or ``"data"``.
        xsec: Cross section in pb (MC).
        process: Background process name (datasets with the same name are summed); default: the dataset.
    """

    kind: Literal["signal", "background", "data"]
    xsec: float = 1.0
    process: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("signal", "background", "data"):
            raise ValueError(f"Sample.kind must be 'signal', 'background' or 'data', got {self.kind!r}")
        # A zero or negative cross section would scale the process away (or flip it) without a word.
        if self.kind != "data" and not _finite_positive(self.xsec):
            name = f" of process {self.process!r}" if self.process else ""
            raise ValueError(
                f"Sample({self.kind!r}).xsec{name} must be a finite cross section > 0 pb, got {self.xsec!r}; "
                "leave a process that does not contribute out of samples"
            )


#: Above this size in bytes of the dense log(kappa) tensor, build_workspace writes the sparse layout.
_DENSE_LIMIT = 256 * 2**20


def _finite_positive(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_samples(samples: Mapping[str, Any], datasets: Iterable[str], lumi: float) -> None:
    """Check the samples of a workspace against the datasets that will be processed, before the processing.

    Raises:
        TypeError: A value that is not a :class:`Sample`.
        KeyError: A sample whose dataset is not processed (naming it and the datasets).
        ValueError: A luminosity that is not a finite number > 0, or no MC sample.
    """
    if not _finite_positive(lumi):
        raise ValueError(f"lumi must be a finite integrated luminosity > 0 (1/pb), got {lumi!r}")
    have = set(datasets)
    for ds, sample in samples.items():
        if not isinstance(sample, Sample):
            raise TypeError(f"samples[{ds!r}] must be a wfit.processors.Sample, got {type(sample).__name__}")
        if ds not in have:
            raise KeyError(
                f"samples[{ds!r}]: no such dataset in the fileset (has {sorted(have)}); add its files or remove it"
            )
    if not any(s.kind != "data" for s in samples.values()):
        raise ValueError(f"samples {sorted(samples)} hold no MC (signal or background) dataset: a fit needs one")


def _project(h: hist.Hist) -> hist.Hist:
    return h.project("eta", "pt", "charge")


def process_templates(
    output: Mapping[str, Any], samples: Mapping[str, Sample], config: TemplateConfig, lumi: float
) -> tuple[dict[str, dict[str, hist.Hist]], list[str], dict[str, hist.Hist]]:
    """Normalised signal-region templates per process and variation.

    Returns:
        ``(templates, signals, data)``: ``templates[process][variation]`` as (eta, pt, charge)
        histograms scaled to ``lumi`` (``"nominal"`` included), the signal process names in
        component order, and the data histograms per data dataset.
    """
    templates: dict[str, dict[str, hist.Hist]] = {}
    data: dict[str, hist.Hist] = {}
    names = config.component_names
    for ds, sample in samples.items():
        if ds not in output:
            raise KeyError(
                f"dataset {ds!r} is not in the processor output (has {sorted(output)}); "
                "process its files or remove it from samples"
            )
        res = output[ds]
        kinds = set(res["kind"])
        hs = res["templates_syst"]
        if sample.kind == "data":
            if kinds != {"data"}:
                raise ValueError(f"dataset {ds!r} is declared data but its files are {sorted(kinds)}")
            data[ds] = _project(hs[{"syst": NOMINAL, "component": 0}])
            continue
        if "data" in kinds:
            raise ValueError(f"dataset {ds!r} is declared {sample.kind} but has data files (no genWeight)")
        if sample.kind == "signal" and kinds != {"signal"}:
            raise ValueError(
                f"dataset {ds!r} is declared signal: pass it in WTemplateProcessor(signal_datasets=...)"
            )
        sumw = float(res["sumw_sign"])
        if sumw <= 0:
            raise ValueError(
                f"dataset {ds!r}: the sum of sign(genWeight) is {sumw}; it needs processed MC events"
            )
        scale = sample.xsec * lumi / sumw
        systs = list(hs.axes["syst"])
        for s in systs:
            if s != NOMINAL:
                SYSTEMATICS.resolve(s, where=f"dataset {ds!r}, histogram 'templates_syst'")
        if sample.kind == "signal":
            comps = [(c, names[c]) for c in range(config.n_components)]
            comps.append((config.unmatched_component, f"{ds}_unmatched"))
        else:
            comps = [(0, sample.process or ds)]
        for c, proc in comps:
            target = templates.setdefault(proc, {})
            for s in systs:
                h = _project(hs[{"syst": s, "component": c}]) * scale
                target[s] = target[s] + h if s in target else h
    signals = [n for n in names if n in templates]
    return templates, signals, data


def fake_estimate(
    output: Mapping[str, Any], samples: Mapping[str, Sample], config: TemplateConfig, lumi: float
) -> hist.Hist:
    """Data-driven estimate of non-prompt leptons in the signal region (ABCD with a fake rate).

    With A the signal region (mT >= mT_SR, iso < iso_SR), B (mT >= mT_SR, iso >= iso_SR),
    C (lowest mT bin, iso < iso_SR) and D (lowest mT bin, iso >= iso_SR), and prompt MC subtracted in
    each region: ``A(eta, pT, q) = B(eta, pT, q) x C(eta, q) / D(eta, q)`` (fake rate integrated
    over pT); negative bins are set to zero. Variances: those of B scaled by the fake rate squared.
    """
    mt_sr, iso_sr = config.signal_region

    def regions(h: hist.Hist, scale: float, comps: Any) -> dict[str, np.ndarray]:
        hh = h[{"component": comps}] if comps is not None else h
        v = hh.values()
        var = hh.variances()
        mt = np.asarray(hh.axes["mt"].edges)
        iso = np.asarray(hh.axes["iso"].edges)
        i_sr = int(np.searchsorted(mt, mt_sr))
        j_sr = int(np.searchsorted(iso, iso_sr))
        # axes: (mt, iso, charge, eta, pt)
        out = {
            "B": v[i_sr:, j_sr:].sum(axis=(0, 1)),
            "C": v[0, :j_sr].sum(axis=0),
            "D": v[0, j_sr:].sum(axis=0),
            "varB": var[i_sr:, j_sr:].sum(axis=(0, 1)),
        }
        return {k: x * (scale if not k.startswith("var") else scale**2) for k, x in out.items()}

    total: dict[str, np.ndarray] = {}
    any_data = False
    axes_src = None
    for ds, sample in samples.items():
        h = output[ds]["templates"]
        axes_src = h
        if sample.kind == "data":
            r = regions(h, 1.0, sum)
            sign = 1.0
            any_data = True
        else:
            scale = sample.xsec * lumi / float(output[ds]["sumw_sign"])
            r = regions(h, scale, sum)
            sign = -1.0
        for k, x in r.items():
            total[k] = total.get(k, 0.0) + (x if k.startswith("var") else sign * x)
    if not any_data or axes_src is None:
        raise ValueError("fake_estimate needs at least one data dataset (Sample(kind='data'))")
    c_rate = total["C"].sum(axis=-1, keepdims=True)  # integrate pT: (charge, eta, 1)
    d_rate = total["D"].sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        fr = np.where(d_rate > 0, np.clip(c_rate, 0.0, None) / d_rate, 0.0)
    values = np.clip(total["B"] * fr, 0.0, None)
    variances = total["varB"] * fr**2
    ax = axes_src.axes
    out = hist.Hist(ax["charge"], ax["eta"], ax["pt"], storage=hist.storage.Weight())
    view = out.view()
    view.value[...] = values
    view.variance[...] = variances
    return _project(out)


@dataclass(frozen=True)
class ShapeTerm:
    """One shape systematic of one process: the nuisance ``name`` moves ``process`` from its nominal template
    to the ``up`` (and ``down``; None: mirrored) variation, inside the eta bins ``eta`` only (None: all bins) and
    the bins of lepton charge ``charge`` only (+1 or -1; None: both); outside them the variation is the nominal."""

    name: str
    process: str
    up: str
    down: str | None
    group: str
    eta: slice | None = None
    charge: int | None = None


@dataclass(frozen=True)
class NormTerm:
    """A log-normal normalisation systematic: ``kappa`` on each of ``processes``."""

    name: str
    processes: tuple[str, ...]
    kappa: float
    group: str


def fake_variations(fake: hist.Hist, config: TemplateConfig) -> dict[str, hist.Hist]:
    """The fake estimate and the variations that its model needs (:func:`model_terms`): ``fakeNormEta{Up,Down}``
    (x and / by ``1 + fake_norm_uncertainty``), ``fakeShape{Up,Down}`` and ``fakeShapeEta{Up,Down}`` (x ``1 +- u
    x``, ``x`` the template pT mapped onto [-1, 1] at the bin centres, ``u = fake_shape_uncertainty``)."""
    out = {NOMINAL: fake}
    if config.fake_eta_groups and config.fake_norm_uncertainty > 0:
        k = 1.0 + config.fake_norm_uncertainty
        for shift, factor in (("Up", k), ("Down", 1.0 / k)):
            out[SYSTEMATICS["fakeNormEta"].histogram(shift)] = fake * factor
    if config.fake_shape_uncertainty > 0:
        from .weights import unit_pt

        x = unit_pt(np.asarray(fake.axes["pt"].centers), config)
        names = ["fakeShape"] + (["fakeShapeEta"] if config.fake_eta_groups else [])
        for shift, sign in (("Up", 1.0), ("Down", -1.0)):
            varied = fake.copy()
            factor = (1.0 + sign * config.fake_shape_uncertainty * x)[None, :, None]  # axes (eta, pt, charge)
            varied.view().value[...] = fake.values() * factor
            varied.view().variance[...] = fake.variances() * factor**2
            for name in names:
                out[SYSTEMATICS[name].histogram(shift)] = varied
    return out


def model_terms(
    variations: Mapping[str, Collection[str]],
    kinds: Mapping[str, Literal["signal", "background"]],
    config: TemplateConfig,
    systematics: bool | Collection[str] = True,
    fakes: bool = False,
) -> list[ShapeTerm | NormTerm]:
    """The systematics of the workspace model, in booking order: which nuisance comes from which variations
    of which process. The one definition of the model, written by :func:`build_workspace` and evaluated as a
    differentiable function of the cuts by :mod:`wfit.fitter.cutopt`.

    Per process, a declared systematic (:data:`~wfit.processors.systematics.SYSTEMATICS`) whose histograms the
    process has and whose ``processes`` match its kind gives: one nuisance (``bins="all"``); one per eta group
    (and charge) of the variation restricted to its bins (``bins="eta_group"``, after the others); for a signal
    component, one per W charge and helicity (``signal_split``). A systematic that another one ``replaces`` for a
    process (``QCDscale_muR`` by ``QCDscale_muR_ptW{b}``) is left out for it. Then the normalisations: the
    longitudinal components' constraints (``config.longitudinal_uncertainty``) and ``lumi``.

    Args:
        variations: Per process, the names of its variations (``"nominal"`` among them).
        kinds: Per process (signals and MC backgrounds, in the workspace's order), its kind.
        config: The processor's configuration (eta groups, uncertainties of the model).
        systematics: As :func:`build_workspace`'s.
        fakes: Whether the model has the data-driven ``Fakes`` process: its ``fakeNorm`` and the terms of the
            variations that ``variations["Fakes"]`` lists (:func:`fake_variations`).

    Example:
        >>> terms = model_terms({"W": ["nominal", "pileupUp", "pileupDown"]}, {"W": "signal"}, TemplateConfig())
        >>> [(t.name, type(t).__name__) for t in terms]
        [('pileup', 'ShapeTerm'), ('lumi', 'NormTerm')]
    """
    from .config import is_longitudinal

    keep_all = systematics is True
    groups_kept = set() if systematics is False else (None if keep_all else set(systematics))

    def wanted(group: str) -> bool:
        return groups_kept is None or group in groups_kept

    def split(spec: Any, p: str, up: str, down: str | None, index: int | None) -> list[ShapeTerm]:
        """The per-eta-group (and per-charge) terms of a ``bins="eta_group"`` variation."""
        n_groups = spec.n_eta_groups(config)
        size = config.eta_bins[0] // n_groups
        out = []
        for g in range(n_groups):
            eta = slice(g * size, (g + 1) * size)
            for q in (1, -1) if spec.by_charge else (None,):
                name = spec.nuisance(index, eta_group=g, charge=q)
                out.append(ShapeTerm(name, p, up, down, spec.group, eta, q))
        return out

    declared = {spec.name: i for i, spec in enumerate(SYSTEMATICS)}
    terms: list[ShapeTerm | NormTerm] = []
    if fakes:
        fake_norm = SYSTEMATICS["fakeNorm"]
        terms.append(NormTerm(fake_norm.name, ("Fakes",), 1.3, fake_norm.group))
        if wanted(fake_norm.group):
            fake_names = set(variations.get("Fakes", ()))
            for name in ("fakeNormEta", "fakeShape", "fakeShapeEta"):
                spec = SYSTEMATICS[name]
                up, down = (spec.histogram(shift) for shift in spec.shifts)
                if up not in fake_names:
                    continue
                if spec.bins == "all":
                    terms.append(ShapeTerm(spec.nuisance(), "Fakes", up, down, spec.group))
                else:
                    terms += split(spec, "Fakes", up, down, None)
    for p, process_kind in kinds.items():
        names = set(variations[p])
        resolved = [(s, SYSTEMATICS.resolve(s, where=f"process {p!r}")) for s in variations[p] if s != NOMINAL]
        replaced = {v.systematic.replaces for _, v in resolved if v.systematic.applies_to(process_kind)}
        grouped: list[tuple[int, int, str, str | None, Any]] = []  # (declaration order, member, up, down, spec)
        for s, var in resolved:
            spec = var.systematic
            # Each nuisance is booked at its first histogram; the eta-group split comes after the loop.
            if var.shift != spec.shifts[0] or spec.name in replaced:
                continue
            if not wanted(spec.group) or not spec.applies_to(process_kind):
                continue
            down = spec.histogram(spec.shifts[1], var.index) if spec.two_sided else None
            down = down if down in names else None
            if spec.bins == "eta_group":
                if not spec.two_sided or down is not None:  # a two-sided eta-group split needs both
                    grouped.append((declared[spec.name], var.index or 0, s, down, spec))
                continue
            if spec.signal_split:
                if component_labels(p) is None:
                    continue
                terms.append(ShapeTerm(spec.nuisance(var.index, component=p), p, s, down, spec.group))
                continue
            terms.append(ShapeTerm(var.nuisance, p, s, down, spec.group))
        for _, index, up, down, spec in sorted(grouped, key=lambda g: (g[0], g[1])):
            terms += split(spec, p, up, down, index if spec.indexed else None)
    longitudinal = SYSTEMATICS["longitudinal"]
    if config.longitudinal_uncertainty is not None and wanted(longitudinal.group):
        for p, process_kind in kinds.items():
            if process_kind == "signal" and is_longitudinal(p):
                kappa = 1.0 + config.longitudinal_uncertainty
                terms.append(NormTerm(f"{longitudinal.name}_{p.rsplit('_', 1)[0]}", (p,), kappa, longitudinal.group))
    lumi = SYSTEMATICS["lumi"]
    if groups_kept is None or systematics is False or lumi.group in groups_kept:
        lumi_processes = tuple(p for p, kind in kinds.items() if lumi.applies_to(kind))
        terms.append(NormTerm(lumi.name, lumi_processes, 1.0 + config.lumi_uncertainty, lumi.group))
    return terms


#: The masked channel of the generator-level cross sections (:func:`build_workspace` ``cross_sections``).
XSEC_CHANNEL = "xsec"


def cross_section_axes(config: TemplateConfig) -> list[Any]:
    """The axes of the cross-section channel: W charge (+1, -1: an asymmetry along it is (W+ - W-) / (W+ + W-)),
    |y_W| (the overflow bin up to |y| = 10) and helicity (L, R, 0), the components' order."""
    from .config import HELICITIES

    edges = [*config.absy_edges, max(10.0, config.absy_edges[-1] + 1.0)]
    return [
        hist.axis.IntCategory([1, -1], name="charge", label="W charge"),
        hist.axis.Variable(edges, name="absy", label="|y_W|", flow=False),
        hist.axis.StrCategory(list(HELICITIES), name="helicity", label="W helicity"),
    ]


def generator_cross_sections(
    output: Mapping[str, Any], samples: Mapping[str, Sample], config: TemplateConfig, coefficients: Any
) -> dict[str, float]:
    """The generator-level cross section in pb of every signal component, in the full phase space.

    ``sigma(q, y, k) = xsec x sum over pT_W bins of sumw(q, y, pT) f_k(q, y, pT) / sumw_sign``: the moments'
    sums of sign(genWeight) per W charge, |y_W| and pT_W bin (:class:`~wfit.processors.AngularCoefficients` of
    :class:`~wfit.processors.AngularCoefficientsProcessor` on the signal sample) times the helicity fractions of
    the same A0 and A4 as the template split (clipped to the physical region), over the sample's sum of signs.

    Raises:
        ValueError: Not exactly one signal sample, or coefficients of another |y_W| binning.
    """
    from .helicity import helicity_fractions

    signal = [ds for ds, smp in samples.items() if smp.kind == "signal"]
    if len(signal) != 1:
        raise ValueError(f"cross_sections need exactly one signal dataset in samples, got {signal}")
    if tuple(coefficients.absy_edges) != tuple(config.absy_edges):
        raise ValueError(
            f"cross_sections: the coefficients' |y_W| edges {coefficients.absy_edges} are not the config's "
            f"{config.absy_edges}: measure them with AngularCoefficientsProcessor(config)"
        )
    ds = signal[0]
    a0 = np.clip(coefficients.a0, 0.0, 2.0)
    a4 = np.clip(coefficients.a4, -(2.0 - a0), 2.0 - a0)
    fractions = helicity_fractions(a0, a4)  # [3, charge, absy, pT]
    sigma = samples[ds].xsec * np.einsum("kqyp,qyp->qyk", fractions, coefficients.sumw) / float(output[ds]["sumw_sign"])
    names = config.component_names
    return {names[(q * config.n_absy + y) * 3 + k]: float(sigma[q, y, k]) for q in range(2)
            for y in range(config.n_absy) for k in range(3)}  # fmt: skip


def _groups(term: ShapeTerm | NormTerm) -> list[str]:
    """A term's nuisance groups: its own, and ``others`` for the groups that the breakdown merges (OTHER_GROUPS)."""
    return [term.group, "others"] if term.group in OTHER_GROUPS else [term.group]


def _restricted(hs: Mapping[str, hist.Hist], name: str, eta: slice | None, charge: int | None = None) -> hist.Hist:
    """The variation ``name`` inside the eta bins ``eta`` and the bins of lepton charge ``charge``, the nominal
    outside (the whole variation when both are None). Axes (eta, pt, charge), charge categories (-1, +1)."""
    if eta is None and charge is None:
        return hs[name]
    out = hs[NOMINAL].copy()
    q = slice(None) if charge is None else (1 if charge > 0 else 0)
    e = slice(None) if eta is None else eta
    out.view()[e, :, q] = hs[name].view()[e, :, q]
    return out


def build_workspace(
    output: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    samples: Mapping[str, Sample],
    config: TemplateConfig | None = None,
    lumi: float,
    systematics: bool | Collection[str] = True,
    pseudo_data: Literal["asimov"] | int = "asimov",
    fakes: bool = False,
    channel: str = "mu_sr",
    sparse: bool | None = None,
    cross_sections: Any = None,
) -> dict[str, Any]:
    """Write a workspace from the processor output.

    Args:
        output: ``{dataset: ...}`` from :class:`~wfit.processors.processor.WTemplateProcessor`.
        path: Output HDF5 file.
        samples: What each dataset is (datasets not listed are ignored).
        config: The processor's configuration (binning, component names, lumi uncertainty).
        lumi: Integrated luminosity in 1/pb.
        systematics: ``True`` for all, ``False`` for none but ``lumi``, or the nuisance groups to keep
            (``"lumi"``, ``"eff"``, ``"QCDscale"``, ``"pdf"``, ``"pileup"``, ``"prefire"``, ``"muon"``, ``"jet"``:
            the groups of :data:`~wfit.processors.systematics.SYSTEMATICS`).
        pseudo_data: Used when there is no data dataset: ``"asimov"`` or an integer seed for Poisson
            pseudo-data.
        fakes: Add the data-driven fake estimate (needs data).
        channel: Channel name.
        sparse: Write the sparse (COO) layout; ``None``: when the dense log(kappa) tensor would take more than
            256 MB (a model at the analysis's size: thousands of bins and hundreds of nuisances).
        cross_sections: The signal's :class:`~wfit.processors.AngularCoefficients` (from
            :class:`~wfit.processors.AngularCoefficientsProcessor`): add the masked channel ``xsec`` (axes W charge,
            |y_W|, helicity; :func:`cross_section_axes`) holding each signal component's generator-level cross
            section in pb (:func:`generator_cross_sections`), so that the fit gives the measured cross sections,
            helicity fractions and asymmetries with their covariance (derived quantities). Only the components'
            normalisations act there (their POIs; the longitudinal constraints).

    Returns:
        A summary: ``signals`` (the signal components), ``pois`` (those that are POIs: all but constrained
        longitudinal ones), ``backgrounds``, ``missing_signals`` (components without events),
        ``systematics`` and ``yields`` (expected events per process).
    """
    from wfit.workspace import WorkspaceWriter

    cfg = config or TemplateConfig()
    check_samples(samples, output, lumi)
    templates, signals, data = process_templates(output, samples, cfg, lumi)
    backgrounds = [p for p in templates if p not in cfg.component_names]
    missing = [
        n for n in cfg.component_names if n not in templates or templates[n][NOMINAL].sum().value <= 0
    ]
    signals = [s for s in signals if s not in missing]
    backgrounds = [b for b in backgrounds if templates[b][NOMINAL].sum().value > 0]
    fake_hist = fake_estimate(output, samples, cfg, lumi) if fakes else None

    any_hist = next(iter(templates.values()))[NOMINAL]
    if fake_hist is not None:
        templates["Fakes"] = fake_variations(fake_hist, cfg)
    kinds: dict[str, Literal["signal", "background"]] = {p: "signal" for p in signals}
    kinds.update((b, "background") for b in backgrounds)
    variations = {p: list(templates[p]) for p in [*kinds, *(["Fakes"] if fake_hist is not None else [])]}
    terms = model_terms(variations, kinds, cfg, systematics, fakes=fake_hist is not None)
    if sparse is None:
        n_proc = len(kinds) + (fake_hist is not None)
        sparse = any_hist.size * n_proc * 2 * len({t.name for t in terms}) * 8 > _DENSE_LIMIT
    w = WorkspaceWriter(sparse=sparse)
    w.add_channel(channel, list(any_hist.axes))
    yields: dict[str, float] = {}
    for p in signals + backgrounds:
        # A constrained longitudinal component is a process of the fit, not a POI (TemplateConfig.is_poi).
        w.add_process(p, channel, templates[p][NOMINAL], signal=p in signals and cfg.is_poi(p))
        yields[p] = float(templates[p][NOMINAL].sum().value)
    if fake_hist is not None:
        w.add_process("Fakes", channel, fake_hist)
        yields["Fakes"] = float(fake_hist.sum().value)
    xsec: dict[str, float] = {}
    if cross_sections is not None:
        xsec = generator_cross_sections(output, samples, cfg, cross_sections)
        w.add_channel(XSEC_CHANNEL, cross_section_axes(cfg), masked=True)
        names = cfg.component_names
        for p in signals:
            values = np.zeros(len(names))
            values[names.index(p)] = xsec[p]
            w.add_process(p, XSEC_CHANNEL, values, signal=cfg.is_poi(p), variances=np.zeros(len(names)))

    booked: set[str] = set()
    for term in terms:
        if isinstance(term, NormTerm):
            # A component's own normalisation acts on its cross section too; the others (lumi) on the selection.
            own = xsec and term.group == SYSTEMATICS["longitudinal"].group
            where = [channel, XSEC_CHANNEL] if own else channel
            w.add_norm_systematic(term.name, list(term.processes), where, term.kappa, groups=_groups(term))
        else:
            hs = templates[term.process]
            up = _restricted(hs, term.up, term.eta, term.charge)
            down = None if term.down is None else _restricted(hs, term.down, term.eta, term.charge)
            w.add_shape_systematic(term.name, term.process, channel, up, down, groups=_groups(term))
        booked.add(term.name)

    if data:
        obs = sum(data.values())
    else:
        # The prediction as the workspace holds it: each process's negative bins are zero there (the writer's
        # rule), so the Asimov data is the sum of the clipped templates and equals the prediction.
        asimov = any_hist.copy()
        asimov.view().value[...] = sum(np.maximum(templates[p][NOMINAL].values(), 0.0) for p in signals + backgrounds)
        asimov.view().variance[...] = sum(templates[p][NOMINAL].variances() for p in signals + backgrounds)
        if fake_hist is not None:
            asimov = asimov + fake_hist
        if pseudo_data == "asimov":
            obs = asimov
        else:
            rng = np.random.default_rng(int(pseudo_data))
            obs = asimov.copy()
            counts = rng.poisson(np.clip(asimov.values(), 0.0, None)).astype(np.float64)
            obs.view().value[...] = counts
            obs.view().variance[...] = counts
    w.add_data(channel, obs)
    w.write(path)
    return {
        "signals": signals,
        "pois": [p for p in signals if cfg.is_poi(p)],
        "backgrounds": backgrounds + (["Fakes"] if fake_hist is not None else []),
        "missing_signals": missing,
        "systematics": sorted(booked),
        "yields": yields,
        "cross_sections": xsec,
        "data": float(obs.sum().value),
    }
