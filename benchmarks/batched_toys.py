"""Batched toys against toys fitted one after the other, in one process, on the same toys.

``run_toys(ll, N, batch_size=B)`` fits B toys at a time as one vectorised computation (the NLL, gradient and
Hessian of all B through ``tf.vectorized_map``, and a vectorised trust-region Newton minimiser); the baseline is
``run_toys(ll, N)``, one fit after the other. Both are warmed up first (tracing excluded). Models: the ``small``
and ``seedA`` W-helicity-shaped workspaces of ``fit_vs_rabbit.py`` (written by rabbit's TensorWriter) and a
random block-free model of the test builders. The last line reads
``batched/sequential time X (speed-up Y), max deviation Z sigma``.

    PYTHONPATH=. python benchmarks/batched_toys.py [--toys 64] [--batch 32] [--models small seedA random]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np


def _workspace(name: str, folder: str) -> str:
    path = os.path.join(folder, f"{name}.hdf5")
    if name == "random":
        from tests.builders import build_random_model, write_wfit

        write_wfit(build_random_model(seed=3, nbins=(40, 30), nsig=4, nbkg=4, nshape=12), path)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from fit_vs_rabbit import build

        build(name, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toys", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", nargs="*", default=["random", "small", "seedA"])
    args = p.parse_args()

    from wfit.fitter import Likelihood
    from wfit.fitter.toys import run_toys
    from wfit.workspace import read_workspace

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            ll = Likelihood(read_workspace(_workspace(name, folder), trust_pickle=True))
            run_toys(ll, 2, seed=99)
            run_toys(ll, 2, seed=99, batch_size=2)  # trace both paths
            t = time.perf_counter()
            seq = run_toys(ll, args.toys, seed=1, tol=1e-12)
            t_seq = time.perf_counter() - t
            t = time.perf_counter()
            bat = run_toys(ll, args.toys, seed=1, tol=1e-12, batch_size=args.batch)
            t_bat = time.perf_counter() - t
            both = seq.ok & bat.ok
            dev = float(np.nanmax(np.abs(bat.values - seq.values)[both] / seq.errors[both])) if both.any() else np.nan
            rows.append((name, ll.ws.nbins, ll.nparams, t_seq, t_bat, dev, int(seq.ok.sum()), int(bat.ok.sum())))
            print(f"{name:<8} {ll.ws.nbins:>5} bins {ll.nparams:>4} parameters on {ll.device}: {args.toys} toys "
                  f"sequential {t_seq:7.2f} s ({1e3 * t_seq / args.toys:6.1f} ms/toy), batched by {args.batch} "
                  f"{t_bat:7.2f} s ({1e3 * t_bat / args.toys:6.1f} ms/toy): speed-up {t_seq / t_bat:5.2f}x; "
                  f"converged {int(seq.ok.sum())}/{int(bat.ok.sum())}; max deviation {dev:.1e} sigma", flush=True)
    ratio = max(r[4] / r[3] for r in rows)
    worst = max(r[5] for r in rows)
    print(f"batched/sequential time {ratio:.3f} (speed-up {1 / ratio:.2f}, the smallest over the models), "
          f"max deviation {worst:.1e} sigma")


if __name__ == "__main__":
    main()
