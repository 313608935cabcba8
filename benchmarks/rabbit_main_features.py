"""wfit's newer fit features against rabbit's main branch (WMass/rabbit) on the same workspace files.

Each comparison writes a small seeded model with rabbit's own ``TensorWriter`` (through the test builders,
``tests/builders.py``), fits it with wfit in this process and with rabbit main's ``rabbit_fit`` in a child
process, and prints per checked quantity the largest deviation and PASS/FAIL against a stated tolerance:

``bbfull``
    Full Barlow-Beeston: wfit ``bb_full=True`` against ``--binByBinStatMode full --binByBinStatType gamma``
    (stored data): POI values, uncertainties, the NLL at the minimum (both: the saturated-offset Poisson
    term, ``0.5 theta^2`` and the beta constraints relative to beta0, rabbit's ``nllvalreduced``), and the
    covariance and global impacts of that fit (rabbit with ``--globalImpactsDisableJVP``: its default
    forward-mode global impacts fail in full gamma mode); BB-lite against rabbit's default lite mode as a
    control.
``blinding``
    wfit ``blind=True`` against rabbit main fitting the data without ``--unblind``: rabbit minimises in the
    shown parameters (POI = x exp(v), nuisance of interest = x + v, ``Fitter.get_poi``/``get_theta``) and
    writes x as ``parms``, which must equal wfit's shown values ``mu / exp(v)`` and ``theta - v`` (and
    uncertainties); then with ``--blindingGroup REGEX --unblind NAME`` against ``blinding_groups=(REGEX,)``,
    ``unblind=(NAME,)``. rabbit starts a blinded fit at the shown x = 1, i.e. mu = exp(v); the group's
    spelling is one with a small offset, as from mu = exp(v) = 83 (``sig[01]``) its trust-krylov stalls.
``global``
    ``global_impacts`` against ``--globalImpacts`` (``global_impacts`` and ``global_impacts_grouped``:
    per parameter, the nuisance groups, ``stat`` and ``binByBinStat``).
``impacts``
    Covariance impacts (control): ``impacts`` against ``--doImpacts`` (``impacts``, ``impacts_grouped``).
``asym``
    ``asymmetric_impacts`` against ``--asymImpacts`` (``impacts_asym``: the POI shifts at the ends of each
    nuisance's 2 dNLL = 1 interval; ``impacts_asym_grouped``: the freeze-group impacts, ``stat``, ``Total``).
``regularization``
    ``regularize=("xsec",), tau=T`` against ``-r SVD Select xsec --regularizationStrength T`` on a
    masked-channel unfolding model (Poisson and the covariance fit) and on a random model with systematics.

The impact models put two of their nuisances in one group ("shapes") so that a group is more than one
nuisance. Deviations of values are in units of the POI's uncertainty, of uncertainties relative; impacts in
units of the POI's total uncertainty. The last line reads ``rabbit main features: N of M agree (worst: ...)``.

rabbit main is never imported here: it is reached through ``benchmarks/rabbit_main.py`` (see its docstring for
how to install it into ``../rabbit-main-venv``, or point ``WFIT_RABBIT_MAIN_PYTHON`` at its interpreter).
Without it the script prints why and the install line, and reports 0 of 0.

Usage::

    python benchmarks/rabbit_main_features.py                 # everything (about 4 minutes on 2 cores)
    python benchmarks/rabbit_main_features.py --quick         # fewer rows: no extra models, fewer asym scans
    python benchmarks/rabbit_main_features.py --only blinding # one comparison (repeatable)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests.builders
sys.path.insert(0, HERE)  # rabbit_main

TIMEOUT = 1800  # seconds per rabbit main run
WFIT_TOL = 1e-14  # EDM tolerance of wfit's fits: rabbit main's trust-krylov ends at edm ~ 1e-17 on these models

# Tolerances: fitted values in units of their uncertainty, uncertainties relative, NLL absolute,
# Hessian-based impacts in units of the POI's uncertainty, asymmetric impacts likewise (rabbit's trust-constr
# contour scans stop at xtol = gtol = 1e-6).
TOL_VALUE = 1e-4
TOL_ERROR = 1e-5
TOL_NLL = 1e-6
TOL_IMPACT = 1e-5
TOL_ASYM = 3e-4
LOOSE_ASYM = "tolerance 3e-4: rabbit's trust-constr contour scans stop at xtol = gtol = 1e-6"


@dataclass
class Row:
    comparison: str
    quantity: str
    n: int = 0
    deviation: float = float("nan")
    unit: str = ""
    tol: float = float("nan")
    status: str = "ERROR"  # PASS, FAIL, ERROR
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.status == "ERROR" or not np.isfinite(self.deviation):
            return float("inf")
        return self.deviation / self.tol


def check(comparison: str, quantity: str, deviations, unit: str, tol: float, note: str = "") -> Row:
    """A row from an array of deviations (already in their unit): PASS when the largest is within ``tol``."""
    d = np.abs(np.asarray(deviations, dtype=np.float64).ravel())
    if d.size == 0:
        return Row(comparison, quantity, 0, status="ERROR", note=(note + "; " if note else "") + "nothing to compare")
    worst = float(np.max(d)) if np.all(np.isfinite(d)) else float("nan")
    ok = np.isfinite(worst) and worst <= tol
    if not np.isfinite(worst):
        note = (note + "; " if note else "") + f"{int(np.sum(~np.isfinite(d)))} non-finite deviations"
    return Row(comparison, quantity, int(d.size), worst, unit, tol, "PASS" if ok else "FAIL", note)


def error_row(comparison: str, quantity: str, why: str) -> Row:
    return Row(comparison, quantity, status="ERROR", note=" ".join(str(why).split())[:300])


# ---------------------------------------------------------------------------------------------------------------
# models


@contextlib.contextmanager
def writer_extras(groups: dict[str, str] | None = None, nois: tuple[str, ...] = ()):
    """Let the builders' ``write_rabbit`` put nuisances into named groups and mark nuisances of interest.

    The builders call rabbit 0.2.5's ``TensorWriter`` without groups (each nuisance its own group) or NOIs;
    a subclass that fills in ``book_systematic``'s ``groups``/``noi`` stands in for it while writing.
    """
    import rabbit.tensorwriter as tw

    base = tw.TensorWriter
    groups = dict(groups or {})

    class Writer(base):
        def book_systematic(self, name, noi=False, constrained=True, add_to_data_covariance=False, groups=None):
            return super().book_systematic(
                name,
                noi=noi or name in nois,
                constrained=constrained,
                add_to_data_covariance=add_to_data_covariance,
                groups=[grouping[name]] if name in grouping else groups,
            )

    grouping = groups
    tw.TensorWriter = Writer
    try:
        yield
    finally:
        tw.TensorWriter = base


def write_model(path: str, seed: int, *, groups=None, nois=(), **kw) -> None:
    from tests.builders import build_random_model, write_rabbit

    model = build_random_model(seed, **kw)
    with writer_extras(groups, nois):
        write_rabbit(model, path)


def write_unfolding(path: str, ngen: int = 8, nreco: int = 16, seed: int = 12) -> None:
    """tests/test_regularization.py's ``unfolding`` model (``tests.builders.build_unfolding_model``), with its
    data covariance."""
    from tests.builders import build_unfolding_model, write_rabbit

    m, _, var = build_unfolding_model(ngen, nreco, seed)
    write_rabbit(m, path, data_covariance=np.diag(var))


# ---------------------------------------------------------------------------------------------------------------
# the two fitters


def wfit_fit(path: str, **options):
    """wfit's fit of ``path`` (the stored data) and the likelihood it fitted (from the ``post_fit`` hook)."""
    from wfit.fitter import FitOptions, fit_workspace

    seen = {}

    def keep(ll, result):
        seen["ll"] = ll

    options.setdefault("tol", WFIT_TOL)
    result = fit_workspace(path, FitOptions(seed=0, **options), trust_pickle=True, post_fit=keep)
    if not result.ok:
        raise RuntimeError(f"wfit's fit did not converge (status {result.status}, edm {result.edm:.3g})")
    return result, seen["ll"]


class Rabbit:
    """rabbit main runs, each in a folder of its own under ``workdir``."""

    def __init__(self, python: str, workdir: str):
        self.python = python
        self.workdir = workdir
        self.count = 0
        self.seconds = 0.0

    def run(self, path: str, args, **kw) -> dict:
        from rabbit_main import run_rabbit_main

        self.count += 1
        outdir = os.path.join(self.workdir, f"rabbit{self.count:02d}")
        t0 = time.perf_counter()
        try:
            return run_rabbit_main(path, args, outdir, TIMEOUT, python=self.python, **kw)
        finally:
            self.seconds += time.perf_counter() - t0


def last_log_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [type(exc).__name__])[-1]


# ---------------------------------------------------------------------------------------------------------------
# comparing


def compare_fit(comparison: str, label: str, ours, theirs: dict, *, nll: bool = True,
                what: str = "POI") -> list[Row]:
    """Values (in units of rabbit's uncertainty), uncertainties (relative) and optionally the NLL."""
    if what == "POI":
        names = list(ours.names[: ours.npoi])
        tv, te = theirs["poi_values"], theirs["poi_errors"]
    else:  # every parameter
        names = list(ours.names)
        tv = dict(zip(theirs["names"], theirs["values"], strict=True))
        te = dict(zip(theirs["names"], theirs["errors"], strict=True))
    missing = [n for n in names if n not in tv]
    if missing:
        return [error_row(comparison, f"{label}: values", f"rabbit main's parms lack {missing}")]
    idx = [ours.index(n) for n in names]
    rv = np.array([tv[n] for n in names])
    re_ = np.array([te[n] for n in names])
    rows = [
        check(comparison, f"{label}: {what} values", (ours.values[idx] - rv) / re_, "sigma", TOL_VALUE),
        check(comparison, f"{label}: {what} uncertainties", ours.errors[idx] / re_ - 1.0, "rel", TOL_ERROR),
    ]
    if nll:
        if theirs.get("nll") is None:
            rows.append(error_row(comparison, f"{label}: NLL", "rabbit main wrote no nllvalreduced"))
        else:
            rows.append(check(comparison, f"{label}: NLL", [ours.nll - theirs["nll"]], "abs", TOL_NLL,
                              f"wfit {ours.nll:.10g}, rabbit {theirs['nll']:.10g}"))
    return rows


def _hist(theirs: dict, name: str) -> dict:
    h = theirs["impacts"].get(name)
    if h is None:
        have = sorted(theirs["impacts"]) or "none"
        raise KeyError(f"rabbit main's results have no {name!r} histogram (impact histograms: {have})")
    return h


def compare_impacts(comparison: str, label: str, imp, theirs: dict, base: str, sigma: dict[str, float]) -> list[Row]:
    """wfit's :class:`Impacts` against rabbit main's ``base`` and ``base_grouped`` ([parms, impacts])."""
    rows = []
    for kind in ("per parameter", "grouped"):
        name = base if kind == "per parameter" else f"{base}_grouped"
        quantity = f"{label}: {kind} ({name})"
        try:
            h = _hist(theirs, name)
            (ax_rows, rrows), (ax_cols, rcols) = h["axes"]
            values = np.asarray(h["values"])
            ours_cols = imp.names if kind == "per parameter" else imp.groups
            ours_vals = imp.values if kind == "per parameter" else imp.grouped
            common = [c for c in ours_cols if c in rcols]
            only_ours = [c for c in ours_cols if c not in rcols]
            only_theirs = [c for c in rcols if c not in ours_cols]
            notes = []
            if only_ours:
                notes.append(f"only wfit: {only_ours}")
            if only_theirs:
                notes.append(f"only rabbit: {only_theirs}")
            if [c for c in rcols if c in common] != common:
                notes.append("column order differs (matched by name)")
            extra_rows = [r for r in rrows if r not in imp.pois]
            if extra_rows:
                notes.append(f"rabbit rows not POIs (NOIs, not compared): {extra_rows}")
            dev = []
            for i, poi in enumerate(imp.pois):
                r = rrows.index(poi)
                o = np.array([ours_vals[i, ours_cols.index(c)] for c in common])
                t = np.array([values[r, rcols.index(c)] for c in common])
                dev.append((o - t) / sigma[poi])
            rows.append(check(comparison, quantity, np.concatenate(dev), "sigma", TOL_IMPACT, "; ".join(notes)))
        except Exception as exc:  # a missing or reshaped histogram is a row, not a crash
            rows.append(error_row(comparison, quantity, f"{type(exc).__name__}: {exc}"))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# the comparisons


def cmp_bbfull(rabbit: Rabbit, tmp: str, quick: bool) -> list[Row]:
    """Full Barlow-Beeston (and its impacts), with BB-lite as the control."""
    from wfit.fitter.breakdown import global_impacts, impacts

    c = "bbfull"
    path = os.path.join(tmp, "bbfull.hdf5")
    # low-statistics templates (scale 40) so that the MC statistics matter
    write_model(path, 21, nbins=(8, 6), nsig=2, nbkg=2, nshape=3, masked=False, scale=40.0)
    rows = []
    runs = [("full BB", dict(bb_full=True),
             # --globalImpactsDisableJVP: rabbit main's default forward-mode (JVP) global impacts fail in full
             # gamma mode ("Tried to take gradients ... of a variable without handle data", its per-bin Newton
             # solve, bbstat._newton_solve_nbeta); its backward mode works
             ["--binByBinStatMode", "full", "--binByBinStatType", "gamma", "--doImpacts", "--globalImpacts",
              "--globalImpactsDisableJVP"]),
            ("lite BB (control)", {}, ["--binByBinStatMode", "lite", "--binByBinStatType", "gamma"])]
    for label, wopts, rargs in runs:
        try:
            ours, ll = wfit_fit(path, **wopts)
        except Exception as exc:
            rows.append(error_row(c, f"{label}: wfit fit", f"{type(exc).__name__}: {exc}"))
            continue
        try:
            theirs = rabbit.run(path, rargs)
        except Exception as exc:
            rows.append(error_row(c, f"{label}: rabbit main run", last_log_line(exc)))
            continue
        first = len(rows)
        rows += compare_fit(c, label, ours, theirs)
        rows += compare_fit(c, label, ours, theirs, nll=False, what="all-parameter")
        if wopts.get("bb_full"):
            sigma = dict(zip(ours.names[: ours.npoi], ours.errors[: ours.npoi], strict=True))
            for what, fn, base in (("covariance impacts", impacts, "impacts"),
                                   ("global impacts", global_impacts, "global_impacts")):
                try:
                    rows += compare_impacts(c, f"{label} {what}", fn(ll, ours), theirs, base, sigma)
                except Exception as exc:
                    rows.append(error_row(c, f"{label} {what}", f"{type(exc).__name__}: {exc}"))
        if wopts.get("bb_full"):  # how much full BB differs from lite here: the comparison is not trivial
            try:
                lite, _ = wfit_fit(path)
                shift = np.max(np.abs(ours.values[: ours.npoi] - lite.values[: ours.npoi]) / lite.errors[: ours.npoi])
                rows[first].note = f"full vs lite BB moves the POIs by up to {shift:.2g} sigma here"
            except Exception:
                pass
    return rows


BLIND_MODEL = dict(nbins=(8, 6), nsig=4, nbkg=2, nshape=3, masked=False, scale=200.0)
BLIND_NOI = "shape1"


def cmp_blinding(rabbit: Rabbit, tmp: str, quick: bool) -> list[Row]:
    """Blinded fits of the data: the shown POIs (mu / exp(v)) and nuisance of interest (theta - v)."""
    from wfit.fitter.blinding import blinding_offset

    c = "blinding"
    path = os.path.join(tmp, "blinding.hdf5")
    write_model(path, 31, nois=(BLIND_NOI,), **BLIND_MODEL)
    # rabbit main starts a blinded fit at the shown x = 1, i.e. at mu = exp(v): a group whose offset is large
    # (``sig[01]``: exp(v) = 83) starts it at mu = 83, from where its trust-krylov stalls on this model (blinded or
    # not: the same happens unblinded with --expectSignal sig0 83); this spelling's exp(v) is 0.19
    group, unblind = "sig[0-1]", "sig2"
    cases = [("blinded", {}, []),
             (f"group {group!r} + unblind {unblind!r}", dict(blinding_groups=(group,), unblind=(unblind,)),
              ["--blindingGroup", group, "--unblind", unblind])]
    if quick:
        cases = cases[1:]
    rows = []
    try:
        plain, _ = wfit_fit(path)
    except Exception as exc:
        return [error_row(c, "wfit unblinded fit", f"{type(exc).__name__}: {exc}")]
    for label, wopts, rargs in cases:
        try:
            ours, _ = wfit_fit(path, blind=True, **wopts)
            theirs = rabbit.run(path, ["-t", "0", *rargs], data=False)
        except Exception as exc:
            rows.append(error_row(c, label, last_log_line(exc)))
            continue
        names = list(ours.names[: ours.npoi]) + [BLIND_NOI]
        tv = dict(zip(theirs["names"], theirs["values"], strict=True))
        te = dict(zip(theirs["names"], theirs["errors"], strict=True))
        idx = [ours.index(n) for n in names]
        rv, re_ = np.array([tv[n] for n in names]), np.array([te[n] for n in names])
        blinded = ours.options.get("blinded", [])
        shown = [n for n in names if n not in blinded]
        # the shown values must differ from the fitted ones where blinded (else the check is empty)
        moved = np.abs(ours.values[idx] - plain.values[idx]) / plain.errors[idx]
        note = (f"blinded {len(blinded)} ({', '.join(blinded)}); shown as fitted: {shown or 'none'}; "
                f"smallest blinded offset {np.min(moved[[n in blinded for n in names]]):.2g} sigma")
        if wopts.get("blinding_groups"):
            members = [n for n in names if n in ("sig0", "sig1")]
            ratio = [ours.values[ours.index(n)] / plain.values[plain.index(n)] for n in members]
            note += f"; group shares one factor: {abs(ratio[0] / ratio[1] - 1):.1e}"
        seed = wopts["blinding_groups"][0] if wopts.get("blinding_groups") else names[0]
        note += f"; v({seed}) = {blinding_offset(seed, True):+.3f}"
        rows.append(check(c, f"{label}: shown values (POIs + NOI)", (ours.values[idx] - rv) / re_, "sigma",
                          TOL_VALUE, note))
        rows.append(check(c, f"{label}: shown uncertainties", ours.errors[idx] / re_ - 1.0, "rel", TOL_ERROR))
    return rows


IMPACT_MODEL = dict(nbins=(8, 6), nsig=2, nbkg=2, nshape=3, masked=False, scale=100.0)
IMPACT_GROUPS = {"shape0": "shapes", "shape2": "shapes"}


def cmp_global(rabbit: Rabbit, tmp: str, quick: bool) -> list[Row]:
    from wfit.fitter.breakdown import global_impacts

    c = "global"
    path = os.path.join(tmp, "impacts.hdf5")
    if not os.path.exists(path):
        write_model(path, 41, groups=IMPACT_GROUPS, **IMPACT_MODEL)
    try:
        ours, ll = wfit_fit(path)
        imp = global_impacts(ll, ours)
        theirs = rabbit.run(path, ["--globalImpacts"])
    except Exception as exc:
        return [error_row(c, "global impacts", last_log_line(exc))]
    sigma = dict(zip(ours.names[: ours.npoi], ours.errors[: ours.npoi], strict=True))
    rows = compare_fit(c, "lite BB fit", ours, theirs)
    rows += compare_impacts(c, "global impacts", imp, theirs, "global_impacts", sigma)
    total = np.sqrt(np.sum(np.square(imp.grouped[:, [imp.groups.index(g) for g in ll.ws.syst_groups]]), axis=1)
                    + np.square(imp.grouped[:, imp.groups.index("stat")])
                    + np.square(imp.grouped[:, imp.groups.index("binByBinStat")]))
    rows[-1].note = (rows[-1].note + "; " if rows[-1].note else "") + \
        f"groups in quadrature / total - 1 (wfit): {np.max(np.abs(total / ours.errors[: ours.npoi] - 1)):.1e}"
    return rows


def cmp_impacts(rabbit: Rabbit, tmp: str, quick: bool) -> list[Row]:
    from wfit.fitter.breakdown import impacts

    c = "impacts"
    path = os.path.join(tmp, "impacts.hdf5")
    if not os.path.exists(path):
        write_model(path, 41, groups=IMPACT_GROUPS, **IMPACT_MODEL)
    try:
        ours, ll = wfit_fit(path)
        imp = impacts(ll, ours)
        theirs = rabbit.run(path, ["--doImpacts"])
    except Exception as exc:
        return [error_row(c, "covariance impacts", last_log_line(exc))]
    sigma = dict(zip(ours.names[: ours.npoi], ours.errors[: ours.npoi], strict=True))
    return compare_impacts(c, "covariance impacts", imp, theirs, "impacts", sigma)


def cmp_asym(rabbit: Rabbit, tmp: str, quick: bool) -> list[Row]:
    from wfit.fitter.breakdown import asymmetric_impacts

    c = "asym"
    path = os.path.join(tmp, "asym.hdf5")
    # asymmetric shapes and lnN (asymmetric=True) on low statistics: visibly non-Gaussian profiles
    write_model(path, 51, groups=IMPACT_GROUPS, nbins=(6, 4), nsig=2, nbkg=2, nshape=3, masked=False, scale=30.0)
    include = ["bkgnorm", "shape0"] if quick else None
    try:
        ours, ll = wfit_fit(path)
        imp = asymmetric_impacts(ll, ours, include)
        theirs = rabbit.run(path, ["--asymImpacts", *(["--asymImpactsInclude", *include] if include else [])])
    except Exception as exc:
        return [error_row(c, "asymmetric impacts", last_log_line(exc))]
    sigma = ours.errors[: ours.npoi]
    rows = []
    try:
        h = _hist(theirs, "impacts_asym")  # [impacts (nuisances), downUpVar, parms]
        (_, rnuis), _, (_, rparms) = h["axes"]
        values = np.asarray(h["values"])
        cols = [rparms.index(p) for p in imp.pois]
        common = [n for n in imp.names if n in rnuis]
        dev = []
        for j, n in enumerate(imp.names):
            if n not in rnuis:
                continue
            t = values[rnuis.index(n)][:, cols].T  # [npoi, 2]
            dev.append((imp.values[:, j, :] - t) / sigma[:, None])
        asym = np.max(np.abs(imp.values[..., 1] + imp.values[..., 0]) / sigma[:, None])
        note = f"{len(common)} nuisances; largest |up + down| {asym:.2g} sigma (not Gaussian); {LOOSE_ASYM}"
        if len(common) < len(imp.names):
            note += f"; only wfit: {[n for n in imp.names if n not in rnuis]}"
        rows.append(check(c, "per nuisance, down/up (impacts_asym)", np.concatenate(dev), "sigma", TOL_ASYM, note))
    except Exception as exc:
        rows.append(error_row(c, "per nuisance, down/up (impacts_asym)", f"{type(exc).__name__}: {exc}"))
    try:
        h = _hist(theirs, "impacts_asym_grouped")  # [impacts (groups), downUpVar, parms]
        (_, rgroups), _, (_, rparms) = h["axes"]
        values = np.asarray(h["values"])
        cols = [rparms.index(p) for p in imp.pois]
        common = [g for g in imp.groups if g in rgroups]
        dev = []
        for k, g in enumerate(imp.groups):
            if g not in rgroups:
                continue
            t = values[rgroups.index(g)][:, cols].T  # [npoi, 2]
            dev.append((imp.grouped[:, k, :] - t) / sigma[:, None])
        notes = [f"groups {common}", LOOSE_ASYM]
        if set(rgroups) != set(imp.groups):
            notes.append(f"only rabbit: {[g for g in rgroups if g not in imp.groups]}, "
                         f"only wfit: {[g for g in imp.groups if g not in rgroups]}")
        rows.append(check(c, "freeze-group, down/up (impacts_asym_grouped)", np.concatenate(dev), "sigma",
                          TOL_ASYM, "; ".join(notes)))
    except Exception as exc:
        rows.append(error_row(c, "freeze-group (impacts_asym_grouped)", f"{type(exc).__name__}: {exc}"))
    return rows


def cmp_regularization(rabbit: Rabbit, tmp: str, quick: bool) -> list[Row]:
    c = "regularization"
    unfold = os.path.join(tmp, "unfolding.hdf5")
    write_unfolding(unfold)
    cases = [("unfolding, Poisson, tau=1.5", unfold, 1.5, dict(bb_lite=False), ["--noBinByBinStat"]),
             ("unfolding, covariance fit, tau=1.5", unfold, 1.5, dict(bb_lite=False, covariance_fit=True),
              ["--noBinByBinStat", "--covarianceFit"])]
    if not quick:
        rand = os.path.join(tmp, "regularization.hdf5")
        write_model(rand, 61, nbins=(10, 6), nsig=4, nbkg=2, nshape=3, masked=True, scale=100.0)
        cases.append(("random model + systematics + BB-lite, Poisson, tau=0.5", rand, 0.5, {}, []))
    rows = []
    for label, path, tau, wopts, rargs in cases:
        try:
            ours, _ = wfit_fit(path, regularize=("xsec",), tau=tau, **wopts)
            free, _ = wfit_fit(path, **wopts)
            theirs = rabbit.run(path, ["-r", "SVD", "Select", "xsec", "--regularizationStrength", str(tau), *rargs])
        except Exception as exc:
            rows.append(error_row(c, label, last_log_line(exc)))
            continue
        new = compare_fit(c, label, ours, theirs)
        shift = np.max(np.abs(ours.values[: ours.npoi] - free.values[: ours.npoi]) / free.errors[: ours.npoi])
        shrink = np.min(free.errors[: ours.npoi] / ours.errors[: ours.npoi])
        new[0].note = f"the penalty moves the POIs by up to {shift:.2g} sigma, shrinks errors >= {shrink:.2g}x"
        rows += new
    return rows


COMPARISONS: dict[str, tuple[str, Callable]] = {
    "bbfull": ("full Barlow-Beeston vs --binByBinStatMode full (+ lite control)", cmp_bbfull),
    "blinding": ("blinded data fits vs rabbit main without --unblind", cmp_blinding),
    "global": ("global impacts vs --globalImpacts", cmp_global),
    "impacts": ("covariance impacts vs --doImpacts (control)", cmp_impacts),
    "asym": ("asymmetric impacts vs --asymImpacts", cmp_asym),
    "regularization": ("SVD regularisation vs -r SVD Select xsec", cmp_regularization),
}


def print_table(rows: list[Row]) -> None:
    head = ("comparison", "quantity", "n", "max deviation", "tolerance", "result", "note")
    body = [(r.comparison, r.quantity, str(r.n) if r.n else "",
             f"{r.deviation:.2e} {r.unit}" if np.isfinite(r.deviation) else "",
             f"{r.tol:.0e}" if np.isfinite(r.tol) else "", r.status, r.note) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(6)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells[:6], widths, strict=True)) + "  " + cells[6]

    print(line(head))
    print("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    for cells in body:
        print(line(cells))


def summary(rows: list[Row]) -> str:
    good = [r for r in rows if r.status == "PASS"]
    if not rows:
        return "rabbit main features: 0 of 0 agree"
    worst = max(rows, key=lambda r: r.ratio)
    if worst.status == "ERROR":
        tail = f"{worst.comparison} / {worst.quantity}: {worst.note[:80]}"
    else:
        tail = f"{worst.comparison} / {worst.quantity}: {worst.deviation:.1e} {worst.unit} of {worst.tol:.0e}"
    return f"rabbit main features: {len(good)} of {len(rows)} agree (worst: {tail})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rows: no extra models, two asymmetric scans")
    p.add_argument("--only", action="append", choices=list(COMPARISONS), metavar="NAME",
                   help=f"run only this comparison (repeatable): {', '.join(COMPARISONS)}")
    p.add_argument("--workdir", default=None, help="where to write workspaces and rabbit results (default: temp)")
    args = p.parse_args(argv)

    from rabbit_main import find_rabbit_main

    python, why = find_rabbit_main()
    if python is None:
        print(why)
        print("rabbit main features: 0 of 0 agree (rabbit main not available)")
        return 0
    workdir = args.workdir or tempfile.mkdtemp(prefix="rabbit_main_features_")
    os.makedirs(workdir, exist_ok=True)
    rabbit = Rabbit(python, workdir)
    print(f"rabbit main: {python}; files in {workdir}")
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in args.only or list(COMPARISONS):
        what, fn = COMPARISONS[name]
        t1, n1 = time.perf_counter(), rabbit.count
        print(f"[{name}] {what} ...", flush=True)
        try:
            new = fn(rabbit, workdir, args.quick)
        except Exception as exc:  # one broken comparison must not hide the others
            traceback.print_exc()
            new = [error_row(name, "comparison", f"{type(exc).__name__}: {exc}")]
        rows += new
        print(f"[{name}] {time.perf_counter() - t1:.0f} s ({rabbit.count - n1} rabbit main runs)", flush=True)
    print(f"\n{len(rows)} checks, {rabbit.count} rabbit main runs ({rabbit.seconds:.0f} s), "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print_table(rows)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
