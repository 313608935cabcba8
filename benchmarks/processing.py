"""Throughput of the W template processor against a bare uproot + numpy + boost-histogram floor.

Measures events per second per core on toy W events (>= 1M by default) and on a real NanoAOD file
(tests/data/nanoaod/nano_tt_v12.root) replicated into one large file with all its branches:

* ``floor``: uproot.iterate + numpy + boost-histogram, the same nominal selection and weights
  (sign(genWeight) x scale factor x pileup weight x prefiring weight) filled into the same
  (mT, iso, charge, eta, pT) cells; checked to give the processor's nominal templates;
* ``nominal``: WTemplateProcessor with only the nominal weights (``run_templates``' iterative executor, 1 core);
* ``all syst``: nominal plus every weight systematic and the momentum scale/resolution re-selections;
* ``signal``: ``all syst`` plus the W charge x |y_W| x helicity decomposition (toy only);
* ``DNN inputs: read only``: uproot reading the branches that the constituent model needs (toy only:
  ``JetCalibration.branches("model")``, 27 branches; the charged/neutral split comes from ``PFCands_pdgId``,
  so ``PFCands_charge`` is not among them), the part of a first pass's cost that no implementation avoids;
* ``+ DNN jets`` / ``+ DNN jets (jet-level)``: with the DNN jet calibration (:mod:`wfit.processors.jetcorr`):
  a Deep Sets model over PFNano constituents (``configs/pfnano.yaml``, toy only: the toy is written with
  ``ToyConfig(pfnano=True)``) or a jet-level model (toy and the real NanoAOD v12 file), each trained here on
  seeded synthetic jets in a subprocess (TensorFlow stays out of the measuring process);
* ``+ DNN jets (cache cold)`` / ``+ DNN jets (cache warm)`` (toy only): the constituent model with the per-file
  correction cache (:mod:`wfit.processors.jetcache`, ``cache_dir`` in the work directory): cold is a first
  pass (the cache emptied before each run, its entries written), warm a later pass (it reads the cache only);
* ``dask 1w`` / ``dask 2w``: ``all syst`` on :func:`wfit.processors.local_cluster` with 1 and 2 worker
  processes (its worker settings: distributed's ``MALLOC_TRIM_THRESHOLD_`` removed, the statistical
  profiler off), the same 100k-event chunks (coffea's default size) for both, measured after the workers'
  memory has reached its steady state (:func:`warm_up`; the warm-up runs are printed). Besides the wall time, the
  per-core rate is taken from the workers' task timings (distributed's task stream: the time spent in
  ``process``), so that scheduler and client overhead is not counted as worker time;
* ``dask 1w cold`` / ``dask 2w cold``: the first job of a fresh cluster (worker imports and heap growth
  included) over ``--cold-files`` names of the toy file (4M events by default).

Every implementation runs ``--repeat`` times, interleaved (round-robin), and the median is reported: the
machine may be loaded by other work.

Targets: nominal >= 0.8 x floor per core; 2 Dask workers >= 1.8 x one; the DNN jet calibration <= 25% of
the processor's time; with the cache warm the constituent model's correction <= 10% of the processor's time,
and cold its cost <= 1.3 x the ``DNN inputs: read only`` row.

Usage::

    python benchmarks/processing.py            # 1M toy events, 600k replicated real events, 3 repeats
    python benchmarks/processing.py --quick    # 100k and 50k, 1 repeat
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
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
    JetCalibration,
    TemplateConfig,
    ToyConfig,
    WTemplateProcessor,
    default_corrections_path,
    load_corrections,
    local_cluster,
    run_templates,
    write_toy,
)

REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "nanoaod" / "nano_tt_v12.root"


def replicate_real(path: Path, copies: int, out: Path, block_events: int = 25_000) -> int:
    """Write ``copies`` concatenated copies of every event of a NanoAOD file (all branches) into one file.

    One ``extend`` (one basket per branch, the cluster that chunks align to) per ``block_events`` events.
    """
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
    block = max(1, block_events // max(1, t.num_entries))
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
    prefire = "L1PreFiringWeight_Nom" in uproot.open(files[0])["Events"].keys()
    if prefire:  # the processor applies it too
        branches.append("L1PreFiringWeight_Nom")
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
        if prefire:
            w = w * ak.to_numpy(a.L1PreFiringWeight_Nom)[ok].astype(np.float64)
        h.fill(mt, flat(a.Muon_pfRelIso04_all)[idx], flat(a.Muon_charge)[idx], eta[idx], pt[idx], weight=w)
    return n_total, h


def read_branches(files: list[str], branches: list[str], step: int) -> int:
    """Only read (decompress and assemble) these branches with uproot, as NanoEvents would; the events read."""
    n = 0
    for a in uproot.iterate([f"{f}:Events" for f in files], branches, step_size=step, library="ak"):
        n += len(a)
    return n


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cpu_seconds() -> float:
    """CPU time of this process (all its threads: uproot decompresses on a thread pool)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_models(workdir: Path, n_jets: int = 20_000) -> dict[str, str]:
    """Train and export the two calibration models on seeded synthetic jets; ``{"deep"|"flat": onnx path}``."""
    from wfit.calib import default_config_path, export_onnx, load_config, load_model, train_model, write_synthetic

    write_synthetic(str(workdir / "synthetic"), n_jets, n_shards=4, seed=5, calibration_jets=20_000)
    common = {"train": {"epochs": 3, "early_stopping": None, "reduce_lr_on_plateau": None, "seed": 3}}
    out = {}
    for name, extra in (("deep", {}), ("flat", {"features": {"constituents": {}}, "model": {"blocks": {}}})):
        cfg = load_config(default_config_path("pfnano"), overrides={**common, **extra})
        result = train_model(str(workdir / "synthetic"), str(workdir / name), cfg, verbose=0)
        out[name] = export_onnx(load_model(result.model_path), result.spec, str(workdir / f"{name}.onnx"))
    return out


def dask_run(client: Any, files: list[str], proc: Any, chunk: int) -> tuple[float, float, Any]:
    """(wall seconds, summed compute seconds of all tasks on the workers, output) of one Dask run.

    The tasks are one per file (its metadata) and one per chunk (the outputs are added on the client); their
    compute time excludes scheduling, transfers and the client's own work.
    """
    from distributed import get_task_stream

    with get_task_stream(client) as ts:
        t, out = timed(lambda: run_templates({"ds": files}, proc, client=client, chunksize=chunk).output)
    busy = 0.0
    for task in ts.data:
        busy += sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
    return t, busy, out


def linked_copies(path: Path, n: int) -> list[Path]:
    """``n`` names for one file (hard links beside it, copies where links fail): a larger input for the
    Dask runs without writing more events (coffea processes each name as its own file)."""
    out = []
    for i in range(n):
        link = path.with_name(f"{path.stem}.copy{i}{path.suffix}")
        if not link.exists():
            try:
                os.link(path, link)
            except OSError:
                shutil.copyfile(path, link)
        out.append(link)
    return out


def warm_up(
    client: Any, files: list[str], proc: Any, chunk: int, max_runs: int = 8, growth: float = 0.02
) -> list[float]:
    """Run until the workers' memory is in its steady state; the wall seconds of each warm-up run.

    A fresh worker process grows its heap over its first 15-20 chunks, up to what the largest of them needs,
    and every page it grows by is faulted in once (measured on 1M toy events, one worker: 130k page faults
    and 0.5 s of system time in its first run, 4k faults and 0.05 s per run from the third on). With two
    workers each sees half the chunks per run, so it needs about twice as many runs. The warm-up ends when
    the workers' summed resident memory grew by less than ``growth`` over the last run; a Dask job over a
    real dataset (hundreds of chunks per worker) spends nearly all its time in that steady state.
    """
    import psutil

    def rss() -> int:
        return sum(client.run(lambda: psutil.Process().memory_info().rss).values())

    times: list[float] = []
    before = rss()
    while len(times) < max_runs:
        times.append(dask_run(client, files, proc, chunk)[0])
        after = rss()
        if len(times) > 1 and after < before * (1 + growth):
            break
        before = after
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples (100k toy, 50k real events)")
    parser.add_argument("--toy-events", type=int, default=None)
    parser.add_argument("--real-copies", type=int, default=None, help="copies of the 200-event real file")
    parser.add_argument("--chunksize", type=int, default=500_000, help="events per chunk, single core")
    parser.add_argument(
        "--dask-chunksize", type=int, default=100_000, help="events per chunk in the Dask runs (coffea's default)"
    )
    parser.add_argument(
        "--cold-files", type=int, default=None, help="names of the toy file in the fresh-cluster Dask runs (0: none)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="runs of each implementation (median)")
    parser.add_argument("--only", default=None, help="comma-separated row names to run (e.g. floor,nominal)")
    parser.add_argument("--workdir", default=None, help="where to write the inputs (default: a temp dir)")
    parser.add_argument("--train-models", default=None, help=argparse.SUPPRESS)  # subprocess mode
    args = parser.parse_args(argv)
    if args.train_models:
        print(train_models(Path(args.train_models)))
        return
    n_toy = args.toy_events or (100_000 if args.quick else 1_000_000)
    copies = args.real_copies or (250 if args.quick else 3000)
    repeat = args.repeat or (1 if args.quick else 3)
    if args.cold_files is None:
        args.cold_files = 2 if args.quick else 4
    warnings.filterwarnings("ignore", "Missing cross-reference", RuntimeWarning)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wfit-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    # Files in 25k-event baskets (clusters): chunks are cut at cluster boundaries (run_templates'
    # align_clusters), so that the Dask chunks (100k events) are equal and no basket is read twice.
    toy_path = work / f"toy_w_pfnano_{n_toy}.root"
    if not toy_path.exists():
        t_gen, _ = timed(
            lambda: write_toy(
                toy_path, n_toy, process="W", seed=1, config=ToyConfig(pfnano=True), block_size=25_000
            )
        )
        print(f"toy generation (PFNano constituents): {n_toy} events in {t_gen:.1f} s")
    real_path = work / f"real_rep_{copies}.root"
    if not real_path.exists():
        t_rep, _ = timed(lambda: replicate_real(REAL, copies, real_path))
        print(f"real file replicated into one file: {copies} copies in {t_rep:.1f} s")
    if not (work / "deep.onnx").exists():
        t_train, _ = timed(
            lambda: subprocess.run(
                [sys.executable, __file__, "--train-models", str(work)], check=True, capture_output=True
            )
        )
        print(f"calibration models trained and exported in {t_train:.1f} s")
    deep = JetCalibration(work / "deep.onnx")
    flat = JetCalibration(work / "flat.onnx")
    cache_dir = work / "jetcache"
    deep_cached = JetCalibration(work / "deep.onnx", cache_dir=cache_dir)

    nominal_cfg = TemplateConfig(variations=False)
    all_cfg = TemplateConfig()
    coef = AngularCoefficients.constant(all_cfg, 0.2, -0.6)
    samples = (("toy W", [str(toy_path)], True), (f"real x{copies}", [str(real_path)], False))
    only = set(args.only.split(",")) if args.only else None
    # (sample, name) -> list of (cores, events, wall seconds, CPU seconds of this process, or the Dask
    # workers' summed task seconds)
    results: dict[tuple[str, str], list[tuple[int, int, float, float | None]]] = {}
    for label, files, is_toy in samples:
        chunk = args.chunksize
        runs: list[tuple[str, Callable[[], tuple[int, int, float, float | None]]]] = []

        def add(name: str, fn: Callable[[], tuple[int, int, float, float | None]], runs: list = runs) -> None:
            if only is None or name in only:
                runs.append((name, fn))

        def local(proc: Any, files: list[str] = files, chunk: int = chunk) -> Callable[[], Any]:
            def go() -> tuple[int, int, float, float]:
                c0 = cpu_seconds()
                t, out = timed(lambda: run_templates({"ds": files}, proc, chunksize=chunk).output)
                return 1, out["ds"]["nevents"], t, cpu_seconds() - c0

            return go

        def bare(files: list[str] = files, chunk: int = chunk) -> tuple[int, int, float, float]:
            c0 = cpu_seconds()
            t, (n, _) = timed(lambda: floor(files, all_cfg, step=chunk))
            return 1, n, t, cpu_seconds() - c0

        if only is None or "floor (uproot+numpy+bh)" in only:
            # The floor does the processor's nominal work: same cells, same weights.
            _, h = floor(files, all_cfg, step=chunk)
            ref = run_templates({"ds": files}, WTemplateProcessor(nominal_cfg), chunksize=chunk).output
            ref = ref["ds"]["templates"][{"component": 0}].values()
            dev = np.max(np.abs(h.values() - ref)) / max(1.0, np.max(np.abs(ref)))
            print(f"{label}: floor vs processor nominal templates, max relative difference {dev:.1e}")
            assert dev < 1e-9, dev

        add("floor (uproot+numpy+bh)", bare)
        add("nominal", local(WTemplateProcessor(nominal_cfg)))
        add("nominal + DNN jets (jet-level)", local(WTemplateProcessor(nominal_cfg, jet_calibration=flat)))
        add("all syst", local(WTemplateProcessor(all_cfg)))
        add("all syst + DNN jets (jet-level)", local(WTemplateProcessor(all_cfg, jet_calibration=flat)))
        if is_toy:

            def read_inputs(files: list[str] = files, chunk: int = chunk) -> tuple[int, int, float, float]:
                c0 = cpu_seconds()
                t, n = timed(lambda: read_branches(files, deep.branches("model"), chunk))
                return 1, n, t, cpu_seconds() - c0

            add("DNN inputs: read only", read_inputs)
            add("nominal + DNN jets", local(WTemplateProcessor(nominal_cfg, jet_calibration=deep)))
            add("all syst + DNN jets", local(WTemplateProcessor(all_cfg, jet_calibration=deep)))

            def cached(cfg: TemplateConfig, warm: bool, files: list[str] = files, chunk: int = chunk) -> Callable:
                proc = WTemplateProcessor(cfg, jet_calibration=deep_cached)
                timed_run = local(proc, files, chunk)

                def go() -> tuple[int, int, float, float]:
                    if not warm:  # a first pass: nothing cached (emptying it is not timed)
                        shutil.rmtree(cache_dir, ignore_errors=True)
                    elif not any(cache_dir.rglob("*.root")):  # a later pass: one pass has filled the cache
                        run_templates({"ds": files}, proc, chunksize=chunk)
                    return timed_run()

                return go

            for cfg_name, cfg in (("nominal", nominal_cfg), ("all syst", all_cfg)):
                add(f"{cfg_name} + DNN jets (cache cold)", cached(cfg, warm=False))
                add(f"{cfg_name} + DNN jets (cache warm)", cached(cfg, warm=True))
            proc = WTemplateProcessor(all_cfg, signal_datasets={"ds"}, coefficients=coef)
            add("all syst + signal split", local(proc))
        for rep in range(repeat):
            for name, fn in runs:
                results.setdefault((label, name), []).append(fn())
                t = results[(label, name)][-1][2]
                print(f"  [{rep + 1}/{repeat}] {label:<12} {name:<32} {t:7.2f} s", flush=True)
        if only is None or "dask" in only:
            for nw in (1, 2):
                with local_cluster(nw) as client:
                    trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
                    assert set(trim.values()) == {None}, trim  # distributed's setting is removed
                    proc = WTemplateProcessor(all_cfg)
                    warm = warm_up(client, files, proc, args.dask_chunksize)
                    print(f"  {label:<12} dask {nw}w warm-up runs: " + ", ".join(f"{t:.2f} s" for t in warm))
                    for rep in range(repeat):
                        t, busy, out = dask_run(client, files, proc, args.dask_chunksize)
                        results.setdefault((label, f"all syst, dask {nw}w"), []).append(
                            (nw, out["ds"]["nevents"], t, busy)
                        )
                        print(f"  [{rep + 1}/{repeat}] {label:<12} dask {nw}w {t:7.2f} s (tasks {busy:.2f} s)")
        if is_toy and args.cold_files and (only is None or "dask cold" in only):
            # A first job on fresh clusters: worker imports and heap growth included.
            links = [str(p) for p in linked_copies(Path(files[0]), args.cold_files)]
            for rep in range(repeat):
                for nw in (1, 2):
                    with local_cluster(nw) as client:
                        t, busy, out = dask_run(client, links, WTemplateProcessor(all_cfg), args.dask_chunksize)
                    n = out["ds"]["nevents"]
                    results.setdefault((label, f"all syst, dask {nw}w cold"), []).append((nw, n, t, busy))
                    print(f"  [{rep + 1}/{repeat}] {label:<12} dask {nw}w, cold, {n} events {t:7.2f} s")

    print(f"\nmedians of {repeat} run(s); chunks: {args.chunksize} (Dask: {args.dask_chunksize})", end="")
    print(f"; cores: {os.cpu_count()}")
    print(
        f"{'sample':<12} {'implementation':<32} {'cores':>5} {'events':>9} {'s':>7} {'ev/s/core':>10} "
        f"{'/floor':>7} {'ev/cpu-s':>10} {'/floor':>7}"
    )
    med: dict[tuple[str, str], tuple[int, int, float, float | None]] = {}
    for key, vals in results.items():
        busy = [v[3] for v in vals if v[3] is not None]
        t = statistics.median(v[2] for v in vals)
        med[key] = (vals[0][0], vals[0][1], t, statistics.median(busy) if busy else None)
    for label, *_ in samples:
        fl = med.get((label, "floor (uproot+numpy+bh)"))
        for (lab, name), (cores, n, t, busy) in med.items():
            if lab != label:
                continue
            rate = n / t / cores
            ratio = f"{rate / (fl[1] / fl[2]):7.2f}" if fl else f"{'-':>7}"
            b = f"{n / busy:10,.0f}" if busy else f"{'':>10}"
            bratio = f"{(n / busy) / (fl[1] / fl[3]):7.2f}" if busy and fl and fl[3] else f"{'':>7}"
            print(f"{label:<12} {name:<32} {cores:>5} {n:>9} {t:>7.2f} {rate:>10,.0f} {ratio} {b} {bratio}")
    print()
    for label, *_ in samples:
        one, two = med.get((label, "all syst, dask 1w")), med.get((label, "all syst, dask 2w"))
        if one and two:
            print(f"{label}: dask 2 workers / 1 worker (wall) = {one[2] / two[2]:.2f} (target >= 1.8)")
            print(
                f"{label}: dask per-core rate from task timings: 1w {one[1] / one[3]:,.0f}, 2w "
                f"{two[1] / two[3]:,.0f} ev/s; 2w busy fraction of 2 x wall = {two[3] / (2 * two[2]):.2f}"
            )
        one, two = med.get((label, "all syst, dask 1w cold")), med.get((label, "all syst, dask 2w cold"))
        if one and two:
            print(
                f"{label}: dask 2 workers / 1 worker (wall), first job of fresh clusters over {one[1]} events "
                f"= {one[2] / two[2]:.2f}"
            )
        fl, nom = med.get((label, "floor (uproot+numpy+bh)")), med.get((label, "nominal"))
        if fl and nom:
            print(
                f"{label}: nominal / floor per core = {fl[2] / nom[2]:.2f} by wall time, {fl[3] / nom[3]:.2f} by CPU "
                "time (target >= 0.8)"
            )
        for base, with_dnn in (
            ("nominal", "nominal + DNN jets"),
            ("all syst", "all syst + DNN jets"),
            ("nominal", "nominal + DNN jets (jet-level)"),
            ("all syst", "all syst + DNN jets (jet-level)"),
        ):
            for suffix, target in ((" (cache warm)", "<= 10%"), (" (cache cold)", "")):
                b, w = med.get((label, base)), med.get((label, with_dnn + suffix))
                r = med.get((label, "DNN inputs: read only"))
                if b and w and target:
                    print(
                        f"{label}: {with_dnn}{suffix}: the correction takes {(w[2] - b[2]) / w[2]:.1%} of the "
                        f"processor's time (target {target})"
                    )
                elif b and w and r:
                    print(
                        f"{label}: {with_dnn}{suffix}: the correction costs {(w[2] - b[2]) / r[2]:.2f} x reading the "
                        f"model's inputs alone (target <= 1.3); the whole first pass {w[2] / r[2]:.2f} x"
                    )
            b, w = med.get((label, base)), med.get((label, with_dnn))
            if b and w:
                print(
                    f"{label}: {with_dnn}: the correction takes {(w[2] - b[2]) / w[2]:.0%} of the processor's time "
                    "(target <= 25%)"
                )
                r = med.get((label, "DNN inputs: read only"))
                if r and "jet-level" not in with_dnn:
                    print(
                        f"{label}: {with_dnn}: reading the model's {len(deep.branches('model'))} input branches "
                        f"takes {r[2]:.2f} s of the correction's {w[2] - b[2]:.2f} s; reading alone would be "
                        f"{r[2] / (b[2] + r[2]):.0%} of the processor's time"
                    )
    if only is None or "full model" in only:
        full_model(work, n_toy, repeat)


def full_model(work: Path, n_toy: int, repeat: int) -> None:
    """The analysis's systematics model (``TemplateConfig().with_full_model()``) on toy W events with 103 PDF members:
    the processor's rate per core against the default model on the same file, the size of the accumulated output
    (pickled, as a worker sends it), the workspace build and the fit (fit + covariance + grouped impacts, ``wfit fit``
    in a subprocess)."""
    import pickle

    from wfit.processors import Sample, build_workspace

    # The toy generator's default 33 LHEPdfWeight members, and NNPDF3.1's 103 (100 Hessian + 2 alpha_s + nominal).
    small = work / f"toy_w_pdf33_{n_toy}.root"
    if not small.exists():
        write_toy(small, n_toy, process="W", seed=2, config=ToyConfig(n_pdf=33), block_size=25_000)
    path = work / f"toy_w_pdf103_{n_toy}.root"
    if not path.exists():
        write_toy(path, n_toy, process="W", seed=2, config=ToyConfig(n_pdf=103), block_size=25_000)
    base_cfg = TemplateConfig()
    full_cfg = base_cfg.with_full_model()
    coef = AngularCoefficients.constant(base_cfg, 0.2, -0.6)
    procs = {
        "default model": WTemplateProcessor(base_cfg, signal_datasets={"W"}, coefficients=coef),
        "full model": WTemplateProcessor(full_cfg, signal_datasets={"W"}, coefficients=coef),
    }
    times: dict[str, list[float]] = {}
    outputs: dict[str, Any] = {}
    for rep in range(repeat):
        for name, proc in procs.items():
            t, outputs[name] = timed(lambda proc=proc: run_templates({"W": [str(path)]}, proc).output)
            times.setdefault(name, []).append(t)
            print(f"  [{rep + 1}/{repeat}] toy W, 103 PDF members {name:<14} {t:7.2f} s", flush=True)
        t33, _ = timed(lambda: run_templates({"W": [str(small)]}, procs["full model"]).output)
        times.setdefault("full model, 33 PDF members", []).append(t33)
        print(f"  [{rep + 1}/{repeat}] toy W, 33 PDF members full model     {t33:7.2f} s", flush=True)
    rates = {name: n_toy / statistics.median(ts) for name, ts in times.items()}
    sizes = {name: len(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)) for name, out in outputs.items()}
    n_syst = {name: len(out["W"]["templates_syst"].axes["syst"]) for name, out in outputs.items()}
    ws = work / "full_model.hdf5"
    t_build, summary = timed(
        lambda: build_workspace(outputs["full model"], ws, samples={"W": Sample("signal", 20000.0)},
                                config=full_cfg, lumi=n_toy / 20000.0)  # fmt: skip
    )
    cmd = ["wfit", "fit", str(ws), "-o", str(work / "full_model_fit.hdf5"), "--impacts", "-q"]
    t_fit, fit = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
    for name in procs:
        print(f"toy W, 103 PDF members, {name}: {rates[name]:,.0f} events/s per core, {n_syst[name]} histograms on the "
              f"syst axis, accumulated output {sizes[name] / 2**30:.2f} GiB")  # fmt: skip
    print(f"full model / default model rate = {rates['full model'] / rates['default model']:.2f}; full model "
          f"{rates['full model']:,.0f} events/s per core with 103 PDF members, "
          f"{rates['full model, 33 PDF members']:,.0f} with 33 (target >= 100k); output "
          f"{sizes['full model'] / 2**30:.2f} GiB (target < 1.5)")  # fmt: skip
    print(f"full model workspace: {len(summary['systematics'])} nuisances, {len(summary['pois'])} POIs, built in "
          f"{t_build:.1f} s (target < 60 s), {ws.stat().st_size / 1e6:.0f} MB; wfit fit --impacts {t_fit:.1f} s "
          f"(exit {fit.returncode})")  # fmt: skip


if __name__ == "__main__":
    main()
