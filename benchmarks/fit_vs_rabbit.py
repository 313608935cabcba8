"""wfit's fitter against rabbit 0.2.5, and rabbit main when installed, on workspaces written by rabbit's TensorWriter.

Three models shaped like a W-helicity fit (see :func:`build`): ``small`` (100 bins, 5 processes,
10 nuisances), ``seedA`` (1444 bins, 96 POIs, 70 nuisances, 30% asymmetric, BB-lite) and ``seedB``
(1824 bins, 101 processes of which 96 POIs, 257 nuisances). In one process, interleaved, medians of
repeats (each repeat a loop of about 5 ms of calls, as timeit does): NLL, NLL+gradient, full
Hessian, and minimisation to dNLL < 1e-9 plus covariance, for wfit and for rabbit; the ratio
wfit/rabbit of each. Peak memory of a whole fit of each model is measured in separate child
processes, against a TensorFlow-runtime baseline.

Three larger models (:data:`DENSE_MODELS`, :func:`build_dense`) are measured as whole processes only, each fit in
its own interpreter: ``denseB`` (seedB's size with dense random shape systematics: every nuisance on every bin
of a random 40% of the processes), ``helicity`` (the CMS W-helicity fit's size, 3320 bins, 78 processes of
which 40 POIs, 1354 dense nuisances) and ``wmass`` (the W-mass fit's size, 3000 bins and 4000 nuisances with a
real analysis's sparsity, a sparse file). For each: ``wfit fit`` (wall time, peak RSS, the stages its result
records), rabbit 0.2.5 (the same minimisation and Hessian as the in-process rows; stopped after
``--rabbit-timeout`` seconds), their ratio, and the floor set by the hardware: the flops of one exact Hessian
at the float64 matrix-product rate measured here, and the bytes of the compacted log(kappa) tensor.

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
    python benchmarks/fit_vs_rabbit.py --models denseB helicity wmass   # the large models (about 20 min)
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


def _nominals(c: dict, rng) -> tuple:
    """Axes, coordinates and nominal templates of a W-like model: bins (charge, eta, pT); signals charge x
    |y_W| bin x helicity, POIs for the helicities in ``c["poi_hel"]`` (default all); smooth backgrounds."""
    import hist

    neta, npt = c["neta"], c["npt"]
    axes = [
        hist.axis.Integer(0, 2, name="charge"),
        hist.axis.Regular(neta, -2.4, 2.4, name="eta"),
        hist.axis.Regular(npt, 26, 56, name="pt"),
    ]
    eta = np.linspace(-2.4, 2.4, neta)[None, :, None]
    pt = np.linspace(26, 56, npt)[None, None, :]
    charge = np.arange(2)[:, None, None]
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
                signal[pname] = hel in c.get("poi_hel", c["hel"])
    for b in range(c["nbkg"]):
        noms[f"bkg{b}"] = (
            300.0
            * rng.uniform(0.3, 1.5)
            * np.exp(-(pt - 26) / rng.uniform(8, 20))
            * (1 + 0.1 * eta**2)
            * np.ones_like(charge)
        )
    for p in noms:  # a template is empty where its MC sample has no events (as in real workspaces)
        noms[p] = np.where(noms[p] < 1e-3 * noms[p].max(), 0.0, noms[p])
    return axes, eta, pt, noms, signal


def _write(w, path: str) -> None:
    os.environ["GIT_DIR"] = os.path.join(os.path.dirname(path), "no-git")
    with np.errstate(divide="ignore", invalid="ignore"):
        w.write(outfolder=os.path.dirname(path), outfilename=os.path.basename(path))


def build(name: str, path: str, seed: int = 1) -> None:
    """Write a model of :data:`MODELS` or :data:`DENSE_MODELS` with rabbit's TensorWriter.

    Bins are (charge, eta, pT); signals are charge x |y_W| bin x helicity (L, R, 0), so 96 POIs for
    16 |y_W| bins; nuisances mix global smooth shapes (PDF-like), efficiency statistics per
    (eta bin, charge) for seedA (per eta bin and charge for seedB: 2 x 38 or 2 x 48), muon momentum
    scale per eta region, and lnN normalisations. The dense models are :func:`build_dense`'s. Seeded.
    """
    if name in DENSE_MODELS:
        build_dense(name, path)
        return
    from rabbit.tensorwriter import TensorWriter

    c = MODELS[name]
    rng = np.random.default_rng(seed)
    neta, npt = c["neta"], c["npt"]
    axes, eta, pt, noms, signal = _nominals(c, rng)
    w = TensorWriter()
    w.add_channel(axes, "ch0")
    procs = list(noms)
    shape = noms[procs[0]].shape
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
    _write(w, path)


DENSE_MODELS = {
    # as MODELS; plus nuisances whose log(kappa) is dense: ``ndense`` acting on every bin of a random ``frac``
    # of the processes; and, for the W-mass-like model (a sparse file), ``nglobal`` acting on every
    # bin and process and ``nlocal`` per (charge, eta bin) acting on every process there
    "denseB": dict(neta=48, npt=19, ny=16, hel=("L", "R", "0"), nbkg=5, ndense=257, frac=0.4),
    "helicity": dict(neta=83, npt=20, ny=10, hel=("L", "R", "0"), poi_hel=("L", "R"), nbkg=18, ndense=1354,
                     frac=0.4),
    "wmass": dict(neta=50, npt=30, ny=4, hel=("",), nbkg=10, nglobal=100, nlocal=39, sparse=True),
}


def build_dense(name: str, path: str, seed: int = 2) -> None:
    """Write a model of :data:`DENSE_MODELS` with rabbit's TensorWriter, the templates of :func:`build`.

    ``denseB`` (seedB's 1824 bins and 101 processes, 257 nuisances) and ``helicity`` (the CMS W
    helicity fit's size: 3320 bins, 78 processes of which 40 POIs, 1354 nuisances) have dense random shape
    systematics: each nuisance acts on every bin of a random 40% of the processes, with a random
    log(kappa) per bin (a slope in eta and pT plus independent noise), so there is no block structure.
    ``wmass`` (3000 bins, 18 processes, 4000 nuisances) has a real analysis's sparsity, written as a
    sparse file: 100 global PDF/scale-like nuisances on every bin and process, and 39 per (charge, eta
    bin) (efficiency and momentum-scale statistics) acting on that bin range only. Seeded.
    """
    from rabbit.tensorwriter import TensorWriter

    c = DENSE_MODELS[name]
    rng = np.random.default_rng(seed)
    axes, eta, pt, noms, signal = _nominals(c, rng)
    w = TensorWriter(sparse=c.get("sparse", False))
    w.add_channel(axes, "ch0")
    procs = list(noms)
    shape = noms[procs[0]].shape
    for p in procs:
        w.add_process(noms[p], p, "ch0", signal=signal.get(p, False),
                      variances=noms[p] * rng.uniform(0.05, 0.5))
    w.add_data(rng.poisson(sum(noms.values())).astype(float), "ch0")

    def smooth_random(sd_slope, sd_noise):
        a, b = rng.normal(0, sd_slope, 2)
        return a * eta + b * (pt - 40) / 15 + rng.normal(0, sd_noise, shape)

    if "ndense" in c:
        nact = max(1, int(round(c["frac"] * len(procs))))
        for s in range(c["ndense"]):
            for pi in rng.choice(len(procs), nact, replace=False):
                w.add_systematic(noms[procs[pi]] * np.exp(smooth_random(0.01, 0.003)), f"syst{s:04d}", procs[pi],
                                 "ch0")
    else:
        for s in range(c["nglobal"]):
            logk = smooth_random(0.01, 0.001)
            for p in procs:
                w.add_systematic(noms[p] * np.exp(logk), f"global{s:03d}", p, "ch0")
        for q in range(2):
            for ie in range(c["neta"]):
                for s in range(c["nlocal"]):
                    logk = np.zeros(shape)
                    logk[q, ie, :] = rng.normal(0.0, 0.01) + rng.normal(0, 0.003) * np.linspace(-1, 1, c["npt"])
                    for p in procs:
                        w.add_systematic(noms[p] * np.exp(logk), f"local_q{q}_eta{ie:02d}_{s:02d}", p, "ch0")
    _write(w, path)


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
        if intermediate_result.fun == last[0]:
            return  # a rejected trust-region step leaves the point where it was: not a sign of convergence
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


def result_path(workspace: str, kind: str) -> str:
    """Where a child process writes the result of fitting ``workspace`` (``kind``: ``cli`` or ``exact``)."""
    return os.path.join(os.path.dirname(workspace), f"wfit_{kind}_result_{os.path.basename(workspace)}")


class RssSampler:
    """The process's resident memory every 50 ms while in the ``with`` block, to tell the peak of each stage."""

    def __init__(self, every: float = 0.05):
        self.every, self.samples = every, []

    def _run(self):
        while not self._stop.is_set():
            with open("/proc/self/statm") as f:
                self.samples.append((time.perf_counter(), int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")))
            self._stop.wait(self.every)

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.end = time.perf_counter()
        self._stop.set()
        self._thread.join()

    def per_stage(self, timings: dict) -> dict:
        """Peak RSS in MB of each stage of a result's ``timings`` (in their order; ``write`` the rest up to
        ``total``, which ended when the block did)."""
        t = self.end - timings["total"]
        out = {}
        for name in ("load", "setup", "minimize", "covariance", "write"):
            dt = timings.get(name, timings["total"] - sum(v for k, v in timings.items() if k != "total"))
            # a stage shorter than the sampling interval: the sample just after it
            inside = [m for s, m in self.samples if t <= s <= t + dt] or [m for s, m in self.samples if s > t][:1]
            out[name] = max(inside, default=0) / 1024**2
            t += dt
        return out


def memory_child(which: str, path: str) -> None:
    """Run in a child process: a whole fit (or just the TensorFlow runtime) and print peak RSS in MB."""
    extra: dict = {}
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
        f = rabbit_fitter(path)
        nit = rabbit_fit_to_dnll(f)
        extra = {"nll": float(f.loss_val().numpy()), "niter": nit}
    elif which == "floor":  # what the hardware allows: the float64 matrix-product rate, the model's sizes
        import tensorflow as tf

        a = tf.random.stateless_normal([3000, 3000], seed=[1, 2], dtype=tf.float64)
        tf.linalg.matmul(a, a).numpy()
        t0 = time.perf_counter()
        for _ in range(5):
            tf.linalg.matmul(a, a).numpy()
        extra = {"gflops": 5 * 2 * 3000**3 / (time.perf_counter() - t0) / 1e9}
        if path != "-":
            from wfit.fitter import Likelihood
            from wfit.workspace import read_workspace

            ll = Likelihood(read_workspace(path, load_logk=False, densify_sparse=False))
            extra["hessian_flops"], extra["gauss_newton_flops"] = ll.hessian_flops
            extra["stored_mb"] = ll.stored_bytes / 1024**2
    elif which == "wfit-exact":  # the exact Hessian in every iteration, the minimiser's method for small models
        from wfit.fitter import fit_workspace, likelihood

        likelihood.LARGE_HESSIAN_FLOPS = float("inf")
        res = fit_workspace(path, tol=1e-10)
        res.write(result_path(path, "exact"))
        extra = {"niter": res.niter, "minimize_s": res.timings["minimize"]}
    elif which == "wfit-cli":  # the whole command, as a user runs it
        from wfit.fitter import read_result
        from wfit.fitter.cli import main as wfit_main

        out = result_path(path, "cli")
        with RssSampler() as rss:
            code = wfit_main(["fit", path, "-q", "--tol", "1e-10", "-o", out])
        extra = {"exit": code, "stage_peak_rss_mb": rss.per_stage(read_result(out).timings)}
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent.
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"maxrss_mb": hwm / 1024, **extra}))


def child(which: str, path: str, timeout: float | None = None) -> dict:
    """:func:`memory_child` in a new interpreter: its printed summary plus ``wall_s``, the whole process
    (interpreter start and imports included); ``{"timeout": True}`` if it ran past ``timeout`` seconds."""
    env = dict(os.environ, GIT_DIR=os.path.join(os.path.dirname(path), "no-git"))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", which, path],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"timeout": True, "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        raise RuntimeError(f"the {which} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"wall_s": time.perf_counter() - t0}


def peak_rss(which: str, path: str) -> float:
    return child(which, path)["maxrss_mb"]


def large_model(name: str, path: str, rabbit_timeout: float, compare_exact: bool = False) -> dict:
    """The whole-process rows of a :data:`DENSE_MODELS` model: ``wfit fit`` (wall time, peak RSS and the
    stages its result records) and rabbit 0.2.5 (build, minimisation to dNLL < 1e-9 and Hessian, as
    :func:`rabbit_fit_to_dnll`), each in its own process; rabbit is stopped after ``rabbit_timeout`` s."""
    from wfit.fitter import read_result

    ours = child("wfit-cli", path)
    result = read_result(result_path(path, "cli"))
    stages = dict(result.timings)
    stages["write"] = stages["total"] - sum(v for k, v in stages.items() if k != "total")
    stages["start+imports"] = ours["wall_s"] - stages["total"]
    theirs = child("rabbit", path, timeout=rabbit_timeout)
    exact = None
    if compare_exact:
        exact = child("wfit-exact", path)
        ref = read_result(result_path(path, "exact"))
        exact |= {
            "max_dx_sigma": float(np.max(np.abs(result.values - ref.values) / ref.errors)),
            "max_rel_error": float(np.max(np.abs(result.errors / ref.errors - 1.0))),
            "max_rel_cov": float(np.max(np.abs(result.covariance - ref.covariance)) / np.max(np.abs(ref.covariance))),
        }
    return {
        "exact": exact,
        "floor": child("floor", path),
        "wfit": ours | {"stages": stages, "nll": result.nll, "niter": result.niter, "edm": result.edm,
                        "status": int(result.status)},
        "rabbit": theirs,
    }


def wfit_process(path: str) -> tuple[float, object]:
    """Wall time of the whole ``wfit fit`` command in a child process (as rabbit main's runs), and its result."""
    from wfit.fitter import read_result

    return child("wfit-cli", path)["wall_s"], read_result(result_path(path, "cli"))


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
    p.add_argument(
        "--rabbit-timeout", type=float, default=1200,
        help="seconds allowed to rabbit 0.2.5's whole fit of a dense model (default 1200)",
    )
    p.add_argument(
        "--compare-exact", action="store_true",
        help="also fit the dense models with the exact Hessian in every iteration and compare the results",
    )
    p.add_argument("--memory-child", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    models = args.models or (["small", "seedA"] if args.quick else [*MODELS, *DENSE_MODELS])
    unknown = sorted(set(models) - set(MODELS) - set(DENSE_MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {[*MODELS, *DENSE_MODELS]}")
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
    rows, large = [], []
    for name in models:
        path = os.path.join(workdir, f"{name}.hdf5")
        if not os.path.exists(path):
            t0 = time.perf_counter()
            build(name, path)
            gc.collect()
            print(
                f"[{name}] built with rabbit's TensorWriter in {time.perf_counter() - t0:.0f} s", flush=True
            )
        from wfit.workspace import read_workspace

        if name in DENSE_MODELS:
            r = large_model(name, path, args.rabbit_timeout, args.compare_exact)
            ws = read_workspace(path, load_logk=False, densify_sparse=False)
            print(f"[{name}] {json.dumps(r)}", flush=True)
            large.append((name, ws, r))
            continue
        res = timings(path, reps[name])

        ws = read_workspace(path)
        dense_mb = ws.nbinsfull * ws.nproc * ws.nsyst * (1 if ws.symmetric else 2) * 8 / 1024**2
        mem = {"wfit": peak_rss("wfit", path), "rabbit": peak_rss("rabbit", path)}
        print(f"[{name}] {json.dumps(res)}  peak RSS {mem}", flush=True)
        if main_python:
            outdir = os.path.join(workdir, f"{name}-rabbit-main")
            os.makedirs(outdir, exist_ok=True)
            try:
                theirs = run_rabbit_main(path, outdir=outdir, timeout=args.main_timeout, python=main_python)
                t_wfit, ours = wfit_process(path)
                res["process"] = {"wfit": t_wfit, "main": theirs["wall_s"]}
                res["_main"] = compare_main(ours, theirs) | {"cpu_s": theirs["cpu_s"], "nll": theirs["nll"]}
                mem["main"] = theirs["peak_rss_mb"]
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                res["_main"] = {"error": str(exc).strip().splitlines()[0][:200]}
            print(f"[{name}] rabbit main: {json.dumps(res.get('process'))} {json.dumps(res['_main'])}", flush=True)
        rows.append((name, ws, res, mem, dense_mb))

    print(f"\nTensorFlow runtime baseline: {tf_rss:.0f} MB peak RSS\n")
    if large:
        print_large(large, args.rabbit_timeout)
    if not rows:
        return
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


def print_large(large: list, rabbit_timeout: float) -> None:
    """The table of the dense and W-mass-size models: whole processes, wfit's stages, the ratio to rabbit."""
    print("Dense and W-mass-size models, whole processes (interpreter start to result file):")
    head = (f"{'model':<9} {'bins':>5} {'procs':>5} {'POIs':>4} {'syst':>5} | {'wfit [s]':>9} {'RSS [MB]':>9} "
            f"{'rabbit [s]':>10} {'RSS [MB]':>9} {'ratio':>6} | wfit stages [s] (peak RSS, sampled every 50 ms)")
    print(head)
    print("-" * (len(head) + 40))
    for name, ws, r in large:
        w, rb = r["wfit"], r["rabbit"]
        st = w["stages"]
        peaks = w.get("stage_peak_rss_mb", {})
        stages = ", ".join(
            f"{k} {st[k]:.1f}" + (f" ({peaks[k]:.0f} MB)" if k in peaks else "")
            for k in ("start+imports", "load", "setup", "minimize", "covariance", "write")
        )
        if rb.get("timeout"):
            theirs = f"{'> ' + format(rabbit_timeout, '.0f'):>10} {'-':>9} {'-':>6}"
        else:
            theirs = f"{rb['wall_s']:>10.1f} {rb['maxrss_mb']:>9.0f} {w['wall_s'] / rb['wall_s']:>6.3f}"
        print(f"{name:<9} {ws.nbins:>5} {ws.nproc:>5} {len(ws.signals):>4} {ws.nsyst:>5} | {w['wall_s']:>9.1f} "
              f"{w['maxrss_mb']:>9.0f} {theirs} | {stages}")
        check = f"wfit NLL {w['nll']:.6f}, {w['niter']} iterations, EDM {w['edm']:.1e}, status {w['status']}"
        if "nll" in rb:
            check += f"; rabbit NLL {rb['nll']:.6f} ({rb['niter']} iterations, stopped at dNLL < 1e-9)"
        print(f"{name:<9} {check}")
        ex = r.get("exact")
        if ex:
            print(f"{name:<9} against the exact Hessian in every iteration ({ex['niter']} iterations, minimise "
                  f"{ex['minimize_s']:.1f} s): values {ex['max_dx_sigma']:.1e} sigma, uncertainties "
                  f"{ex['max_rel_error']:.1e} (relative), covariance {ex['max_rel_cov']:.1e} (of its largest element)")
        fl = r["floor"]
        t_h = fl["hessian_flops"] / (fl["gflops"] * 1e9)
        print(f"{name:<9} floor: one exact Hessian {fl['hessian_flops'] / 1e9:.0f} GFLOP = {t_h:.2f} s at the measured "
              f"{fl['gflops']:.0f} GFLOP/s float64 matrix product (Gauss-Newton matrix "
              f"{fl['gauss_newton_flops'] / 1e9:.1f} GFLOP); compacted log(kappa) {fl['stored_mb']:.0f} MB. wfit's "
              f"minimise stage = {st['minimize'] / t_h:.1f} Hessian times, its peak RSS = "
              f"{w['maxrss_mb'] / fl['stored_mb']:.1f} x the tensor")
    print()


if __name__ == "__main__":
    main()
