"""The workspace format: round trips, the sparse variant, and clear errors for bad files."""

from __future__ import annotations

import shutil

import h5py
import hist
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.builders import build_random_model, write_wfit
from wfit.workspace import LOGK_EPSILON, WorkspaceError, WorkspaceWriter, read_workspace

finite = st.floats(min_value=0.5, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    nbins=st.integers(1, 6),
    nproc=st.integers(1, 4),
    data=st.data(),
)
def test_write_read_round_trip_is_identity(tmp_path, nbins, nproc, data):
    ax = hist.axis.Variable(np.cumsum(np.r_[0.0, np.arange(1, nbins + 1)]), name="pt")
    noms = [data.draw(arrays(np.float64, nbins, elements=finite)) for _ in range(nproc)]
    vars_ = [data.draw(arrays(np.float64, nbins, elements=finite)) for _ in range(nproc)]
    ups = [n * data.draw(arrays(np.float64, nbins, elements=st.floats(0.5, 2.0))) for n in noms]
    downs = [n * data.draw(arrays(np.float64, nbins, elements=st.floats(0.5, 2.0))) for n in noms]
    kappa = data.draw(st.floats(1.001, 2.0))
    obs = data.draw(arrays(np.float64, nbins, elements=st.integers(0, 1000).map(float)))
    w = WorkspaceWriter()
    w.add_channel("sr", [ax])
    for i in range(nproc):
        w.add_process(f"p{i}", "sr", noms[i], signal=i == 0, variances=vars_[i])
        w.add_shape_systematic("shape", f"p{i}", "sr", ups[i], downs[i])
    w.add_norm_systematic("lumi", [f"p{i}" for i in range(nproc)], "sr", kappa)
    w.add_data("sr", obs)
    path = str(tmp_path / f"rt_{nbins}_{nproc}.hdf5")
    w.write(path)
    ws = read_workspace(path)
    assert ws.procs == [f"p{i}" for i in range(nproc)] and ws.signals == ["p0"]
    assert ws.systs == ["shape", "lumi"]
    np.testing.assert_array_equal(ws.norm, np.stack(noms, axis=1))
    np.testing.assert_array_equal(ws.sumw2, np.stack(vars_, axis=1))
    np.testing.assert_array_equal(ws.data_obs, obs)
    lup = np.log(np.stack(ups, 1) / np.stack(noms, 1))
    ldn = -np.log(np.stack(downs, 1) / np.stack(noms, 1))
    np.testing.assert_allclose(ws.logk_avg[:, :, 0], 0.5 * (lup + ldn), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ws.logk_avg[:, :, 1], np.log(kappa), rtol=1e-14)
    assert ws.channels[0].axes[0]["edges"] == list(ax.edges)
    if ws.logk_halfdiff is not None:
        assert list(ws.asym_idx) == [0]
        np.testing.assert_allclose(ws.logk_halfdiff[:, :, 0], 0.5 * (lup - ldn), rtol=1e-14, atol=1e-15)
    # writing what was read gives the same arrays again
    w2 = WorkspaceWriter()
    w2.add_channel("sr", [ax])
    for i in range(nproc):
        w2.add_process(f"p{i}", "sr", ws.norm[:, i], signal=i == 0, variances=ws.sumw2[:, i])
    w2.add_data("sr", ws.data_obs)
    w2.write(path + "2")
    ws2 = read_workspace(path + "2")
    np.testing.assert_array_equal(ws2.norm, ws.norm)
    np.testing.assert_array_equal(ws2.sumw2, ws.sumw2)


def test_scalar_kappa_reaches_every_process_and_asymmetric_lnn_is_kept(tmp_path):
    w = WorkspaceWriter()
    ax = hist.axis.Regular(2, 0, 1, name="x")
    w.add_channel("c", [ax])
    for p in ("a", "b", "c"):
        w.add_process(p, "c", np.array([10.0, 20.0]))
    w.add_norm_systematic("lumi", ["a", "b", "c"], "c", 1.05)
    w.add_norm_systematic("xs", ["b", "c"], "c", (1.2, 0.9))
    w.add_data("c", np.array([30.0, 60.0]))
    w.write(tmp_path / "k.hdf5")
    ws = read_workspace(tmp_path / "k.hdf5")
    np.testing.assert_allclose(ws.logk_avg[:, :, 0], np.log(1.05))
    lup, ldn = np.log(1.2), -np.log(0.9)
    np.testing.assert_allclose(ws.logk_avg[:, 1:, 1], 0.5 * (lup + ldn))
    np.testing.assert_allclose(ws.logk_halfdiff[:, 1:, 0], 0.5 * (lup - ldn))
    np.testing.assert_array_equal(ws.logk_avg[:, 0, 1], 0.0)


def test_vanishing_variation_and_negative_bins_policy(tmp_path):
    w = WorkspaceWriter()
    ax = hist.axis.Regular(3, 0, 1, name="x")
    w.add_channel("c", [ax])
    w.add_process("a", "c", np.array([-2.0, 5.0, 5.0]))
    w.add_shape_systematic("s", "a", "c", np.array([1.0, 0.0, 10.0]))
    w.add_data("c", np.array([1.0, 5.0, 5.0]))
    w.write(tmp_path / "n.hdf5")
    ws = read_workspace(tmp_path / "n.hdf5")
    assert w.clipped_negative_bins == {"c/a": 1}
    assert ws.meta["clipped_negative_bins"] == {"c/a": 1}
    np.testing.assert_array_equal(ws.norm[:, 0], [0.0, 5.0, 5.0])
    np.testing.assert_allclose(ws.logk_avg[:, 0, 0], [0.0, LOGK_EPSILON, np.log(2.0)])


def test_sparse_matches_dense(tmp_path):
    m = build_random_model(seed=4)
    write_wfit(m, str(tmp_path / "d.hdf5"))
    write_wfit(m, str(tmp_path / "s.hdf5"), sparse=True)
    d, s = read_workspace(tmp_path / "d.hdf5"), read_workspace(tmp_path / "s.hdf5")
    with h5py.File(tmp_path / "s.hdf5") as f:
        assert "hnorm" not in f and "hlogk_sparse" in f
    np.testing.assert_array_equal(d.norm, s.norm)
    np.testing.assert_array_equal(d.logk_avg, s.logk_avg)
    np.testing.assert_array_equal(d.logk_halfdiff, s.logk_halfdiff)
    np.testing.assert_array_equal(d.asym_idx, s.asym_idx)


def test_masked_channel_metadata(tmp_path):
    m = build_random_model(seed=2)
    write_wfit(m, str(tmp_path / "m.hdf5"))
    ws = read_workspace(tmp_path / "m.hdf5")
    names = [c.name for c in ws.channels]
    assert names == ["ch0", "ch1", "xsec"]
    assert [c.masked for c in ws.channels] == [False, False, True]
    assert ws.nbins == 20 and ws.nbinsfull == 22
    with h5py.File(tmp_path / "m.hdf5") as f:
        assert "meta" not in f  # no pickle unless asked for


def test_failed_write_leaves_no_partial_file(tmp_path):
    from wfit.atomic import atomic_write_hdf5

    path = tmp_path / "out.hdf5"
    write_wfit(build_random_model(seed=1), str(path))
    before = path.read_bytes()

    def body(f):
        f.create_dataset("x", data=np.arange(3))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_hdf5(path, body)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.hdf5"]


# ------------------------------------------------------------------------------ bad inputs
def _mutate_delete(f, name):
    del f[name]


def _mutate_replace(f, name, arr, shape=None):
    del f[name]
    d = f.create_dataset(name, data=arr)
    d.attrs["original_shape"] = np.array(arr.shape if shape is None else shape)


BAD = {
    "missing hsysts": (lambda f: _mutate_delete(f, "hsysts"), "hsysts", "missing"),
    "missing hnorm": (lambda f: _mutate_delete(f, "hnorm"), "hnorm", "missing"),
    "missing hlogk": (lambda f: _mutate_delete(f, "hlogk"), "hlogk", "missing"),
    "wrong hsumw shape": (lambda f: _mutate_replace(f, "hsumw", np.ones(7)), "hsumw", "shape"),
    "wrong hlogk shape": (lambda f: _mutate_replace(f, "hlogk", np.zeros(22 * 5 * 3)), "hlogk", "shape"),
    "NaN in hnorm": (
        lambda f: _mutate_replace(f, "hnorm", np.where(np.arange(110) == 3, np.nan, 1.0), (22, 5)),
        "hnorm",
        "NaN",
    ),
    "negative hnorm": (lambda f: _mutate_replace(f, "hnorm", -np.ones(110), (22, 5)), "hnorm", "negative"),
    "float32 data": (
        lambda f: _mutate_replace(f, "hdata_obs", np.ones(20, np.float32)),
        "hdata_obs",
        "float64",
    ),
    "float32 logk": (
        lambda f: _mutate_replace(f, "hlogk", np.zeros(22 * 5 * 2 * 6, np.float32), (22, 5, 2, 6)),
        "hlogk",
        "float64",
    ),
    "empty data": (lambda f: _mutate_replace(f, "hdata_obs", np.zeros(0)), "hdata_obs", "empty"),
    "negative data": (lambda f: _mutate_replace(f, "hdata_obs", -np.ones(20)), "hdata_obs", "negative"),
    "bad original_shape": (
        lambda f: f["hnorm"].attrs.__setitem__("original_shape", np.array([3, 3])),
        "hnorm",
        "original_shape",
    ),
    "bad metadata": (lambda f: _mutate_replace(f, "wfit_meta", np.array(b"{not json")), "wfit_meta", "JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_workspace_gives_clear_error(tmp_path, case):
    good = tmp_path / "good.hdf5"
    write_wfit(build_random_model(seed=1, nshape=4), str(good))
    bad = tmp_path / "bad.hdf5"
    shutil.copy(good, bad)
    mutate, dataset, words = BAD[case]
    with h5py.File(bad, "a") as f:
        mutate(f)
    with pytest.raises(WorkspaceError) as err:
        read_workspace(bad)
    msg = str(err.value)
    assert str(bad) in msg and f"'{dataset}'" in msg and words in msg
    read_workspace(good)  # the good file is untouched


def test_not_hdf5_and_missing_file(tmp_path):
    p = tmp_path / "x.hdf5"
    p.write_text("not an hdf5 file")
    with pytest.raises(WorkspaceError, match="not a readable HDF5 file"):
        read_workspace(p)
    with pytest.raises(FileNotFoundError, match="no such workspace"):
        read_workspace(tmp_path / "nothing.hdf5")


def test_writer_rejects_mismatched_axes_empty_channel_and_nan():
    w = WorkspaceWriter()
    w.add_channel("c", [hist.axis.Regular(3, 0, 1, name="x")])
    with pytest.raises(WorkspaceError, match="do not match"):
        w.add_process("a", "c", hist.Hist(hist.axis.Regular(3, 0, 2, name="x")))
    with pytest.raises(WorkspaceError, match="NaN"):
        w.add_process("a", "c", np.array([1.0, np.nan, 1.0]))
    with pytest.raises(WorkspaceError, match="no bins"):
        w.add_channel("empty", [hist.axis.StrCategory([], name="x", growth=True)])
    with pytest.raises(WorkspaceError, match="not defined"):
        w.add_data("nope", np.ones(3))


@pytest.mark.parametrize("compression", ["blosc2", "zstd", "lz4", "none"])
def test_compressed_workspace_reads_back_identical(tmp_path, compression):
    """The writer's hdf5plugin compressions (Blosc2 + LZ4 as rabbit main writes) read back bit for bit."""
    from wfit.workspace.compression import dataset_options

    m = build_random_model(seed=6)
    write_wfit(m, str(tmp_path / "gzip.hdf5"))
    ref = read_workspace(tmp_path / "gzip.hdf5")
    path = tmp_path / f"{compression}.hdf5"
    write_wfit(m, str(path), compression=compression, compression_level=5)
    with h5py.File(path) as f:
        expected = dataset_options(compression, 5).get("compression")
        assert (str(expected) in f["hlogk"]._filters) if expected else not f["hlogk"]._filters
    ws = read_workspace(path)
    for field in ("norm", "logk_avg", "logk_halfdiff", "sumw", "sumw2", "data_obs", "constraint_weights"):
        np.testing.assert_array_equal(getattr(ws, field), getattr(ref, field), err_msg=field)
    with pytest.raises(WorkspaceError, match="compression='bzip9' is not known; choose one of gzip, blosc2"):
        write_wfit(m, str(tmp_path / "x.hdf5"), compression="bzip9")
    assert not (tmp_path / "x.hdf5").exists()


@pytest.mark.parametrize("asymmetric", [True, False])
def test_sparse_file_holds_the_dense_files_arrays(tmp_path, asymmetric) -> None:
    # The sparse writer builds its COO entries from the booked terms, without the dense tensor; the dense file of
    # the same model is the reference.
    from tests.builders import build_random_model, write_wfit

    m = build_random_model(31, nbins=(7, 5), nshape=5, asymmetric=asymmetric)
    write_wfit(m, str(tmp_path / "dense.hdf5"))
    write_wfit(m, str(tmp_path / "sparse.hdf5"), sparse=True)
    dense, sparse = read_workspace(tmp_path / "dense.hdf5"), read_workspace(tmp_path / "sparse.hdf5")
    assert dense.symmetric == sparse.symmetric == (not asymmetric)
    np.testing.assert_array_equal(sparse.norm, dense.norm)
    np.testing.assert_array_equal(sparse.logk_avg, dense.logk_avg)
    if asymmetric:
        np.testing.assert_array_equal(sparse.logk_halfdiff, dense.logk_halfdiff)
    assert np.count_nonzero(dense.logk_avg) > 0
