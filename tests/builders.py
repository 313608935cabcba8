"""Seeded model descriptions that both wfit's writer and rabbit's TensorWriter can write.

A model is plain numpy: it is the injected truth of the tests, independent of either writer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np


@dataclass
class Model:
    channels: dict[str, dict]  # name -> {"axes": [hist axes], "masked": bool}
    signals: list[str]
    backgrounds: list[str]
    nominal: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (channel, proc) -> values
    sumw2: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    shape: dict[str, dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]]] = field(
        default_factory=dict
    )
    lnn: dict[str, dict[str, float | tuple[float, float]]] = field(default_factory=dict)
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def hist(self, channel: str, values: np.ndarray, variances: np.ndarray | None = None) -> hist.Hist:
        h = hist.Hist(*self.channels[channel]["axes"], storage=hist.storage.Weight())
        shape = h.values().shape
        h.view().value = values.reshape(shape)
        h.view().variance = (values if variances is None else variances).reshape(shape)
        return h


def build_random_model(
    seed: int,
    nbins: tuple[int, ...] = (12, 8),
    nsig: int = 2,
    nbkg: int = 3,
    nshape: int = 4,
    asymmetric: bool = True,
    masked: bool = True,
    scale: float = 200.0,
) -> Model:
    """A model with ``len(nbins)`` unmasked channels (plus a masked one), mixed shape and lnN systematics."""
    rng = np.random.default_rng(seed)
    chans = {
        f"ch{i}": {"axes": [hist.axis.Regular(n, 0.0, 1.0, name=f"x{i}")], "masked": False}
        for i, n in enumerate(nbins)
    }
    if masked:
        chans["xsec"] = {"axes": [hist.axis.Regular(nsig, 0.0, 1.0, name="gen")], "masked": True}
    m = Model(chans, [f"sig{i}" for i in range(nsig)], [f"bkg{i}" for i in range(nbkg)])
    for c, info in chans.items():
        n = info["axes"][0].size
        for j, p in enumerate(m.signals + m.backgrounds):
            if info["masked"]:
                if p not in m.signals:
                    continue
                vals = np.zeros(n)
                vals[m.signals.index(p)] = scale * (1 + j)
            else:
                x = (np.arange(n) + 0.5) / n
                vals = scale * rng.uniform(0.3, 1.0) * np.exp(-((x - rng.uniform(0, 1)) ** 2) / 0.1) + 2.0
                if j == 1:
                    vals[0] = 0.0  # an empty template bin
            m.nominal[(c, p)] = vals
            m.sumw2[(c, p)] = vals * rng.uniform(0.02, 0.3, size=n)
    for s in range(nshape):
        name = f"shape{s}"
        m.shape[name] = {}
        for (c, p), vals in m.nominal.items():
            if chans[c]["masked"] or rng.uniform() < 0.3:
                continue
            up = vals * np.exp(rng.normal(0.0, 0.08, vals.size))
            down = vals * np.exp(rng.normal(0.0, 0.08, vals.size)) if asymmetric and s % 2 == 0 else None
            m.shape[name][(c, p)] = (up, down)
    m.lnn["lumi"] = dict.fromkeys(m.signals + m.backgrounds, 1.025)
    m.lnn["bkgnorm"] = {p: (1.10, 0.93) if asymmetric else 1.08 for p in m.backgrounds}
    for c, info in chans.items():
        if info["masked"]:
            continue
        tot = sum(m.nominal[(c, p)] for p in m.signals + m.backgrounds)
        m.data[c] = rng.poisson(tot * rng.uniform(0.9, 1.1)).astype(float)
    return m


def build_unfolding_model(ngen: int = 8, nreco: int = 16, seed: int = 12) -> tuple[Model, np.ndarray, np.ndarray]:
    """An ill-conditioned unfolding: ``ngen`` generator bins (the POIs ``gen<k>``, and a masked channel ``xsec``
    holding their yields) smeared broadly (Gaussian width 0.2) into ``nreco`` reco bins, with Gaussian data.

    Returns:
        ``(model, a, var)``: ``a`` [nreco, ngen] is ``d nu_reco / d mu`` and ``var`` the data's (diagonal)
        variances, to be written as the data covariance (``write_rabbit(..., data_covariance=np.diag(var))``).
    """
    rng = np.random.default_rng(seed)
    centres = (np.arange(nreco) + 0.5) / nreco
    gen = (np.arange(ngen) + 0.5) / ngen
    resp = np.exp(-0.5 * ((centres[:, None] - gen[None, :]) / 0.2) ** 2)
    resp /= resp.sum(axis=0, keepdims=True)
    sigma = 1000.0 * (1.0 + np.sin(3.0 * gen))  # generator-level yields at mu = 1
    a = resp * sigma[None, :]
    mu_true = 1.0 + 0.1 * np.cos(5.0 * gen)
    var = a @ mu_true
    m = Model({"reco": {"axes": [hist.axis.Regular(nreco, 0, 1, name="x")], "masked": False},
               "xsec": {"axes": [hist.axis.Regular(ngen, 0, 1, name="gen")], "masked": True}},
              [f"gen{k}" for k in range(ngen)], [])
    for k in range(ngen):
        m.nominal[("reco", f"gen{k}")] = a[:, k]
        m.sumw2[("reco", f"gen{k}")] = np.zeros(nreco)
        onehot = np.zeros(ngen)
        onehot[k] = sigma[k]
        m.nominal[("xsec", f"gen{k}")] = onehot
        m.sumw2[("xsec", f"gen{k}")] = np.zeros(ngen)
    m.data["reco"] = a @ mu_true + rng.normal(0.0, np.sqrt(var))
    return m, a, var


def write_wfit(m: Model, path: str, *, rabbit_meta: bool = False, sparse: bool = False, **write_options) -> None:
    """Write ``m`` with wfit's writer; ``write_options`` go to ``WorkspaceWriter.write`` (e.g. compression)."""
    from wfit.workspace import WorkspaceWriter

    w = WorkspaceWriter(sparse=sparse)
    for c, info in m.channels.items():
        w.add_channel(c, info["axes"], masked=info["masked"])
    for (c, p), vals in m.nominal.items():
        w.add_process(p, c, m.hist(c, vals, m.sumw2[(c, p)]), signal=p in m.signals)
    for name, per in m.shape.items():
        for (c, p), (up, down) in per.items():
            w.add_shape_systematic(name, p, c, m.hist(c, up), None if down is None else m.hist(c, down))
    for name, kappas in m.lnn.items():
        w.add_norm_systematic(name, list(kappas), None, kappas)
    for c, d in m.data.items():
        w.add_data(c, m.hist(c, d))
    w.write(path, rabbit_meta=rabbit_meta, **write_options)


def write_rabbit(
    m: Model,
    path: str,
    *,
    systematic_type: str = "log_normal",
    data_covariance: np.ndarray | None = None,
    covariance_systs: tuple[str, ...] = (),
    pseudodata: dict[str, dict[str, np.ndarray]] | None = None,
) -> None:
    """Write the model with rabbit's own TensorWriter (working around its known writer bugs).

    Args:
        m: The model.
        path: Output file.
        systematic_type: rabbit's ``"log_normal"`` or ``"normal"`` (additive) systematics.
        data_covariance: The covariance of the data in the unmasked bins, in rabbit's bin order
            (``add_data_covariance``; rabbit then writes its inverse, ``hdata_cov_inv``).
        covariance_systs: Shape systematics (symmetric ones, of a model without masked channels)
            that rabbit folds into the data covariance (``add_to_data_covariance=True``) instead of
            making them nuisances.
        pseudodata: ``{name: {channel: counts}}``, written with ``add_pseudodata``.
    """
    # rabbit records the git state of its install folder, which fails inside a fresh repository:
    # point git at nothing so that it records "Not a git repository".
    old = os.environ.get("GIT_DIR")
    os.environ["GIT_DIR"] = os.path.join(os.path.dirname(path), "no-git")
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # rabbit divides 0/0 for empty template bins
            _write_rabbit(m, path, systematic_type, data_covariance, covariance_systs, pseudodata or {})
    finally:
        if old is None:
            del os.environ["GIT_DIR"]
        else:
            os.environ["GIT_DIR"] = old


def _write_rabbit(m: Model, path: str, systematic_type: str, data_covariance: np.ndarray | None,
                  covariance_systs: tuple[str, ...], pseudodata: dict[str, dict[str, np.ndarray]]) -> None:
    from rabbit.tensorwriter import TensorWriter

    w = TensorWriter(systematic_type=systematic_type)
    for c, info in m.channels.items():
        w.add_channel(info["axes"], c, masked=info["masked"])
    for (c, p), vals in m.nominal.items():
        w.add_process(m.hist(c, vals, m.sumw2[(c, p)]), p, c, signal=p in m.signals)
    for c, d in m.data.items():
        w.add_data(m.hist(c, d), c)
    for name, per in pseudodata.items():
        for c, d in per.items():
            w.add_pseudodata(m.hist(c, d), name, c)
    if data_covariance is not None:
        w.add_data_covariance(np.array(data_covariance))
    for name, per in m.shape.items():
        for (c, p), (up, down) in per.items():
            if name in covariance_systs:
                if down is not None:
                    raise ValueError(f"{name}: rabbit folds only symmetric systematics into the data covariance")
                w.add_systematic(m.hist(c, up), name, p, c, add_to_data_covariance=True)
            elif down is None:
                w.add_systematic(m.hist(c, up), name, p, c)
            else:
                w.add_systematic([m.hist(c, up), m.hist(c, down)], name, p, c, symmetrize=None)
    for name, kappas in m.lnn.items():
        for c in m.channels:
            for p, k in kappas.items():
                if (c, p) not in m.nominal:
                    continue
                if isinstance(k, tuple):
                    # rabbit 0.2.5 raises on an asymmetric lnN unless symmetrised: write it as a shape.
                    nom = m.nominal[(c, p)]
                    w.add_systematic(
                        [m.hist(c, nom * k[0]), m.hist(c, nom * k[1])], name, p, c, symmetrize=None
                    )
                else:
                    # one process per call: rabbit 0.2.5 applies a scalar kappa to the first process only
                    w.add_norm_systematic(name, p, c, k)
    folder, fname = os.path.split(path)
    w.write(outfolder=folder, outfilename=fname)
    # TensorWriter.write never closes its h5py.File, which keeps the file locked: close it here.
    import h5py

    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        if os.path.abspath(fid.name.decode()) == os.path.abspath(path):
            h5py.File(fid).close()


def run_rabbit(workspace: str, outdir: str, *extra: str, result: str | None = None) -> dict[str, tuple[float, float]]:
    """Fit the stored data with rabbit_fit (mu, not sqrt(mu)); return name -> (value, error).

    ``result`` names the result group of a pseudo-data fit (``--pseudoData NAME`` stores ``results_NAME``).
    """
    env = dict(os.environ, GIT_DIR=os.path.join(outdir, "no-git"))  # rabbit records git info of its cwd
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "rabbit_fit"),
        workspace,
        "-t",
        "0",
        "--unblind",
        "--allowNegativePOI",
        "-o",
        outdir,
        "--outname",
        "rabbit.hdf5",
        *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbit_fit failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    from rabbit.io_tools import get_fitresult

    fr = get_fitresult(os.path.join(outdir, "rabbit.hdf5"), result)
    h = fr["parms"].get()
    return {str(n): (float(v), float(np.sqrt(e))) for n, v, e in zip(h.axes[0], h.values(), h.variances(), strict=True)}


def write_column_toys(directory: str | os.PathLike[str], n_events: int = 6000, *, config: Any = None,
                      chunksize: int = 2000) -> tuple[dict[str, list[str]], str]:
    """Seeded toy W (signal split), Z and fake-lepton files and their event-columns file, written by the template
    processor with a preselection loosened in the lepton pT (20 GeV, the pT axis from there); ``(fileset,
    columns path)``."""
    from wfit.columns import write_columns
    from wfit.processors import AngularCoefficients, TemplateConfig, WTemplateProcessor, run_templates, write_toy

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    fileset = {}
    for name, process, seed in (("W", "W", 11), ("Z", "Z", 12), ("QCD", "fakes", 13)):
        path = d / f"{name}.root"
        write_toy(path, n_events, process=process, seed=seed, block_size=chunksize)
        fileset[name] = [str(path)]
    cfg = config or TemplateConfig(pdf=True, lepton_pt_min=20.0, pt_bins=(36, 20.0, 56.0))
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.6),
                              event_columns=True)  # fmt: skip
    out = run_templates(fileset, proc, chunksize=chunksize, align_clusters=False).output
    return fileset, write_columns(d / "columns.h5", out, cfg)


def central_differences(f: Any, x0: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The five-point central difference (error O(h^4)) of ``f`` in each coordinate."""
    out = np.zeros(len(x0))
    for i, h in enumerate(steps):
        v = {}
        for k in (-2, -1, 1, 2):
            x = x0.copy()
            x[i] += k * h
            v[k] = f(x)
        out[i] = (8 * (v[1] - v[-1]) - (v[2] - v[-2])) / (12 * h)
    return out


def random_constituent_models(
    directory: str | os.PathLike[str], seeds: dict[str, int], resolution: set[str] | frozenset[str] = frozenset()
) -> dict[str, str]:
    """``{name: ONNX path}``: constituent (Deep Sets) models of the PFNano features (``configs/pfnano.yaml``),
    randomly initialised with each name's seed and exported to ONNX; names in ``resolution`` with a resolution head
    (quantiles 0.16, 0.84). The correction layer is scaled so that corrections are of a calibration's size."""
    import dataclasses

    import keras

    from wfit.calib import FeatureSpec, build_model, default_config_path, export_onnx, load_config, write_synthetic
    from wfit.calib.transform import load_transform

    d = Path(directory)
    write_synthetic(str(d / "syn"), 600, n_shards=2, seed=5, calibration_jets=2000)
    base = load_config(default_config_path("pfnano"))
    base_spec = FeatureSpec.from_config(base.features, load_transform(str(d / "syn" / "transform.yaml")))
    out = {}
    for name, seed in seeds.items():
        keras.utils.set_random_seed(seed)
        cfg, spec = base, base_spec
        if name in resolution:
            cfg = load_config(default_config_path("pfnano"), {"model": {"resolution": {"quantiles": [0.16, 0.84]}}})
            spec = dataclasses.replace(spec, quantiles=(0.16, 0.84))
        model = build_model(cfg, spec, compile=False)
        layer = model.get_layer("log_correction")
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 0.3, bias + 0.1])
        out[name] = export_onnx(model, spec, str(d / f"{name}.onnx"))
    return out
