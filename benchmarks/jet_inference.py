"""Jet calibration inference throughput: onnxruntime against Keras, deployed (default) against large model.

Writes a seeded synthetic data set, trains the deployed model (``configs/default.yaml``) and the large
reference model (``configs/large.yaml``: 3 types padded to 64/64/8, per-constituent 64-64-64, head
128-128-1) on it with the same seed, exports both to ONNX and prints

* jets/s/core for onnxruntime with 1 and 2 threads and for Keras ``predict_on_batch``, for batches of 1k,
  10k and 100k jets (inference in chunks of 10k), every number including the padding of awkward
  constituents into arrays (:func:`wfit.calib.build_inputs`); onnxruntime both as deployed
  (:class:`wfit.calib.OnnxCalibrator`: jets grouped by their own constituent counts rounded up to 4 slots, in
  calls of at most 2048, which makes every jet's output independent of the others) and unsorted (each 10k
  chunk padded to its largest count, one call), Keras unsorted;
* the largest |ONNX - Keras| difference of each model;
* the resolution of each model against the generator's floor, and what the deployed model loses.

Run::

    python benchmarks/jet_inference.py            # a few minutes on 2 cores
    python benchmarks/jet_inference.py --quick    # about a minute, fewer jets and epochs
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import awkward as ak
import numpy as np


def _best_rate(fn: Callable[[], object], n_jets: int, repeat: int) -> float:
    """Best of ``repeat`` runs, in jets per second."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_jets / best


def _tile(arrays: dict, n: int) -> dict:
    """The first ``n`` jets, repeating the sample if it is smaller."""
    have = len(arrays["pt"])
    reps = -(-n // have)
    out = {}
    for k, v in arrays.items():
        if isinstance(v, ak.Array):
            out[k] = ak.to_packed(ak.concatenate([v] * reps)[:n])
        else:
            out[k] = np.concatenate([v] * reps)[:n]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jets and epochs (about a minute)")
    parser.add_argument("--jets", type=int, help="synthetic jets to generate (default 100k, quick 20k)")
    parser.add_argument("--epochs", type=int, help="training epochs (default 6, quick 2)")
    parser.add_argument("--workdir", help="directory for data and models (default: a temporary one)")
    args = parser.parse_args()
    n_jets = args.jets or (20_000 if args.quick else 100_000)
    epochs = args.epochs or (2 if args.quick else 6)
    batches = (1_000, 10_000, 100_000)
    repeat = 2 if args.quick else 3

    from wfit.calib import (
        OnnxCalibrator,
        build_inputs,
        export_onnx,
        load_config,
        load_model,
        load_truth,
        open_data_dir,
        train_model,
        write_synthetic,
    )
    from wfit.calib.config import default_config_path
    from wfit.calib.data import iterate
    from wfit.calib.features import chunks
    from wfit.calib.model import predict as keras_predict
    from wfit.calib.report import evaluate, summarise

    workdir = args.workdir or tempfile.mkdtemp(prefix="wfit-jet-inference-")
    data_dir = os.path.join(workdir, "data")
    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(data_dir, "truth.yaml")):
        write_synthetic(data_dir, n_jets, n_shards=10, seed=2026)
    truth = load_truth(data_dir)
    data = open_data_dir(data_dir)
    print(f"data: {data.num_jets} synthetic jets in {data_dir} ({time.perf_counter() - t0:.0f} s)")

    models = {}
    for name in ("default", "large"):
        t = time.perf_counter()
        cfg = load_config(
            default_config_path(name),
            overrides={
                "train": {"epochs": epochs, "validation_fraction": 0.1, "test_fraction": 0.1, "seed": 1}
            },
        )
        result = train_model(data, os.path.join(workdir, name), cfg, verbose=0)
        keras_model = load_model(result.model_path)
        onnx_path = export_onnx(keras_model, result.spec, os.path.join(workdir, name, "model.onnx"))
        models[name] = (keras_model, result, onnx_path)
        print(
            f"trained {name}: {keras_model.count_params()} parameters, best val_loss "
            f"{min(result.history['val_loss']):.5f}, {time.perf_counter() - t:.0f} s"
        )

    test_shards = models["default"][1].shards["test"]
    branches = sorted({b for _, r, _ in models.values() for b in r.spec.branches})
    sample = next(iterate(test_shards, branches, step_size=100_000))

    print("\nResolution on the test split: (q84 - q16) / (2 median) of pt_corr / pt_gen")
    edges = (30.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
    resolution = {}
    for name, (_, _, onnx_path) in models.items():
        values = evaluate(onnx_path, test_shards)
        rows = summarise(values, pt_edges=edges, methods=("dnn", "standard"))
        resolution[name] = np.array(
            [r["resolution"] for r in rows if r["method"] == "dnn" and r["variable"] == "pt_gen"]
        )
        resolution["standard"] = np.array(
            [r["resolution"] for r in rows if r["method"] == "standard" and r["variable"] == "pt_gen"]
        )
        spread = [r["median"] for r in rows if r["method"] == "dnn" and r["variable"] == "flavour_spread"]
        std_spread = [
            r["median"] for r in rows if r["method"] == "standard" and r["variable"] == "flavour_spread"
        ]
        resolution[f"{name}_spread"] = np.array(spread)
        resolution["standard_spread"] = np.array(std_spread)
        floor = truth.floor_in_bins(values["pt_gen"], np.array(edges))
    print(
        f"{'pt_gen bin [GeV]':>18} {'floor':>7} {'default':>8} {'large':>7} {'standard':>9} "
        f"{'default/large':>14} {'large/floor':>12}"
    )
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        d, g, s = resolution["default"][i], resolution["large"][i], resolution["standard"][i]
        print(
            f"{f'[{lo:g}, {hi:g})':>18} {floor[i]:7.4f} {d:8.4f} {g:7.4f} {s:9.4f} {d / g:14.3f} "
            f"{g / floor[i]:12.3f}"
        )
    lost = np.mean(resolution["default"] / resolution["large"]) - 1
    print(
        f"deployed model resolution relative to large: {100 * lost:+.1f}% (mean over bins); "
        f"default/floor {np.mean(resolution['default'] / floor):.3f}, large/floor "
        f"{np.mean(resolution['large'] / floor):.3f}, "
        f"standard/floor {np.mean(resolution['standard'] / floor):.3f}"
    )
    print(
        "flavour spread of the median response (mean over bins): "
        f"default {100 * np.mean(resolution['default_spread']):.2f}%, large "
        f"{100 * np.mean(resolution['large_spread']):.2f}%, "
        f"standard {100 * np.mean(resolution['standard_spread']):.2f}%"
    )

    print("\nONNX vs Keras on the test sample:")
    for name, (keras_model, result, onnx_path) in models.items():
        few = {k: v[:5000] for k, v in sample.items()}
        diff = np.abs(OnnxCalibrator(onnx_path).predict(few) - keras_predict(keras_model, few, result.spec))
        print(f"  {name}: max |ONNX - Keras| = {diff.max():.2e} over {len(diff)} jets")

    cores = os.cpu_count() or 1
    print(
        f"\nThroughput, jets/s/core ({cores} cores; Keras uses all of them; padding included; chunks of 10k)"
    )
    header = (
        f"{'model':>8} {'batch':>7} {'pad only':>9} {'ORT1 unsorted':>14} {'ORT 1 thr':>10} "
        f"{'ORT 2 thr':>10} {'Keras':>8} {'ORT1/Keras':>11} {'ORT2/ORT1':>10} {'sorted/unsorted':>16}"
    )
    print(header)
    rates: dict[tuple[str, int], dict[str, float]] = {}
    for name, (keras_model, result, onnx_path) in models.items():
        spec = result.spec
        ort1 = OnnxCalibrator(onnx_path, threads=1, chunk_size=10_000)
        ort2 = OnnxCalibrator(onnx_path, threads=2, chunk_size=10_000)
        ort1.predict({k: v[:10] for k, v in sample.items()})  # create the sessions outside the timing
        ort2.predict({k: v[:10] for k, v in sample.items()})

        def unsorted(a: dict, o: OnnxCalibrator = ort1, s: object = spec) -> list:
            """Each 10k chunk padded to its largest count and run in one call."""
            out = []
            for c in chunks(a, 10_000):
                x = build_inputs(c, s)
                out.append(o.session.run(["log_correction"], {k: x[k] for k in s.input_names})[0])
            return out

        for n in batches:
            arrays = _tile(sample, n)
            r = {
                "pad": _best_rate(
                    lambda a=arrays, s=spec: [build_inputs(c, s) for c in chunks(a, 10_000)], n, repeat
                ),
                "unsorted": _best_rate(lambda a=arrays: unsorted(a), n, repeat),
                "ort1": _best_rate(lambda a=arrays, o=ort1: o.predict(a), n, repeat),
                "ort2": _best_rate(lambda a=arrays, o=ort2: o.predict(a), n, repeat) / 2,
                "keras": _best_rate(
                    lambda a=arrays, m=keras_model, s=spec: keras_predict(m, a, s),
                    n,
                    1 if n >= 100_000 else repeat,
                )
                / cores,
            }
            rates[(name, n)] = r
            print(
                f"{name:>8} {n:>7} {r['pad']:9.0f} {r['unsorted']:14.0f} {r['ort1']:10.0f} {r['ort2']:10.0f} "
                f"{r['keras']:8.0f} {r['ort1'] / r['keras']:11.2f} {r['ort2'] / r['ort1']:10.2f} "
                f"{r['ort1'] / r['unsorted']:16.2f}"
            )
    print("\nRatios deployed / large (jets/s/core):")
    for n in batches:
        d, g = rates[("default", n)], rates[("large", n)]
        print(
            f"  batch {n:>7}: ORT 1 thread {d['ort1'] / g['ort1']:.2f}x, "
            f"ORT 2 threads {d['ort2'] / g['ort2']:.2f}x, "
            f"Keras {d['keras'] / g['keras']:.2f}x"
        )
    best = max(rates[("default", n)]["ort1"] for n in batches)
    print(
        f"\ndeployed model, onnxruntime 1 thread: best {best:.0f} jets/s/core (target >= 50000: "
        f"{'met' if best >= 50_000 else 'NOT met'})"
    )
    print(f"total time {time.perf_counter() - t0:.0f} s; files in {workdir}")


if __name__ == "__main__":
    main()
