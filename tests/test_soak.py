"""Soak: the main chain (process, workspace, fit) repeated 20 times on one local cluster gives identical results
each time, and the workers' memory after the last run is within 10% of what it was after the second (the first
run imports and compiles; a leak would grow with every run).

Reference: the first run's histograms and fit, bit for bit. The memory figures are printed (``-s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parent / "data" / "nanoaod"
RUNS = 20


def _rss(client: Any) -> dict[str, int]:
    import psutil

    return client.run(lambda: psutil.Process().memory_info().rss)


def test_chain_repeated_is_identical_and_does_not_grow(tmp_path: Path) -> None:
    from wfit.pipeline import local_chain_cluster, run_chain
    from wfit.processors import AngularCoefficients, Sample, TemplateConfig, ToyConfig, WTemplateProcessor, write_toy

    edges = (0.0, 1.5)
    cfg = TemplateConfig(absy_edges=edges, eta_bins=(12, -2.4, 2.4), pt_bins=(10, 26.0, 56.0), eff_groups=4, pdf=False)
    toy = ToyConfig(absy_edges=edges, a0=(0.1, 0.3), a4=(-0.5, -1.0))
    files = []
    for i in range(2):
        files.append(str(tmp_path / f"w{i}.root"))
        write_toy(files[-1], 20_000, process="W", seed=300 + i, config=toy)
    fileset = {"W": files, "ttbar": [str(DATA / "nano_tt_v12.root")]}
    proc = WTemplateProcessor(cfg, signal_datasets={"W"}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.5))
    samples = {"W": Sample("signal", xsec=1.0), "ttbar": Sample("background", xsec=20.0)}

    memory: list[dict[str, int]] = []
    first = None
    with local_chain_cluster(cpu_workers=2, gpu_workers=1) as client:
        for i in range(RUNS):
            chain = run_chain(
                client, fileset, proc, samples=samples, lumi=4000.0, workdir=tmp_path / f"run{i}", pseudo_data=7,
                status=False, chunksize=10_000,
            )  # fmt: skip
            assert chain.fit.ok, i
            memory.append(_rss(client))
            if first is None:
                first = chain
                continue
            for ds in fileset:
                for name in ("templates", "templates_syst"):
                    np.testing.assert_array_equal(
                        chain.output[ds][name].values(flow=True), first.output[ds][name].values(flow=True)
                    )
            np.testing.assert_array_equal(chain.fit.values, first.fit.values)
            np.testing.assert_array_equal(chain.fit.covariance, first.fit.covariance)
            assert chain.fit.nll == first.fit.nll
    second, last = sum(memory[1].values()), sum(memory[-1].values())
    print(f"\nworkers' RSS after run 2: {second / 2**20:.0f} MiB, after run {RUNS}: {last / 2**20:.0f} MiB "
          f"(ratio {last / second:.3f})")  # fmt: skip
    assert set(memory[-1]) == set(memory[1])  # no worker was lost or restarted
    per_worker = {w: [m[w] // 2**20 for m in memory] for w in memory[-1]}
    assert last <= 1.10 * second, per_worker
