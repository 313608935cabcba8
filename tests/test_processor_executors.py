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


def _assert_identical(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for ds in a:
        ra, rb = a[ds], b[ds]
        assert set(ra) == set(rb)
        for key in ("cutflow", "cutflow_sumw", "sumw", "sumw_sign", "nevents", "skipped", "kind"):
            assert ra[key] == rb[key], (ds, key)
        np.testing.assert_array_equal(ra["templates"].values(flow=True), rb["templates"].values(flow=True))
        np.testing.assert_array_equal(
            ra["templates"].variances(flow=True), rb["templates"].variances(flow=True)
        )
        sa, sb = ra["templates_syst"], rb["templates_syst"]
        assert set(sa.axes["syst"]) == set(sb.axes["syst"])
        for name in sa.axes["syst"]:
            np.testing.assert_array_equal(
                sa[{"syst": name}].view(flow=True), sb[{"syst": name}].view(flow=True)
            )


def test_executors_identical(fileset: dict[str, list[str]], dask_client: Any) -> None:
    p = _processor()
    it = run_templates(fileset, p, executor="iterative")
    fu = run_templates(fileset, p, executor="futures", workers=2)
    dk = run_templates(fileset, p, executor="dask", client=dask_client)
    # Sanity: the signal is decomposed and the toy has every kind of variation.
    w = it["W"]
    assert w["kind"] == {"signal"} and w["templates"].sum().value > 0
    systs = set(w["templates_syst"].axes["syst"])
    assert {"nominal", "prefireUp", "pileupDown", "QCDscale_muRUp", "pdf4", "muonResolution_eta0Up"} <= systs
    _assert_identical(it, fu)
    _assert_identical(it, dk)


def test_helicity_components_sum_to_inclusive(fileset: dict[str, list[str]]) -> None:
    cfg = TemplateConfig()
    sig = run_templates({"W": fileset["W"]}, _processor())["W"]["templates"]
    inc = run_templates({"W": fileset["W"]}, WTemplateProcessor(cfg))["W"]["templates"]
    # The three helicity weights of an event sum to one: summing the components gives the inclusive sample.
    np.testing.assert_allclose(
        sig.values(flow=True).sum(axis=0), inc.values(flow=True)[0], rtol=1e-10, atol=1e-10
    )
