"""Systematic variations: the one registry that declares them, and how each is computed.

:data:`SYSTEMATICS` declares every variation once: its nuisance name, whether it varies the event weights or
the lepton/MET kinematics (or is a normalisation only), its nuisance group, its histograms on the ``syst``
axis of ``templates_syst`` (two-sided ``Up``/``Down``, or one-sided and mirrored in the workspace), the
processes it applies to and the bins it touches. The template processor names every histogram it fills
through it (:meth:`Systematic.histogram`) and the workspace builder reads every name back through it
(:meth:`Registry.resolve`), so a name that is not declared is an :class:`UnknownVariationError` on either
side, never an ungrouped nuisance.

The variations (histogram names on the ``syst`` axis, next to ``nominal``):

* ``effStatUp``/``effStatDown``: all scale factors at +-1 sigma at once. The workspace builder splits
  them into one nuisance ``effStat_eta{g}`` per group of template eta bins (``TemplateConfig.eff_groups``):
  since the varied weight of an event depends only on its selected lepton, the template of nuisance ``g``
  is the nominal one outside the eta bins of ``g`` and ``effStat`` inside, which is exactly what filling
  ``eff_groups`` separate variations would give, at the cost of two fills;
* ``QCDscale_muR{Up,Down}``, ``QCDscale_muF{Up,Down}``, ``QCDscale_muRmuF{Up,Down}`` from
  ``LHEScaleWeight`` (7-point scheme; 9 weights with the nominal at index 4, or 8 without it; the
  weights are used as stored, ``w_var / w_nominal``);
* ``pdf{i}`` for ``LHEPdfWeight[i] / LHEPdfWeight[0]``, i >= 1 (Hessian eigenvectors, mirrored
  in the workspace);
* ``pileup{Up,Down}`` and ``prefire{Up,Down}``;
* ``muonScale_eta{r}{Up,Down}`` and ``muonResolution_eta{r}Up`` (resolution is mirrored) for the
  |eta| regions of :class:`~wfit.processors.config.CurvatureVariation`;
* ``jetCalib{Up,Down}``: the DNN jet calibration scaled by ``1 +- variation`` (see
  :mod:`wfit.processors.jetcorr`);
* ``jetReso{Up,Down}``: with a calibration model that has a resolution head, every jet at the upper/lower
  bound of its predicted pT_gen interval (see :mod:`wfit.processors.jetcorr`);

and two normalisation nuisances without histograms: ``lumi`` (every simulated process) and ``fakeNorm``
(the data-driven fake estimate).

The resolution smearing uses normal deviates from a counter-based hash of (seed, run, lumi block,
event, lepton position), so that results do not depend on chunking or on the executor.

Example:
    >>> SYSTEMATICS["pdf{index}"].histogram(index=3)
    'pdf3'
    >>> v = SYSTEMATICS.resolve("muonScale_eta1Down")
    >>> v.nuisance, v.systematic.group, v.systematic.kind
    ('muonScale_eta1', 'muon', 'kinematic')
    >>> import numpy as np
    >>> z1 = deterministic_normal(1, np.array([1, 1]), np.array([2, 2]), np.array([3, 4]), np.array([0, 0]))
    >>> z2 = deterministic_normal(1, np.array([1]), np.array([2]), np.array([4]), np.array([0]))
    >>> bool(z1[1] == z2[0])
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .config import CurvatureVariation

if TYPE_CHECKING:
    from .selection import Leptons

__all__ = [
    "NOMINAL",
    "OTHER_GROUPS",
    "SYSTEMATICS",
    "Registry",
    "Systematic",
    "UnknownVariationError",
    "Variation",
    "curvature_variations",
    "deterministic_normal",
    "pdf_variations",
    "qcd_scale_variations",
    "scale_curvature",
    "smear_curvature",
]

#: The name of the unvaried templates on the ``syst`` axis.
NOMINAL = "nominal"

_INDEX = "{index}"
_UP_DOWN = ("Up", "Down")


class UnknownVariationError(ValueError):
    """A variation name that :data:`SYSTEMATICS` does not declare (the message lists the declared ones)."""


@dataclass(frozen=True)
class Systematic:
    """One declared systematic variation.

    Attributes:
        name: The nuisance name; a family of numbered nuisances has one ``{index}`` field in it
            (``"pdf{index}"``: one nuisance per LHEPdfWeight member).
        kind: ``"weight"`` (the same events with other weights), ``"kinematic"`` (events re-selected and
            re-filled with varied lepton or MET kinematics) or ``"norm"`` (a log-normal normalisation
            nuisance of the workspace, without histograms).
        group: The nuisance group in the workspace (what ``build_workspace(systematics=[...])`` keeps).
        shifts: The suffixes of its histograms on the ``syst`` axis: ``("Up", "Down")`` for a two-sided
            variation; one suffix for a one-sided variation, which the workspace mirrors (``""`` for
            ``pdf{index}``, ``"Up"`` for ``muonResolution_eta{index}``); none for a normalisation.
        processes: The processes it applies to: ``"all"`` (every simulated process, signals and backgrounds),
            ``"signal"``, ``"background"`` or ``"fakes"`` (the data-driven fake estimate).
        region: The cell of the (mT, isolation) plane filled with it: ``"signal_region"``
            (``TemplateConfig.signal_region``, the workspace channel; the control cells of ``templates`` hold
            the nominal weights only).
        bins: The template bins of one nuisance: ``"all"``, or ``"eta_group"`` for one nuisance
            ``{name}_eta{g}`` per group of adjacent eta bins (``eta_groups`` of them), each the variation inside
            its group and the nominal outside.
        eta_groups: The :class:`~wfit.processors.config.TemplateConfig` attribute that holds the number of eta
            groups (``"eff_groups"``, ``"fake_eta_groups"``), or ``"eta_bins"`` for one group per template eta bin.
        by_charge: With ``bins="eta_group"``: also one nuisance per lepton charge (``{name}_eta{g}_{plus,minus}``),
            the variation in that charge's bins only.
        signal_split: One nuisance per W charge and helicity of the signal components (``{name}_{Wplus,Wminus}_
            {L,R,0}``), each applied to the components of that charge and helicity.
        replaces: The systematic that it replaces for the processes that have its histograms (a decorrelated
            version of it: ``QCDscale_muR_ptW{index}`` replaces ``QCDscale_muR`` for the signal components).
        description: What it varies.

    The kinds: ``"weight"`` and ``"kinematic"`` are filled by the processor, ``"derived"`` are templates that the
    workspace builder makes from others (the fake estimate's variations), ``"norm"`` has no templates.
    """

    name: str
    kind: Literal["weight", "kinematic", "derived", "norm"]
    group: str
    shifts: tuple[str, ...]
    processes: Literal["all", "signal", "background", "fakes"] = "all"
    region: Literal["signal_region"] = "signal_region"
    bins: Literal["all", "eta_group"] = "all"
    eta_groups: str = "eff_groups"
    by_charge: bool = False
    signal_split: bool = False
    replaces: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.name.count(_INDEX) > 1 or ("{" in self.name.replace(_INDEX, "")):
            raise ValueError(f"Systematic {self.name!r}: the name may hold one '{_INDEX}' field and nothing else")
        if (self.kind == "norm") != (not self.shifts) or len(self.shifts) > 2:
            raise ValueError(
                f"Systematic {self.name!r}: a 'norm' systematic has no shifts, a template variation one "
                f"(one-sided) or two (Up, Down); got kind {self.kind!r} and shifts {self.shifts}"
            )
        if self.by_charge and self.bins != "eta_group":
            raise ValueError(f"Systematic {self.name!r}: by_charge splits eta groups; give bins='eta_group'")
        if self.signal_split and self.processes != "signal":
            raise ValueError(f"Systematic {self.name!r}: signal_split is for processes='signal'")

    @property
    def two_sided(self) -> bool:
        """Whether it has an up and a down histogram (else the one histogram is mirrored)."""
        return len(self.shifts) == 2

    @property
    def indexed(self) -> bool:
        """Whether it is a family of numbered nuisances (``{index}`` in the name)."""
        return _INDEX in self.name

    def _base(self, index: int | None) -> str:
        if self.indexed != (index is not None):
            raise ValueError(
                f"systematic {self.name!r}: "
                + ("give the family member, index=..." if self.indexed else f"is not a family, got index={index}")
            )
        return self.name if index is None else self.name.replace(_INDEX, str(int(index)))

    def nuisance(
        self,
        index: int | None = None,
        eta_group: int | None = None,
        charge: int | None = None,
        component: str | None = None,
    ) -> str:
        """The workspace nuisance name of family member ``index``: of eta group ``eta_group`` for
        ``bins="eta_group"`` (``{name}_eta{g}``), of lepton charge ``charge`` (+1, -1) for ``by_charge``
        (``{name}_eta{g}_plus``) and of the W charge and helicity of signal ``component`` for ``signal_split``
        (``{name}_Wplus_L``); without them, the base of those names."""
        name = self._base(index)
        if eta_group is not None:
            if self.bins != "eta_group":
                raise ValueError(f"systematic {self.name!r} has bins={self.bins!r}: it has no eta groups")
            name = f"{name}_eta{int(eta_group)}"
        if charge is not None:
            if not self.by_charge or charge not in (1, -1):
                raise ValueError(f"systematic {self.name!r}: charge={charge!r} needs by_charge and +1 or -1")
            name = f"{name}_{'plus' if charge > 0 else 'minus'}"
        if component is not None:
            from .config import component_labels

            labels = component_labels(component)
            if not self.signal_split or labels is None:
                raise ValueError(f"systematic {self.name!r}: no split by signal component {component!r}")
            name = f"{name}_{labels[0]}_{labels[1]}"
        return name

    def n_eta_groups(self, config: Any) -> int:
        """The number of eta groups of a ``bins="eta_group"`` systematic under a TemplateConfig."""
        return int(config.eta_bins[0] if self.eta_groups == "eta_bins" else getattr(config, self.eta_groups))

    def histogram(self, shift: str | None = None, index: int | None = None) -> str:
        """The name of its histogram on the ``syst`` axis (``shift`` may be left out when there is one)."""
        if shift is None:
            if len(self.shifts) != 1:
                raise ValueError(f"systematic {self.name!r}: give shift= one of {self.shifts}")
            shift = self.shifts[0]
        if shift not in self.shifts:
            raise UnknownVariationError(
                f"systematic {self.name!r} has the shifts {self.shifts}, not {shift!r}: use one of them"
            )
        return self._base(index) + shift

    def applies_to(self, process: Literal["signal", "background", "fakes"]) -> bool:
        """Whether the workspace gives it to a process of this kind."""
        if self.processes == "all":
            return process in ("signal", "background")
        return self.processes == process

    def filled_for(self, dataset: Literal["data", "mc", "signal"]) -> bool:
        """Whether the processor fills it for a dataset of this kind (a signal dataset holds signal
        components and the background of its events without a generator W)."""
        if self.kind in ("norm", "derived") or dataset == "data":
            return False
        if dataset == "mc":
            return self.processes in ("all", "background")
        return self.processes in ("all", "signal", "background")


@dataclass(frozen=True)
class Variation:
    """A histogram name of the ``syst`` axis, resolved by :meth:`Registry.resolve`.

    Attributes:
        systematic: Its declaration.
        shift: Its suffix (one of ``systematic.shifts``).
        index: The family member (``None`` outside families).
    """

    systematic: Systematic
    shift: str
    index: int | None

    @property
    def nuisance(self) -> str:
        """The workspace nuisance (for ``bins="eta_group"``: the base of the per-group names)."""
        return self.systematic.nuisance(self.index)


class Registry:
    """The declared systematics, by name, in declaration order.

    Args:
        systematics: The declarations; names and histogram names must be unique.
    """

    def __init__(self, systematics: Iterable[Systematic]) -> None:
        self._by_name: dict[str, Systematic] = {}
        self._exact: dict[str, tuple[Systematic, str]] = {}
        self._families: list[tuple[re.Pattern[str], Systematic, str]] = []
        for s in systematics:
            if s.name in self._by_name:
                raise ValueError(f"systematic {s.name!r} is declared twice")
            self._by_name[s.name] = s
            for shift in s.shifts:
                if s.indexed:
                    head, tail = s.name.split(_INDEX)
                    pattern = re.compile(re.escape(head) + r"(0|[1-9][0-9]*)" + re.escape(tail + shift))
                    self._families.append((pattern, s, shift))
                else:
                    hist_name = s.histogram(shift)
                    if hist_name in self._exact or hist_name == NOMINAL:
                        raise ValueError(f"histogram name {hist_name!r} of {s.name!r} is already taken")
                    self._exact[hist_name] = (s, shift)

    def __getitem__(self, name: str) -> Systematic:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownVariationError(
                f"unknown systematic {name!r}; declared: {', '.join(self._by_name)} (in "
                "wfit.processors.systematics.SYSTEMATICS): fix the name or declare it there"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Systematic]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def groups(self) -> tuple[str, ...]:
        """The nuisance groups, in declaration order."""
        return tuple(dict.fromkeys(s.group for s in self))

    def known_histograms(self) -> list[str]:
        """The histogram names the ``syst`` axis may hold (families as ``name{index}shift``)."""
        return [NOMINAL, *(s.name + shift for s in self for shift in s.shifts)]

    def resolve(self, histogram: str, *, where: str = "") -> Variation:
        """The declaration, shift and family member of a histogram name of the ``syst`` axis.

        Args:
            histogram: A name such as ``"pileupUp"`` or ``"pdf12"`` (not ``"nominal"``).
            where: Where the name was found, for the error message (e.g. the dataset).

        Raises:
            UnknownVariationError: The name is not declared; the message names it and the declared names.
        """
        hit = self._exact.get(histogram)
        if hit is not None:
            return Variation(hit[0], hit[1], None)
        for pattern, s, shift in self._families:
            m = pattern.fullmatch(histogram)
            if m is not None:
                return Variation(s, shift, int(m.group(1)))
        prefix = f"{where}: " if where else ""
        raise UnknownVariationError(
            f"{prefix}unknown systematic variation {histogram!r} on the 'syst' axis; the declared ones are "
            f"{', '.join(self.known_histograms())} (wfit.processors.systematics.SYSTEMATICS): fix the name where "
            "the templates are filled, or declare the variation there"
        )


#: Every systematic variation of the analysis, in the order of the processor's fills.
SYSTEMATICS = Registry(
    [
        Systematic(
            "effStat", "weight", "eff", _UP_DOWN, bins="eta_group",
            description="lepton identification x isolation scale factors at +-1 sigma",
        ),
        Systematic(
            "effStatPar{index}", "weight", "eff", _UP_DOWN, bins="eta_group", by_charge=True,
            description="smooth pT mode {index} of the scale factors' uncertainty (TemplateConfig.eff_parameters)",
        ),
        Systematic("pileup", "weight", "pileup", _UP_DOWN, description="pileup weight (minimum-bias cross section)"),
        Systematic("prefire", "weight", "prefire", _UP_DOWN, description="L1 prefiring weight"),
        Systematic("QCDscale_muR", "weight", "QCDscale", _UP_DOWN, description="renormalisation scale x2, x1/2"),
        Systematic("QCDscale_muF", "weight", "QCDscale", _UP_DOWN, description="factorisation scale x2, x1/2"),
        Systematic(
            "QCDscale_muRmuF", "weight", "QCDscale", _UP_DOWN, description="both scales x2, x1/2 together"
        ),
        *(
            Systematic(
                f"{scale}_ptW{{index}}", "weight", "QCDscale", _UP_DOWN, processes="signal", signal_split=True,
                replaces=scale, description=f"{what} for the signal events in generator W pT bin {{index}}",
            )
            for scale, what in (
                ("QCDscale_muR", "renormalisation scale"),
                ("QCDscale_muF", "factorisation scale"),
                ("QCDscale_muRmuF", "both scales"),
            )
        ),
        Systematic("pdf{index}", "weight", "pdf", ("",), description="Hessian PDF member / member 0"),
        Systematic(
            "muonScale_eta{index}", "kinematic", "muon", _UP_DOWN,
            description="muon curvature scale in |eta| region {index}",
        ),
        Systematic(
            "muonResolution_eta{index}", "kinematic", "muon", ("Up",),
            description="extra muon curvature smearing in |eta| region {index}",
        ),
        Systematic(
            "muonScaleStat", "kinematic", "muon", _UP_DOWN, bins="eta_group", eta_groups="eta_bins", by_charge=True,
            description="statistical muon curvature scale (CurvatureVariation.stat_scale), per eta bin and charge",
        ),
        Systematic("jetCalib", "kinematic", "jet", _UP_DOWN, description="DNN jet correction x (1 +- variation)"),
        Systematic(
            "jetReso", "kinematic", "jet", _UP_DOWN,
            description="each jet at the 84%/16% quantile of its predicted pT_gen (the model's resolution head)",
        ),
        Systematic("lumi", "norm", "lumi", (), description="integrated luminosity (TemplateConfig.lumi_uncertainty)"),
        Systematic("fakeNorm", "norm", "fakes", (), processes="fakes", description="fake estimate normalisation"),
        Systematic(
            "fakeNormEta", "derived", "fakes", _UP_DOWN, processes="fakes", bins="eta_group",
            eta_groups="fake_eta_groups", by_charge=True,
            description="fake normalisation per eta group and charge (TemplateConfig.fake_norm_uncertainty)",
        ),
        Systematic(
            "fakeShape", "derived", "fakes", _UP_DOWN, processes="fakes",
            description="linear pT tilt of the fake estimate (TemplateConfig.fake_shape_uncertainty)",
        ),
        Systematic(
            "fakeShapeEta", "derived", "fakes", _UP_DOWN, processes="fakes", bins="eta_group",
            eta_groups="fake_eta_groups", description="linear pT tilt of the fake estimate per eta group",
        ),
        Systematic(
            "longitudinal", "norm", "longitudinal", (), processes="signal",
            description="each longitudinal signal component within TemplateConfig.longitudinal_uncertainty",
        ),
    ]
)  # fmt: skip

#: The groups of the uncertainty breakdown that the analysis merges into "others" (the workspace books their
#: nuisances in that group too, so that grouped impacts give it).
OTHER_GROUPS: tuple[str, ...] = ("pileup", "prefire", "jet", "longitudinal")

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective avalanche mix of 64-bit words.
    with np.errstate(over="ignore"):
        x = x + _U64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


def deterministic_normal(
    seed: int, run: np.ndarray, lumi: np.ndarray, event: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """Standard normal deviates that depend only on (seed, run, lumi block, event, position).

    Args:
        seed: Stream seed (different variations use different seeds).
        run, lumi, event: Event identifiers, one per deviate.
        position: Index of the object inside its event.

    Returns:
        float64 N(0, 1) deviates (Box-Muller on two 53-bit uniforms).
    """
    with np.errstate(over="ignore"):
        h = _splitmix64(np.full(np.shape(event), seed, dtype=np.uint64))
        for v in (run, lumi, event, position):
            h = _splitmix64(h ^ np.asarray(v).astype(np.int64).astype(np.uint64))
        h2 = _splitmix64(h ^ _U64(0xD1B54A32D192ED03))
    u1 = ((h >> _U64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u2 = (h2 >> _U64(11)).astype(np.float64) * 2.0**-53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def scale_curvature(pt: np.ndarray, in_region: np.ndarray, scale: float) -> np.ndarray:
    """Multiply the curvature ``k = q / pT`` by ``1 + scale`` for the leptons in a region.

    Args:
        pt: Transverse momenta, GeV.
        in_region: Which leptons are varied.
        scale: Relative curvature shift (``pT -> pT / (1 + scale)``).

    Returns:
        Varied pT in GeV (float64).
    """
    return np.where(in_region, pt / (1.0 + scale), pt)


def smear_curvature(
    pt: np.ndarray, charge: np.ndarray, in_region: np.ndarray, sigma_k: float, normal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Add ``sigma_k * normal`` (1/GeV) to the curvature ``k = q / pT`` of the leptons in a region.

    A constant curvature error gives a relative pT resolution ``sigma(pT)/pT = pT * sigma_k``. A
    curvature that changes sign flips the charge, as in a real track fit.

    Returns:
        Varied (pT in GeV, charge).
    """
    k = charge / pt + np.where(in_region, sigma_k * normal, 0.0)
    return 1.0 / np.abs(k), np.where(k > 0, 1, -1).astype(charge.dtype)


def curvature_variations(
    muons: Leptons,
    met_pt: np.ndarray,
    met_phi: np.ndarray,
    curvature: CurvatureVariation,
    seed: int,
    event_ids: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]],
    varied_met: bool = True,
) -> Iterator[tuple[str, Leptons, np.ndarray | None, np.ndarray | None, tuple[np.ndarray, np.ndarray]]]:
    """The muon momentum scale and resolution variations, one |eta| region at a time.

    Args:
        muons: The muons of a chunk.
        met_pt, met_phi: The MET per event (GeV).
        curvature: The :class:`~wfit.processors.config.CurvatureVariation`.
        seed: Seed of the resolution smearing.
        event_ids: Returns (run, luminosityBlock, event) per event; called once, only for a smearing.
        varied_met: Give the varied MET's pT and phi; False gives None for both (a caller that adds another
            change, such as the jet calibration's, to ``(dx, dy)`` and computes its own).

    Yields:
        ``(histogram name, varied muons, MET pt, MET phi, (dx, dy))``: the MET (GeV) balances the change of
        the muon transverse momenta, ``(dx, dy)`` being that change of the MET per event.
    """
    abseta = np.abs(muons.eta)
    evt = muons.event_index
    if varied_met:
        metx, mety = met_pt * np.cos(met_phi), met_pt * np.sin(met_phi)
    cosphi, sinphi = np.cos(muons.phi), np.sin(muons.phi)
    n = len(muons.counts)
    normal = None
    scale_var, resolution_var = SYSTEMATICS["muonScale_eta{index}"], SYSTEMATICS["muonResolution_eta{index}"]

    def with_met(pt: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, tuple[np.ndarray, np.ndarray]]:
        # The MET balances the change of the muon transverse momenta.
        d = pt - muons.pt
        dx = np.bincount(evt, weights=d * cosphi, minlength=n)
        dy = np.bincount(evt, weights=d * sinphi, minlength=n)
        if not varied_met:
            return None, None, (-dx, -dy)
        mx, my = metx - dx, mety - dy
        return np.hypot(mx, my), np.arctan2(my, mx), (-dx, -dy)

    edges, scales, resolutions = curvature.abseta_edges, curvature.scale, curvature.resolution
    for r in range(len(edges) - 1):
        region = (abseta >= edges[r]) & (abseta < edges[r + 1])
        if scales[r] > 0:
            for shift, s in (("Up", scales[r]), ("Down", -scales[r])):
                pt = scale_curvature(muons.pt, region, s)
                yield (scale_var.histogram(shift, index=r), muons.with_pt(pt), *with_met(pt))
        if resolutions[r] > 0:
            if normal is None:
                start = np.repeat(np.cumsum(muons.counts) - muons.counts, muons.counts)
                position = np.arange(len(evt)) - start
                normal = deterministic_normal(seed, *(ids[evt] for ids in event_ids()), position)
            pt, q = smear_curvature(muons.pt, muons.charge, region, resolutions[r], normal)
            yield (resolution_var.histogram(index=r), muons.with_pt(pt, q), *with_met(pt))
    if curvature.stat_scale > 0:
        # Every muon at once: the workspace takes each nuisance's change from the events whose selected muon is in
        # its eta bin and charge (the other muons of an event only enter its veto and its MET).
        stat_var, everywhere = SYSTEMATICS["muonScaleStat"], np.ones(len(abseta), dtype=bool)
        for shift, s in (("Up", curvature.stat_scale), ("Down", -curvature.stat_scale)):
            pt = scale_curvature(muons.pt, everywhere, s)
            yield (stat_var.histogram(shift), muons.with_pt(pt), *with_met(pt))


def qcd_scale_variations(lhe_scale: np.ndarray, pairs: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per-event multiplicative QCD scale weights from ``LHEScaleWeight``.

    Args:
        lhe_scale: ``[n_events, 9]`` (nominal at index 4) or ``[n_events, 8]`` (nominal dropped).
        pairs: Systematic name (in :data:`SYSTEMATICS`) -> (up index, down index) in the 9-weight convention.

    Returns:
        ``{name + "Up": w, name + "Down": w}``: the stored weights themselves, which NanoAOD defines as
        ``w_var / w_nominal`` (its index-4 entry is 1 up to the branch's reduced float precision).

    Raises:
        ValueError: For another number of weights.
    """
    n = lhe_scale.shape[1]
    if n == 9:
        idx = dict(pairs)
    elif n == 8:
        idx = {k: tuple(i - (i > 4) for i in v) for k, v in pairs.items()}
    else:
        raise ValueError(f"LHEScaleWeight has {n} weights per event; expected 9 (or 8 without the nominal)")
    out = {}
    for name, (up, down) in idx.items():
        syst = SYSTEMATICS[name]
        out[syst.histogram("Up")] = lhe_scale[:, up]
        out[syst.histogram("Down")] = lhe_scale[:, down]
    return out


def pdf_variations(lhe_pdf: np.ndarray) -> dict[str, np.ndarray]:
    """Hessian PDF variations ``pdf{i} = LHEPdfWeight[i] / LHEPdfWeight[0]`` for i >= 1.

    Each member is one eigenvector direction (mirrored in the workspace); for sets with alphaS
    members (e.g. the last two of NNPDF3.1 Hessian's 103) those are treated the same way.
    """
    ref = np.asarray(lhe_pdf[:, 0], dtype=np.float64)
    # Member-major rows, written in one pass without temporaries: a column of the row-major matrix would be
    # a strided read touching every row's cache line once per member.
    ratios = np.empty((lhe_pdf.shape[1] - 1, lhe_pdf.shape[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(lhe_pdf[:, 1:].T, ref, out=ratios)
    ratios[:, ref == 0] = 1.0
    pdf = SYSTEMATICS["pdf{index}"]
    return {pdf.histogram(index=i + 1): ratios[i] for i in range(len(ratios))}
