"""``wfit``: the command line of the fit stage.

Usage::

    wfit fit WORKSPACE [-o RESULT.hdf5] [--asimov] [--no-bb-lite] [--device cpu|gpu]
                       [--tol 1e-10] [--seed 0] [--poi-nonnegative] [--trust-pickle]
                       [--impacts] [--scan PARAM ...] [--plots DIR]

Exit codes: 0 converged; 1 the fit did not converge (status printed); 2 bad input or options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main"]

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wfit", description="wfit: the fit stage of the W measurement.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    f = sub.add_parser(
        "fit",
        help="binned maximum-likelihood fit of an HDF5 workspace",
        description="Fit a workspace (wfit or rabbit format) and write the result to HDF5.",
    )
    f.add_argument("workspace", help="the HDF5 workspace")
    f.add_argument(
        "-o", "--output", default=None, help="result file (default: fitresult.hdf5 next to the workspace)"
    )
    f.add_argument(
        "--asimov", action="store_true", help="fit the Asimov data set (mu=1, theta=0) instead of data"
    )
    f.add_argument(
        "--no-bb-lite",
        dest="bb_lite",
        action="store_false",
        help="switch off the Barlow-Beeston lite MC-statistics treatment",
    )
    f.add_argument(
        "--device",
        default=None,
        help="cpu, gpu or a TensorFlow device (default: the GPU if TensorFlow sees one)",
    )
    f.add_argument("--tol", type=float, default=1e-10, help="EDM tolerance (default 1e-10)")
    f.add_argument("--max-iter", type=int, default=200, help="iteration limit (default 200)")
    f.add_argument("--seed", type=int, default=0, help="seed of every random generator (default 0)")
    f.add_argument("--poi-nonnegative", action="store_true", help="keep the signal strengths >= 0")
    f.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read rabbit's pickled metadata (executes code from the file: trusted files only)",
    )
    f.add_argument(
        "--max-nuisances", type=int, default=10, help="nuisances shown in the summary (default 10)"
    )
    f.add_argument("--impacts", action="store_true", help="compute per-nuisance and grouped impacts on the POIs")
    f.add_argument("--scan", action="append", default=[], metavar="PARAM",
                   help="1-D profile likelihood scan of PARAM (repeatable)")
    f.add_argument("--plots", metavar="DIR", default=None,
                   help="write post-fit plots (pulls, correlations, pre/post-fit templates, impacts) to DIR")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def _fit(args: argparse.Namespace) -> int:
    from wfit.workspace import WorkspaceError, read_workspace

    if not os.path.exists(args.workspace):
        print(f"wfit: error: {args.workspace}: no such workspace file", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.tol <= 0 or args.max_iter <= 0:
        print("wfit: error: --tol and --max-iter must be positive", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.workspace)), "fitresult.hdf5")
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    t0 = time.perf_counter()
    log(f"wfit: reading {args.workspace}")
    try:
        ws = read_workspace(args.workspace, trust_pickle=args.trust_pickle, load_logk=False)
    except WorkspaceError as err:
        print(f"wfit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    log(
        f"wfit: {ws.nbins} bins ({ws.nbinsfull - ws.nbins} masked), {ws.nproc} processes "
        f"({len(ws.signals)} POIs), {ws.nsyst} nuisances, {'symmetric' if ws.symmetric else 'asymmetric'} "
        f"log-normal, {time.perf_counter() - t0:.1f} s"
    )


    from wfit.fitter._tf import tf
    from wfit.fitter.fitting import fit
    from wfit.fitter.likelihood import Likelihood

    tf.random.set_seed(args.seed)
    try:
        ll = Likelihood(ws, bb_lite=args.bb_lite, device=args.device)
    except RuntimeError as err:
        print(f"wfit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.asimov:
        ll.set_data(ll.asimov_data())
    log(
        f"wfit: fitting on {ll.device} ({'Asimov data' if args.asimov else 'observed data'}, "
        f"BB-lite {'on' if args.bb_lite else 'off'})"
    )

    def progress(it: int, nll: float, edm: float) -> None:
        log(f"  iteration {it:3d}   NLL = {nll:.8f}   EDM = {edm:.3g}")

    result = fit(
        ll, tol=args.tol, max_iter=args.max_iter, poi_nonnegative=args.poi_nonnegative, callback=progress
    )
    result.options.update({"asimov": args.asimov, "seed": args.seed})
    print(result.summary(max_nuisances=args.max_nuisances))
    if result.ok:
        _post_fit(args, ll, result, log)
    result.timings["total"] = time.perf_counter() - t0
    result.write(out)
    print(f"result written to {out}  ({result.timings['total']:.1f} s)")
    if not result.ok:
        print(f"wfit: the fit did not converge: {result.status.describe()}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def _post_fit(args: argparse.Namespace, ll, result, log) -> None:
    """Goodness of fit, and on request impacts, scans and plots; stored in ``result.extra``."""
    import numpy as np

    from wfit.fitter.toys import goodness_of_fit

    gof = goodness_of_fit(ll, result)
    result.extra["gof"] = np.array([gof.chi2, gof.ndf, gof.p_value])
    print(f"saturated goodness of fit: chi2 = {gof.chi2:.2f} for {gof.ndf} degrees of freedom, "
          f"p-value = {gof.p_value:.3f}")
    imp = None
    if args.impacts or args.plots:
        from wfit.fitter.impacts import impacts

        t = time.perf_counter()
        imp = impacts(ll, result)
        result.extra.update({"impacts": imp.values, "impacts_grouped": imp.grouped,
                             "impact_groups": np.array(imp.groups)})
        result.timings["impacts"] = time.perf_counter() - t
        for poi in imp.pois[:3]:
            top = ", ".join(f"{n} {v:+.3g}" for n, v in imp.ranked(poi, 5))
            print(f"largest impacts on {poi}: {top}")
    for param in args.scan:
        from wfit.fitter.scan import scan

        log(f"wfit: scanning {param}")
        sc = scan(ll, result, param)
        lo, hi = sc.interval()
        result.extra[f"scan_{param}"] = np.column_stack([sc.points[:, 0], sc.q])
        print(f"profile scan of {param}: 68% interval [{lo:.6g}, {hi:.6g}]")
    if args.plots:
        from wfit.fitter.plots import plot_all

        paths = plot_all(ll, result, args.plots, imp)
        print(f"plots written to {args.plots}: {', '.join(os.path.basename(p) for p in paths)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wfit`` command."""
    args = _parser().parse_args(argv)
    if args.command == "fit":
        return _fit(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
