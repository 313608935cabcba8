"""Calibration report: response and resolution of the DNN against the standard calibration.

For each jet the response is ``pt_corrected / pt_gen`` with three corrections: the DNN
(``pt * exp(prediction)``), the standard calibration (``pt_full_corr``) and none (``pt``). In bins of
pt_gen (GeV), |eta_gen| and flavour the report gives

* the median response;
* the resolution, half the 16-84% interval over the median: ``(q84 - q16) / (2 q50)`` (the Gaussian sigma
  over the mean for a Gaussian response);
* the flavour spread: the largest minus the smallest median response among b, c, light-quark and gluon jets,
  per pt_gen bin.

For a model with a resolution head (:attr:`wfit.calib.FeatureSpec.quantiles`) the report also compares, in the
same bins, the resolution that the model predicts jet by jet with the one observed and with the standard
calibration's (``resolution.csv``, ``resolution.md``, ``predicted_resolution_vs_*.png``): the predicted
resolution of a jet is half its predicted 16-84% response interval, ``(exp(c - q_lo) - exp(c - q_hi)) / 2``
for the correction ``c`` and the predicted quantiles ``q_lo``, ``q_hi`` of ``log(pt_gen / pt)`` at the lowest
level and its mirror (0.16 and 0.84), and the coverage is the fraction of jets whose ``log(pt_gen / pt)`` lies
between them (expected: ``tau_hi - tau_lo``, 0.68).

Flavour follows CMS's hadron/parton definitions: b if ``hadron_flavor == 5``, c if 4; otherwise gluon if
``parton_flavor == 21`` and light if ``|parton_flavor|`` is 1, 2 or 3; anything else is "unknown" and is
excluded from the flavour plots.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wfit.atomic import write_bytes, write_text

from .data import DataDir, Shard, iterate, open_data_dir
from .onnx_spec import OUTPUT_NAME, QUANTILES_NAME, interval_levels

__all__ = [
    "FLAVOUR_CLASSES",
    "METHODS",
    "Report",
    "binned_response",
    "calibration_report",
    "evaluate",
    "flavour_class",
    "resolution_summary",
    "response_summary",
    "summarise",
]

#: Flavour classes in report order.
FLAVOUR_CLASSES = ("b", "c", "light", "gluon")
#: Corrections compared.
METHODS = ("dnn", "standard", "uncorrected")
DEFAULT_PT_EDGES = (20.0, 30.0, 50.0, 80.0, 120.0, 200.0, 300.0, 500.0, 800.0, 1200.0, 2000.0)
DEFAULT_ABS_ETA_EDGES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.7)


def flavour_class(hadron_flavor: np.ndarray, parton_flavor: np.ndarray) -> np.ndarray:
    """Flavour label per jet: ``"b"``, ``"c"``, ``"light"``, ``"gluon"`` or ``"unknown"``."""
    h = np.asarray(hadron_flavor)
    p = np.abs(np.asarray(parton_flavor))
    return np.select(
        [h == 5, h == 4, p == 21, (p >= 1) & (p <= 3)],
        ["b", "c", "gluon", "light"],
        default="unknown",
    )


def response_summary(response: np.ndarray) -> tuple[float, float]:
    """Median and resolution ``(q84 - q16) / (2 q50)`` of a response sample (NaN if empty).

    Quantiles are numpy's default (linear interpolation between order statistics).

    Example:
        >>> median, resolution = response_summary(np.array([0.9, 1.0, 1.1]))
        >>> round(median, 6), round(resolution, 6)
        (1.0, 0.068)
    """
    r = np.asarray(response, dtype=np.float64)
    if r.size == 0:
        return float("nan"), float("nan")
    q16, q50, q84 = np.quantile(r, [0.16, 0.5, 0.84])
    return float(q50), float((q84 - q16) / (2.0 * q50))


def binned_response(response: np.ndarray, x: np.ndarray, edges: Sequence[float]) -> list[dict[str, float]]:
    """:func:`response_summary` in bins of ``x`` (``lo <= x < hi``).

    Returns:
        One row per bin: ``lo``, ``hi``, ``n``, ``median``, ``resolution``.
    """
    response, x = np.asarray(response), np.asarray(x)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (x >= lo) & (x < hi)
        median, resolution = response_summary(response[sel])
        rows.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": int(sel.sum()),
                "median": median,
                "resolution": resolution,
            }
        )
    return rows


@dataclass
class Report:
    """Numbers and files of a calibration report.

    Attributes:
        rows: The table: ``method``, ``variable`` (``pt_gen``, ``abs_eta_gen``, ``flavour``,
            ``flavour_spread``), ``bin`` label, ``lo``, ``hi``, ``n``, ``median``, ``resolution``.
        files: Paths written (CSV, markdown, PNGs).
        n_jets: Jets evaluated.
        resolution_rows: For a model with a resolution head (else empty), :func:`resolution_summary`'s table:
            ``variable``, ``bin``, ``lo``, ``hi``, ``n``, ``observed`` and ``standard`` (the DNN's and the
            standard calibration's resolution), ``predicted`` (the median predicted resolution), ``coverage``
            and ``expected`` (its expected value).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    n_jets: int = 0
    resolution_rows: list[dict[str, Any]] = field(default_factory=list)

    def select(self, method: str, variable: str) -> list[dict[str, Any]]:
        """Rows of one method and variable."""
        return [r for r in self.rows if r["method"] == method and r["variable"] == variable]


def _predictor(model: Any) -> tuple[Callable[[Mapping[str, Any]], Any], list[str]]:
    """A function of the feature arrays giving log corrections (or, for an ONNX model, all its outputs), and the
    branches it needs."""
    from .export import OnnxCalibrator

    if isinstance(model, str | os.PathLike):
        model = OnnxCalibrator(str(model))
    if isinstance(model, OnnxCalibrator):
        return model.predict_outputs, model.spec.branches
    if callable(model):
        return model, []
    raise TypeError(
        f"calibration_report: model must be an ONNX path, an OnnxCalibrator or a callable, got {model!r}"
    )


def evaluate(
    model: Any,
    data: str | DataDir | Sequence[Shard | str],
    branches: Sequence[str] = (),
    max_jets: int | None = None,
    chunk_size: int = 100_000,
) -> dict[str, np.ndarray]:
    """Evaluate the three corrections on a data set, streamed.

    Args:
        model: ``.onnx`` path, :class:`~wfit.calib.export.OnnxCalibrator`, or a callable mapping feature
            arrays to ``log(pt_gen / pt)`` predictions (then ``branches`` names what it needs).
        data: Data directory (all shards) or a list of shards/paths.
        branches: Extra branches for a callable model.
        max_jets: Stop after this many jets.
        chunk_size: Jets per read.

    Returns:
        Per-jet arrays: ``pt_gen``, ``abs_eta_gen``, ``flavour`` and the response of each method; for a model
        with a resolution head also ``predicted_resolution`` and ``inside`` (see the module docstring) and the
        0-d ``expected_coverage``.
    """
    from .export import OnnxCalibrator

    if isinstance(model, str | os.PathLike):
        model = OnnxCalibrator(str(model))
    interval = interval_levels(model.quantiles) if isinstance(model, OnnxCalibrator) else None
    predict, needed = _predictor(model)
    if isinstance(data, str):
        data = open_data_dir(data)
    shards = list(data.shards) if isinstance(data, DataDir) else list(data)
    wanted = list(
        dict.fromkeys(
            [*needed, *branches, "pt", "pt_gen", "eta_gen", "pt_full_corr", "hadron_flavor", "parton_flavor"]
        )
    )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("pt_gen", "abs_eta_gen", "flavour", *METHODS)}
    if interval is not None:
        parts["predicted_resolution"], parts["inside"] = [], []
    seen = 0
    for chunk in iterate(shards, wanted, step_size=chunk_size):
        if max_jets is not None and seen >= max_jets:
            break
        if max_jets is not None and seen + len(chunk["pt"]) > max_jets:
            chunk = {k: v[: max_jets - seen] for k, v in chunk.items()}
        seen += len(chunk["pt"])
        pt = chunk["pt"].astype(np.float64)
        pt_gen = chunk["pt_gen"].astype(np.float64)
        got = predict(chunk)
        log_corr = np.asarray(got[OUTPUT_NAME] if isinstance(got, Mapping) else got, dtype=np.float64)
        if interval is not None:
            q = np.asarray(got[QUANTILES_NAME], dtype=np.float64)
            q_lo, q_hi = q[:, interval[0]], q[:, interval[1]]
            parts["predicted_resolution"].append(0.5 * (np.exp(log_corr - q_lo) - np.exp(log_corr - q_hi)))
            y = np.log(pt_gen / pt)
            parts["inside"].append((y >= q_lo) & (y <= q_hi))
        parts["pt_gen"].append(pt_gen)
        parts["abs_eta_gen"].append(np.abs(chunk["eta_gen"].astype(np.float64)))
        parts["flavour"].append(flavour_class(chunk["hadron_flavor"], chunk["parton_flavor"]))
        parts["dnn"].append(pt * np.exp(log_corr) / pt_gen)
        parts["standard"].append(chunk["pt_full_corr"].astype(np.float64) / pt_gen)
        parts["uncorrected"].append(pt / pt_gen)
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    if interval is not None:
        levels = model.quantiles  # type: ignore[union-attr]
        out["expected_coverage"] = np.asarray(levels[interval[1]] - levels[interval[0]])
    return out


def summarise(
    values: Mapping[str, np.ndarray],
    pt_edges: Sequence[float] = DEFAULT_PT_EDGES,
    abs_eta_edges: Sequence[float] = DEFAULT_ABS_ETA_EDGES,
    methods: Sequence[str] = METHODS,
) -> list[dict[str, Any]]:
    """The report table from per-jet values (output of :func:`evaluate`)."""
    rows: list[dict[str, Any]] = []
    for method in methods:
        r = values[method]
        for var, edges in (("pt_gen", pt_edges), ("abs_eta_gen", abs_eta_edges)):
            for row in binned_response(r, values[var], edges):
                rows.append(
                    {"method": method, "variable": var, "bin": f"[{row['lo']:g}, {row['hi']:g})", **row}
                )
        for fl in FLAVOUR_CLASSES:
            median, resolution = response_summary(r[values["flavour"] == fl])
            rows.append(
                {
                    "method": method,
                    "variable": "flavour",
                    "bin": fl,
                    "lo": np.nan,
                    "hi": np.nan,
                    "n": int(np.sum(values["flavour"] == fl)),
                    "median": median,
                    "resolution": resolution,
                }
            )
        for lo, hi in zip(pt_edges[:-1], pt_edges[1:], strict=True):
            in_bin = (values["pt_gen"] >= lo) & (values["pt_gen"] < hi)
            medians = [response_summary(r[in_bin & (values["flavour"] == fl)])[0] for fl in FLAVOUR_CLASSES]
            medians = [m for m in medians if np.isfinite(m)]
            spread = max(medians) - min(medians) if len(medians) >= 2 else float("nan")
            rows.append(
                {
                    "method": method,
                    "variable": "flavour_spread",
                    "bin": f"[{lo:g}, {hi:g})",
                    "lo": lo,
                    "hi": hi,
                    "n": int(in_bin.sum()),
                    "median": spread,
                    "resolution": float("nan"),
                }
            )
    return rows


def resolution_summary(
    values: Mapping[str, np.ndarray],
    pt_edges: Sequence[float] = DEFAULT_PT_EDGES,
    abs_eta_edges: Sequence[float] = DEFAULT_ABS_ETA_EDGES,
) -> list[dict[str, Any]]:
    """The resolution head against what is observed, per bin of pt_gen, |eta_gen| and flavour.

    Args:
        values: :func:`evaluate`'s output for a model with a resolution head.
        pt_edges, abs_eta_edges: Bin edges.

    Returns:
        One row per bin: ``variable``, ``bin``, ``lo``, ``hi``, ``n``, ``observed`` (the DNN's resolution,
        :func:`response_summary`), ``standard`` (the standard calibration's), ``predicted`` (median predicted
        resolution), ``coverage`` (fraction of jets inside their predicted interval) and ``expected``.
    """
    expected = float(values["expected_coverage"])
    bins: list[tuple[str, str, float, float, np.ndarray]] = []
    for var, edges in (("pt_gen", pt_edges), ("abs_eta_gen", abs_eta_edges)):
        x = values[var]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            bins.append((var, f"[{lo:g}, {hi:g})", float(lo), float(hi), (x >= lo) & (x < hi)))
    for fl in FLAVOUR_CLASSES:
        bins.append(("flavour", fl, np.nan, np.nan, values["flavour"] == fl))
    rows = []
    for var, label, lo, hi, sel in bins:
        n = int(sel.sum())
        rows.append(
            {
                "variable": var,
                "bin": label,
                "lo": lo,
                "hi": hi,
                "n": n,
                "observed": response_summary(values["dnn"][sel])[1],
                "standard": response_summary(values["standard"][sel])[1],
                "predicted": float(np.median(values["predicted_resolution"][sel])) if n else float("nan"),
                "coverage": float(np.mean(values["inside"][sel])) if n else float("nan"),
                "expected": expected,
            }
        )
    return rows


_RESOLUTION_COLUMNS = ("variable", "bin", "lo", "hi", "n", "observed", "predicted", "standard", "coverage", "expected")


def _resolution_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_RESOLUTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in _RESOLUTION_COLUMNS})
    return buf.getvalue()


def _resolution_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| variable | bin | n | observed (DNN) | predicted (DNN) | standard | coverage | expected |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variable']} | {r['bin']} | {r['n']} | {r['observed']:.4f} | {r['predicted']:.4f} | "
            f"{r['standard']:.4f} | {r['coverage']:.3f} | {r['expected']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _resolution_plots(rows: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    import matplotlib.style
    import mplhep
    from matplotlib.figure import Figure

    out = {}
    with matplotlib.style.context(mplhep.style.CMS):
        for var, xlabel, logx in (("pt_gen", r"$p_T^{gen}$ [GeV]", True), ("abs_eta_gen", r"$|\eta^{gen}|$", False)):
            sel = [r for r in rows if r["variable"] == var and r["n"] > 0]
            x = [np.sqrt(r["lo"] * r["hi"]) if logx else 0.5 * (r["lo"] + r["hi"]) for r in sel]
            fig = Figure(figsize=(8, 6))
            ax = fig.subplots()
            for key, label in (("observed", "DNN, observed"), ("predicted", "DNN, predicted"),
                               ("standard", "Standard, observed")):  # fmt: skip
                ax.plot(x, [r[key] for r in sel], marker="o", label=label)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("Resolution (IQR$_{68}$/2 median)")
            if logx:
                ax.set_xscale("log")
            ax.legend()
            mplhep.cms.label(text="Simulation", ax=ax, data=False, rlabel="")
            out[f"predicted_resolution_vs_{var}.png"] = _png(fig)
    return out


_COLUMNS = ("method", "variable", "bin", "lo", "hi", "n", "median", "resolution")
_LABELS = {"dnn": "DNN", "standard": "Standard", "uncorrected": "Uncorrected"}


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in _COLUMNS})
    return buf.getvalue()


def _markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| method | variable | bin | n | median response | resolution |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        res = "" if not np.isfinite(r["resolution"]) else f"{r['resolution']:.4f}"
        lines.append(
            f"| {r['method']} | {r['variable']} | {r['bin']} | {r['n']} | {r['median']:.4f} | {res} |"
        )
    return "\n".join(lines) + "\n"


def _plots(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, bytes]:
    """PNG images keyed by file name."""
    import matplotlib.style
    import mplhep
    from matplotlib.figure import Figure

    out = {}
    with matplotlib.style.context(mplhep.style.CMS):
        for var, xlabel, logx in (
            ("pt_gen", r"$p_T^{gen}$ [GeV]", True),
            ("abs_eta_gen", r"$|\eta^{gen}|$", False),
        ):
            for quantity, ylabel in (
                ("median", "Median response"),
                ("resolution", "Resolution (IQR$_{68}$/2 median)"),
            ):
                fig = Figure(figsize=(8, 6))
                ax = fig.subplots()
                for m in methods:
                    sel = [r for r in rows if r["method"] == m and r["variable"] == var and r["n"] > 0]
                    x = [0.5 * (r["lo"] + r["hi"]) if not logx else np.sqrt(r["lo"] * r["hi"]) for r in sel]
                    ax.plot(x, [r[quantity] for r in sel], marker="o", label=_LABELS.get(m, m))
                ax.set_xlabel(xlabel)
                ax.set_ylabel(ylabel)
                if logx:
                    ax.set_xscale("log")
                ax.legend()
                mplhep.cms.label(text="Simulation", ax=ax, data=False, rlabel="")
                out[f"{quantity}_vs_{var}.png"] = _png(fig)
        fig = Figure(figsize=(8, 6))
        ax = fig.subplots()
        width = 0.8 / max(len(methods), 1)
        for i, m in enumerate(methods):
            sel = {r["bin"]: r["median"] for r in rows if r["method"] == m and r["variable"] == "flavour"}
            ax.bar(
                np.arange(len(FLAVOUR_CLASSES)) + i * width,
                [sel[f] for f in FLAVOUR_CLASSES],
                width,
                label=_LABELS.get(m, m),
            )
        ax.set_xticks(np.arange(len(FLAVOUR_CLASSES)) + 0.4 - width / 2, FLAVOUR_CLASSES)
        ax.set_ylabel("Median response")
        lows = [r["median"] for r in rows if r["variable"] == "flavour" and np.isfinite(r["median"])]
        if lows:
            ax.set_ylim(min(lows) - 0.02, max(lows) + 0.02)
        ax.legend()
        out["median_vs_flavour.png"] = _png(fig)
        fig = Figure(figsize=(8, 6))
        ax = fig.subplots()
        for m in methods:
            sel = [
                r
                for r in rows
                if r["method"] == m and r["variable"] == "flavour_spread" and np.isfinite(r["median"])
            ]
            ax.plot(
                [np.sqrt(r["lo"] * r["hi"]) for r in sel],
                [100 * r["median"] for r in sel],
                marker="o",
                label=_LABELS.get(m, m),
            )
        ax.set_xscale("log")
        ax.set_xlabel(r"$p_T^{gen}$ [GeV]")
        ax.set_ylabel("Flavour spread of median response [%]")
        ax.legend()
        out["flavour_spread_vs_pt_gen.png"] = _png(fig)
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def calibration_report(
    model: Any,
    data: str | DataDir | Sequence[Shard | str],
    output_dir: str,
    pt_edges: Sequence[float] = DEFAULT_PT_EDGES,
    abs_eta_edges: Sequence[float] = DEFAULT_ABS_ETA_EDGES,
    max_jets: int | None = None,
    plots: bool = True,
    branches: Sequence[str] = (),
) -> Report:
    """Evaluate a model on a data set and write the report (table.csv, table.md, PNG plots).

    Args:
        model: ``.onnx`` path, :class:`~wfit.calib.export.OnnxCalibrator`, or a callable from feature arrays
            to ``log(pt_gen / pt)`` (with ``branches`` naming the branches it reads).
        data: Data directory or shards (use the test split for an unbiased report).
        output_dir: Directory for the files.
        pt_edges: pt_gen bin edges, GeV.
        abs_eta_edges: |eta_gen| bin edges.
        max_jets: Evaluate at most this many jets.
        plots: Write the PNG plots.
        branches: Extra branches for a callable model.

    Returns:
        The table and the paths written.
    """
    values = evaluate(model, data, branches=branches, max_jets=max_jets)
    rows = summarise(values, pt_edges, abs_eta_edges)
    resolution = resolution_summary(values, pt_edges, abs_eta_edges) if "predicted_resolution" in values else []
    os.makedirs(output_dir, exist_ok=True)
    files = []
    texts = [("table.csv", _csv(rows)), ("table.md", _markdown(rows))]
    if resolution:
        texts += [("resolution.csv", _resolution_csv(resolution)), ("resolution.md", _resolution_markdown(resolution))]
    for name, text in texts:
        path = os.path.join(output_dir, name)
        write_text(path, text)
        files.append(path)
    if plots:
        images = _plots(rows, METHODS)
        if resolution:
            images.update(_resolution_plots(resolution))
        for name, png in images.items():
            path = os.path.join(output_dir, name)
            write_bytes(path, png)
            files.append(path)
    return Report(rows=rows, files=files, n_jets=len(values["pt_gen"]), resolution_rows=resolution)
