"""The gradient of the expected precision with respect to the cuts, against the brute-force scan, in one process.

Toy W -> mu nu (signal split by charge, |y_W| and helicity), Z -> mu mu and fake-lepton NanoAOD files
(:func:`wfit.processors.write_toy`, seeded) and the main job's two real CMS NanoAOD files (ttbar, Drell-Yan) are
processed once by the template processor with event columns (``WTemplateProcessor(event_columns=True)``), with the
main job's binning, PDF members and systematics (its 118 nuisances) and the preselection loosened in the lepton pT
(20 GeV, the pT axis from there), and written to an event-columns file. On that file, with every nuisance of the
workspace builder's model and Barlow-Beeston lite (:class:`wfit.fitter.cutopt.CutModel`), the benchmark times,
after tracing:

- one evaluation of the expected (Asimov) uncertainty of a POI with soft cuts (``expected_uncertainty``);
- that value and its gradient with respect to the three cuts, from one tape (``value_and_gradient``);
- the brute-force alternative, per scan point: the hard-cut templates refilled from the columns, a workspace
  built and fitted with its covariance (:func:`wfit.fitter.cutopt.scan_by_refit`).

Then the question both answer, the thresholds that minimise the POI's expected uncertainty: a hard-cut refit scan
on the (mT, isolation) grid (5 GeV over [0, 70] GeV, 0.05 over [0.05, 0.3]; its isolation 0.15 row is the mT-only
scan) against the gradient optimiser (:func:`wfit.fitter.cutopt.optimize_cuts`, width schedule included) from the
grid's edge, both timed in full; and the gradient against five-point central finite differences of the same soft
objective. The optimiser's three-cut optimum is reported beside it, with the cost of a three-cut scan of the same
steps (the measured per-point time times the grid's points).

The last line reads ``gradient/evaluation X, scan/optimiser Y, max rel. deviation from finite differences Z``
(targets: X <= 3, Y >= 10).

    PYTHONPATH=. python benchmarks/cut_gradient.py [--events 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

# pb: the main job's demonstration values (examples/run_chain.py); the fake-lepton toy W-sized
W_XSEC, Z_XSEC, TT_XSEC, DY_XSEC, QCD_XSEC = 20000.0, 2000.0, 830.0, 6000.0, 20000.0
REAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "nanoaod")
POI = "Wplus_y1_L"


def _columns(folder: str, n_w: int, seed: int) -> tuple[str, dict, float]:
    from tqdm.auto import tqdm

    from wfit.columns import write_columns
    from wfit.processors import (
        AngularCoefficients,
        Sample,
        TemplateConfig,
        ToyConfig,
        WTemplateProcessor,
        run_templates,
        write_toy,
    )

    edges = (0.0, 1.0, 2.0)  # the main job's |y_W| bins, toy coefficients and PDF members
    cfg = TemplateConfig(absy_edges=edges, eta_bins=(24, -2.4, 2.4), pt_bins=(18, 20.0, 56.0), eff_groups=6,
                         lepton_pt_min=20.0)  # fmt: skip
    toy = ToyConfig(absy_edges=edges, a0=(0.12, 0.25, 0.4), a4=(-0.4, -0.8, -1.1), n_pdf=9)
    jobs = [("W", "W", f"w{i}.root", n_w // 2, seed + i) for i in range(2)]
    jobs += [("Z", "Z", "z.root", n_w // 10, seed + 10), ("QCD", "fakes", "qcd.root", n_w // 5, seed + 20)]
    fileset: dict[str, list[str]] = {}
    for ds, process, name, n, s in tqdm(jobs, desc="toy NanoAOD", unit="file"):
        path = os.path.join(folder, name)
        write_toy(path, n, process=process, seed=s, config=toy)
        fileset.setdefault(ds, []).append(path)
    # The main job's two real CMS NanoAOD files (their 102 PDF members make the main job's 118 nuisances).
    fileset.update({"ttbar": [os.path.join(REAL, "nano_tt_v12.root")], "DY": [os.path.join(REAL, "nano_dy.root")]})
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.6),
                              event_columns=True)  # fmt: skip
    t = time.perf_counter()
    out = run_templates(fileset, proc, executor="iterative", chunksize=250_000).output
    t_proc = time.perf_counter() - t
    path = write_columns(os.path.join(folder, "columns.h5"), out, cfg)
    samples = {"W": Sample("signal", W_XSEC), "Z": Sample("background", Z_XSEC),
               "ttbar": Sample("background", TT_XSEC), "DY": Sample("background", DY_XSEC),
               "QCD": Sample("background", QCD_XSEC, process="QCD")}  # fmt: skip
    n_total = sum(n for *_, n, _ in jobs)
    size = os.path.getsize(path) / 1e6
    print(f"{n_total} toy events processed with event columns in {t_proc:.1f} s; columns {size:.0f} MB")
    return path, samples, n_w / W_XSEC


def _best(f, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000, help="toy W events (Z: a tenth, fakes: a fifth)")
    p.add_argument("--quick", action="store_true", help="100k W events and a 4-point scan, for checks")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    n_w = 100_000 if args.quick else args.events

    from tests.builders import central_differences
    from wfit.fitter.cutopt import DEFAULT_WIDTHS, CutModel, Cuts, optimize_cuts, scan_by_refit

    with tempfile.TemporaryDirectory() as folder:
        path, samples, lumi = _columns(folder, n_w, args.seed)
        t = time.perf_counter()
        model = CutModel(path, samples, lumi=lumi)
        print(f"model: {len(model.processes)} processes, {model.nbins} bins, {model.npoi} POIs, "
              f"{len(model.nuisances)} nuisances; built in {time.perf_counter() - t:.1f} s")  # fmt: skip
        start = Cuts(40.0, 0.15, 26.0)
        widths = DEFAULT_WIDTHS
        t = time.perf_counter()
        model.expected_uncertainty(start, POI, widths)
        model.value_and_gradient(start, POI, widths)
        model.expected_uncertainty(start, POI, None)
        print(f"tracing {time.perf_counter() - t:.1f} s")
        repeat = 3 if args.quick else 5
        t_eval = _best(lambda: model.expected_uncertainty(start, POI, widths), repeat)
        t_grad = _best(lambda: model.value_and_gradient(start, POI, widths), repeat)
        value, grad = model.value_and_gradient(start, POI, widths)
        fd = central_differences(lambda x: model.expected_uncertainty(x, POI, widths), start.array(),
                                  np.array(widths) * 1e-2)  # fmt: skip
        dev = float(np.max(np.abs(grad - fd) / np.abs(fd)))
        print(f"sigma({POI}) = {value:.6g}; gradient {grad} (finite differences {fd})")
        print(f"evaluation {t_eval:.3f} s, value and gradient {t_grad:.3f} s")

        # The brute-force scan: hard-cut refits on the (mT, isolation) grid, pT threshold held; its isolation
        # 0.15 row is the one-cut (mT) scan.
        mt_grid, iso_grid = np.arange(0.0, 75.0, 5.0), np.round(np.arange(0.05, 0.35, 0.05), 2)
        if args.quick:
            mt_grid, iso_grid = mt_grid[::4], iso_grid[::2]
        row = [dataclasses.replace(start, mt_min=float(m)) for m in mt_grid]
        rest = [dataclasses.replace(start, mt_min=float(m), iso_max=float(i)) for i in iso_grid for m in mt_grid
                if not np.isclose(i, start.iso_max)]  # fmt: skip
        t = time.perf_counter()
        scanned_row = scan_by_refit(path, samples, row, POI, lumi=lumi, workdir=os.path.join(folder, "scan"))
        t_row = time.perf_counter() - t
        t = time.perf_counter()
        scanned_rest = scan_by_refit(path, samples, rest, POI, lumi=lumi, workdir=os.path.join(folder, "scan"))
        t_grid = t_row + time.perf_counter() - t
        per_point = t_grid / (len(row) + len(rest))
        best = row[int(np.argmin(scanned_row))]
        res1 = optimize_cuts(model, POI, dataclasses.replace(start, mt_min=70.0), {"mt_min": (0.0, 70.0)},
                             fixed=("iso_max", "pt_min"))  # fmt: skip
        print(f"one cut (mT): scan {len(row)} refits in {t_row:.1f} s ({t_row / len(row):.2f} s per point), best "
              f"mT >= {best.mt_min:g} GeV (sigma {scanned_row.min():.6g}); optimiser from mT >= 70 GeV "
              f"{res1.seconds:.1f} s, {res1.evaluations} evaluations, mT >= {res1.cuts.mt_min:.2f} GeV (hard-cut "
              f"sigma {res1.sigma_hard:.6g}); scan/optimiser {t_row / res1.seconds:.1f}")  # fmt: skip
        points, values = row + rest, np.concatenate([scanned_row, scanned_rest])
        best2 = points[int(np.argmin(values))]
        bounds2 = {"mt_min": (0.0, 70.0), "iso_max": (0.05, 0.3)}
        res2 = optimize_cuts(model, POI, Cuts(70.0, 0.3, start.pt_min), bounds2, fixed=("pt_min",))
        print(f"two cuts (mT, isolation): scan {len(points)} refits in {t_grid:.1f} s, best mT >= {best2.mt_min:g} "
              f"GeV, iso < {best2.iso_max:g} (sigma {values.min():.6g}); optimiser from the grid's corner "
              f"{res2.seconds:.1f} s, {res2.evaluations} evaluations, mT >= {res2.cuts.mt_min:.2f} GeV, iso < "
              f"{res2.cuts.iso_max:.3f} (hard-cut sigma {res2.sigma_hard:.6g}); scan/optimiser "
              f"{t_grid / res2.seconds:.1f}")  # fmt: skip
        bounds3 = {**bounds2, "pt_min": (20.0, 32.0)}
        res3 = optimize_cuts(model, POI, Cuts(70.0, 0.3, 32.0), bounds3)
        n3 = len(np.arange(0.0, 75.0, 5.0)) * len(np.arange(0.05, 0.35, 0.05)) * len(np.arange(20.0, 34.0, 2.0))
        print(f"three cuts: optimiser {res3.seconds:.1f} s, {res3.evaluations} evaluations, mT >= "
              f"{res3.cuts.mt_min:.2f} GeV, iso < {res3.cuts.iso_max:.3f}, pT > {res3.cuts.pt_min:.2f} GeV (hard-cut "
              f"sigma {res3.sigma_hard:.6g}); a scan with the same steps (pT in 2 GeV) would be {n3} refits, about "
              f"{n3 * per_point / 60:.0f} min at the measured {per_point:.2f} s per point")  # fmt: skip
    print(f"gradient/evaluation {t_grad / t_eval:.2f}, scan/optimiser {t_grid / res2.seconds:.1f}, "
          f"max rel. deviation from finite differences {dev:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
