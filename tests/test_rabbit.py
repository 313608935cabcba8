"""Agreement with rabbit 0.2.5 (the reference fitter) on the same workspaces."""

from __future__ import annotations

import numpy as np
import pytest
import rabbit  # noqa: F401  (a test dependency: run or fail, never skip)

from tests.builders import build_random_model, run_rabbit, write_rabbit, write_wfit
from wfit.fitter import fit_workspace

pytestmark = [
    # rabbit's TensorWriter (through wums) opens os.devnull for a git call and never closes it
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _compare(ours, theirs):
    assert set(theirs) == set(ours.names)
    for i, name in enumerate(ours.names):
        v, e = theirs[name]
        np.testing.assert_allclose(ours.values[i], v, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ours.errors[i], e, rtol=1e-6, err_msg=name)


# two of the four combinations in the default run, the other two (each a rabbit fit of about 15 s) in the slow step
@pytest.mark.parametrize(
    ("bb_lite", "asymmetric"),
    [
        pytest.param(True, True, id="bblite-asymmetric"),
        pytest.param(False, False, id="nobb-symmetric"),
        pytest.param(True, False, id="bblite-symmetric", marks=pytest.mark.slow),
        pytest.param(False, True, id="nobb-asymmetric", marks=pytest.mark.slow),
    ],
)
def test_fit_of_rabbit_written_workspace_agrees(tmp_path, asymmetric, bb_lite):
    m = build_random_model(seed=21, asymmetric=asymmetric)
    path = str(tmp_path / "rabbit_ws.hdf5")
    write_rabbit(m, path)
    theirs = run_rabbit(path, str(tmp_path), *([] if bb_lite else ["--noBinByBinStat"]))
    ours = fit_workspace(path, bb_lite=bb_lite, tol=1e-16, trust_pickle=False)
    assert ours.ok
    _compare(ours, theirs)


@pytest.mark.parametrize(
    "asymmetric", [pytest.param(True, id="asymmetric"), pytest.param(False, id="symmetric", marks=pytest.mark.slow)]
)
def test_rabbit_fits_wfit_written_workspace_to_the_same_result(tmp_path, asymmetric):
    m = build_random_model(seed=5, asymmetric=asymmetric)
    path = str(tmp_path / "wfit_ws.hdf5")
    write_wfit(m, path, rabbit_meta=True)
    theirs = run_rabbit(path, str(tmp_path))
    ours = fit_workspace(path, tol=1e-16)
    _compare(ours, theirs)


def test_wfit_and_rabbit_writers_store_the_same_arrays(tmp_path):
    """The same model through both writers: identical tensors once processes and nuisances are matched."""
    from wfit.workspace import read_workspace

    m = build_random_model(seed=3, asymmetric=True)
    write_wfit(m, str(tmp_path / "a.hdf5"))
    write_rabbit(m, str(tmp_path / "b.hdf5"))
    a = read_workspace(str(tmp_path / "a.hdf5"))
    # rabbit's channel layout lives only in its pickle: read it through the explicit trust option
    b = read_workspace(str(tmp_path / "b.hdf5"), trust_pickle=True)
    assert {c.name for c in a.channels} == {c.name for c in b.channels}
    # rabbit stores unmasked channels in reverse order of add_channel: match bins by channel
    bins = np.concatenate([np.arange(a.channel(c.name).start, a.channel(c.name).stop) for c in b.channels])
    pa = [a.procs.index(p) for p in b.procs]
    sa = [a.systs.index(s) for s in b.systs]

    def full_half(ws):
        out = np.zeros(ws.logk_avg.shape)
        out[:, :, ws.asym_idx] = ws.logk_halfdiff
        return out

    np.testing.assert_array_equal(a.norm[bins][:, pa], b.norm)
    np.testing.assert_array_equal(a.sumw2[bins][:, pa], b.sumw2)
    np.testing.assert_allclose(a.logk_avg[bins][:, pa][:, :, sa], b.logk_avg, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(full_half(a)[bins][:, pa][:, :, sa], full_half(b), rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(a.data_obs, b.data_obs[np.argsort(bins[: a.nbins])])
