"""wfit on a large sparse workspace against rabbit 0.2.5's sparse mode.

The model is shaped like a double-differential W measurement (the seed's size): 2448 reco bins
(2 charges x 34 eta x 36 pT), 655 processes (648 signal components, 2 charges x 18 |y_W| x 18
pT_W generator bins, each a POI with a nearly diagonal response: it fills a 3 x 3 neighbourhood of
reco bins, plus 7 backgrounds), and 1051 nuisances (51 global shapes on every process, 1000 local
ones acting on one (charge, eta) column each). Its dense log(kappa) tensor would be 13.5 GB; both
fitters read the sparse file. Times and peak memory are measured in child processes.

    python benchmarks/sparse_vs_rabbit.py [--workdir DIR] [--no-rabbit-fit]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

NQ, NETA, NPT = 2, 34, 36
NY, NPTW = 18, 18
NBKG, NGLOBAL, NLOCAL = 7, 51, 1000


def build(path: str, seed: int = 3) -> None:
    """Write the model with rabbit's sparse TensorWriter (seeded)."""
    import hist
    from rabbit.tensorwriter import TensorWriter

    rng = np.random.default_rng(seed)
    axes = [hist.axis.Integer(0, NQ, name="charge"), hist.axis.Regular(NETA, -2.4, 2.4, name="eta"),
            hist.axis.Regular(NPT, 26, 62, name="pt")]
    shape = (NQ, NETA, NPT)
    w = TensorWriter(sparse=True)
    w.add_channel(axes, "ch0")
    noms = {}
    for q in range(NQ):
        for iy in range(NY):
            for ip in range(NPTW):
                t = np.zeros(shape)
                e0, p0 = int(iy * NETA / NY), int(ip * NPT / NPTW)
                t[q, max(e0 - 1, 0) : e0 + 2, max(p0 - 1, 0) : p0 + 2] = rng.uniform(50, 150, (3, 3))[
                    : min(e0 + 2, NETA) - max(e0 - 1, 0), : min(p0 + 2, NPT) - max(p0 - 1, 0)]
                noms[f"W{'pm'[q]}_y{iy:02d}_pt{ip:02d}"] = t
    for b in range(NBKG):
        pt = np.linspace(26, 62, NPT)
        noms[f"bkg{b}"] = 20 * rng.uniform(0.5, 1.5) * np.exp(-(pt - 26) / 15)[None, None, :] * np.ones(shape)
    procs = list(noms)
    for p in procs:
        w.add_process(noms[p], p, "ch0", signal=p.startswith("W"), variances=0.1 * noms[p])
    w.add_data(rng.poisson(sum(noms.values())).astype(float), "ch0")
    eta = np.linspace(-1, 1, NETA)[None, :, None]
    for s in range(NGLOBAL):
        a = rng.normal(0, 0.01)
        for p in procs:
            w.add_systematic(noms[p] * np.exp(a * eta * np.ones(shape)), f"global{s:02d}", p, "ch0")
    for s in range(NLOCAL):
        q, e = divmod(s % (NQ * NETA), NETA)
        up = np.zeros(shape)
        up[q, e, :] = 0.01 * (1 + s // (NQ * NETA)) * np.linspace(-1, 1, NPT)
        for p in procs:
            if np.any(noms[p][q, e, :] > 0):
                w.add_systematic(noms[p] * np.exp(up), f"local{s:04d}", p, "ch0")
    os.environ["GIT_DIR"] = os.path.join(os.path.dirname(path), "no-git")
    with np.errstate(divide="ignore", invalid="ignore"):
        w.write(outfolder=os.path.dirname(path), outfilename=os.path.basename(path))


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child(which: str, path: str, fit: bool) -> None:
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    if which == "wfit":
        from wfit.fitter import Likelihood
        from wfit.fitter import fit as wfit_fit
        from wfit.workspace import read_workspace

        ll = Likelihood(read_workspace(path, densify_sparse=False))
        x = ll.x0
        ll.nll(x), ll.nll_grad(x), ll.nll_grad_hess(x)  # trace each function once
        out["setup"] = time.perf_counter() - t0
        for name, f in (("NLL", ll.nll), ("NLL+grad", ll.nll_grad), ("Hessian", ll.nll_grad_hess)):
            t = time.perf_counter()
            f(x)
            out[name] = time.perf_counter() - t
        if fit:
            t = time.perf_counter()
            res = wfit_fit(ll, tol=1e-10)
            out["fit+cov"] = time.perf_counter() - t
            out["nll_min"] = res.nll
            out["niter"] = res.niter
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fit_vs_rabbit import rabbit_fit_to_dnll, rabbit_fitter

        rf = rabbit_fitter(path)
        rf.loss_val(), rf.loss_val_grad()  # trace
        out["setup"] = time.perf_counter() - t0
        for name, f in (("NLL", rf.loss_val), ("NLL+grad", rf.loss_val_grad)):
            t = time.perf_counter()
            f()
            out[name] = time.perf_counter() - t
        if fit:
            t = time.perf_counter()
            rf.loss_val_grad_hess()
            out["Hessian"] = time.perf_counter() - t
            t = time.perf_counter()
            rabbit_fit_to_dnll(rf)
            out["fit+cov"] = time.perf_counter() - t
            out["nll_min"] = float(rf.loss_val().numpy())
    out["peak_rss_mb"] = _hwm_mb()
    print(json.dumps(out))


def run_child(which: str, path: str, fit: bool) -> dict[str, float]:
    env = dict(os.environ, GIT_DIR=os.path.join(os.path.dirname(path), "no-git"))
    cmd = [sys.executable, __file__, "--child", which, path] + (["--fit"] if fit else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None)
    p.add_argument("--no-rabbit-fit", action="store_true", help="skip rabbit's (slow) Hessian and fit")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--fit", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.fit)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="wfit-sparse-")
    path = os.path.join(workdir, "sparse_seed.hdf5")
    if not os.path.exists(path):
        t = time.perf_counter()
        build(path)
        print(f"built with rabbit's sparse TensorWriter in {time.perf_counter() - t:.0f} s "
              f"({os.path.getsize(path) / 1e6:.1f} MB on disk)", flush=True)
    ours = run_child("wfit", path, True)
    print("wfit", json.dumps(ours), flush=True)
    theirs = run_child("rabbit", path, not args.no_rabbit_fit)
    print("rabbit", json.dumps(theirs), flush=True)
    dense_gb = NQ * NETA * NPT * (NQ * NY * NPTW + NBKG) * (NGLOBAL + NLOCAL) * 8 / 1e9
    print(f"\nmodel: {NQ * NETA * NPT} bins, {NQ * NY * NPTW + NBKG} processes, {NGLOBAL + NLOCAL} nuisances; "
          f"dense log(kappa) would be {dense_gb:.1f} GB")
    print(f"{'quantity':<10} {'wfit':>10} {'rabbit':>10} {'ratio':>8}")
    for q in ("setup", "NLL", "NLL+grad", "Hessian", "fit+cov", "peak_rss_mb"):
        a, b = ours.get(q), theirs.get(q)
        ratio = f"{a / b:8.3f}" if a is not None and b else "       -"
        fa = f"{a:10.4g}" if a is not None else "         -"
        fb = f"{b:10.4g}" if b is not None else "         -"
        print(f"{q:<10} {fa} {fb} {ratio}")
    if "nll_min" in ours and "nll_min" in theirs:
        print(f"NLL at the minimum: wfit {ours['nll_min']:.6f}, rabbit {theirs['nll_min']:.6f}")


if __name__ == "__main__":
    main()
