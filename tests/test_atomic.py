"""Every wfit output goes through wfit.atomic: permissions as the user's umask makes them, and failed writes that
leave nothing behind.

The reference for the permissions is independent of wfit: the mode of a file created with plain ``open()``
under the same umask. The umask is a non-default one (0o027), under which mkstemp's 0o600 and the usual 0o644
both differ from the right answer (0o640).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wfit.atomic import atomic_path, atomic_write_hdf5, file_mode, is_remote, write_bytes, write_text

DATA = Path(__file__).parent / "data" / "jetcalib"
UMASK = 0o027


def _mode(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask(tmp_path: Path) -> Iterator[int]:
    """Run under UMASK; yields the reference mode, that of a file made with plain open()."""
    old = os.umask(UMASK)
    try:
        reference = tmp_path / "reference"
        with open(reference, "w") as f:
            f.write("x")
        expected = _mode(reference)
        reference.unlink()
        assert expected == 0o640  # the umask took effect: the check below can tell 0600 and 0644 apart
        yield expected
    finally:
        os.umask(old)


def _tiny_keras_model() -> tuple[Any, Any]:
    """A jet-level Keras model with the calibration's input and output names, and its feature spec."""
    import keras

    from wfit.calib import FeatureSpec, Transform

    keras.utils.set_random_seed(1)
    spec = FeatureSpec(("pt", "eta"), transform=Transform(numerical={"pt": [], "eta": []}))
    x = keras.Input(shape=(2,), name="jet_numerical", dtype="float32")
    model = keras.Model([x], keras.layers.Dense(1, name="log_correction")(x))
    return model, spec


def _fit_result() -> Any:
    from wfit.fitter import FitResult, FitStatus

    return FitResult(
        names=["mu", "theta"],
        npoi=1,
        values=np.array([1.0, 0.3]),
        errors=np.array([0.1, 0.9]),
        covariance=np.diag([0.01, 0.81]),
        nll=1.5,
        edm=1e-9,
        status=FitStatus.CONVERGED,
        niter=3,
    )


def _write_every_output(out: Path, small_model: Any) -> list[Path]:
    """Write one file of every kind wfit makes; returns them (all must be in ``out``)."""
    import hist

    from tests.builders import write_wfit
    from wfit.calib import calibration_report, export_onnx, load_transform, save_transform, write_synthetic
    from wfit.calib.train import save_model_atomic
    from wfit.fitter.plots import plot_pulls
    from wfit.plots import plot_templates
    from wfit.processors import write_toy

    files = []
    write_wfit(small_model, str(out / "ws.hdf5"))  # the workspace writer
    _fit_result().write(out / "result.hdf5")
    files += [out / "ws.hdf5", out / "result.hdf5"]

    h = hist.Hist(hist.axis.Regular(4, 25.0, 65.0, name="pt"), hist.axis.Regular(2, -2.4, 2.4, name="eta"))
    h.fill(pt=[30.0, 40.0, 50.0], eta=[0.0, 1.0, -1.0])
    plot_templates({"W": h}, path=out / "templates.png")
    plot_pulls(_fit_result(), path=out / "pulls.pdf")
    files += [out / "templates.png", out / "pulls.pdf"]

    model, spec = _tiny_keras_model()
    export_onnx(model, spec, str(out / "model.onnx"))
    save_model_atomic(model, str(out / "model.keras"))
    files += [out / "model.onnx", out / "model.onnx.features.yaml", out / "model.keras"]

    save_transform(load_transform(str(DATA / "transform.yaml")), str(out / "transform.yaml"))
    files.append(out / "transform.yaml")
    syn = out / "syn"
    write_synthetic(str(syn), 200, n_shards=2, seed=3, calibration_jets=5000)
    files += [syn / name for name in ("data.yaml", "transform.yaml", "truth.yaml", "shards/1.root", "shards/2.root")]

    report = calibration_report(
        lambda chunk: np.zeros(len(chunk["pt"])), str(DATA), str(out / "report"), pt_edges=(20, 100, 5000)
    )
    files += [Path(p) for p in report.files]

    write_toy(out / "toy.root", 500, process="W", seed=1)
    files.append(out / "toy.root")
    return files


def test_every_output_gets_the_umask_mode(umask: int, tmp_path: Path, small_model: Any) -> None:
    out = tmp_path / "out"
    files = _write_every_output(out, small_model)
    modes = {str(p.relative_to(out)): oct(_mode(p)) for p in files}
    print(modes)
    assert modes == {name: oct(umask) for name in modes}
    assert file_mode() == umask
    # Nothing but the outputs is left in the folders (no temporary files or folders).
    written = {p for p in out.rglob("*") if p.is_file()}
    assert written == set(files)
    assert {p for p in out.rglob("*") if p.is_dir()} == {out / "syn", out / "syn/shards", out / "report"}


def test_a_replaced_file_gets_the_new_file_mode(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    write_text(path, "old")
    os.chmod(path, 0o600)
    write_text(path, "new")
    assert path.read_text() == "new"
    assert _mode(path) == umask


# ---------------------------------------------------------------------- failed writes
def _disk_full(*args: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Failure(RuntimeError):
    """An error of the writer itself (a bug, a bad value) in the middle of a file."""


def _fail_in_body(kind: str) -> None:
    if kind == "error":
        raise _Failure("the writer failed half-way")
    _disk_full()


def _expected_error(kind: str) -> Any:
    return pytest.raises(_Failure) if kind == "error" else pytest.raises(OSError, match="No space left")


def _partial_then_fail(kind: str) -> Callable[[str], None]:
    def body(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        _fail_in_body(kind)

    return body


def _write_toy_failing(kind: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A toy file whose second block fails, after the first one reached the file."""
    import wfit.processors.toy as toy

    original = toy.generate_events
    calls = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            _fail_in_body(kind)
        return original(*args, **kwargs)

    monkeypatch.setattr(toy, "generate_events", generate)
    toy.write_toy(path, 400, process="W", seed=2, block_size=200)


class _FailingFigure:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def savefig(self, fname: str, **kwargs: Any) -> None:
        with open(fname, "wb") as f:
            f.write(b"%PNG half")
        _fail_in_body(self.kind)


def _body_for(writer: str, kind: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    if writer == "atomic_path":
        body = _partial_then_fail(kind)

        def run() -> None:
            with atomic_path(path) as tmp:
                body(tmp)

        return run
    if writer == "hdf5":

        def fill(f: Any) -> None:
            f.create_dataset("mu", data=np.ones(1000))
            _fail_in_body(kind)

        return lambda: atomic_write_hdf5(path, fill)
    if writer == "figure":
        from wfit.plots import _save

        return lambda: _save(_FailingFigure(kind), path)
    if writer == "toy":
        return lambda: _write_toy_failing(kind, path, monkeypatch)
    raise AssertionError(writer)


@pytest.mark.parametrize("kind", ["error", "disk full"])
@pytest.mark.parametrize(("writer", "name"), [("atomic_path", "a.bin"), ("hdf5", "ws.hdf5"), ("figure", "f.png"),
                                               ("toy", "toy.root")])  # fmt: skip
def test_failed_write_leaves_no_temporary_and_the_earlier_file(
    writer: str, name: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / name
    path.write_bytes(b"the earlier file")
    os.chmod(path, 0o604)
    before = os.stat(path)
    with _expected_error(kind):
        _body_for(writer, kind, path, monkeypatch)()
    assert os.listdir(tmp_path) == [name]
    assert path.read_bytes() == b"the earlier file"
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns, _mode(path)) == (before.st_ino, before.st_mtime_ns, 0o604)


def test_disk_full_at_the_flush_keeps_the_earlier_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that reports a full disk only when the data are flushed (NFS, EOS fuse): no rename."""
    from wfit.calib import Transform, save_transform

    path = tmp_path / "transform.yaml"
    path.write_text("earlier: true\n")
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_transform(Transform(numerical={"pt": []}), str(path))
    assert os.listdir(tmp_path) == ["transform.yaml"]
    assert path.read_text() == "earlier: true\n"


def test_a_body_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.bin"
    with pytest.raises(FileNotFoundError, match=r"missing\.bin: nothing was written to the temporary file"):
        with atomic_path(path):
            pass
    assert os.listdir(tmp_path) == []


def test_suffix_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "model"
    with atomic_path(path, suffix=".keras") as tmp:
        assert tmp.endswith("model.keras") and os.path.dirname(os.path.dirname(tmp)) == str(path.parent)
        Path(tmp).write_bytes(b"k")
    assert path.read_bytes() == b"k"
    assert os.listdir(path.parent) == ["model"]


def test_remote_urls_are_written_through_fsspec() -> None:
    import fsspec

    from wfit.calib import Transform, load_transform, save_transform

    assert is_remote("root://eos.cern.ch//eos/ws.hdf5") and not is_remote("file:///tmp/ws.hdf5")
    fs = fsspec.filesystem("memory")
    try:
        write_bytes("memory://wfit-atomic/a.bin", b"abc")
        with atomic_path("memory://wfit-atomic/sub/b.bin") as tmp:
            Path(tmp).write_bytes(b"def")
            assert not is_remote(tmp)
        transform = Transform(numerical={"pt": [{"type": "linear", "params": {"loc": 1.0, "scale": 2.0}}]})
        save_transform(transform, "memory://wfit-atomic/transform.yaml")
        assert fs.cat("/wfit-atomic/a.bin") == b"abc"
        assert fs.cat("/wfit-atomic/sub/b.bin") == b"def"
        assert load_transform("memory://wfit-atomic/transform.yaml").to_dict() == transform.to_dict()
    finally:
        fs.rm("/wfit-atomic", recursive=True)
