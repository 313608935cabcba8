"""``wfit``: the command line of the fit stage.

Usage::

    wfit fit WORKSPACE [-o RESULT.hdf5] [--asimov | --pseudodata NAME] [--covariance-fit]
                       [--no-bb-lite] [--device cpu|gpu] [--tol 1e-10] [--max-iter 200] [--seed 0]
                       [--poi-nonnegative] [--prior NAME=MEAN,SIGMA ...] [--bb-full] [--blind ...]
                       [--trust-pickle] [--impacts] [--global-impacts] [--asym-impacts] [--scan PARAM ...]
                       [--toys N] [--plots DIR] [--derived EXPR ...] [-q] [-v]

The fit options map one to one onto :class:`wfit.fitter.FitOptions`, and the fit is
:func:`wfit.fitter.fit_workspace`, as from Python. TensorFlow's start-up lines are shown with ``-v`` only.

Checked before the fit (exit 2, one line): the workspace, the options, the result file (``-o`` must not be
the workspace under any spelling, and its folder must be creatable and writable), the ``--plots`` folder,
the ``--scan`` parameters and the ``--derived`` expressions (parsed, :mod:`wfit.fitter.quantities`, and
checked against the workspace's masked channels). The result is written as soon as the fit ends, before the
post-fit steps (goodness of fit, derived quantities, impacts, scans, toys, plots), and again with their products: a
post-fit step that fails leaves the fit result on disk (exit 3).

Exit codes: 0 converged; 1 the fit did not converge (status printed); 2 bad input or options; 3 a post-fit step
failed (the fit result is written); 130 interrupted (Ctrl-C; the line says whether the result was written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main"]

EXIT_OK, EXIT_NOT_CONVERGED, EXIT_BAD_INPUT, EXIT_POST_FIT_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _parser() -> argparse.ArgumentParser:
    from wfit.fitter.options import FitOptions

    default = FitOptions()
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
    # The fit options: one flag per FitOptions field, its dest the field's name.
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
        "--bb-full",
        action="store_true",
        help="full Barlow-Beeston: one gamma-constrained factor per bin and process (rabbit main's "
        "--binByBinStatMode full)",
    )
    f.add_argument(
        "--device",
        default=default.device,
        help="cpu, gpu or a TensorFlow device (default: the GPU if TensorFlow sees one)",
    )
    f.add_argument("--tol", type=float, default=default.tol, help=f"EDM tolerance (default {default.tol:g})")
    f.add_argument(
        "--max-iter", type=int, default=default.max_iter, help=f"iteration limit (default {default.max_iter})"
    )
    f.add_argument(
        "--seed", type=int, default=default.seed, help=f"seed of every random generator (default {default.seed})"
    )
    f.add_argument("--poi-nonnegative", action="store_true", help="keep the signal strengths >= 0")
    f.add_argument(
        "--pseudodata",
        metavar="NAME",
        default=default.pseudodata,
        help="fit the pseudo-data set NAME stored in the workspace instead of the data (rabbit's --pseudoData)",
    )
    f.add_argument(
        "--covariance-fit",
        action="store_true",
        help="chi-square fit with the workspace's data covariance, hdata_cov_inv (rabbit's --covarianceFit)",
    )
    f.add_argument(
        "--prior",
        dest="priors",
        action="append",
        type=_prior,
        default=[],
        metavar="NAME=MEAN,SIGMA",
        help="Gaussian prior on a POI or an unconstrained parameter (repeatable), e.g. W_L=1,0.3",
    )
    f.add_argument(
        "--regularize",
        action="append",
        default=[],
        metavar="CHANNEL",
        help="curvature (Tikhonov/SVD) penalty on the cross sections of a masked channel (repeatable; rabbit "
        "main's -r SVD)",
    )
    f.add_argument("--tau", type=float, default=default.tau,
                   help="regularisation strength exp(2 tau) (rabbit main's --regularizationStrength; default 0)")
    f.add_argument("--lcurve", action="store_true",
                   help="choose tau at the corner of the L-curve scanned over tau-3 .. tau+3 (25 fits)")
    f.add_argument(
        "--blind",
        action="store_true",
        help="show the POIs and nuisances of interest with deterministic hidden offsets (result, table, figures)",
    )
    f.add_argument(
        "--unblind",
        action="append",
        default=[],
        metavar="NAME",
        help="with --blind, show this parameter as fitted (a name or a whole-name regular expression; repeatable)",
    )
    f.add_argument(
        "--blinding-group",
        dest="blinding_groups",
        action="append",
        default=[],
        metavar="REGEX",
        help="with --blind, the parameters matching REGEX share one offset, keeping their ratios (repeatable)",
    )
    # Reading, post-fit products and output.
    f.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read rabbit's pickled metadata (executes code from the file: trusted files only)",
    )
    f.add_argument(
        "--max-nuisances", type=int, default=10, help="nuisances shown in the summary (default 10)"
    )
    f.add_argument("--impacts", action="store_true", help="compute per-nuisance and grouped impacts on the POIs")
    f.add_argument("--global-impacts", action="store_true",
                   help="global impacts: the POI shifts from one-sigma shifts of the global observables "
                   "(rabbit main's --globalImpacts)")
    f.add_argument("--asym-impacts", action="store_true",
                   help="asymmetric impacts from the 2 dNLL = 1 profile intervals, grouped by freezing each group "
                   "(rabbit main's --asymImpacts; two profile searches per nuisance)")
    f.add_argument("--scan", action="append", default=[], metavar="PARAM",
                   help="1-D profile likelihood scan of PARAM (repeatable)")
    f.add_argument("--derived", action="append", default=[], metavar="EXPR",
                   help="derived quantity of masked channels, stored with the joint covariance of all of them "
                        "(repeatable), e.g. 'asymmetry(xsec, charge)', 'normalize(project(xsec, absy))', "
                        "'ratio(select(xsec, charge=0), select(xsec, charge=1))'; grammar in wfit.fitter.quantities")
    f.add_argument("--toys", type=_positive, default=0, metavar="N",
                   help="fit N frequentist toys generated at the fitted values: toy p-value of the goodness of fit "
                   "and the POI pulls")
    f.add_argument("--toys-batch", type=_positive, default=64, metavar="B",
                   help="toys fitted together as one vectorised computation (default 64; 1: one at a time)")
    f.add_argument("--plots", metavar="DIR", default=None,
                   help="write post-fit plots (pulls, correlations, pre/post-fit templates, impacts) to DIR")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    f.add_argument(
        "-v", "--verbose", action="store_true", help="also show TensorFlow's start-up and C++ log lines"
    )
    return p


def _prior(text: str) -> tuple[str, float, float]:
    """``NAME=MEAN,SIGMA`` as (name, mean, sigma)."""
    name, sep, numbers = text.rpartition("=")
    parts = numbers.split(",")
    try:
        if not (sep and name and len(parts) == 2):
            raise ValueError
        return name, float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=MEAN,SIGMA, e.g. W_L=1,0.3") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give an integer >= 1")
    return value


def _fit(args: argparse.Namespace) -> int:
    from wfit.fitter.options import FitOptions

    if not os.path.exists(args.workspace):
        print(f"wfit: error: {args.workspace}: no such workspace file", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        options = FitOptions(**{name: getattr(args, name) for name in FitOptions.names()})
    except ValueError as err:
        print(f"wfit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.workspace)), "fitresult.hdf5")
    problem = _output_problem(args.workspace, out, args.plots)
    if problem is not None:
        print(f"wfit: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    written: list[str] = []  # the result file, once written
    try:
        return _run_fit(args, options, out, written)
    except KeyboardInterrupt:
        if written:
            print(f"wfit: interrupted: the fit result was written to {out}; the post-fit steps did not finish",
                  file=sys.stderr)
        else:
            print(f"wfit: interrupted: nothing was written ({out} was not created or changed)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _output_problem(workspace: str, out: str, plots: str | None) -> str | None:
    """Why the result file or the plot folder cannot be written, checked before the fit; None if they can."""
    ws_real, out_real = os.path.realpath(workspace), os.path.realpath(out)
    same = ws_real == out_real
    if not same and os.path.exists(out):
        try:
            same = os.path.samefile(workspace, out)  # hard links
        except OSError:
            same = False
    if same:
        return (f"-o {out} is the input workspace {workspace} (the same file, {ws_real}): writing the result "
                "would overwrite it; choose another result file")
    if os.path.isdir(out):
        return f"-o {out} is a directory; give the result file's path, e.g. {os.path.join(out, 'fitresult.hdf5')}"
    parent = os.path.dirname(os.path.abspath(out))
    for what, folder in (("-o", parent), ("--plots", None if plots is None else os.path.abspath(plots))):
        if folder is None:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            return f"{what}: cannot create the folder {folder} ({err.strerror}); choose a writable location"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{what}: the folder {folder} is not writable; choose a writable location"
    return None


def _unknown_scans(params: list[str], names: list[str]) -> str | None:
    """The error for ``--scan`` parameters that the model does not have, with the close names; None if all exist."""
    from wfit.fitter.fitting import close_names

    unknown = [p for p in dict.fromkeys(params) if p not in names]
    if not unknown:
        return None
    hints = [f"{p!r}{close_names(p, names)}" for p in unknown]
    return (f"--scan: no parameter {', '.join(hints)} in the workspace; the parameters are the POIs "
            f"{names[:5]}... and the nuisances of hsysts")


def _derived_problem(expressions: list[str], ws) -> str | None:
    """The error for a ``--derived`` expression that does not parse or does not fit the workspace; None if all do."""
    from wfit.fitter.quantities import parse_quantity

    for text in expressions:
        try:
            parse_quantity(text).structure(ws)
        except ValueError as err:
            return f"--derived {text!r}: {err}"
    return None


def _run_fit(args: argparse.Namespace, options, out: str, written: list[str]) -> int:
    from wfit.workspace import WorkspaceError, read_workspace

    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    from wfit.fitter._tf import import_tensorflow

    import_tensorflow(verbose=args.verbose)  # before anything else imports it
    from wfit.fitter.fitting import fit_workspace, prior_indices

    def progress(it: int, nll: float, edm: float) -> None:
        log(f"  iteration {it:3d}   NLL = {nll:.8f}   EDM = {edm:.3g}")

    failed: list[str] = []

    def post_fit(ll, result) -> None:
        # The fit is on disk before any post-fit step runs: a failing or interrupted step cannot lose it.
        # A blinded fit is shown (written, printed, drawn) through its blinding only.
        show = result.blinding.apply if result.blinding is not None else (lambda r: r)
        result.timings["total"] = time.perf_counter() - t0
        show(result).write(out)
        written.append(out)
        print(show(result).summary(max_nuisances=args.max_nuisances))
        if result.ok:
            try:
                _post_fit(args, ll, result, log, show)
            except Exception as err:  # reported with the path of the fit result, which is kept
                failed.append(f"{type(err).__name__}: {err}")

    try:
        log(f"wfit: reading {args.workspace}")
        t_read = time.perf_counter()
        ws = read_workspace(args.workspace, trust_pickle=args.trust_pickle, load_logk=False)
        load = time.perf_counter() - t_read
        problem = _unknown_scans(args.scan, list(ws.signals) + list(ws.systs))
        if problem is None:
            try:
                prior_indices(ws, options.priors)
            except ValueError as err:
                problem = f"--prior: {err}"
        if problem is None:
            problem = _derived_problem(args.derived, ws)
        if problem is not None:
            print(f"wfit: error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
        result = fit_workspace(
            ws,
            options,
            callback=progress,
            log=lambda line: log(f"wfit: {line}"),
            post_fit=post_fit,
        )
    except (WorkspaceError, RuntimeError) as err:  # RuntimeError: device="gpu" and TensorFlow sees none
        print(f"wfit: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result.timings["load"] = load
    result.timings["total"] = time.perf_counter() - t0
    result.write(out)  # again, with what the post-fit steps added
    print(f"result written to {out}  ({result.timings['total']:.1f} s)")
    if failed:
        print(f"wfit: error: a post-fit step failed ({failed[0]}); the fit result is in {out}", file=sys.stderr)
        return EXIT_POST_FIT_FAILED
    if not result.ok:
        print(f"wfit: the fit did not converge: {result.status.describe()}", file=sys.stderr)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def _post_fit(args: argparse.Namespace, ll, result, log, show) -> None:
    """Goodness of fit, and on request impacts, scans, toys and plots; stored in ``result.extra``.

    They are computed from the fitted values; ``show`` gives what may be printed and drawn (the blinded result).
    """
    import numpy as np

    from wfit.fitter.toys import goodness_of_fit

    gof = goodness_of_fit(ll, result)
    result.extra["gof"] = np.array([gof.chi2, gof.ndf, gof.p_value])
    print(f"saturated goodness of fit: chi2 = {gof.chi2:.2f} for {gof.ndf} degrees of freedom, "
          f"p-value = {gof.p_value:.3f}")
    from wfit.fitter.postfit import post_fit_products

    # Derived quantities are evaluated at the shown parameters of a blinded fit, so blinded too.
    derived, imp = post_fit_products(ll, result, derived=args.derived, impacts=bool(args.impacts or args.plots))
    if derived is not None:
        print(derived.summary())
    if imp is not None:
        if result.blinding is not None:
            imp = result.blinding.apply_impacts(imp)
        for poi in imp.pois[:3]:
            top = ", ".join(f"{n} {v:+.3g}" for n, v in imp.ranked(poi, 5))
            print(f"largest impacts on {poi}: {top}")
    if args.global_impacts:
        from wfit.fitter.breakdown import global_impacts

        t = time.perf_counter()
        gim = global_impacts(ll, result)
        result.extra.update({"global_impacts": gim.values, "global_impacts_grouped": gim.grouped,
                             "global_impact_groups": np.array(gim.groups)})
        result.timings["global_impacts"] = time.perf_counter() - t
        shown = show(result).extra["global_impacts_grouped"]
        for i, poi in enumerate(gim.pois[:3]):
            parts = ", ".join(f"{g} {v:.3g}" for g, v in zip(gim.groups, shown[i], strict=True))
            print(f"global impacts on {poi}: {parts}")
    if args.asym_impacts:
        from wfit.fitter.breakdown import asymmetric_impacts

        t = time.perf_counter()
        log(f"wfit: asymmetric impacts ({2 * (ll.nsyst + ll.npoi * (len(ll.ws.syst_groups) + 2))} profile searches)")
        aim = asymmetric_impacts(ll, result)
        result.extra.update({"asym_impacts": aim.values, "asym_impacts_grouped": aim.grouped,
                             "asym_impact_groups": np.array(aim.groups)})
        result.timings["asym_impacts"] = time.perf_counter() - t
        shown = show(result).extra["asym_impacts_grouped"]
        for i, poi in enumerate(aim.pois[:3]):
            parts = ", ".join(f"{g} {lo:+.3g}/{hi:+.3g}" for g, (lo, hi) in zip(aim.groups, shown[i], strict=True))
            print(f"asymmetric impacts on {poi}: {parts}")
    for param in args.scan:
        from wfit.fitter.scanning import scan

        log(f"wfit: scanning {param}")
        sc = scan(ll, result, param)
        result.extra[f"scan_{param}"] = np.column_stack([sc.points[:, 0], sc.q])
        shown = show(result).extra[f"scan_{param}"]
        lo, hi = sc.interval(points=shown[:, 0])
        print(f"profile scan of {param}: 68% interval [{lo:.6g}, {hi:.6g}]")
    if args.toys:
        from wfit.fitter.toys import run_toys

        t = time.perf_counter()
        toys = run_toys(ll, args.toys, seed=result.options.get("seed", 0), x_gen=result.values,
                        batch_size=None if args.toys_batch == 1 or ll.bb_full else args.toys_batch,
                        progress=not args.quiet)
        result.timings["toys"] = time.perf_counter() - t
        ok = toys.ok
        pulls = (toys.values[:, : ll.npoi] - result.values[: ll.npoi]) / toys.errors[:, : ll.npoi]
        result.extra.update({"toys_gof": toys.gof, "toys_poi_pulls": pulls, "toys_status": toys.status})
        p_toys = float(np.mean(toys.gof[ok] >= gof.chi2)) if ok.any() else float("nan")
        result.extra["gof_toys_p_value"] = np.array(p_toys)
        print(f"toys: {int(ok.sum())} of {args.toys} converged in {result.timings['toys']:.1f} s; goodness of fit "
              f"p-value from the toys {p_toys:.3f}; POI pulls mean {np.nanmean(pulls[ok]):+.3f}, "
              f"width {np.nanstd(pulls[ok]):.3f}")
    if args.plots:
        from wfit.fitter.plots import plot_all

        paths = plot_all(ll, show(result), args.plots, imp)
        print(f"plots written to {args.plots}: {', '.join(os.path.basename(p) for p in paths)}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wfit`` command."""
    args = _parser().parse_args(argv)
    if args.command == "fit":
        return _fit(args)
    raise AssertionError(args.command)  # argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
