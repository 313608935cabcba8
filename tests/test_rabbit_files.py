"""rabbit's files as a rabbit user has them: additive systematics, the chi-square fit with a data
covariance, stored pseudo-data, Blosc2 compression, and the pickled metadata read without running it.

Each fit is compared with rabbit 0.2.5's fit of the same file: POIs to 1e-6 absolute, nuisances to
1e-6 (absolute below 1, relative above), uncertainties to 1e-6 relative, tighter than the 1e-5 asked
of them since both fitters minimise to their numerical floor (the differences found are 1e-9 or less).
"""

from __future__ import annotations

import os
import pickle
import shutil

import h5py
import hdf5plugin
import numpy as np
import pytest
import rabbit  # noqa: F401  (a test dependency: run or fail, never skip)

from tests.builders import build_random_model, run_rabbit, write_rabbit
from wfit.fitter import fit_workspace
from wfit.fitter.cli import main
from wfit.workspace import WorkspaceError, read_workspace
from wfit.workspace.safe_pickle import restricted_loads

pytestmark = [
    # rabbit's TensorWriter (through wums) opens os.devnull for a git call and never closes it
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _compare(ours, theirs):
    assert ours.ok, ours.status.describe()
    assert set(theirs) == set(ours.names)
    for i, name in enumerate(ours.names):
        v, e = theirs[name]
        atol = 1e-6 if i < ours.npoi else 1e-6 * max(1.0, abs(v))
        np.testing.assert_allclose(ours.values[i], v, rtol=0, atol=atol, err_msg=name)
        np.testing.assert_allclose(ours.errors[i], e, rtol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def normal_file(tmp_path_factory):
    """A model with additive systematics (asymmetric ones too) and two pseudo-data sets, written by
    rabbit 0.2.5's TensorWriter, and rabbit's fit of its data."""
    folder = tmp_path_factory.mktemp("normal")
    m = build_random_model(seed=23)
    rng = np.random.default_rng(23)
    pseudo = {
        "nominal": {c: sum(m.nominal[(c, p)] for p in m.signals + m.backgrounds) for c in m.data},
        "shifted": {c: rng.poisson(1.1 * d).astype(float) for c, d in m.data.items()},
    }
    path = str(folder / "normal.hdf5")
    write_rabbit(m, path, systematic_type="normal", pseudodata=pseudo)
    return path, run_rabbit(path, str(folder))


def test_additive_systematics_agree_with_rabbit(normal_file):
    path, theirs = normal_file
    ws = read_workspace(path)  # no trust_pickle: the metadata is read without running it
    assert ws.systematic_type == "normal"
    assert not ws.symmetric
    _compare(fit_workspace(path, tol=1e-16), theirs)


def test_channels_come_from_the_restricted_pickle_as_from_the_full_one(normal_file):
    path, _ = normal_file
    safe, trusted = read_workspace(path), read_workspace(path, trust_pickle=True)
    assert [(c.name, c.masked, c.start, c.stop, c.axes) for c in safe.channels] == [
        (c.name, c.masked, c.start, c.stop, c.axes) for c in trusted.channels
    ]
    assert {c.name for c in safe.channels} == {"ch0", "ch1", "xsec"}
    assert safe.channel("xsec").masked and safe.channel("ch0").axes[0]["edges"][-1] == 1.0


@pytest.mark.parametrize("name", ["shifted"])
def test_stored_pseudodata_is_selected_by_name(normal_file, tmp_path, name):
    path, _ = normal_file
    theirs = run_rabbit(path, str(tmp_path), "--pseudoData", name, result=name)
    ours = fit_workspace(path, tol=1e-16, pseudodata=name)
    _compare(ours, theirs)
    # the same fit from the command line; an unknown name is refused with the known ones listed
    out = tmp_path / "r.hdf5"
    assert main(["fit", path, "-q", "--tol", "1e-16", "--pseudodata", name, "-o", str(out)]) == 0
    from wfit.fitter import read_result

    np.testing.assert_allclose(read_result(out).values, ours.values, rtol=1e-12, atol=1e-12)
    with pytest.raises(WorkspaceError, match=r"no pseudo-data set 'nope'; the file has \['nominal', 'shifted'\]"):
        fit_workspace(path, pseudodata="nope")


def test_unknown_pseudodata_on_the_command_line_exits_2(normal_file, capsys):
    path, _ = normal_file
    assert main(["fit", path, "-q", "--pseudodata", "nope"]) == 2
    assert "no pseudo-data set 'nope'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def covariance_file(tmp_path_factory):
    """Additive systematics, one of them folded into a correlated data covariance (rabbit's
    ``add_to_data_covariance``), written by rabbit 0.2.5 (one unmasked channel: rabbit adds such
    systematics to the covariance of all bins)."""
    folder = tmp_path_factory.mktemp("cov")
    m = build_random_model(seed=29, nbins=(16,), masked=False, asymmetric=False)
    rng = np.random.default_rng(29)
    d = m.data["ch0"]
    v = rng.normal(0.0, 1.0, (d.size, 2)) * np.sqrt(d)[:, None] * 0.2
    path = str(folder / "cov.hdf5")
    write_rabbit(m, path, systematic_type="normal", data_covariance=np.diag(d) + v @ v.T, covariance_systs=("shape1",))
    return path, folder


@pytest.mark.parametrize(
    "bb_lite", [pytest.param(True, id="bblite"), pytest.param(False, id="nobb", marks=pytest.mark.slow)]
)
def test_chi2_fit_with_the_data_covariance_agrees_with_rabbit(covariance_file, bb_lite):
    path, folder = covariance_file
    out = folder / f"rabbit_{bb_lite}"
    theirs = run_rabbit(path, str(out), "--covarianceFit", *([] if bb_lite else ["--noBinByBinStat"]))
    ws = read_workspace(path)
    assert ws.data_cov_inv is not None and "shape1" not in ws.systs
    _compare(fit_workspace(path, tol=1e-16, covariance_fit=True, bb_lite=bb_lite), theirs)


def test_covariance_fit_needs_a_covariance(normal_file):
    path, _ = normal_file
    with pytest.raises(WorkspaceError, match=r"'hdata_cov_inv': is missing: covariance_fit"):
        fit_workspace(path, covariance_fit=True)


# ------------------------------------------------------------------------------------- Blosc2
def _recompress(src: str, dst: str, **compression) -> None:
    """Copy a workspace, every numeric dataset rewritten with ``compression`` (as rabbit main writes)."""
    with h5py.File(src) as fin, h5py.File(dst, "w") as fout:

        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                fout.require_group(name).attrs.update(obj.attrs)
                return
            if name.startswith("meta/"):
                return  # copied whole below
            data = obj[...]
            opts = compression if (data.dtype.kind in "fiu" and data.size > 1) else {}
            out = fout.create_dataset(name, data=data, dtype=obj.dtype, chunks=True if opts else None, **opts)
            out.attrs.update(obj.attrs)

        fin.visititems(copy)
        del fout["meta"]
        fin.copy("meta", fout)


def test_blosc2_compressed_file_reads_and_fits_like_the_original(normal_file, tmp_path):
    path, theirs = normal_file
    blosc = str(tmp_path / "blosc2.hdf5")
    _recompress(path, blosc, **hdf5plugin.Blosc2(cname="lz4", clevel=5, filters=hdf5plugin.Blosc2.SHUFFLE))
    with h5py.File(blosc) as f:
        assert f["hlogk"].compression is None and "32026" in f["hlogk"]._filters
    a, b = read_workspace(path), read_workspace(blosc)
    for field in ("norm", "logk_avg", "logk_halfdiff", "sumw2", "data_obs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert b.systematic_type == "normal" and b.pseudodata.keys() == a.pseudodata.keys()
    _compare(fit_workspace(blosc, tol=1e-16), theirs)


def test_a_filter_that_is_not_available_is_a_clear_error(normal_file, tmp_path, monkeypatch):
    import wfit.workspace.compression as compression

    path, _ = normal_file
    blosc = str(tmp_path / "blosc2.hdf5")
    _recompress(path, blosc, **hdf5plugin.Blosc2(cname="zstd"))
    # as on a machine where HDF5 has no Blosc2 filter: first without hdf5plugin, then with one that lacks it
    monkeypatch.setattr(compression, "_available", lambda code: code != hdf5plugin.BLOSC2_ID)
    monkeypatch.setattr(compression, "_hdf5plugin", lambda: None)
    missing = r"dataset 'hconstraintweights': .*HDF5 filter 32026 \(Blosc2\).*pip install"
    with pytest.raises(WorkspaceError, match=missing):
        read_workspace(blosc)
    monkeypatch.setattr(compression, "_hdf5plugin", lambda: hdf5plugin)
    with pytest.raises(WorkspaceError, match=r"filter 32026 \(Blosc2\), which neither h5py nor hdf5plugin"):
        read_workspace(blosc)


# ------------------------------------------------------------------------------------- pickles
class _RunsAShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _replace_meta(path: str, payload: bytes) -> None:
    with h5py.File(path, "a") as f:
        del f["meta"]
        g = f.create_group("meta")
        g.attrs["narf_h5py_pickle_protocol_version"] = 1
        g.create_dataset("pickle_data", data=np.frombuffer(payload, dtype=np.uint8))


def test_a_pickle_that_runs_code_is_refused_without_running_it(normal_file, tmp_path, capsys):
    path, _ = normal_file
    marker = tmp_path / "ran"
    evil = str(tmp_path / "evil.hdf5")
    shutil.copy(path, evil)
    meta = {"channel_info": {}, "systematic_type": _RunsAShellCommand(f"touch {marker}")}
    _replace_meta(evil, pickle.dumps(meta, protocol=5))
    with pytest.raises(WorkspaceError, match=r"'meta/pickle_data': is a pickle that needs posix\.system") as err:
        read_workspace(evil)
    assert "--trust-pickle" in str(err.value)
    assert main(["fit", evil, "-q"]) == 2
    assert "wfit does not unpickle" in capsys.readouterr().err
    assert not marker.exists()


def test_unlisted_types_make_the_systematic_type_unknowable_unless_trusted(normal_file, tmp_path):
    """A harmless type outside the list (a datetime in meta_info) is refused all the same; with
    trust_pickle the file is read through wums, systematic type included."""
    import datetime

    from wums.ioutils import pickle_dump_h5py, pickle_load_h5py

    path, _ = normal_file
    dated = str(tmp_path / "dated.hdf5")
    shutil.copy(path, dated)
    with h5py.File(dated, "a") as f:
        meta = pickle_load_h5py(f["meta"])
        meta["meta_info"] = {"time": datetime.datetime(2026, 11, 1)}
        del f["meta"]
        pickle_dump_h5py("meta", meta, f)
    refused = r"needs datetime\.datetime.*trust_pickle=True \(wfit fit --trust-pickle\)"
    with pytest.raises(WorkspaceError, match=refused):
        read_workspace(dated)
    ws = read_workspace(dated, trust_pickle=True)
    assert ws.systematic_type == "normal" and [c.name for c in ws.channels] == [
        c.name for c in read_workspace(path).channels
    ]


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(eval),  # a builtin that is not a plain type
        b"\x80\x05cbuiltins\ngetattr\n.",
        b"\x80\x05cnumpy\nndarray\n(K\x10\x85tR.",  # numpy.ndarray((16,)): an allocation of any size
        b"\x80\x05cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x10\x85C\x01b\x87R.",  # non-empty
        b"\x80\x05X\x01\x00\x00\x00xQ.",  # a persistent id (wums' references to HDF5 objects)
        b"\x80\x05\x95",  # truncated
    ],
    ids=["eval", "getattr", "ndarray-shape", "reconstruct-shape", "persistent-id", "truncated"],
)
def test_restricted_unpickler_refuses(payload):
    with pytest.raises(WorkspaceError, match=r"f\.hdf5: dataset 'meta': is (a pickle that needs|not a pickle)"):
        restricted_loads(payload, "f.hdf5", "meta")


def test_restricted_unpickler_builds_arrays_and_axes():
    import boost_histogram as bh
    import hist

    obj = {
        "a": np.arange(6.0).reshape(2, 3),
        "o": np.array(["x", 1], dtype=object),
        "s": np.float32(1.5),
        "axes": [hist.axis.Variable([0.0, 1.0, 3.0], name="v"), bh.axis.Regular(4, 0.0, 1.0),
                 hist.axis.StrCategory(["a", "b"], name="c"), hist.axis.Integer(0, 3, name="i")],
    }
    for protocol in (3, 4, 5):  # 2 stores bytes through _codecs.encode, which is refused
        back = restricted_loads(pickle.dumps(obj, protocol=protocol), "f.hdf5", "meta")
        np.testing.assert_array_equal(back["a"], obj["a"])
        assert back["o"].tolist() == ["x", 1] and back["s"] == np.float32(1.5)
        assert back["axes"] == obj["axes"]
