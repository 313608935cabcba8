"""The main job: NanoAOD to fit result with covariance on one local Dask cluster.

    python examples/run_chain.py [--outdir wfit-output] [--events 200000] [--cpu-workers 2] [--seed 1] [-v]
    python examples/run_chain.py --systematics full     # the analysis's model and binning (a few minutes)

Run from the repository checkout (it reads the bundled real NanoAOD files under tests/data/nanoaod).

1. Generates toy W -> mu nu and Z -> mu mu NanoAOD files (:func:`wfit.processors.write_toy`) and takes two
   real CMS NanoAOD files as further backgrounds: ``nano_tt_v12.root`` (200 ttbar events) and
   ``nano_dy.root`` (40 Drell-Yan events), both from scikit-hep/coffea tests/samples at commit 060992a4
   (BSD-3-Clause; see tests/data/PROVENANCE.md).
2. Starts a local cluster bound to 127.0.0.1: CPU workers plus one worker that declares ``GPU=1``
   (:func:`wfit.pipeline.local_chain_cluster`; settings of ``dask_configs/local.yaml``).
3. Measures the W angular coefficients A0/A4 on the W MC, then runs the template processor
   (:func:`wfit.processors.run_templates` on Dask) on the CPU workers, writes the workspace with Poisson
   pseudo-data (seeded) and submits the fit with ``resources={"GPU": 1}`` (:func:`wfit.pipeline.run_chain`).
4. Prints the POI table and writes ``templates_pt.png``, ``templates_eta.png`` and ``pulls.png``.

TensorFlow's start-up lines (from the fit worker) are kept out of the terminal unless ``-v`` is given.

With ``--systematics full`` the processor runs the systematics model of the CMS W helicity/rapidity analysis
(:meth:`wfit.processors.TemplateConfig.with_full_model`, the README's table) at its binning, on 1M toy W events with
103 PDF members, and the fit uses pseudo-data files (toy W, Z and non-prompt muons, written as data) with the
data-driven fake estimate from their mT x isolation control cells.

Normalisations (pb, 1/pb) are demonstration values: W 20 nb, Z 2 nb, ttbar 830 pb and DY 6 nb with a
luminosity that makes the W MC as large as the pseudo-data. The POIs are signal strengths mu per
(charge, |y_W| bin, helicity) of the W; the pseudo-data are a Poisson fluctuation of the prediction at mu = 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "tests" / "data" / "nanoaod"

W_XSEC, Z_XSEC, TT_XSEC, DY_XSEC = 20000.0, 2000.0, 830.0, 6000.0  # pb, demonstration values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outdir", default="wfit-output", help="output folder (default wfit-output)")
    p.add_argument(
        "--systematics",
        choices=("main", "full"),
        default="main",
        help="main: the fast job (24 x 15 x 2 bins, 18 POIs, 118 nuisances); full: the systematics model of the CMS W "
        "helicity/rapidity analysis (TemplateConfig.with_full_model: 48 x 30 x 2 bins, 44 POIs, about 800 "
        "nuisances) with pseudo-data files and the data-driven fake estimate",
    )
    p.add_argument(
        "--events", type=int, default=None, help="toy W MC events (default 200000; 1000000 with --systematics full)"
    )
    p.add_argument("--cpu-workers", type=int, default=2, help="CPU worker processes (default 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the toys and the pseudo-data (default 1)")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="also show TensorFlow's start-up and C++ log lines"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    from tqdm.auto import tqdm

    from wfit.fitter.measurement import QUANTITIES, Measurement, plot_measurement
    from wfit.fitter.plots import plot_pulls
    from wfit.pipeline import local_chain_cluster, process_on_cluster, run_chain
    from wfit.plots import plot_templates
    from wfit.processors import (
        AngularCoefficients,
        AngularCoefficientsProcessor,
        Sample,
        TemplateConfig,
        ToyConfig,
        WTemplateProcessor,
        process_templates,
        write_toy,
    )

    missing = [f for f in ("nano_tt_v12.root", "nano_dy.root") if not (REAL / f).is_file()]
    if missing:
        print(
            f"run_chain: {missing} not found under {REAL}: run from a checkout of the wfit repository", file=sys.stderr
        )
        return 2
    out = Path(args.outdir).resolve()
    data_dir = out / "nanoaod"
    data_dir.mkdir(parents=True, exist_ok=True)

    full = args.systematics == "full"
    n_w = args.events or (1_000_000 if full else 200_000)
    n_z = n_w // 10
    if full:
        # The analysis's binning and model: 48 x 30 x 2 bins, 11 |y_W| bins (with the overflow); every one of
        # NNPDF3.1's 103 LHEPdfWeight members in the toys.
        cfg = TemplateConfig().with_full_model()
        toy = ToyConfig(n_pdf=103)
    else:
        # Three |y_W| bins (with the overflow) x 2 charges x 3 helicities = 18 POIs; 24 x 15 x 2 bins.
        edges = (0.0, 1.0, 2.0)
        cfg = TemplateConfig(absy_edges=edges, eta_bins=(24, -2.4, 2.4), pt_bins=(15, 26.0, 56.0), eff_groups=6)
        toy = ToyConfig(absy_edges=edges, a0=(0.12, 0.25, 0.4), a4=(-0.4, -0.8, -1.1), n_pdf=9)
    jobs = [("W", f"w_{i}.root", n_w // 2, args.seed + i) for i in range(2)] + [("Z", "z.root", n_z, args.seed + 10)]
    if full:
        # Pseudo-data files (no generator branches): W, Z and non-prompt muons, a fifth of the MC's size, from
        # which the fake estimate is made (its control cells in mT and isolation).
        jobs.append(("data", "data.root", {"W": n_w // 5, "Z": n_z // 5, "fakes": n_w // 10}, args.seed + 20))
    files: dict[str, list[str]] = {"W": [], "Z": [], "data": []}
    for process, name, n, seed in tqdm(jobs, desc="toy NanoAOD", unit="file"):
        if process == "data":
            write_toy(data_dir / name, n, seed=seed, config=toy, is_data=True)
        else:
            write_toy(data_dir / name, n, process=process, seed=seed, config=toy)
        files[process].append(str(data_dir / name))
    if not files["data"]:
        del files["data"]
    fileset = {**files, "ttbar": [str(REAL / "nano_tt_v12.root")], "DY": [str(REAL / "nano_dy.root")]}
    # 1/pb: the W MC is as large as the pseudo-data (five times as large with the pseudo-data files)
    lumi = (n_w // 5 if full else n_w) / W_XSEC
    samples = {
        "W": Sample("signal", xsec=W_XSEC),
        "Z": Sample("background", xsec=Z_XSEC),
        "ttbar": Sample("background", xsec=TT_XSEC),
        "DY": Sample("background", xsec=DY_XSEC),
    }
    if full:
        samples["data"] = Sample("data")

    with local_chain_cluster(cpu_workers=args.cpu_workers, gpu_workers=1, tensorflow_log=args.verbose) as client:
        print(f"cluster: {len(client.scheduler_info(n_workers=-1)['workers'])} workers at {client.scheduler.address}")
        moments = process_on_cluster(client, {"W": files["W"]}, AngularCoefficientsProcessor(cfg))
        coefficients = AngularCoefficients.from_moments(moments["W"]["moments"])
        processor = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=coefficients)
        # The full model's results: the cross-section channel, the measurement's quantities, impacts and yields.
        results = (
            dict(cross_sections=coefficients, derived=QUANTITIES, impacts=True, yields=True)
            if full
            else {}
        )
        chain = run_chain(
            client, fileset, processor, samples=samples, lumi=lumi, workdir=out, pseudo_data=args.seed, fakes=full,
            **results,
        )  # fmt: skip

    fit = chain.fit
    print()
    print(
        f"fit on worker {chain.worker} (resources {fit.options['resources']}, "
        f"TensorFlow device {fit.options['device']})"
    )
    print(fit.summary(max_nuisances=8))

    templates, signals, _ = process_templates(chain.output, samples, cfg, lumi)
    groups = {
        "W+": sum(templates[s]["nominal"] for s in signals if s.startswith("Wplus")),
        "W-": sum(templates[s]["nominal"] for s in signals if s.startswith("Wminus")),
    }
    groups.update({p: templates[p]["nominal"] for p in ("W_unmatched", "Z", "ttbar", "DY") if p in templates})
    from wfit.workspace import read_workspace

    ws = read_workspace(chain.workspace)
    obs = groups["W+"].copy()
    obs.view().value[...] = ws.data_obs.reshape(obs.shape)
    obs.view().variance[...] = ws.data_obs.reshape(obs.shape)
    for axis in ("pt", "eta"):
        plot_templates(
            groups, axis=axis, data=obs, path=out / f"templates_{axis}.png", title="W -> mu nu, toy + CMS NanoAOD"
        )
    plot_pulls(fit, path=out / "pulls.png")
    figures = ["templates_pt.png", "templates_eta.png", "pulls.png"]
    if full:
        measurement = Measurement.from_result(fit, cfg.absy_edges)
        print("\nunpolarised cross sections and the charge asymmetry (pb per unit |y_W|):")
        print(measurement.table())
        i = measurement.pois.index("Wplus_y0_L")
        parts = ", ".join(f"{g} {v[i]:.4f}" for g, v in measurement.breakdown.items())
        print(f"uncertainty breakdown of Wplus_y0_L: {parts}")
        paths = plot_measurement(fit, cfg.absy_edges, chain.summary["cross_sections"], out,
                                 eta_pt_bins=(cfg.eta_bins[0], cfg.pt_bins[0]), component_names=cfg.component_names)  # fmt: skip
        figures += [Path(p).name for p in paths]
    print(f"\nworkspace {chain.workspace}\nresult    {chain.result_path}\nplots     {out}/: {', '.join(figures)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if fit.ok else 1


if __name__ == "__main__":
    sys.exit(main())
