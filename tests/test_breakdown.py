"""Impacts against rabbit 0.2.5's --doImpacts on the same workspace."""

from __future__ import annotations

import numpy as np
import pytest
import rabbit  # noqa: F401  (a test dependency: run or fail, never skip)

from tests.builders import build_random_model, write_rabbit
from wfit.fitter import Likelihood, fit
from wfit.fitter.breakdown import impacts
from wfit.workspace import read_workspace

pytestmark = [
    # rabbit's TensorWriter (through wums) opens os.devnull for a git call and never closes it
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _rabbit_impacts(workspace, outdir, *extra):
    import os
    import subprocess
    import sys

    from rabbit.io_tools import get_fitresult

    env = dict(os.environ, GIT_DIR=os.path.join(outdir, "no-git"))
    exe = os.path.join(os.path.dirname(sys.executable), "rabbit_fit")
    subprocess.run([exe, workspace, "-t", "0", "--unblind", "--allowNegativePOI", "--doImpacts", "-o", outdir,
                    "--outname", "r.hdf5", *extra], env=env, check=True, capture_output=True)
    fr = get_fitresult(os.path.join(outdir, "r.hdf5"))
    return fr["impacts"].get(), fr["impacts_grouped"].get()


@pytest.mark.parametrize(
    "bb_lite", [pytest.param(True, id="bblite"), pytest.param(False, id="nobb", marks=pytest.mark.slow)]
)
def test_impacts_equal_rabbit(tmp_path, bb_lite):
    m = build_random_model(seed=21)
    path = str(tmp_path / "ws.hdf5")
    write_rabbit(m, path)
    h_imp, h_grp = _rabbit_impacts(path, str(tmp_path), *([] if bb_lite else ["--noBinByBinStat"]))
    ws = read_workspace(path)
    ll = Likelihood(ws, bb_lite=bb_lite)
    res = fit(ll, tol=1e-16)
    imp = impacts(ll, res)
    rows = [imp.pois.index(str(p)) for p in h_imp.axes[0]]
    cols = [imp.names.index(str(c)) for c in h_imp.axes[1]]
    # 1e-6 relative to each POI's scale of impacts (tiny impacts carry the minimisers' last digits)
    scale = 1e-6 * np.max(np.abs(h_imp.values()), axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(imp.values[np.ix_(rows, cols)] - h_imp.values()), scale + 0 * h_imp.values())
    gcols = [imp.groups.index(str(c)) for c in h_grp.axes[1]]
    np.testing.assert_array_less(np.abs(imp.grouped[np.ix_(rows, gcols)] - h_grp.values()), scale + 0 * h_grp.values())
    # an independent identity: a nuisance's own group impact is |its per-nuisance impact|
    for g in ("shape0", "lumi"):
        np.testing.assert_allclose(imp.grouped[:, imp.groups.index(g)], np.abs(imp.values[:, imp.names.index(g)]),
                                   rtol=1e-10)
