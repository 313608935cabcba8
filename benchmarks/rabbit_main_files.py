"""wfit against rabbit's main branch on the test tensors that rabbit main's own CI builds and fits.

rabbit main (not the PyPI 0.2.5 release) writes Blosc2-compressed arrays and, with
``--systematicType normal``, additive systematics. This script builds its test tensors with its own
``tests/make_tensor.py``, with the variants of its CI (``.github/workflows/main.yml``): ``default``,
``bsm`` (``--bsm``), ``symmetric`` (``--symmetrizeAll --systematicType normal``), ``sparse``
(``--sparse``) and ``boost`` (``--histType boost``); and fits each with wfit and with rabbit main's
``rabbit_fit.py -t 0 --unblind --allowNegativeParam`` (the stored data, POIs as mu). Three more fits
use what the tensors also hold: ``covariance`` (the default tensor with ``--covarianceFit``, a CI
alternative fit), ``linearized`` (``--symmetrizeAll --systematicType normal
--addSystToDataCovariance --skipMaskedChannels``, systematics folded into the data covariance, fitted
with ``--covarianceFit``) and ``pseudodata`` (the default tensor with ``--pseudoData original``, as in
the CI's pseudodata fit).

Both fits run as commands (``wfit fit --tol 1e-14`` and ``rabbit_fit.py``), each in a process of its
own. For each variant the script prints the largest difference of the POIs (absolute; target 1e-6),
of all parameter values (absolute) and of the uncertainties (relative; target 1e-5), and the wall
time of both commands (start-up included) with their ratio.

rabbit main must be importable as ``rabbit`` (the project's own environment has rabbit-fit 0.2.5);
never as a dependency of the project, e.g. beside it::

    d=$(mktemp -d) && cp -r RABBIT_MAIN_CHECKOUT "$d/rabbit-main" && \\
        pip install --no-deps --target /tmp/rabbit-main-site "$d/rabbit-main"
    PYTHONPATH=/tmp/rabbit-main-site python benchmarks/rabbit_main_files.py --rabbit-source RABBIT_MAIN_CHECKOUT

Usage::

    python benchmarks/rabbit_main_files.py --rabbit-source DIR [--only default,sparse] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

# name -> (make_tensor.py arguments, output postfix, extra rabbit_fit.py arguments, extra wfit fit arguments)
VARIANTS = {
    "default": ([], None, [], []),
    "bsm": (["--bsm"], "bsm", [], []),
    "symmetric": (["--symmetrizeAll", "--systematicType", "normal"], "symmetric", [], []),
    "sparse": (["--sparse"], "sparse", [], []),
    "boost": (["--histType", "boost"], "boost", [], []),
    "covariance": ([], None, ["--covarianceFit"], ["--covariance-fit"]),
    "linearized": (
        ["--symmetrizeAll", "--systematicType", "normal", "--addSystToDataCovariance", "--skipMaskedChannels"],
        "linearized",
        ["--covarianceFit"],
        ["--covariance-fit"],
    ),
    "pseudodata": ([], None, ["--pseudoData", "original"], ["--pseudodata", "original"]),
}
POI_ATOL, ERR_RTOL = 1e-6, 1e-5
INSTALL = """rabbit main is not importable as 'rabbit' (this environment has {found}). Install it beside the
project, never as its dependency, from a checkout of rabbit main (WMass/rabbit), and run this script with it
on the path:

    d=$(mktemp -d) && cp -r {source} "$d/rabbit-main" && \\
        pip install --no-deps --target /tmp/rabbit-main-site "$d/rabbit-main"
    PYTHONPATH=/tmp/rabbit-main-site python benchmarks/rabbit_main_files.py --rabbit-source {source}
"""


def _rabbit_main_found() -> str | None:
    """``None`` when ``rabbit`` is rabbit main, else what was found instead."""
    spec = importlib.util.find_spec("rabbit")
    if spec is None:
        return "no rabbit"
    if importlib.util.find_spec("rabbit.bbstat") is None:  # the package rabbit main split out of fitter.py
        return f"rabbit from {spec.submodule_search_locations[0]}, not the main branch"
    return None


def _run(cmd: list[str], cwd: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _rabbit_result(path: str, result: str | None) -> dict[str, tuple[float, float]]:
    from rabbit.io_tools import get_fitresult

    h = get_fitresult(path, result)["parms"].get()
    return {str(n): (float(v), float(np.sqrt(e))) for n, v, e in zip(h.axes[0], h.values(), h.variances(), strict=True)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants (default: all)")
    p.add_argument("--rabbit-source", required=True, help="a checkout of rabbit main (its tests/ and bin/)")
    p.add_argument("--keep", default=None, help="write the tensors and results here (default: a temporary folder)")
    args = p.parse_args(argv)
    source = Path(args.rabbit_source)
    found = _rabbit_main_found()
    if found is not None:
        print(INSTALL.format(found=found, source=source), file=sys.stderr)
        return 2
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    for script in ("tests/make_tensor.py", "bin/rabbit_fit.py"):
        if not (source / script).exists():
            p.error(f"{source / script} does not exist: point --rabbit-source at rabbit main's source")

    from wfit.fitter import read_result

    work = args.keep or tempfile.mkdtemp(prefix="rabbit_main_")
    os.makedirs(work, exist_ok=True)
    # rabbit records the git state of the folder it runs in: point git at nothing
    env = dict(os.environ, GIT_DIR=os.path.join(work, "no-git"), TF_CPP_MIN_LOG_LEVEL="2")
    made: dict[tuple[str, ...], str] = {}
    rows = []
    for name in names:
        make_args, postfix, fit_args, wfit_args = VARIANTS[name]
        key = tuple(make_args)
        if key not in made:
            cmd = [sys.executable, str(source / "tests" / "make_tensor.py"), "-o", work, *make_args]
            _run([*cmd, *(["--postfix", postfix] if postfix else [])], work, env)
            made[key] = os.path.join(work, "test_tensor" + (f"_{postfix}" if postfix else "") + ".hdf5")
        tensor = made[key]
        out = os.path.join(work, f"fit_{name}")
        t_rabbit = _run(
            [sys.executable, str(source / "bin" / "rabbit_fit.py"), tensor, "-o", out, "-t", "0", "--unblind",
             "--allowNegativeParam", *fit_args],
            work,
            env,
        )
        pseudo = wfit_args[wfit_args.index("--pseudodata") + 1] if "--pseudodata" in wfit_args else None
        theirs = _rabbit_result(os.path.join(out, "fitresults.hdf5"), pseudo)
        ours_path = os.path.join(out, "wfit.hdf5")
        # exit code 1: not converged, reported below
        t_wfit = _run([sys.executable, "-m", "wfit.fitter.cli", "fit", tensor, "-q", "--tol", "1e-14", "-o", ours_path,
                       *wfit_args], work, env, ok=(0, 1))
        ours = read_result(ours_path)
        if not ours.ok:
            rows.append((name, None, f"wfit did not converge: {ours.status.describe()}"))
            continue
        if set(theirs) != set(ours.names):
            rows.append((name, None, f"parameters differ: {sorted(set(theirs) ^ set(ours.names))}"))
            continue
        dv = np.array([abs(ours.values[i] - theirs[n][0]) for i, n in enumerate(ours.names)])
        de = np.array([abs(ours.errors[i] / theirs[n][1] - 1.0) for i, n in enumerate(ours.names)])
        rows.append((name, (ours.npoi, len(ours.names), dv[: ours.npoi].max(), dv.max(), de.max(),
                            ours.names[int(np.argmax(de))], t_wfit, t_rabbit), ""))

    print(f"{'variant':<11} {'POIs':>4} {'params':>6} {'max|dPOI|':>10} {'max|dx|':>10} {'max rel d(err)':>14} "
          f"{'(parameter)':<28} {'wfit s':>7} {'rabbit s':>8} {'ratio':>6}  within 1e-6 / 1e-5")
    ok = True
    for name, r, note in rows:
        if r is None:
            print(f"{name:<11} {note}")
            ok = False
            continue
        npoi, npar, dpoi, dx, derr, worst, tw, tr = r
        good = dpoi <= POI_ATOL and derr <= ERR_RTOL
        ok &= good
        print(f"{name:<11} {npoi:>4} {npar:>6} {dpoi:>10.2e} {dx:>10.2e} {derr:>14.2e} {worst:<28} "
              f"{tw:>7.1f} {tr:>8.1f} {tw / tr:>6.2f}  {'yes' if good else 'NO'}")
    print(f"tensors and rabbit results in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
