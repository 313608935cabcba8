"""wfit's fitter against rabbit 0.2.5, and rabbit main when installed, on workspaces written by rabbit's TensorWriter.

Three models shaped like a W-helicity fit (see :func:`build`): ``small`` (100 bins, 5 processes,
10 nuisances), ``seedA`` (1444 bins, 96 POIs, 70 nuisances, 30% asymmetric, BB-lite) and ``seedB``
(1824 bins, 101 processes of which 96 POIs, 257 nuisances). In one process, interleaved, medians of
repeats (each repeat a loop of about 5 ms of calls, as timeit does): NLL, NLL+gradient, full
Hessian, and minimisation to dNLL < 1e-9 plus covariance, for wfit and for rabbit; the ratio
wfit/rabbit of each. Peak memory of a whole fit of each model is measured in separate child
processes, against a TensorFlow-runtime baseline.

rabbit main (the development branch, a package also called ``rabbit``) cannot share the process: when it is
installed in an environment of its own (found by ``benchmarks/rabbit_main.py``: ``WFIT_RABBIT_MAIN_PYTHON``,
else ``../rabbit-main-venv`` beside the repository), each model also gets a ``process`` row: the whole fit
command (interpreter start, imports, reading the workspace, tracing, fit, covariance, writing the result) in
a child process, ``wfit fit --tol 1e-10`` against rabbit main's ``rabbit_fit -t 0 --unblind
--allowNegativeParam`` (the stored data, POIs as mu), the ratio wfit/rabbit-main, rabbit main's peak RSS,
and the largest relative deviations of its POI values and uncertainties (and nuisances) from wfit's. Without
it the script prints how to install it and runs the 0.2.5 columns. To install it, from the repository root::

    d=$(mktemp -d) && cp -r ../shared/peers/rabbit-main "$d" && python3 -m venv ../rabbit-main-venv && \\
        ../rabbit-main-venv/bin/pip install "$d/rabbit-main" tf_keras

Usage::

    python benchmarks/fit_vs_rabbit.py            # all three models
    python benchmarks/fit_vs_rabbit.py --quick    # small and seedA, fewer repeats
    python benchmarks/fit_vs_rabbit.py --no-rabbit-main   # the 0.2.5 columns only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

MODELS = {
    # eta and pT bins (x 2 charges), |y_W| bins x helicities per charge, backgrounds, global shape
    # nuisances, efficiency statistics per eta bin (or per eta bin and charge), momentum-scale regions,
    # lnN normalisations, fraction of asymmetric nuisances
    "small": dict(
        neta=5, npt=10, ny=1, hel=("",), nbkg=3, nglobal=4, effstat=None, nscale=2, nlnn=4, fasym=0.3
    ),
    "seedA": dict(
        neta=38,
        npt=19,
        ny=16,
        hel=("L", "R", "0"),
        nbkg=5,
        nglobal=20,
        effstat="eta",
        nscale=6,
        nlnn=6,
        fasym=0.3,
    ),
    "seedB": dict(
        neta=48,
        npt=19,
        ny=16,
        hel=("L", "R", "0"),
        nbkg=5,
        nglobal=100,
        effstat="eta_charge",
        nscale=48,
        nlnn=13,
        fasym=0.0,
    ),
}


def build(name: str, path: str, seed: int = 1) -> None:
    """Write a W-like model with rabbit's TensorWriter.

    Bins are (charge, eta, pT); signals are charge x |y_W| bin x helicity (L, R, 0), so 96 POIs for
    16 |y_W| bins; nuisances mix global smooth shapes (PDF-like), efficiency statistics per
    (eta bin, charge) for seedA (per eta bin and charge for seedB: 2 x 38 or 2 x 48), muon momentum
    scale per eta region, and lnN normalisations. Seeded.
    """
    import hist
    from rabbit.tensorwriter import TensorWriter

    c = MODELS[name]
    rng = np.random.default_rng(seed)
    neta, npt = c["neta"], c["npt"]
    axes = [
        hist.axis.Integer(0, 2, name="charge"),
        hist.axis.Regular(neta, -2.4, 2.4, name="eta"),
        hist.axis.Regular(npt, 26, 56, name="pt"),
    ]
    eta = np.linspace(-2.4, 2.4, neta)[None, :, None]
    pt = np.linspace(26, 56, npt)[None, None, :]
    charge = np.arange(2)[:, None, None]
    w = TensorWriter()
    w.add_channel(axes, "ch0")
    noms, signal = {}, {}
    ybins = np.linspace(0, 2.4, c["ny"] + 1)
    for q in range(2):
        for iy in range(c["ny"]):
            y = 0.5 * (ybins[iy] + ybins[iy + 1])
            for hel in c["hel"]:
                # helicity states differ in the lepton pT spectrum (Jacobian peak position and width)
                mean, width = {"L": (34.0, 4.0), "R": (44.0, 4.0), "0": (39.0, 6.0), "": (39.0, 6.0)}[hel]
                shape_eta = np.exp(-0.5 * ((eta - y) / 0.15) ** 2) + np.exp(-0.5 * ((eta + y) / 0.15) ** 2)
                shape_pt = np.exp(-0.5 * ((pt - mean) / width) ** 2)
                pname = f"W{'mp'[q]}_y{iy:02d}_{hel}".rstrip("_")
                noms[pname] = (charge == q) * 2000.0 / c["ny"] * shape_eta * shape_pt
                signal[pname] = True
    for b in range(c["nbkg"]):
        noms[f"bkg{b}"] = (
            300.0
            * rng.uniform(0.3, 1.5)
            * np.exp(-(pt - 26) / rng.uniform(8, 20))
            * (1 + 0.1 * eta**2)
            * np.ones_like(charge)
        )
    procs = list(noms)
    shape = noms[procs[0]].shape
    for p in procs:  # a template is empty where its MC sample has no events (as in real workspaces)
        noms[p] = np.where(noms[p] < 1e-3 * noms[p].max(), 0.0, noms[p])
    for p in procs:
        w.add_process(
            noms[p], p, "ch0", signal=signal.get(p, False), variances=noms[p] * rng.uniform(0.05, 0.5)
        )
    w.add_data(rng.poisson(sum(noms.values())).astype(float), "ch0")  # backgrounds fill every bin

    def add(name, logk_up, logk_down=None, procs_=procs):
        for p in procs_:
            up = noms[p] * np.exp(logk_up)
            if logk_down is None:
                w.add_systematic(up, name, p, "ch0")
            else:
                w.add_systematic([up, noms[p] * np.exp(-logk_down)], name, p, "ch0", symmetrize=None)

    nsyst_shape = c["nglobal"] + c["nscale"]
    neff = {None: 0, "eta": neta, "eta_charge": 2 * neta}[c["effstat"]]
    nasym = int(round(c["fasym"] * (nsyst_shape + neff + c["nlnn"])))
    k = 0
    for i in range(c["nglobal"]):  # PDF-like: smooth in eta and pT, on every process
        a, b = rng.normal(0, 0.01, 2)
        up = a * eta + b * (pt - 40) / 15 + rng.normal(0, 0.001, shape)
        add(f"pdf{i:03d}", up, 0.8 * up if k < nasym else None)
        k += 1
    for i in range(c["nscale"]):  # momentum scale: a pT shift in one eta region
        region = (np.arange(neta) * c["nscale"] // neta == i)[None, :, None]
        up = np.where(region, 0.004 * (pt - 40) / 5, 0.0) * np.ones(shape)
        add(f"muonScale{i:02d}", up, 1.2 * up if k < nasym else None)
        k += 1
    if c["effstat"]:  # efficiency statistics, one per eta bin (and charge)
        for q in range(2) if c["effstat"] == "eta_charge" else (None,):
            for ie in range(neta):
                up = np.zeros(shape)
                up[slice(None) if q is None else q, ie, :] = 0.01 + 0.002 * np.linspace(-1, 1, npt)
                add(f"effStat_eta{ie:02d}" + ("" if q is None else f"_q{q}"), up)
    for i in range(c["nlnn"]):
        if i == 0:
            for p in procs:
                w.add_norm_systematic("lumi", p, "ch0", 1.017)
        else:
            w.add_norm_systematic(f"norm{i:02d}", procs[-1 - (i % c["nbkg"])], "ch0", 1.0 + 0.05 * i)
    os.environ["GIT_DIR"] = os.path.join(os.path.dirname(path), "no-git")
    with np.errstate(divide="ignore", invalid="ignore"):
        w.write(outfolder=os.path.dirname(path), outfilename=os.path.basename(path))


def loop_time(fn, number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` consecutive calls (timeit's method)."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def rabbit_fitter(path: str):
    import rabbit.fitter
    import rabbit.inputdata
    from bin.rabbit_fit import make_parser

    argv, sys.argv = sys.argv, ["rabbit_fit", path, "-t", "0", "--unblind", "--allowNegativePOI"]
    try:
        args = make_parser()
    finally:
        sys.argv = argv
    indata = rabbit.inputdata.FitInputData(path)
    f = rabbit.fitter.Fitter(indata, args, do_blinding=False)
    f.set_nobs(indata.data_obs)
    return f


def rabbit_fit_to_dnll(f, dnll: float = 1e-9) -> int:
    """rabbit's own minimiser (scipy trust-krylov with exact Hessian-vector products), stopped at dNLL."""
    import scipy.optimize
    import tensorflow as tf

    def loss(x):
        f.x.assign(x)
        v, g = f.loss_val_grad()
        return v.numpy(), g.numpy()

    def hessp(x, p):
        f.x.assign(x)
        return f.loss_val_grad_hessp(tf.convert_to_tensor(p))[2].numpy()

    last = [np.inf]
    nit = [0]

    def callback(intermediate_result):
        nit[0] += 1
        if abs(last[0] - intermediate_result.fun) < dnll:
            raise StopIteration
        last[0] = intermediate_result.fun

    f.defaultassign()
    f.set_nobs(f.indata.data_obs)
    res = scipy.optimize.minimize(
        loss, f.x.numpy(), method="trust-krylov", jac=True, hessp=hessp, tol=0.0, callback=callback
    )
    f.x.assign(res.x)
    f.loss_val_grad_hess()  # covariance from the Hessian, as rabbit_fit does
    return nit[0]


def timings(path: str, reps: dict[str, int]) -> dict[str, dict[str, float]]:
    from wfit.fitter import Likelihood, fit
    from wfit.workspace import read_workspace

    ws = read_workspace(path)
    ll = Likelihood(ws)
    x = ll.x0.copy()
    rf = rabbit_fitter(path)
    # warm up (tracing) outside the timed region, for both
    ll.nll(x), ll.nll_grad(x), ll.nll_grad_hess(x)
    rf.loss_val(), rf.loss_val_grad(), rf.loss_val_grad_hess()
    out: dict[str, dict[str, float]] = {}
    # Both take a numpy parameter vector and return numpy values, as in their minimisers
    # (rabbit's scipy callbacks assign x to its variable first).
    cases = [
        ("NLL", lambda: ll.nll(x), lambda: (rf.x.assign(x), rf.loss_val().numpy())),
        ("NLL+grad", lambda: ll.nll_grad(x), lambda: (rf.x.assign(x), [t.numpy() for t in rf.loss_val_grad()])),
        ("Hessian", lambda: ll.nll_grad_hess(x),
         lambda: (rf.x.assign(x), [t.numpy() for t in rf.loss_val_grad_hess()])),
        ("fit+cov", lambda: fit(ll, tol=1e-10), lambda: rabbit_fit_to_dnll(rf)),
    ]
    for name, ours, theirs in cases:
        n = reps["fit"] if name == "fit+cov" else reps["eval"]
        # calls per repeat: enough for about 5 ms of work, as timeit does (one for the fits)
        k_w = 1 if name == "fit+cov" else max(1, int(0.005 / max(loop_time(ours, 1), 1e-6)))
        k_r = 1 if name == "fit+cov" else max(1, int(0.005 / max(loop_time(theirs, 1), 1e-6)))
        t_w, t_r = [], []
        for _ in range(n):  # interleaved
            t_w.append(loop_time(ours, k_w))
            t_r.append(loop_time(theirs, k_r))
        out[name] = {"wfit": statistics.median(t_w), "rabbit": statistics.median(t_r)}
    res = fit(ll, tol=1e-10)
    rf.x.assign(res.values)
    out["_check"] = {
        "wfit_nll": res.nll,
        "rabbit_nll_at_wfit_min": float(rf.loss_val().numpy()),
        "niter": res.niter,
        "edm": res.edm,
    }
    return out


def memory_child(which: str, path: str) -> None:
    """Run in a child process: a whole fit (or just the TensorFlow runtime) and print peak RSS in MB."""
    if which == "tf":
        import tensorflow as tf

        @tf.function
        def f(a):
            return tf.reduce_sum(tf.matmul(a, a))

        f(tf.ones([64, 64], tf.float64)).numpy()
    elif which == "wfit":
        from wfit.fitter import fit_workspace

        fit_workspace(path, tol=1e-10)
    elif which == "rabbit":
        rabbit_fit_to_dnll(rabbit_fitter(path))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent.
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"maxrss_mb": hwm / 1024}))


def peak_rss(which: str, path: str) -> float:
    env = dict(os.environ, GIT_DIR=os.path.join(os.path.dirname(path), "no-git"))
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", which, path],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["maxrss_mb"]


def wfit_process(path: str, outdir: str) -> tuple[float, object]:
    """Wall time of the whole ``wfit fit`` command in a child process (as rabbit main's runs), and its result."""
    from wfit.fitter import read_result

    out = os.path.join(outdir, "wfit_result.hdf5")
    env = dict(os.environ, GIT_DIR=os.path.join(outdir, "no-git"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "wfit.fitter.cli", "fit", path, "-q", "--tol", "1e-10", "-o", out],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: not converged, shown by the comparison
        raise RuntimeError(f"wfit fit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, read_result(out)


def compare_main(ours, theirs: dict) -> dict:
    """Largest deviations of rabbit main's fit from wfit's: of the POIs' values and uncertainties, relative;
    of the values also in units of wfit's uncertainty (a POI near 0 inflates its relative deviation); of the
    nuisances' uncertainties, relative."""
    if set(ours.names) != set(theirs["names"]):
        return {"error": f"parameters differ: {sorted(set(ours.names) ^ set(theirs['names']))[:5]}"}
    at = {n: i for i, n in enumerate(theirs["names"])}
    idx = [at[n] for n in ours.names]
    v, e = np.asarray(theirs["values"])[idx], np.asarray(theirs["errors"])[idx]
    poi, nuis = slice(0, ours.npoi), slice(ours.npoi, None)
    de = np.abs(e / ours.errors - 1.0)
    out = {
        "poi_value": float(np.max(np.abs(v[poi] / ours.values[poi] - 1.0))),
        "poi_error": float(np.max(de[poi])),
        "poi_pull": float(np.max(np.abs(v[poi] - ours.values[poi]) / ours.errors[poi])),  # POIs near 0
        "nuis_pull": float(np.max(np.abs(v[nuis] - ours.values[nuis]) / ours.errors[nuis], initial=0.0)),
        "nuis_error": float(np.max(de[nuis], initial=0.0)),
        "worst_error": ours.names[int(np.argmax(de))],
        "dnll": theirs["nll"] - ours.nll,
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small and seedA only, fewer repeats")
    p.add_argument("--models", nargs="*", default=None, help="models to run (default: all)")
    p.add_argument("--workdir", default=None, help="where to write the workspaces (default: a temp dir)")
    p.add_argument("--no-rabbit-main", action="store_true", help="skip rabbit main even when it is installed")
    p.add_argument(
        "--main-timeout", type=float, default=1800, help="seconds allowed to one rabbit-main fit (default 1800)"
    )
    p.add_argument("--memory-child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    models = args.models or (["small", "seedA"] if args.quick else list(MODELS))
    workdir = args.workdir or tempfile.mkdtemp(prefix="wfit-bench-")
    os.environ["GIT_DIR"] = os.path.join(workdir, "no-git")  # rabbit records git info of its folder
    reps = {"small": {"eval": 20, "fit": 5}, "seedA": {"eval": 7, "fit": 1}, "seedB": {"eval": 3, "fit": 1}}
    if args.quick:
        reps = {k: {"eval": max(2, v["eval"] // 3), "fit": 1} for k, v in reps.items()}
    main_python = None
    if not args.no_rabbit_main:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from rabbit_main import find_rabbit_main, run_rabbit_main

        main_python, why = find_rabbit_main()
        print(f"rabbit main: {main_python}" if main_python else why, flush=True)
    tf_rss = peak_rss("tf", "-")
    rows = []
    for name in models:
        path = os.path.join(workdir, f"{name}.hdf5")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            build(name, path)
            gc.collect()
            print(
                f"[{name}] built with rabbit's TensorWriter in {time.perf_counter() - t0:.0f} s", flush=True
            )
        res = timings(path, reps[name])
        from wfit.workspace import read_workspace

        ws = read_workspace(path)
        dense_mb = ws.nbinsfull * ws.nproc * ws.nsyst * (1 if ws.symmetric else 2) * 8 / 1024**2
        mem = {"wfit": peak_rss("wfit", path), "rabbit": peak_rss("rabbit", path)}
        print(f"[{name}] {json.dumps(res)}  peak RSS {mem}", flush=True)
        if main_python:
            outdir = os.path.join(workdir, f"{name}-rabbit-main")
            os.makedirs(outdir, exist_ok=True)
            try:
                theirs = run_rabbit_main(path, outdir=outdir, timeout=args.main_timeout, python=main_python)
                t_wfit, ours = wfit_process(path, outdir)
                res["process"] = {"wfit": t_wfit, "main": theirs["wall_s"]}
                res["_main"] = compare_main(ours, theirs) | {"cpu_s": theirs["cpu_s"], "nll": theirs["nll"]}
                mem["main"] = theirs["peak_rss_mb"]
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                res["_main"] = {"error": str(exc).strip().splitlines()[0][:200]}
            print(f"[{name}] rabbit main: {json.dumps(res.get('process'))} {json.dumps(res['_main'])}", flush=True)
        rows.append((name, ws, res, mem, dense_mb))

    print(f"\nTensorFlow runtime baseline: {tf_rss:.0f} MB peak RSS\n")
    # rabbit main's columns: the whole fit command only (its own process); "-" where not measured
    main_cols = f" {'main [s]':>9} {'w/main':>7}" if main_python else ""
    width = 78 + len(main_cols)
    print(
        f"{'model':<7} {'bins':>5} {'procs':>5} {'POIs':>4} {'syst':>4} | {'quantity':<9} "
        f"{'wfit [s]':>10} {'rabbit [s]':>11} {'ratio':>7}{main_cols}"
    )
    print("-" * width)
    for name, ws, res, mem, dense_mb in rows:
        for q in ("NLL", "NLL+grad", "Hessian", "fit+cov", "process"):
            r = res.get(q)
            if r is None:
                continue
            theirs = (
                f"{r['rabbit']:>11.4f} {r['wfit'] / r['rabbit']:>7.3f}" if "rabbit" in r else f"{'-':>11} {'-':>7}"
            )
            ours_main = ""
            if main_python:
                has = "main" in r
                ours_main = f" {r['main']:>9.3f} {r['wfit'] / r['main']:>7.3f}" if has else f" {'-':>9} {'-':>7}"
            print(
                f"{name:<7} {ws.nbins:>5} {ws.nproc:>5} {len(ws.signals):>4} {ws.nsyst:>4} | {q:<9} "
                f"{r['wfit']:>10.4f} {theirs}{ours_main}"
            )
        budget = 1.5 * dense_mb + tf_rss
        rss_main = f", rabbit main {mem['main']:.0f} MB" if "main" in mem else ""
        print(
            f"{name:<7} peak RSS: wfit {mem['wfit']:.0f} MB, rabbit {mem['rabbit']:.0f} MB{rss_main}; dense logk "
            f"{dense_mb:.0f} MB -> budget 1.5 x logk + TF runtime = {budget:.0f} MB "
            f"(wfit {'within' if mem['wfit'] <= budget else 'OVER'})"
        )
        c = res["_check"]
        print(
            f"{name:<7} check: NLL wfit {c['wfit_nll']:.9f}, rabbit's NLL at wfit's minimum "
            f"{c['rabbit_nll_at_wfit_min']:.9f}, {c['niter']} iterations, EDM {c['edm']:.2g}"
        )
        m = res.get("_main")
        if m is not None and "error" in m:
            print(f"{name:<7} rabbit main: {m['error']}")
        elif m is not None:
            print(
                f"{name:<7} rabbit main vs wfit: POIs max rel. dev. value {m['poi_value']:.1e} (|dx|/sigma "
                f"{m['poi_pull']:.1e}), uncertainty {m['poi_error']:.1e}; nuisances max |dx|/sigma "
                f"{m['nuis_pull']:.1e}, rel. dev. uncertainty {m['nuis_error']:.1e} (largest: {m['worst_error']}); "
                f"NLL main - wfit {m['dnll']:.1e}; main CPU {m['cpu_s']:.0f} s"
            )
        print("-" * width)


if __name__ == "__main__":
    main()
