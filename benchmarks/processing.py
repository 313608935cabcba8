"""Throughput of the W template processor against a bare uproot + numpy + boost-histogram floor.

Measures events per second per core on toy W events (>= 1M by default) and on a real NanoAOD file
(tests/data/nanoaod/nano_tt_v12.root) replicated into one large file with all its branches:

* ``floor``: uproot.iterate + numpy + boost-histogram, the same nominal selection and weights
  (sign(genWeight) x scale factor x pileup weight) filled into the same (mT, iso, charge, eta, pT) cells;
* ``nominal``: WTemplateProcessor with only the nominal weights (Runner + IterativeExecutor, 1 core);
* ``all syst``: nominal plus every weight systematic and the momentum scale/resolution re-selections;
* ``signal``: ``all syst`` plus the W charge x |y_W| x helicity decomposition (toy only);
* ``dask 1w`` / ``dask 2w``: ``all syst`` on a LocalCluster with 1 and 2 worker processes (distributed's
  ``MALLOC_TRIM_THRESHOLD_`` worker setting removed, large chunks).

Targets: nominal >= 0.8 x floor per core; 2 Dask workers >= 1.8 x one.

Usage::

    python benchmarks/processing.py            # 1M toy events, 600k replicated real events
    python benchmarks/processing.py --quick    # 100k and 50k
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import boost_histogram as bh
import numpy as np
import uproot

from wfit.processors import (
    AngularCoefficients,
    TemplateConfig,
    WTemplateProcessor,
    default_corrections_path,
    load_corrections,
    local_cluster,
    run_templates,
    write_toy,
)

REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "nanoaod" / "nano_tt_v12.root"


def replicate_real(path: Path, copies: int, out: Path) -> int:
    """Write ``copies`` concatenated copies of every event of a NanoAOD file (all branches) to ``out``."""
    t = uproot.open(path)["Events"]
    arrays = t.arrays(library="ak")
    fields = arrays.fields
    groups: dict[str, dict[str, ak.Array]] = {}
    cols: dict[str, Any] = {}
    counters = {f[1:] for f in fields if f.startswith("n") and f"{f[1:]}_" in "".join(fields)}
    for f in fields:
        coll = f.split("_", 1)[0]
        if coll in counters and "_" in f and arrays[f].ndim == 2:
            groups.setdefault(coll, {})[f.split("_", 1)[1]] = arrays[f]
        elif not (f.startswith("n") and f[1:] in counters):
            cols[f] = arrays[f]
    for coll, members in groups.items():
        cols[coll] = ak.zip(members)
    block = max(1, 200_000 // max(1, t.num_entries))
    with uproot.recreate(out) as fout:
        tree = None
        done = 0
        while done < copies:
            k = min(block, copies - done)
            chunk = {
                c: (ak.concatenate([v] * k) if isinstance(v, ak.Array) else np.concatenate([v] * k))
                for c, v in cols.items()
            }
            if tree is None:
                types = {
                    c: (v.type.content if isinstance(v, ak.Array) else v.dtype) for c, v in chunk.items()
                }
                tree = fout.mktree("Events", types)
            tree.extend(chunk)
            done += k
    return copies * t.num_entries


def floor(files: list[str], cfg: TemplateConfig, step: int = 500_000) -> tuple[int, bh.Histogram]:
    """The bare implementation: uproot + numpy + boost-histogram, nominal selection and weights."""
    cset = load_corrections(default_corrections_path())
    sf, pu = cset["muon_id_iso_sf"], cset["pileup"]
    h = bh.Histogram(
        bh.axis.Variable(cfg.mt_edges),
        bh.axis.Variable(cfg.iso_edges),
        bh.axis.IntCategory([-1, 1]),
        bh.axis.Regular(*cfg.eta_bins),
        bh.axis.Regular(*cfg.pt_bins),
        storage=bh.storage.Weight(),
    )
    met = "MET" if "MET_pt" in uproot.open(files[0])["Events"].keys() else "PFMET"
    branches = [
        "Muon_pt",
        "Muon_eta",
        "Muon_phi",
        "Muon_charge",
        "Muon_tightId",
        "Muon_looseId",
        "Muon_dxy",
        "Muon_dz",
        "Muon_pfRelIso04_all",
        "Electron_pt",
        "Electron_eta",
        "Electron_cutBased",
        f"{met}_pt",
        f"{met}_phi",
        "genWeight",
        "Pileup_nTrueInt",
    ]
    n_total = 0
    for a in uproot.iterate([f"{f}:Events" for f in files], branches, step_size=step, library="ak"):
        n = len(a)
        n_total += n
        nmu = ak.to_numpy(ak.num(a.Muon_pt))
        emu = np.repeat(np.arange(n), nmu)

        def flat(x: ak.Array) -> np.ndarray:
            return ak.to_numpy(ak.flatten(x))

        pt, eta = flat(a.Muon_pt).astype(np.float64), flat(a.Muon_eta).astype(np.float64)
        cand = (
            (pt > 26)
            & (np.abs(eta) < 2.4)
            & flat(a.Muon_tightId)
            & (np.abs(flat(a.Muon_dxy)) < 0.05)
            & (np.abs(flat(a.Muon_dz)) < 0.2)
        )
        veto = (pt > 15) & (np.abs(eta) < 2.4) & flat(a.Muon_looseId) & ~cand
        ept, eeta = flat(a.Electron_pt), flat(a.Electron_eta)
        eveto = (ept > 10) & (np.abs(eeta) < 2.5) & (flat(a.Electron_cutBased) >= 1)
        ee = np.repeat(np.arange(n), ak.to_numpy(ak.num(a.Electron_pt)))
        ok = (
            (np.bincount(emu[cand], minlength=n) == 1)
            & (np.bincount(emu[veto], minlength=n) == 0)
            & (np.bincount(ee[eveto], minlength=n) == 0)
        )
        idx = np.flatnonzero(cand)
        idx = idx[ok[emu[idx]]]
        mpt = ak.to_numpy(a[f"{met}_pt"])[ok].astype(np.float64)
        mphi = ak.to_numpy(a[f"{met}_phi"])[ok].astype(np.float64)
        phi = flat(a.Muon_phi)[idx].astype(np.float64)
        mt = np.sqrt(2 * pt[idx] * mpt * (1 - np.cos(phi - mphi)))
        w = np.sign(ak.to_numpy(a.genWeight).astype(np.float64))[ok]
        w = w * pu.evaluate(ak.to_numpy(a.Pileup_nTrueInt)[ok].astype(np.float64), "nominal")
        w = w * sf.evaluate(eta[idx], pt[idx], "nominal")
        h.fill(mt, flat(a.Muon_pfRelIso04_all)[idx], flat(a.Muon_charge)[idx], eta[idx], pt[idx], weight=w)
    return n_total, h


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples (100k toy, 50k real events)")
    parser.add_argument("--toy-events", type=int, default=None)
    parser.add_argument("--real-copies", type=int, default=None, help="copies of the 200-event real file")
    parser.add_argument("--chunksize", type=int, default=250_000)
    parser.add_argument("--workdir", default=None, help="where to write the inputs (default: a temp dir)")
    args = parser.parse_args(argv)
    n_toy = args.toy_events or (100_000 if args.quick else 1_000_000)
    copies = args.real_copies or (250 if args.quick else 3000)
    chunk = min(args.chunksize, max(n_toy // 4, 10_000)) if args.quick else args.chunksize
    warnings.filterwarnings("ignore", "Missing cross-reference", RuntimeWarning)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wfit-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    t_gen, _ = timed(lambda: write_toy(work / "toy_w.root", n_toy, process="W", seed=1))
    print(f"toy generation: {n_toy} events in {t_gen:.1f} s ({n_toy / t_gen:,.0f} events/s)")
    t_rep, n_real = timed(lambda: replicate_real(REAL, copies, work / "real_rep.root"))
    print(f"real file replicated: {n_real} events in {t_rep:.1f} s")

    nominal_cfg = TemplateConfig(variations=False)
    all_cfg = TemplateConfig()
    coef = AngularCoefficients.constant(all_cfg, 0.2, -0.6)
    rows: list[tuple[str, str, int, int, float]] = []
    for label, files, signal_ok, n_sample in (
        ("toy W", [str(work / "toy_w.root")], True, n_toy),
        ("real x" + str(copies), [str(work / "real_rep.root")], False, n_real),
    ):
        # Dask: 8 chunks per sample, so that 2 workers share the work evenly.
        dchunk = max(10_000, n_sample // 8)
        t, (n, _) = timed(lambda files=files: floor(files, all_cfg, step=chunk))
        rows.append((label, "floor (uproot+numpy+bh)", 1, n, t))
        for name, proc in (
            ("nominal", WTemplateProcessor(nominal_cfg)),
            ("all syst", WTemplateProcessor(all_cfg)),
        ):
            t, out = timed(lambda proc=proc, files=files: run_templates({"ds": files}, proc, chunksize=chunk))
            rows.append((label, name, 1, out["ds"]["nevents"], t))
        if signal_ok:
            proc = WTemplateProcessor(all_cfg, signal_datasets={"ds"}, coefficients=coef)
            t, out = timed(lambda proc=proc, files=files: run_templates({"ds": files}, proc, chunksize=chunk))
            rows.append((label, "all syst + signal split", 1, out["ds"]["nevents"], t))
        for nw in (1, 2):
            with local_cluster(nw) as client:
                trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
                assert set(trim.values()) == {None}, trim  # distributed's setting is removed
                proc = WTemplateProcessor(all_cfg)
                # A first run warms up the workers (imports, file metadata).
                run_templates({"ds": files}, proc, executor="dask", client=client, chunksize=dchunk)
                t, out = timed(
                    lambda proc=proc, files=files, client=client, dchunk=dchunk: run_templates(
                        {"ds": files}, proc, executor="dask", client=client, chunksize=dchunk
                    )
                )
            rows.append((label, f"all syst, dask {nw}w", nw, out["ds"]["nevents"], t))

    print(f"\nchunksize {chunk} (Dask: 1/8 of the sample); cores on this machine: {os.cpu_count()}")
    print(
        f"{'sample':<12} {'implementation':<26} {'cores':>5} {'events':>9} {'s':>7} {'ev/s/core':>10} "
        f"{'/floor':>7}"
    )
    floor_rate: dict[str, float] = {}
    dask1: dict[str, float] = {}
    for label, name, cores, n, t in rows:
        rate = n / t / cores
        if name.startswith("floor"):
            floor_rate[label] = rate
        if name.endswith("dask 1w"):
            dask1[label] = n / t
        print(
            f"{label:<12} {name:<26} {cores:>5} {n:>9} {t:>7.2f} {rate:>10,.0f} "
            f"{rate / floor_rate[label]:>7.2f}"
        )
    print()
    for label, name, _cores, n, t in rows:
        if name.endswith("dask 2w"):
            print(f"{label}: dask 2 workers / 1 worker = {n / t / dask1[label]:.2f} (target >= 1.8)")
    for label, name, cores, n, t in rows:
        if name == "nominal":
            print(
                f"{label}: nominal / floor per core = {n / t / cores / floor_rate[label]:.2f} (target >= 0.8)"
            )


if __name__ == "__main__":
    main()
