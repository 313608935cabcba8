"""Iterative, futures and Dask executors give identical outputs (real files and a toy W signal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wfit.processors import (
    AngularCoefficients,
    TemplateConfig,
    ToyConfig,
    WTemplateProcessor,
    run_templates,
    write_toy,
)

# coffea's NanoAODSchema warns about optional cross-reference branches that a file lacks (v15, toys)
# and about the Photon mass/charge it overwrites in v15: harmless for this selection.

DATA = Path(__file__).parent / "data" / "nanoaod"


@pytest.fixture(scope="module")
def fileset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    d = tmp_path_factory.mktemp("toyexec")
    cfg = ToyConfig(n_pdf=5)
    write_toy(d / "w1.root", 4000, process="W", seed=1, config=cfg)
    write_toy(d / "w2.root", 4000, process="W", seed=2, config=cfg)
    return {
        "W": [str(d / "w1.root"), str(d / "w2.root")],
        "tt": [str(DATA / "nano_tt_v12.root"), str(DATA / "nano_dy_empty.root")],
        "tt15": [str(DATA / "nano_tt_v15.root")],
        "dy": [str(DATA / "nano_dy.root")],
        "data": [str(DATA / "nano_dimuon.root")],
    }


def _processor() -> WTemplateProcessor:
    cfg = TemplateConfig()
    return WTemplateProcessor(
        cfg, signal_datasets={"W"}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.5)
    )


def _assert_identical(a: dict, b: dict, rtol: float = 0.0) -> None:
    """Equal outputs: counts exactly, histograms to ``rtol`` (0: bit for bit)."""
    assert set(a) == set(b)
    for ds in a:
        ra, rb = a[ds], b[ds]
        assert set(ra) == set(rb)
        for key in ("cutflow", "cutflow_sumw", "sumw", "sumw_sign", "nevents", "skipped", "kind"):
            assert ra[key] == rb[key], (ds, key)
        for what in ("values", "variances"):
            np.testing.assert_allclose(
                getattr(ra["templates"], what)(flow=True), getattr(rb["templates"], what)(flow=True), rtol=rtol, atol=0
            )
        sa, sb = ra["templates_syst"], rb["templates_syst"]
        assert set(sa.axes["syst"]) == set(sb.axes["syst"])
        for name in sa.axes["syst"]:
            va, vb = sa[{"syst": name}].view(flow=True), sb[{"syst": name}].view(flow=True)
            for field in ("value", "variance"):
                np.testing.assert_allclose(va[field], vb[field], rtol=rtol, atol=0)


def test_executors_identical(fileset: dict[str, list[str]], dask_client: Any) -> None:
    p = _processor()
    it = run_templates(fileset, p, executor="iterative").output
    fu = run_templates(fileset, p, executor="futures", workers=2).output
    dk = run_templates(fileset, p, executor="dask", client=dask_client).output
    # Sanity: the signal is decomposed and the toy has every kind of variation.
    w = it["W"]
    assert w["kind"] == {"signal"} and w["templates"].sum().value > 0
    systs = set(w["templates_syst"].axes["syst"])
    assert {"nominal", "prefireUp", "pileupDown", "QCDscale_muRUp", "pdf4", "muonResolution_eta0Up"} <= systs
    _assert_identical(it, fu)
    _assert_identical(it, dk)


def test_helicity_components_sum_to_inclusive(fileset: dict[str, list[str]]) -> None:
    cfg = TemplateConfig()
    sig = run_templates({"W": fileset["W"]}, _processor()).output["W"]["templates"]
    inc = run_templates({"W": fileset["W"]}, WTemplateProcessor(cfg)).output["W"]["templates"]
    # The three helicity weights of an event sum to one: summing the components gives the inclusive sample.
    np.testing.assert_allclose(
        sig.values(flow=True).sum(axis=0), inc.values(flow=True)[0], rtol=1e-10, atol=1e-10
    )


def test_run_templates_equals_coffea_runner_on_dask(fileset: dict[str, list[str]], dask_client: Any) -> None:
    """wfit's runner against coffea's own Runner with its DaskExecutor on the same cluster (the reference).

    coffea adds the chunk outputs in a tree on the workers and wfit in plan order on the client: the sums may
    differ in the last bits (rtol 1e-12); counts, cutflows and every histogram bin must agree.
    """
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    p = _processor()
    ours = run_templates(fileset, p, client=dask_client, chunksize=3000).output
    runner = processor.Runner(
        executor=processor.DaskExecutor(client=dask_client, status=False), schema=NanoAODSchema, chunksize=3000
    )
    theirs = runner(fileset, p, treename="Events")
    assert ours["W"]["nevents"] == 8000
    _assert_identical(ours, theirs, rtol=1e-12)
