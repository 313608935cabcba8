"""Differentiable selection: the expected precision of the measurement as a function of its cuts, and its gradient.

From an event-columns file (:mod:`wfit.columns`: per selected event of a loosened preselection, what the cuts act
on and the templates are filled from), :class:`CutModel` builds the templates of every process and variation as a
differentiable function of the cut thresholds (``mt_min``, ``iso_max``, ``pt_min``), with soft cuts
(:mod:`wfit.fitter.softcuts`), in TensorFlow float64. The model is the workspace builder's (the same processes,
normalisations and nuisances, from :func:`wfit.processors.workspace_builder.model_terms`): log-normal shape
systematics from each variation's templates (``log(up / nominal)``, the writer's rule for vanishing bins),
eta-group splits, lnN normalisations, free signal strengths, and Barlow-Beeston lite from the templates' sums of
squared weights.

The expected (Asimov) Hessian at the nominal point is the Fisher information ``I = J^T W J + C``: ``J`` the
derivatives of the expected yields by the parameters (``d nu / d mu_p = nominal_p``, ``d nu / d theta_s =
sum_p nominal_p logkavg_ps``), ``C`` the unit constraints of the nuisances, and ``W = 1 / (nu + sigma^2)`` per
bin, the profiled Barlow-Beeston-lite term (``sigma^2`` the bin's sum of squared weights; with data equal to the
prediction, profiling the bin's factor turns ``1 / nu`` into that). The expected uncertainty of a POI, or of a
derived quantity ``f(mu)``, is ``sqrt(g^T I^-1 g)`` with ``g = df / dmu`` at ``mu = 1``; its gradient with respect to
every cut comes from one tape (:meth:`CutModel.value_and_gradient`). With ``widths=None`` the cuts are hard: the
same numbers as a fit of the workspace built from hard-cut templates (tested against the fitter).

:func:`optimize_cuts` minimises the expected uncertainty over the thresholds (bounded L-BFGS-B) with a width
schedule; :func:`scan_by_refit` is the brute-force alternative (per point: hard-cut templates refilled from the
columns, a workspace built, an Asimov fit with covariance). :meth:`CutModel.comparison` is a data/model comparison
(the pre-fit chi-square, or the fitted slope of the data/prediction ratio versus lepton pT) whose gradient tells
whether a mis-modelling depends on a cut.

Example:
    >>> model = CutModel("columns.h5", samples, lumi=1000.0)                          # doctest: +SKIP
    >>> sigma, grad = model.value_and_gradient(Cuts(40.0, 0.15, 26.0), "Wplus_y0_L")  # doctest: +SKIP
    >>> best = optimize_cuts(model, "Wplus_y0_L", Cuts(30.0, 0.2, 24.0), bounds)      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wfit.fitter._tf import resolve_device, tf
from wfit.fitter.cuts import CUT_NAMES, DEFAULT_WIDTHS, Cuts, cut_vector, width_vector
from wfit.fitter.softcuts import KINDS, hard_cut, soft_cut

__all__ = ["CUT_NAMES", "DEFAULT_WIDTHS", "CutModel", "Cuts", "OptimizeResult", "optimize_cuts", "scan_by_refit"]

@dataclass
class _Group:
    """The entries of one table of one dataset, on the device: cut variables, segment (process, bin), weights."""

    mt: Any
    iso: Any
    pt: Any
    seg: Any
    weights: Any  # [entries x columns]: nominal first (normalised, with the component share)
    names: list[str]  # variation of each weight column
    mt_variations: Any | None  # [entries x J]
    mt_names: list[str]
    is_data: bool
    nominal: bool  # the nominal table (its sums of squared weights are the templates')


def _ssum(x: Any, seg: Any, n: int) -> Any:
    """Sorted segment sums of a fixed length ``n`` (the last entry lies in segment ``n - 1``), with the static
    shape that the traced gradient needs."""
    out = tf.math.segment_sum(x, seg)
    return tf.ensure_shape(out, [n, *x.shape[1:]])


def _f64(x: Any) -> Any:
    return tf.convert_to_tensor(np.ascontiguousarray(x, dtype=np.float64))


class CutModel:
    """The measurement's model as a differentiable function of the cuts (see the module docstring).

    Args:
        columns: An event-columns file or :class:`wfit.columns.EventColumns`.
        samples: What each dataset is (:class:`wfit.processors.Sample`; datasets not listed are ignored).
        lumi: Integrated luminosity, 1/pb.
        systematics: As :func:`wfit.processors.build_workspace`'s (True: all, False: only ``lumi``, or groups).
        kind: Soft-cut kernel, ``"sigmoid"`` or ``"erf"``.
        bb_lite: Barlow-Beeston lite (as the fitter's default); False for Poisson terms alone.
        device: TensorFlow device (None: the GPU when TensorFlow sees one, else the CPU; see :attr:`device`).

    Raises:
        wfit.columns.ColumnsError: A bad columns file (from :func:`wfit.columns.read_columns`).
        KeyError, ValueError, TypeError: Bad samples or luminosity (the workspace builder's checks).
    """

    def __init__(
        self,
        columns: Any,
        samples: Mapping[str, Any],
        *,
        lumi: float,
        systematics: bool | Sequence[str] = True,
        kind: str = "sigmoid",
        bb_lite: bool = True,
        device: str | None = None,
    ) -> None:
        from wfit.columns import EventColumns, read_columns
        from wfit.processors import columns_config
        from wfit.processors.workspace_builder import check_samples, model_terms

        if kind not in KINDS:
            raise ValueError(f"CutModel(kind={kind!r}): use one of {KINDS}")
        cols = columns if isinstance(columns, EventColumns) else read_columns(columns)
        check_samples(samples, cols.datasets, lumi)
        self.columns = cols
        self.kind = kind
        self.bb_lite = bool(bb_lite)
        self.device = resolve_device(device)
        cfg = self.config = columns_config(cols)
        self.eta_edges = np.linspace(cfg.eta_bins[1], cfg.eta_bins[2], cfg.eta_bins[0] + 1)
        self.pt_edges = np.linspace(cfg.pt_bins[1], cfg.pt_bins[2], cfg.pt_bins[0] + 1)
        neta, npt = cfg.eta_bins[0], cfg.pt_bins[0]
        self.nbins = neta * npt * 2  # (eta, pt, charge), the workspace channel's order
        self._npt = npt

        # Processes in the workspace builder's order (process_templates, then signals / backgrounds).
        processes: list[str] = []
        kind_of: dict[str, str] = {}
        variations: dict[str, list[str]] = {}
        entries: list[tuple[str, str, Any, np.ndarray, float]] = []  # (dataset, table, Table, process idx, scale)
        data_tables: list[tuple[str, Any]] = []
        names = cfg.component_names
        for ds, sample in samples.items():
            d = cols.datasets[ds]
            if sample.kind == "data":
                if d.kind != "data":
                    raise ValueError(f"{cols.path}: dataset {ds!r} is declared data but its files are {d.kind}")
                data_tables.append((ds, d.tables["nominal"]))
                continue
            if (sample.kind == "signal") != (d.kind == "signal"):
                raise ValueError(
                    f"{cols.path}: dataset {ds!r} is declared {sample.kind} but its columns are of a {d.kind} "
                    "dataset: pass signal datasets in WTemplateProcessor(signal_datasets=...) when writing them"
                )
            scale = sample.xsec * lumi / d.sumw_sign
            var_names = ["nominal", *d.tables["nominal"].ratio_names, *d.tables["nominal"].mt_names]
            var_names += [t for t in d.tables if t != "nominal"]
            comp_proc = {}
            if sample.kind == "signal":
                for c in range(cfg.n_components):
                    comp_proc[c] = names[c]
                comp_proc[cfg.unmatched_component] = f"{ds}_unmatched"
            else:
                comp_proc[0] = sample.process or ds
            for proc in comp_proc.values():
                if proc not in kind_of:
                    processes.append(proc)
                    kind_of[proc] = "signal" if proc in names else "background"
                variations.setdefault(proc, [])
                variations[proc] += [v for v in var_names if v not in variations[proc]]
            lookup = np.full(max(comp_proc) + 1, -1, dtype=np.int64)
            for c, proc in comp_proc.items():
                lookup[c] = processes.index(proc)
            for tname, table in d.tables.items():
                entries.append((ds, tname, table, lookup, scale))
        # Processes with no entry at all are left out, as the builder leaves out those without events.
        counts = dict.fromkeys(processes, 0)
        for _, _, table, lookup, _ in entries:
            for p, n in zip(*np.unique(lookup[table.columns["component"]], return_counts=True), strict=True):
                counts[processes[p]] += int(n)
        signals = [n for n in names if n in kind_of and counts[n] > 0]
        backgrounds = [p for p in processes if kind_of[p] == "background" and counts[p] > 0]
        # As the workspace: constrained longitudinal components are processes but not POIs (TemplateConfig.is_poi).
        pois = [n for n in signals if cfg.is_poi(n)]
        self.processes = pois + [n for n in signals if n not in pois] + backgrounds
        self.signals = signals = pois
        kinds = {p: kind_of[p] for p in self.processes}
        self.terms = model_terms({p: variations[p] for p in self.processes}, kinds, cfg, systematics)
        nuisances: list[str] = []
        for t in self.terms:
            if t.name not in nuisances:
                nuisances.append(t.name)
        self.nuisances = nuisances
        self.names = [*signals, *nuisances]
        self.npoi = len(signals)
        order = {p: i for i, p in enumerate(self.processes)}
        self._variations = {p: variations[p] for p in self.processes}
        self._functions: dict[str, Any] = {}
        self._index_terms()

        with tf.device(self.device):
            groups = [self._group(n, t, lookup, scale, order, processes) for _, n, t, lookup, scale in entries]
            self._groups = [g for g in groups if g is not None]
            self._data = [self._group("nominal", t, None, 1.0, None, None) for _, t in data_tables]
            self._data = [g for g in self._data if g is not None]

    # ------------------------------------------------------------------ set-up
    def _bins(self, table: Any) -> np.ndarray:
        """Flat (eta, pt, charge) bin of each entry; -1 outside the axes."""
        c = table.columns
        ieta = np.searchsorted(self.eta_edges, c["eta"], side="right") - 1
        ipt = np.searchsorted(self.pt_edges, c["pt"], side="right") - 1
        ok = (ieta >= 0) & (ieta < len(self.eta_edges) - 1) & (ipt >= 0) & (ipt < len(self.pt_edges) - 1)
        iq = (c["charge"] > 0).astype(np.int64)
        return np.where(ok, (ieta * self._npt + ipt) * 2 + iq, -1)

    def _group(
        self, name: str, table: Any, lookup: np.ndarray | None, scale: float, order: Any, processes: Any
    ) -> _Group | None:
        """One table's entries: its weight columns are the variation ``name`` (a momentum variation's table) or
        the nominal and its weight variations (``"nominal"``); ``lookup`` None for data."""
        is_data = lookup is None
        c = table.columns
        b = self._bins(table)
        if is_data:
            p = np.zeros(len(b), dtype=np.int64)
        else:
            names = [processes[i] for i in lookup[c["component"]]]
            p = np.array([order.get(n, -1) for n in names], dtype=np.int64) if len(names) else np.zeros(0, np.int64)
        keep = (b >= 0) & (p >= 0)
        if not keep.any():
            return None
        # Entries sorted by segment, closed by one entry of zero weight in the last segment: the sums are then
        # sorted segment sums of a fixed length (three times faster than unsorted ones on the CPU).
        nseg = self.nbins if is_data else len(self.processes) * self.nbins
        seg = (b if is_data else p * self.nbins + b)[keep]
        order = np.argsort(seg, kind="stable")

        def entries(x: np.ndarray) -> Any:
            x = x[keep][order]
            return _f64(np.concatenate([x, np.zeros((1, *x.shape[1:]))]))

        cols = [c["w"] * c["fac"] * scale]
        names_out = [name]
        if table.ratio_names:
            # (w * ratio) * fac, as the processor multiplies; then normalised.
            cols += [(c["w"] * table.ratios[:, i]) * c["fac"] * scale for i in range(len(table.ratio_names))]
            names_out += list(table.ratio_names)
        return _Group(
            mt=entries(c["mt"]),
            iso=entries(c["iso"]),
            pt=entries(c["pt"]),
            seg=tf.constant(np.append(seg[order], nseg - 1).astype(np.int32)),
            weights=entries(np.stack(cols, axis=1)),
            names=names_out,
            mt_variations=entries(table.mt_variations) if table.mt_names else None,
            mt_names=list(table.mt_names),
            is_data=is_data,
            nominal=name == "nominal",
        )

    # ------------------------------------------------------------------ templates
    def _weights(self, mt: Any, iso: Any, pt: Any, cuts: Any, widths: Any) -> Any:
        """The entries' selection weights: soft (``widths`` given) or hard cuts."""
        if widths is None:
            # The processor's conventions: mT >= mt_min, iso < iso_max, pT > pt_min.
            return (
                tf.cast(mt >= cuts[0], tf.float64) * tf.cast(iso < cuts[1], tf.float64) * hard_cut(pt, cuts[2])
            )
        return (
            soft_cut(mt, cuts[0], widths[0], self.kind)
            * soft_cut(-iso, -cuts[1], widths[1], self.kind)
            * soft_cut(pt, cuts[2], widths[2], self.kind)
        )

    def _sums(self, cuts: Any, widths: Any) -> tuple[dict[str, Any], Any]:
        """``({variation: yields [processes x bins]}, sumw2 [processes x bins])``."""
        nseg = len(self.processes) * self.nbins
        sums: dict[str, Any] = {}
        sumw2 = tf.zeros(nseg, dtype=tf.float64)
        for g in self._groups:
            s = self._weights(g.mt, g.iso, g.pt, cuts, widths)
            out = _ssum(g.weights * s[:, None], g.seg, nseg)
            # One unstack, not a slice per column: a slice's gradient is a full-size tensor per column.
            for name, col in zip(g.names, tf.unstack(out, axis=1), strict=True):
                sums[name] = sums[name] + col if name in sums else col
            if g.nominal:
                ws = g.weights[:, 0] * s
                sumw2 = sumw2 + _ssum(ws * ws, g.seg, nseg)
            for j, name in enumerate(g.mt_names):
                sj = self._weights(g.mt_variations[:, j], g.iso, g.pt, cuts, widths)
                part = _ssum(g.weights[:, 0] * sj, g.seg, nseg)
                sums[name] = sums[name] + part if name in sums else part
        shape = (len(self.processes), self.nbins)
        return {name: tf.reshape(v, shape) for name, v in sums.items()}, tf.reshape(sumw2, shape)

    def templates(self, cuts: Any, widths: Any = DEFAULT_WIDTHS) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
        """``({process: {variation: yields [bins]}}, sumw2 [processes x bins])`` for these cuts (:data:`CUT_NAMES`
        order; ``widths=None`` for hard cuts), as numpy arrays."""
        with tf.device(self.device):
            per, sumw2 = self._sums(self._cuts(cuts), None if widths is None else _f64(widths))
        out = {
            p: {v: per[v][i].numpy() for v in self._variations[p] if v in per} for i, p in enumerate(self.processes)
        }
        return out, sumw2.numpy()

    def data(self, cuts: Any, widths: Any = DEFAULT_WIDTHS) -> np.ndarray:
        """The data's (soft-)cut template [bins] (the sum of the data datasets); raises without data."""
        with tf.device(self.device):
            return self._data_template(self._cuts(cuts), None if widths is None else _f64(widths)).numpy()

    def _data_template(self, cuts: Any, widths: Any) -> Any:
        if not self._data:
            raise ValueError("CutModel.data: no data dataset among the samples (Sample(kind='data'))")
        total = tf.zeros(self.nbins, dtype=tf.float64)
        for g in self._data:
            s = self._weights(g.mt, g.iso, g.pt, cuts, widths)
            total = total + _ssum(g.weights[:, 0] * s, g.seg, self.nbins)
        return total

    # ------------------------------------------------------------------ expected information
    def _logk(self, var: Any, nom: Any) -> Any:
        from wfit.workspace import LOGK_EPSILON

        pos = nom * var > 0
        ratio = tf.where(pos, var / tf.where(pos, nom, 1.0), 1.0)
        return tf.where(pos, tf.math.log(ratio), LOGK_EPSILON)

    def _index_terms(self) -> None:
        """Index arrays of the model's terms for :meth:`jacobian`: each shape term reads one (up, down, process)
        triple and one eta mask; each normalisation term a row of log(kappa) per process."""
        from wfit.processors.workspace_builder import NormTerm

        pidx = {p: i for i, p in enumerate(self.processes)}
        nidx = {n: i for i, n in enumerate(self.nuisances)}
        variations: list[str] = []
        triples: dict[tuple[int, int, int], int] = {}
        # A term's bins: None (all), or ((first, stop) flat bins of its eta group, charge index or None).
        masks: dict[tuple[tuple[int, int], int | None] | None, int] = {None: 0}
        term_triple, term_mask, term_nuis, norm_rows, norm_nuis = [], [], [], [], []
        per_eta = self._npt * 2
        for t in self.terms:
            if isinstance(t, NormTerm):
                row = np.zeros(len(self.processes))
                for p in t.processes:
                    if p in pidx:
                        row[pidx[p]] = math.log(t.kappa)
                norm_rows.append(row)
                norm_nuis.append(nidx[t.name])
                continue
            for v in (t.up, t.down):
                if v is not None and v not in variations:
                    variations.append(v)
            key = (variations.index(t.up), -1 if t.down is None else variations.index(t.down), pidx[t.process])
            term_triple.append(triples.setdefault(key, len(triples)))
            eta = None if t.eta is None and t.charge is None else (
                (0, self.nbins) if t.eta is None else (t.eta.start * per_eta, t.eta.stop * per_eta),
                None if t.charge is None else int(t.charge > 0),  # the flat bin's charge index
            )
            term_mask.append(masks.setdefault(eta, len(masks)))
            term_nuis.append(nidx[t.name])
        mask_rows = np.ones((len(masks), self.nbins))
        for key, i in masks.items():
            if key is not None:
                (lo, hi), iq = key
                mask_rows[i] = 0.0
                mask_rows[i, lo:hi] = 1.0
                if iq is not None:
                    mask_rows[i, np.arange(self.nbins) % 2 != iq] = 0.0
        trip = np.array(list(triples), dtype=np.int64).reshape(-1, 3)
        self._ix = {
            "variations": variations,
            "up": np.stack([trip[:, 0], trip[:, 2]], axis=1).astype(np.int32),
            "down": np.stack([np.maximum(trip[:, 1], 0), trip[:, 2]], axis=1).astype(np.int32),
            "has_down": trip[:, 1] >= 0,
            "process": trip[:, 2].astype(np.int32),
            "term_triple": np.array(term_triple, dtype=np.int32),
            "term_mask": np.array(term_mask, dtype=np.int32),
            "masks": mask_rows,
            "segments": np.array(term_nuis + norm_nuis, dtype=np.int32),
            "norm": np.array(norm_rows).reshape(-1, len(self.processes)),
            "signals": np.array([pidx[p] for p in self.signals], dtype=np.int32),
        }

    def jacobian(self, cuts: Any, widths: Any = DEFAULT_WIDTHS) -> tuple[Any, Any, Any]:
        """``(nu [bins], sigma^2 [bins], J [bins x parameters])`` at the nominal point (``mu = 1``, ``theta = 0``):
        ``d nu / d mu_p`` the signal's nominal template, ``d nu / d theta_s = sum_p nominal_p logkavg_ps`` with
        ``logkavg = (log(up / nominal) - log(down / nominal)) / 2`` (``log(up / nominal)`` mirrored), the
        writer's rule where a template vanishes, and ``log(kappa) nominal_p`` for a normalisation."""
        ix = self._ix
        per, sumw2 = self._sums(cuts, widths)
        nom = tf.maximum(per["nominal"], 0.0)  # a process's negative bins are zero in the workspace (the writer's rule)
        nu = tf.reduce_sum(nom, axis=0)
        zeros = tf.zeros_like(nom)
        parts = []
        if len(ix["term_triple"]):
            stacked = tf.stack([per.get(v, zeros) for v in ix["variations"]])  # [variations x processes x bins]
            n = tf.gather(nom, ix["process"])
            log_up = self._logk(tf.gather_nd(stacked, ix["up"]), n)
            log_down = self._logk(tf.gather_nd(stacked, ix["down"]), n)
            avg = tf.where(ix["has_down"][:, None], 0.5 * (log_up - log_down), log_up)
            d = tf.gather(n * avg, ix["term_triple"]) * tf.gather(_f64(ix["masks"]), ix["term_mask"])
            parts.append(d)
        if len(ix["norm"]):
            parts.append(tf.linalg.matmul(_f64(ix["norm"]), nom))
        rows = tf.math.unsorted_segment_sum(tf.concat(parts, axis=0), ix["segments"], len(self.nuisances))
        jac = tf.transpose(tf.concat([tf.gather(nom, ix["signals"]), rows], axis=0))
        return nu, tf.reduce_sum(sumw2, axis=0), jac

    def information(self, cuts: Any, widths: Any = DEFAULT_WIDTHS) -> Any:
        """The expected (Asimov) Hessian of the NLL at the nominal point, [parameters x parameters]."""
        nu, var, jac = self.jacobian(cuts, widths)
        if not self.bb_lite:
            var = tf.zeros_like(nu)
        pos = nu > 0
        w = tf.where(pos, 1.0 / tf.where(pos, nu + var, 1.0), 0.0)
        info = tf.linalg.matmul(jac * w[:, None], jac, transpose_a=True)
        constraint = np.concatenate([np.zeros(self.npoi), np.ones(len(self.nuisances))])
        return info + tf.linalg.diag(_f64(constraint))

    def _target_gradient(self, target: str | Callable[[Any], Any]) -> np.ndarray:
        """``g = df / dx`` at the nominal point for a POI name or a function of the POI vector."""
        g = np.zeros(len(self.names))
        if isinstance(target, str):
            if target not in self.signals:
                from wfit.fitter.fitting import close_names

                raise KeyError(f"CutModel: {target!r} is not a POI{close_names(target, self.signals)}")
            g[self.signals.index(target)] = 1.0
            return g
        mu = tf.ones(self.npoi, dtype=tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(mu)
            value = target(mu)
        grad = tape.gradient(value, mu)
        if grad is None:
            raise ValueError("CutModel: the derived quantity does not depend on the POIs")
        g[: self.npoi] = tf.convert_to_tensor(grad).numpy()  # a gather gives IndexedSlices
        return g

    def _sigma(self, cuts: Any, widths: Any, g: Any) -> Any:
        """``sqrt(g^T I^-1 g)`` (one Cholesky factorisation)."""
        chol = tf.linalg.cholesky(self.information(cuts, widths))
        return tf.sqrt(tf.reduce_sum(g * tf.linalg.cholesky_solve(chol, g)))

    def _compiled(self, name: str) -> Any:
        """The traced evaluations (once per model and kind): ``"hard"`` (value), ``"soft"`` (value and gradient
        with respect to the cuts, one tape)."""
        if name not in self._functions:
            spec = tf.TensorSpec([3], tf.float64)
            gspec = tf.TensorSpec([len(self.names), 1], tf.float64)
            if name == "hard":

                def hard(cuts: Any, g: Any) -> Any:
                    return self._sigma(cuts, None, g)

                fn = tf.function(hard, input_signature=[spec, gspec], autograph=False)
            elif name == "soft_value":

                def soft_value(cuts: Any, widths: Any, g: Any) -> Any:
                    return self._sigma(cuts, widths, g)

                fn = tf.function(soft_value, input_signature=[spec, spec, gspec], autograph=False)
            else:

                def soft(cuts: Any, widths: Any, g: Any) -> Any:
                    with tf.GradientTape() as tape:
                        tape.watch(cuts)
                        value = self._sigma(cuts, widths, g)
                    return value, tape.gradient(value, cuts)

                fn = tf.function(soft, input_signature=[spec, spec, gspec], autograph=False)
            self._functions[name] = fn
        return self._functions[name]

    def expected_uncertainty(
        self, cuts: Cuts | Sequence[float], target: str | Callable[[Any], Any], widths: Any = DEFAULT_WIDTHS
    ) -> float:
        """The expected (Asimov) uncertainty of a POI (by name) or of ``target(mu)`` (a TensorFlow function of the
        POI vector); ``widths=None`` for hard cuts."""
        if widths is None:
            return float(self._compiled("hard")(self._cuts(cuts), self._g(target)).numpy())
        with tf.device(self.device):
            value = self._compiled("soft_value")(self._cuts(cuts), self._widths(widths), self._g(target))
        return float(value.numpy())

    def _widths(self, widths: Any) -> Any:
        w = width_vector(widths)
        with tf.device(self.device):
            return tf.constant(w)

    def _cuts(self, cuts: Cuts | Sequence[float]) -> Any:
        x = cut_vector(cuts)
        with tf.device(self.device):
            return tf.constant(x)

    def _g(self, target: str | Callable[[Any], Any]) -> Any:
        with tf.device(self.device):
            return tf.constant(self._target_gradient(target)[:, None])

    def value_and_gradient(
        self, cuts: Cuts | Sequence[float], target: str | Callable[[Any], Any], widths: Any = DEFAULT_WIDTHS
    ) -> tuple[float, np.ndarray]:
        """The expected uncertainty with soft cuts and its gradient with respect to the cuts (:data:`CUT_NAMES`
        order), from one tape."""
        with tf.device(self.device):
            value, grad = self._compiled("soft")(self._cuts(cuts), self._widths(widths), self._g(target))
        return float(value.numpy()), grad.numpy()

    # ------------------------------------------------------------------ data / model comparison
    def comparison(self, cuts: Any, statistic: str = "chi2", widths: Any = DEFAULT_WIDTHS) -> Any:
        """A data/model comparison at the pre-fit prediction, a scalar tensor (differentiable in the cuts):

        * ``"chi2"``: ``sum_b (d_b - nu_b)^2 / (nu_b + sigma_b^2)`` over bins with a prediction;
        * ``"ratio_slope"``: the slope (per GeV) of a weighted straight-line fit of ``data / prediction`` versus
          lepton pT (bins summed over eta and charge, weights the predicted yields).
        """
        cuts = cuts if tf.is_tensor(cuts) else self._cuts(cuts)
        per, sumw2 = self._sums(cuts, widths)
        nu = tf.reduce_sum(tf.maximum(per["nominal"], 0.0), axis=0)  # the workspace's prediction (as jacobian's)
        d = self._data_template(cuts, widths)
        if statistic == "chi2":
            var = nu + tf.reduce_sum(sumw2, axis=0)
            pos = nu > 0
            return tf.reduce_sum(tf.where(pos, (d - nu) ** 2 / tf.where(pos, var, 1.0), 0.0))
        if statistic == "ratio_slope":
            shape = (len(self.eta_edges) - 1, self._npt, 2)
            n_pt = tf.reduce_sum(tf.reshape(nu, shape), axis=(0, 2))
            d_pt = tf.reduce_sum(tf.reshape(d, shape), axis=(0, 2))
            x = _f64(0.5 * (self.pt_edges[1:] + self.pt_edges[:-1]))
            pos = n_pt > 1e-9 * tf.reduce_max(n_pt)
            w = tf.where(pos, n_pt, 0.0)
            r = tf.where(pos, d_pt / tf.where(pos, n_pt, 1.0), 0.0)
            sw = tf.reduce_sum(w)
            xm, rm = tf.reduce_sum(w * x) / sw, tf.reduce_sum(w * r) / sw
            return tf.reduce_sum(w * (x - xm) * (r - rm)) / tf.reduce_sum(w * (x - xm) ** 2)
        raise ValueError(f"CutModel.comparison: statistic {statistic!r} is not 'chi2' or 'ratio_slope'")

    def comparison_gradient(
        self, cuts: Cuts | Sequence[float], statistic: str = "chi2", widths: Any = DEFAULT_WIDTHS
    ) -> tuple[float, np.ndarray]:
        """:meth:`comparison` and its gradient with respect to the cuts (:data:`CUT_NAMES` order)."""
        x = tf.Variable(_f64(cuts.array() if isinstance(cuts, Cuts) else cuts))
        with tf.device(self.device), tf.GradientTape() as tape:
            value = self.comparison(x, statistic, widths)
        grad = tape.gradient(value, x)
        return float(value.numpy()), np.zeros(3) if grad is None else grad.numpy()


# ---------------------------------------------------------------------------------------------- optimisation
@dataclass
class OptimizeResult:
    """What :func:`optimize_cuts` found.

    Attributes:
        cuts: The optimum.
        sigma: The expected uncertainty there, with the narrowest soft cuts.
        sigma_hard: The same with hard cuts.
        evaluations: Value-and-gradient evaluations, over all stages.
        seconds: Wall time.
        stages: Per width stage: (widths, cuts, sigma).
    """

    cuts: Cuts
    sigma: float
    sigma_hard: float
    evaluations: int
    seconds: float
    stages: list[tuple[tuple[float, ...], Cuts, float]] = field(default_factory=list)


def optimize_cuts(
    model: CutModel,
    target: str | Callable[[Any], Any],
    start: Cuts,
    bounds: Mapping[str, tuple[float, float]],
    *,
    schedule: Sequence[Sequence[float]] = ((4.0, 0.02, 2.0), (2.0, 0.01, 1.0), DEFAULT_WIDTHS),
    fixed: Sequence[str] = (),
    max_iter: int = 100,
) -> OptimizeResult:
    """Minimise the expected uncertainty of ``target`` over the cut thresholds.

    Bounded L-BFGS-B on the thresholds (scaled by each stage's widths), once per stage of ``schedule``, each from
    the previous stage's optimum: a wide start keeps gradients where the thresholds are far from the events, the
    narrowest stage approaches the hard cuts (see :mod:`wfit.fitter.softcuts`).

    Args:
        model: The :class:`CutModel`.
        target: A POI name or a function of the POI vector.
        start: Starting thresholds.
        bounds: ``{cut name: (low, high)}`` for every cut that moves.
        schedule: Widths per stage, each ``(mT, isolation, pT)``.
        fixed: Cut names held at ``start``.
        max_iter: Iterations per stage.
    """
    from scipy.optimize import minimize

    free = [i for i, n in enumerate(CUT_NAMES) if n not in fixed]
    missing = [CUT_NAMES[i] for i in free if CUT_NAMES[i] not in bounds]
    if missing:
        raise ValueError(f"optimize_cuts: no bounds for {missing}; give bounds for every cut that moves, or fix it")
    x = start.array()
    t0 = time.perf_counter()
    calls = 0
    stages = []
    for widths in schedule:
        scale = np.asarray(widths, dtype=np.float64)[free]

        def fun(
            z: np.ndarray, widths: Sequence[float] = widths, scale: np.ndarray = scale, x: np.ndarray = x
        ) -> tuple[float, Any]:
            nonlocal calls
            calls += 1
            full = x.copy()
            full[free] = z * scale
            value, grad = model.value_and_gradient(full, target, widths)
            return value, grad[free] * scale

        lo_hi = [(bounds[CUT_NAMES[i]][0] / s, bounds[CUT_NAMES[i]][1] / s) for i, s in zip(free, scale, strict=True)]
        res = minimize(fun, x[free] / scale, jac=True, method="L-BFGS-B", bounds=lo_hi,
                       options={"maxiter": max_iter})  # fmt: skip
        x = x.copy()
        x[free] = res.x * scale
        stages.append((tuple(widths), Cuts.from_array(x), float(res.fun)))
    sigma_hard = model.expected_uncertainty(x, target, None)
    return OptimizeResult(Cuts.from_array(x), stages[-1][2], sigma_hard, calls, time.perf_counter() - t0, stages)


def scan_by_refit(
    columns: Any,
    samples: Mapping[str, Any],
    points: Sequence[Cuts],
    target: str,
    *,
    lumi: float,
    workdir: str | os.PathLike[str],
    systematics: bool | Sequence[str] = True,
) -> np.ndarray:
    """The brute-force alternative: per point, the hard-cut templates refilled from the columns
    (:func:`wfit.processors.hard_templates`), a workspace built (:func:`wfit.processors.build_workspace`, Asimov
    pseudo-data) and fitted with its covariance (:func:`wfit.fitter.fit_workspace`); the fitted uncertainty of the
    POI ``target`` per point."""
    from wfit.columns import EventColumns, read_columns
    from wfit.fitter import fit_workspace
    from wfit.processors import build_workspace, columns_config, hard_templates

    cols = columns if isinstance(columns, EventColumns) else read_columns(columns)
    cfg = columns_config(cols)
    os.makedirs(workdir, exist_ok=True)
    out = np.full(len(points), np.nan)
    for i, cuts in enumerate(points):
        output = {
            ds: {
                "templates_syst": hard_templates(cols.datasets[ds], cfg, mt_min=cuts.mt_min, iso_max=cuts.iso_max,
                                                 pt_min=cuts.pt_min),
                "kind": {cols.datasets[ds].kind},
                "sumw_sign": cols.datasets[ds].sumw_sign,
            }
            for ds in samples
        }  # fmt: skip
        path = os.path.join(os.fspath(workdir), f"scan{i}.hdf5")
        build_workspace(output, path, samples=samples, config=cfg, lumi=lumi, systematics=systematics)
        res = fit_workspace(path, asimov=True)
        out[i] = res.errors[res.names.index(target)]
    return out
