"""Reliability: bad inputs, a lost worker, interruption and resume (wfit.processors.runner), and a table of
bad inputs across the stages, each with its clear error or documented recovery, that damages nothing written
before."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
import yaml

from wfit.processors import (
    ChunkFailure,
    Sample,
    TemplateConfig,
    WTemplateProcessor,
    generate_events,
    local_cluster,
    run_templates,
)
from wfit.processors.runner import FilesetError
from wfit.workspace import WorkspaceError
from wfit.yamlfile import DuplicateKeyError

NANO = Path(__file__).parent / "data" / "nanoaod"
JETCALIB = Path(__file__).parent / "data" / "jetcalib"


# ------------------------------------------------------------------------------ helpers
def _write_cols(path: Path, cols: dict[str, Any]) -> None:
    """Write generate_events columns as a TTree 'Events' (as write_toy does)."""
    with uproot.recreate(path) as f:
        types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in cols.items()}
        f.mktree("Events", types).extend(cols)


def _toy_cols(n: int, seed: int) -> dict[str, Any]:
    return generate_events("W", n, np.random.default_rng(seed), is_data=False)


def _coffea_runner(fileset: dict[str, list[str]], processor_instance: Any) -> Any:
    """The output of coffea's own Runner with its Iterative executor: the independent reference."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=500_000)
    return runner(fileset, processor_instance=processor_instance, treename="Events")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _assert_same(a: Any, b: Any, exact: bool = True) -> None:
    """Two {dataset: Accumulator} outputs hold the same histograms and counts."""
    assert sorted(a) == sorted(b)
    for ds in a:
        for key in ("nevents", "cutflow", "nonfinite_events", "kind", "skipped"):
            assert a[ds][key] == b[ds][key], (ds, key)
        for key in ("sumw", "sumw_sign"):
            assert a[ds][key] == pytest.approx(b[ds][key], rel=0 if exact else 1e-13), (ds, key)
        for key in ("templates", "templates_syst"):
            ha, hb = a[ds][key], b[ds][key]
            if key == "templates_syst":
                assert list(ha.axes["syst"]) == list(hb.axes["syst"]), ds
            for get in ("values", "variances"):
                va, vb = getattr(ha, get)(flow=True), getattr(hb, get)(flow=True)
                if exact:
                    np.testing.assert_array_equal(va, vb, err_msg=f"{ds} {key} {get}")
                else:  # another summation order: equal to rounding
                    np.testing.assert_allclose(va, vb, rtol=1e-12, atol=1e-12, err_msg=f"{ds} {key} {get}")


# ------------------------------------------------------------------------------ bad files and chunks
def _bad_root_files(tmp: Path) -> dict[str, tuple[Path, Callable[[], None]]]:
    """Bad files made from good ones: {name: (path, fix)}; fix() restores a good file at that path."""
    good = NANO / "nano_dy.root"
    raw = good.read_bytes()
    out: dict[str, tuple[Path, Callable[[], None]]] = {}

    def make(name: str, content: bytes) -> None:
        p = tmp / f"{name}.root"
        p.write_bytes(content)
        out[name] = (p, lambda p=p: shutil.copy(good, p))

    make("corrupt_header", b"XXXX" + raw[4:])  # the 'root' magic overwritten
    make("truncated", raw[: len(raw) // 2])
    make("not_root", b"this is a text file, not ROOT\n" * 10)
    p = tmp / "no_events_tree.root"
    with uproot.recreate(p) as f:
        f["Other"] = {"x": np.arange(5, dtype=np.int32)}
    out["no_events_tree"] = (p, lambda p=p: shutil.copy(good, p))
    p = tmp / "no_lumiblock.root"
    shutil.copy(NANO / "missing_luminosityBlock.root", p)
    out["no_lumiblock"] = (p, lambda p=p: shutil.copy(good, p))
    # A toy without Muon_pfRelIso04_all, which the muon selection needs.
    cols = _toy_cols(500, seed=11)
    fields = [f for f in cols["Muon"].fields if f != "pfRelIso04_all"]
    no_iso = dict(cols, Muon=cols["Muon"][fields])
    p = tmp / "no_muon_iso.root"
    _write_cols(p, no_iso)
    out["no_muon_iso"] = (p, lambda p=p, cols=cols: _write_cols(p, cols))
    return out


def test_bad_files_are_listed_and_a_rerun_of_them_completes_the_run(tmp_path: Path) -> None:
    toy = tmp_path / "toy.root"
    _write_cols(toy, _toy_cols(2000, seed=3))
    bad = _bad_root_files(tmp_path)
    fileset = {
        "dy": [str(NANO / "nano_dy.root"), *(str(p) for p, _ in bad.values())],
        "toy": [str(toy)],
        "data": [str(NANO / "nano_dimuon.root")],
    }
    first = run_templates(fileset, WTemplateProcessor(), allow_failures=True)
    failed = {Path(f.file).stem: f for f in first.failures}
    assert sorted(failed) == sorted(bad)
    for name in ("corrupt_header", "not_root", "no_events_tree"):
        assert failed[name].stage == "open" and failed[name].entrystart is None
    assert "Events" in failed["no_events_tree"].error
    assert failed["no_lumiblock"].stage == "process" and "luminosityBlock" in failed["no_lumiblock"].error
    assert failed["no_muon_iso"].stage == "process" and "Muon_pfRelIso04_all" in failed["no_muon_iso"].error
    assert (failed["no_muon_iso"].entrystart, failed["no_muon_iso"].entrystop) == (0, 500)
    for f in first.failures:
        assert f.file in f.message and "run_templates(previous.failures" in f.message
    # The good files alone, through coffea's own Runner (the independent reference).
    good_only = {"dy": [str(NANO / "nano_dy.root")], "toy": [str(toy)], "data": [str(NANO / "nano_dimuon.root")]}
    _assert_same(first.output, _coffea_runner(good_only, WTemplateProcessor()))
    assert len(first.processed) == 3

    # The user replaces five files with good copies and drops the one without luminosityBlock.
    dropped = str(bad.pop("no_lumiblock")[0])
    for _, fix in bad.values():
        fix()
    rerun = run_templates([f for f in first.failures if f.file != dropped], WTemplateProcessor())
    assert rerun.failures == []
    assert sorted(k.split("|")[1] for k in rerun.processed) == sorted(str(p) for p, _ in bad.values())
    assert set(first.processed).isdisjoint(rerun.processed)
    fileset["dy"].remove(dropped)
    clean = _coffea_runner(fileset, WTemplateProcessor())  # all files good now
    _assert_same(first.output + rerun.output, clean, exact=False)


def test_rerun_takes_exactly_the_failed_entry_range(tmp_path: Path) -> None:
    toy = tmp_path / "toy.root"
    _write_cols(toy, _toy_cols(3000, seed=5))
    failure = ChunkFailure("toy", str(toy), 1000, 2000, "process", "RuntimeError: injected")
    part = run_templates([failure], WTemplateProcessor())
    assert part.processed == [f"toy|{toy}|1000-2000"]
    assert part.output["toy"]["nevents"] == 1000
    whole = run_templates({"toy": [str(toy)]}, WTemplateProcessor(), chunksize=1000, align_clusters=False)
    assert len(whole.processed) == 3
    rest = run_templates(
        [ChunkFailure("toy", str(toy), a, b, "process", "") for a, b in ((0, 1000), (2000, 3000))],
        WTemplateProcessor(),
    )
    _assert_same(rest.output + part.output, whole.output, exact=False)
    with pytest.raises(TypeError, match="previous.failures"):
        run_templates([str(toy)], WTemplateProcessor())  # type: ignore[list-item]


# ------------------------------------------------------------------------------ lost worker
class _KillOnce(WTemplateProcessor):
    """Kills the worker process running the first chunk that it sees (once per marker file)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def process(self, events: Any) -> Any:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().process(events)
        os.close(fd)
        os._exit(1)  # the worker dies mid-task, as on an out-of-memory kill


def test_lost_worker_gives_the_clean_histograms(tmp_path: Path) -> None:
    toy = tmp_path / "toy.root"
    _write_cols(toy, _toy_cols(12000, seed=7))
    fileset = {"toy": [str(toy)]}
    kw = dict(chunksize=2000, align_clusters=False)
    clean = run_templates(fileset, WTemplateProcessor(), **kw)
    marker = tmp_path / "killed"
    with local_cluster(2) as client:
        lost = run_templates(fileset, _KillOnce(str(marker)), client=client, **kw)
    assert marker.exists()  # a worker really died
    assert lost.failures == []
    assert lost.processed == clean.processed and len(set(lost.processed)) == 6
    _assert_same(lost.output, clean.output)  # folded in plan order: bit for bit
    assert lost.output["toy"]["nevents"] == 12000


# ------------------------------------------------------------------------------ interrupt and resume
class _Counting(WTemplateProcessor):
    """Counts its chunks; raises KeyboardInterrupt (a Ctrl-C) at chunk number ``interrupt_at``."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        super().__init__()
        self.interrupt_at = interrupt_at
        self.calls = 0

    def process(self, events: Any) -> Any:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().process(events)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    toy = tmp_path / "toy.root"
    _write_cols(toy, _toy_cols(10000, seed=9))
    fileset = {"toy": [str(toy)]}
    kw = dict(chunksize=1000, align_clusters=False)
    clean = run_templates(fileset, WTemplateProcessor(), **kw)
    assert len(clean.processed) == 10
    ckpt = tmp_path / "run.coffea"
    with pytest.raises(KeyboardInterrupt):
        run_templates(fileset, _Counting(interrupt_at=4), checkpoint=ckpt, **kw)
    from coffea.util import load

    state = load(str(ckpt))
    assert sorted(state["done"]) == sorted(clean.processed[:3])
    assert state["output"]["toy"]["nevents"] == 3000
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []  # no temporary file left
    resumed_proc = _Counting()
    resumed = run_templates(fileset, resumed_proc, checkpoint=ckpt, **kw)
    assert resumed_proc.calls == 7  # only the chunks that were not done
    assert sorted(resumed.processed) == sorted(clean.processed) and len(set(resumed.processed)) == 10
    _assert_same(resumed.output, clean.output)
    assert sum(resumed.output["toy"]["cutflow"].values()) == sum(clean.output["toy"]["cutflow"].values())
    # A finished checkpoint: a further call processes nothing and returns the same output.
    again_proc = _Counting()
    again = run_templates(fileset, again_proc, checkpoint=ckpt, **kw)
    assert again_proc.calls == 0
    _assert_same(again.output, clean.output)


# ------------------------------------------------------------------------------ the table of bad inputs
def _good_workspace(tmp: Path) -> Path:
    from tests.builders import build_random_model, write_wfit

    path = tmp / "good.hdf5"
    write_wfit(build_random_model(seed=1, nshape=4), str(path))
    return path


def _h5_case(mutate: Callable[[Any], None]) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        import h5py

        from wfit.workspace import read_workspace

        good = _good_workspace(tmp)
        bad = tmp / "bad.hdf5"
        shutil.copy(good, bad)
        with h5py.File(bad, "a") as f:
            mutate(f)
        return (lambda: read_workspace(bad)), [good]

    return setup


def _replace(name: str, arr: np.ndarray, shape: tuple[int, ...] | None = None) -> Callable[[Any], None]:
    def mutate(f: Any) -> None:
        del f[name]
        d = f.create_dataset(name, data=arr)
        d.attrs["original_shape"] = np.array(arr.shape if shape is None else shape)

    return mutate


def _delete(name: str) -> Callable[[Any], None]:
    def mutate(f: Any) -> None:
        del f[name]

    return mutate


def _not_hdf5(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.workspace import read_workspace

    good = _good_workspace(tmp)
    p = tmp / "x.hdf5"
    p.write_text("not an hdf5 file")
    return (lambda: read_workspace(p)), [good]


def _processor_file(make: Callable[[Path], Path]) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    """A bad ROOT file in a run with a checkpoint of an earlier good run: the failure is listed, the
    checkpoint of the earlier run is not touched (the new run uses its own)."""

    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        ckpt = tmp / "earlier.coffea"
        run_templates({"dy": [str(NANO / "nano_dy_empty.root")]}, WTemplateProcessor(), checkpoint=ckpt)
        bad = make(tmp)

        def call() -> Any:
            res = run_templates(
                {"dy": [str(bad)]}, WTemplateProcessor(), checkpoint=tmp / "new.coffea", allow_failures=True
            )
            assert len(res.failures) == 1 and res.processed == []
            raise RuntimeError(res.failures[0].message)

        return call, [ckpt]

    return setup


def _bad_file(name: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        return _bad_root_files(tmp)[name][0]

    return make


def _calib_copy(tmp: Path) -> Path:
    dest = tmp / "jetcalib"
    shutil.copytree(JETCALIB, dest)
    return dest


def _calib_yaml(text: str) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    """load_config on a calib.yaml with this text."""

    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        from wfit.calib import load_config

        p = tmp / "calib.yaml"
        p.write_text(text)
        return (lambda: load_config(str(p))), [p]

    return setup


def _transform_unknown_feature(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    import yaml

    from wfit.calib import open_data_dir

    d = _calib_copy(tmp)
    raw = yaml.safe_load((d / "transform.yaml").read_text())
    raw["numerical"]["ch_bogus"] = [{"type": "abs"}]
    (d / "transform.yaml").write_text(yaml.safe_dump(raw))
    return (lambda: open_data_dir(str(d))), [d / "data.yaml", d / "transform.yaml"]


def _missing_shard(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.calib import open_data_dir

    d = _calib_copy(tmp)
    (d / "shards" / "3.root").unlink()
    return (lambda: open_data_dir(str(d))), [d / "data.yaml", d / "shards" / "1.root"]


def _missing_onnx(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.processors import JetCalibration

    return (lambda: JetCalibration(tmp / "nope.onnx")), []


def _not_onnx(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.processors import JetCalibration

    p = tmp / "model.onnx"
    p.write_bytes(b"not a model")
    return (lambda: JetCalibration(p)), [p]


def _bad_dask_key(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.pipeline import load_dask_config

    p = tmp / "bad.yaml"
    p.write_text("distributed:\n  worker:\n    resource:\n      GPU: 1\n")
    return (lambda: load_dask_config(p)), [p]


def _bad_template_config(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    return (lambda: TemplateConfig(channel="tau")), []


def _bad_checkpoint(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    p = tmp / "run.coffea"
    p.write_bytes(b"garbage, not a checkpoint")
    return (lambda: run_templates({"dy": [str(NANO / "nano_dy_empty.root")]}, WTemplateProcessor(), checkpoint=p)), [p]


def _checkpoint_of_changed_file(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    f = tmp / "dy.root"
    shutil.copy(NANO / "nano_dy_empty.root", f)
    ckpt = tmp / "run.coffea"
    run_templates({"dy": [str(f)]}, WTemplateProcessor(), checkpoint=ckpt)
    shutil.copy(NANO / "nano_dy.root", f)  # another file (another UUID) at the same path
    return (lambda: run_templates({"dy": [str(f)]}, WTemplateProcessor(), checkpoint=ckpt)), [ckpt]


# ------------------------------------------------------------------------------ workspace indices and names
def _strings(name: str, values: list[str]) -> Callable[[Any], None]:
    def mutate(f: Any) -> None:
        import h5py

        del f[name]
        f.create_dataset(name, data=np.array(values, dtype=object), dtype=h5py.string_dtype())

    return mutate


def _group_idxs(idxs: list[list[int]]) -> Callable[[Any], None]:
    def mutate(f: Any) -> None:
        import h5py

        del f["hsystgroupidxs"]
        d = f.create_dataset("hsystgroupidxs", (len(idxs),), dtype=h5py.vlen_dtype(np.dtype("int32")))
        for i, v in enumerate(idxs):
            d[i] = np.array(v, dtype=np.int32)

    return mutate


def _asym_meta(f: Any) -> None:
    import json

    meta = json.loads(f["wfit_meta"][()])
    meta["asymmetric_systs"] = ["shape0", "nosuch"]
    del f["wfit_meta"]
    f.create_dataset("wfit_meta", data=json.dumps(meta))


def _sparse_case(mutate: Callable[[Any], None]) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        import h5py

        from tests.builders import build_random_model, write_wfit
        from wfit.workspace import read_workspace

        bad = tmp / "bad.hdf5"
        write_wfit(build_random_model(seed=1, nshape=4), str(bad), sparse=True)
        with h5py.File(bad, "a") as f:
            mutate(f)
        return (lambda: read_workspace(bad)), []

    return setup


def _coo_index(group: str, pos: int, value: int) -> Callable[[Any], None]:
    def mutate(f: Any) -> None:
        d = f[f"{group}/indices"]
        arr = d[...]
        arr[pos] = value
        d[...] = arr

    return mutate


def _api_fit(mutate: Callable[[Any], None]) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    """The same workspace problem through the Python API's fit_workspace."""

    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        from wfit.fitter import fit_workspace

        call, protected = _h5_case(mutate)(tmp)
        return (lambda: fit_workspace(tmp / "bad.hdf5")), protected

    return setup


_BAD_WEIGHT = _replace("hconstraintweights", np.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0]))


# ------------------------------------------------------------------------------ filesets
def _fileset_case(
    make: Callable[[Path], dict[str, list[str]]], through: str = "run_templates"
) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        fileset = make(tmp)
        if through == "run_chain":
            from wfit.pipeline import run_chain

            # refused before the client is used: no cluster needed to see the error
            return (
                lambda: run_chain(None, fileset, WTemplateProcessor(), samples={}, lumi=1.0, workdir=tmp / "w")
            ), []
        if through == "process_on_cluster":
            from wfit.pipeline import process_on_cluster

            return (lambda: process_on_cluster(None, fileset, WTemplateProcessor())), []
        return (lambda: run_templates(fileset, WTemplateProcessor())), []

    return setup


def _dy_copy(tmp: Path) -> Path:
    d = tmp / "a"
    d.mkdir(exist_ok=True)
    p = d / "x.root"
    shutil.copy(NANO / "nano_dy_empty.root", p)
    return p


def _listed_twice(tmp: Path) -> dict[str, list[str]]:
    p = str(_dy_copy(tmp))
    return {"dy": [p, p]}


def _relative_and_absolute(tmp: Path) -> dict[str, list[str]]:
    p = _dy_copy(tmp)
    return {"dy": [str(p), os.path.relpath(p)]}


def _dotdot(tmp: Path) -> dict[str, list[str]]:
    p = _dy_copy(tmp)
    return {"dy": [str(p), str(tmp / "a" / ".." / "a" / "x.root")]}


def _symlink(tmp: Path) -> dict[str, list[str]]:
    p = _dy_copy(tmp)
    (tmp / "link.root").symlink_to(p)
    return {"dy": [str(p), str(tmp / "link.root")]}


def _copied(tmp: Path) -> dict[str, list[str]]:
    p = _dy_copy(tmp)
    shutil.copy(p, tmp / "copy.root")
    return {"dy": [str(p), str(tmp / "copy.root")]}


def _directory(tmp: Path) -> dict[str, list[str]]:
    (tmp / "adir.root").mkdir()
    return {"dy": [str(_dy_copy(tmp)), str(tmp / "adir.root")]}


def _fifo(tmp: Path) -> dict[str, list[str]]:
    os.mkfifo(tmp / "pipe.root")  # opening it would block: it must be refused from its stat
    return {"dy": [str(tmp / "pipe.root")]}


# ------------------------------------------------------------------------------ YAML keys given twice
def _data_yaml_duplicate_key(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.calib import open_data_dir

    d = _calib_copy(tmp)
    text = (d / "data.yaml").read_text()
    (d / "data.yaml").write_text(text.replace("  count: 10\n", "  count: 10\n  count: 20\n", 1))
    return (lambda: open_data_dir(str(d))), [d / "data.yaml", d / "transform.yaml"]


def _transform_duplicate_key(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.calib import open_data_dir

    d = _calib_copy(tmp)
    text = (d / "transform.yaml").read_text()
    (d / "transform.yaml").write_text(text + "categorical:\n  ch_id: [-211, 211]\n")
    return (lambda: open_data_dir(str(d))), [d / "data.yaml", d / "transform.yaml"]


def _dask_duplicate_key(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
    from wfit.pipeline import load_dask_config

    p = tmp / "cluster.yaml"
    p.write_text("distributed:\n  worker:\n    resources:\n      GPU: 1\n      GPU: 2\n")
    return (lambda: load_dask_config(p)), [p]


# ------------------------------------------------------------------------------ samples and luminosity
def _sample(kind: str, xsec: float, process: str | None = None) -> Callable[[Path], tuple[Callable[[], Any], list]]:
    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        from wfit.processors import Sample

        return (lambda: Sample(kind, xsec=xsec, process=process)), []  # type: ignore[arg-type]

    return setup


def _build(samples: dict[str, Any], lumi: float) -> Callable[[Path], tuple[Callable[[], Any], list[Path]]]:
    """build_workspace on a real processor output (a Drell-Yan file): refused before anything is written."""

    def setup(tmp: Path) -> tuple[Callable[[], Any], list[Path]]:
        from wfit.processors import build_workspace

        output = run_templates({"dy": [str(NANO / "nano_dy.root")]}, WTemplateProcessor()).output
        ws = tmp / "ws.hdf5"
        ws.write_bytes(b"an earlier workspace")

        def call() -> Any:
            build_workspace(output, ws, samples=samples, lumi=lumi)

        return call, [ws]

    return setup


def _counter_mismatch(tmp: Path) -> Path:
    """A toy whose nMuon disagrees with the Muon branches' own counts in two entries (same total): NanoEvents
    alone would attach the muons of one event to the other."""
    cols = _toy_cols(500, seed=11)
    n = np.asarray(ak.num(cols["Muon"], axis=1))
    wrong = n.copy()
    i = int(np.flatnonzero(n != n[0])[0])
    wrong[[0, i]] = wrong[[i, 0]]
    cols = dict(cols, nMuon=wrong.astype(np.int32))
    p = tmp / "counts.root"
    with uproot.recreate(p) as f:
        types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in cols.items()}
        f.mktree("Events", types, counter_name=lambda c: "nMuonStored" if c == "Muon" else f"n{c}").extend(cols)
    return p


def _nonfinite_muon(tmp: Path) -> Path:
    """A toy with one muon pT NaN (entry 17) and one genWeight inf (entry 40)."""
    cols = _toy_cols(500, seed=13)
    mu = cols["Muon"]
    counts = ak.to_numpy(ak.num(mu))
    row = int(np.flatnonzero(counts > 0)[np.flatnonzero(counts > 0) >= 17][0])
    pt = ak.to_numpy(ak.flatten(mu.pt)).copy()
    pt[int(np.cumsum(counts)[row] - counts[row])] = np.nan
    gw = cols["genWeight"].copy()
    gw[40] = np.inf
    cols = dict(cols, Muon=ak.with_field(mu, ak.unflatten(pt, counts), "pt"), genWeight=gw)
    p = tmp / f"nan_muon_{row}.root"
    _write_cols(p, cols)
    return p


# name: (setup(tmp) -> (call, files that must keep their bytes), exception, words in the message)
BAD_INPUTS: dict[str, tuple[Callable[[Path], Any], type[BaseException], list[str]]] = {
    # workspace reader (wfit.workspace.read_workspace)
    "workspace not HDF5": (_not_hdf5, WorkspaceError, ["x.hdf5", "not a readable HDF5 file"]),
    "workspace missing dataset": (_h5_case(_delete("hnorm")), WorkspaceError, ["bad.hdf5", "'hnorm'", "missing"]),
    "workspace wrong shape": (
        _h5_case(_replace("hsumw", np.ones(7))),
        WorkspaceError,
        ["bad.hdf5", "'hsumw'", "shape"],
    ),
    "workspace float32": (
        _h5_case(_replace("hdata_obs", np.ones(20, np.float32))),
        WorkspaceError,
        ["bad.hdf5", "'hdata_obs'", "float64"],
    ),
    "workspace NaN": (
        _h5_case(_replace("hnorm", np.where(np.arange(110) == 3, np.nan, 1.0), (22, 5))),
        WorkspaceError,
        ["bad.hdf5", "'hnorm'", "NaN"],
    ),
    "workspace bad metadata": (
        _h5_case(_replace("wfit_meta", np.array(b"{not json"))),
        WorkspaceError,
        ["bad.hdf5", "'wfit_meta'", "JSON"],
    ),
    # calibration inputs (wfit.calib)
    "calib config unknown key": (
        _calib_yaml("train:\n  epochs: 2\n  epoch: 3\n"),
        ValueError,
        ["calib.yaml", "unknown key 'train.epoch'"],
    ),
    "calib config not YAML": (_calib_yaml("train: [epochs: 2\n"), yaml.YAMLError, ["calib.yaml", "line 1, column 8"]),
    "transform.yaml unknown feature": (_transform_unknown_feature, ValueError, ["transform.yaml", "ch_bogus"]),
    "missing shard": (_missing_shard, FileNotFoundError, ["data.yaml", "shards/3.root", "not found"]),
    # jet calibration model (pre-flight at construction)
    "ONNX model missing": (_missing_onnx, FileNotFoundError, ["nope.onnx", "not found", "export_onnx"]),
    "ONNX model not a model": (_not_onnx, ValueError, ["model.onnx", "not a readable ONNX model", "export_onnx"]),
    # processor inputs (wfit.processors.run_templates): listed failures with file and fix
    "ROOT header overwritten": (_processor_file(_bad_file("corrupt_header")), RuntimeError, ["corrupt_header.root"]),
    "ROOT truncated": (_processor_file(_bad_file("truncated")), RuntimeError, ["truncated.root"]),
    "not a ROOT file": (_processor_file(_bad_file("not_root")), RuntimeError, ["not_root.root", "uproot.open"]),
    "no Events tree": (_processor_file(_bad_file("no_events_tree")), RuntimeError, ["no_events_tree.root", "Events"]),
    "missing selection branch": (
        _processor_file(_bad_file("no_muon_iso")),
        RuntimeError,
        ["no_muon_iso.root", "Muon_pfRelIso04_all", "entries [0, 500)", "TemplateConfig"],
    ),
    "missing luminosityBlock": (
        _processor_file(_bad_file("no_lumiblock")),
        RuntimeError,
        ["no_lumiblock.root", "luminosityBlock"],
    ),
    "jagged counts disagree with the counter": (
        _processor_file(_counter_mismatch),
        RuntimeError,
        ["counts.root", "entries [0, 500)", "'nMuon' says", "2 entries disagree", "regenerate it"],
    ),
    "NaN or infinite weight or kinematics": (
        _processor_file(_nonfinite_muon),
        RuntimeError,
        ["nan_muon_", "2 event(s) with a NaN or infinite value", "in ['Muon_pt']", "nonfinite='drop'"],
    ),
    "unknown processor option": (_bad_template_config, ValueError, ["TemplateConfig.channel", "'tau'"]),
    "checkpoint not readable": (_bad_checkpoint, ValueError, ["run.coffea", "delete it"]),
    "checkpoint of a changed file": (_checkpoint_of_changed_file, ValueError, ["run.coffea", "dy.root", "UUID"]),
    # workspace indices, names and constraint weights
    "workspace group index out of range": (
        _h5_case(_group_idxs([[0], [1], [2], [3], [4], [0, 99]])),
        WorkspaceError,
        ["bad.hdf5", "'hsystgroupidxs'", "[99]", "group 'bkgnorm'", "outside [0, 6)", "rewrite the workspace"],
    ),
    "workspace group index negative": (
        _h5_case(_group_idxs([[0], [1], [2], [3], [-1], [5]])),
        WorkspaceError,
        ["bad.hdf5", "'hsystgroupidxs'", "[-1]", "group 'lumi'"],
    ),
    "workspace noi index negative": (
        _h5_case(_replace("hnoiidxs", np.array([-1], np.int32))),
        WorkspaceError,
        ["bad.hdf5", "'hnoiidxs'", "[-1]", "outside [0, 6) of hsysts"],
    ),
    "workspace noi index out of range": (
        _h5_case(_replace("hnoiidxs", np.array([6], np.int32))),
        WorkspaceError,
        ["bad.hdf5", "'hnoiidxs'", "[6]"],
    ),
    "workspace duplicate process": (
        _h5_case(_strings("hprocs", ["sig0", "sig1", "bkg0", "bkg1", "bkg0"])),
        WorkspaceError,
        ["bad.hdf5", "'hprocs'", "['bkg0'] more than once", "rewrite the workspace"],
    ),
    "workspace duplicate systematic": (
        _h5_case(_strings("hsysts", ["shape0", "shape1", "shape2", "shape3", "lumi", "lumi"])),
        WorkspaceError,
        ["bad.hdf5", "'hsysts'", "['lumi'] more than once"],
    ),
    "workspace duplicate signal": (
        _h5_case(_strings("hsignals", ["sig0", "sig0"])),
        WorkspaceError,
        ["bad.hdf5", "'hsignals'", "['sig0'] more than once"],
    ),
    "workspace negative constraint weight": (
        _h5_case(_BAD_WEIGHT),
        WorkspaceError,
        ["bad.hdf5", "'hconstraintweights'", "[-1.0]", "['shape2']", "must be > 0"],
    ),
    "workspace infinite constraint weight": (
        _h5_case(_replace("hconstraintweights", np.array([1.0, np.inf, 1.0, 1.0, 1.0, 1.0]))),
        WorkspaceError,
        ["bad.hdf5", "'hconstraintweights'", "infinite"],
    ),
    "workspace asymmetric list unknown name": (
        _h5_case(_asym_meta),
        WorkspaceError,
        ["bad.hdf5", "'wfit_meta'", "asymmetric_systs", "'nosuch'", "rewrite the workspace"],
    ),
    "sparse norm index out of range": (
        _sparse_case(_coo_index("hnorm_sparse", 1, 5)),
        WorkspaceError,
        ["bad.hdf5", "'hnorm_sparse/indices'", "process indices [5]", "outside [0, 5) of hprocs"],
    ),
    "sparse norm bin negative": (
        _sparse_case(_coo_index("hnorm_sparse", 0, -3)),
        WorkspaceError,
        ["bad.hdf5", "'hnorm_sparse/indices'", "bin indices [-3]"],
    ),
    "sparse logk column out of range": (
        _sparse_case(_coo_index("hlogk_sparse", 1, 12)),
        WorkspaceError,
        ["bad.hdf5", "'hlogk_sparse/indices'", "column indices [12]", "outside [0, 12)"],
    ),
    "sparse logk row negative": (
        _sparse_case(_coo_index("hlogk_sparse", 0, -1)),
        WorkspaceError,
        ["bad.hdf5", "'hlogk_sparse/indices'", "row indices [-1]"],
    ),
    "fit_workspace negative constraint weight": (
        _api_fit(_BAD_WEIGHT),
        WorkspaceError,
        ["bad.hdf5", "'hconstraintweights'", "must be > 0"],
    ),
    "fit_workspace duplicate process": (
        _api_fit(_strings("hprocs", ["sig0", "sig1", "bkg0", "bkg1", "bkg0"])),
        WorkspaceError,
        ["bad.hdf5", "'hprocs'", "more than once"],
    ),
    # filesets (run_templates, process_on_cluster, run_chain): refused before any chunk
    "fileset file listed twice": (_fileset_case(_listed_twice), FilesetError, ["'dy'", "x.root", "listed twice"]),
    "fileset relative and absolute": (
        _fileset_case(_relative_and_absolute),
        FilesetError,
        ["'dy'", "as '/", "and '", "list every file once per dataset"],
    ),
    "fileset a/../a": (_fileset_case(_dotdot), FilesetError, ["'dy'", "/a/../a/x.root'", "once per dataset"]),
    "fileset symlink": (_fileset_case(_symlink), FilesetError, ["'dy'", "link.root'", "a/x.root'"]),
    "fileset same UUID at two paths": (
        _fileset_case(_copied),
        FilesetError,
        ["'dy'", "a/x.root'", "copy.root'", "same ROOT file (file UUID"],
    ),
    "fileset directory": (_fileset_case(_directory), FilesetError, ["'dy'", "adir.root'", "a directory"]),
    "fileset FIFO": (_fileset_case(_fifo), FilesetError, ["'dy'", "pipe.root'", "a FIFO", "regular ROOT file"]),
    "process_on_cluster file twice": (
        _fileset_case(_symlink, "process_on_cluster"),
        FilesetError,
        ["'dy'", "link.root'", "listed twice"],
    ),
    "run_chain directory": (_fileset_case(_directory, "run_chain"), FilesetError, ["adir.root'", "a directory"]),
    # YAML documents with a key given twice (wfit.yamlfile)
    "calib config duplicate key": (
        _calib_yaml("train:\n  epochs: 2\n  batch_size: 64\n  epochs: 3\n"),
        DuplicateKeyError,
        ["calib.yaml", "key 'epochs' is given twice", "lines 2 and 4", "keep one"],
    ),
    "data.yaml duplicate key": (_data_yaml_duplicate_key, DuplicateKeyError, ["data.yaml", "'count'", "lines 2 and 3"]),
    "transform.yaml duplicate key": (
        _transform_duplicate_key,
        DuplicateKeyError,
        ["transform.yaml", "key 'categorical' is given twice"],
    ),
    "dask config duplicate key": (_dask_duplicate_key, DuplicateKeyError, ["cluster.yaml", "'GPU'", "lines 4 and 5"]),
    # cross sections, samples and luminosity (wfit.processors.Sample, build_workspace, run_chain)
    "background cross section zero": (
        _sample("background", 0.0),
        ValueError,
        ["Sample('background').xsec", "finite cross section > 0 pb", "got 0.0", "leave a process"],
    ),
    "background cross section negative": (
        _sample("background", -5.0, "ttbar"),
        ValueError,
        ["xsec of process 'ttbar'", "got -5.0"],
    ),
    "signal cross section NaN": (_sample("signal", float("nan")), ValueError, ["Sample('signal').xsec", "got nan"]),
    "sample of no processed dataset": (
        _build({"ttbar": Sample("background", xsec=1.0)}, 1.0),
        KeyError,
        ["samples['ttbar']", "no such dataset", "['dy']"],
    ),
    "luminosity negative": (_build({"dy": Sample("background", xsec=1.0)}, -1.0), ValueError, ["lumi", "> 0", "-1.0"]),
    # pipeline
    "dask config unknown key": (_bad_dask_key, ValueError, ["bad.yaml", "unknown key 'distributed.worker.resource"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_damages_nothing(tmp_path: Path, case: str) -> None:
    setup, exc, words = BAD_INPUTS[case]
    call, protected = setup(tmp_path)
    before = {p: _sha(p) for p in protected}
    with pytest.raises(exc) as err:
        call()
    msg = str(err.value)
    for w in words:
        assert w in msg, (case, w, msg)
    for p, sha in before.items():
        assert _sha(p) == sha, (case, p)


def test_table_has_at_least_forty_classes() -> None:
    assert len(BAD_INPUTS) + len(RECOVERIES) >= 40


# ------------------------------------------------------------------------------ documented recoveries
def _rec_empty_file(tmp: Path) -> None:
    """An empty file (zero events) adds zero events: the run equals the run without it."""
    with_empty = run_templates(
        {"dy": [str(NANO / "nano_dy_empty.root"), str(NANO / "nano_dy.root")]}, WTemplateProcessor()
    )
    assert with_empty.failures == []
    _assert_same(with_empty.output, _coffea_runner({"dy": [str(NANO / "nano_dy.root")]}, WTemplateProcessor()))


def _rec_nonfinite(tmp: Path) -> None:
    """NaN/inf genWeight, MET or lepton kinematics with TemplateConfig(nonfinite="drop"): those events are
    dropped and counted (nonfinite_events); the rest equals a file without them."""
    cols = _toy_cols(600, seed=13)
    bad_rows = np.array([5, 17, 200, 431])
    gw = cols["genWeight"].copy()
    gw[bad_rows[0]] = np.nan
    met = cols["MET_pt"].copy()
    met[bad_rows[1]] = np.inf
    cols_bad = dict(cols, genWeight=gw, MET_pt=met)
    mu = cols["Muon"]
    counts = ak.to_numpy(ak.num(mu))
    assert counts[bad_rows[2]] > 0 and counts[bad_rows[3]] > 0
    pt = ak.to_numpy(ak.flatten(mu.pt)).copy()
    eta = ak.to_numpy(ak.flatten(mu.eta)).copy()
    starts = np.cumsum(counts) - counts
    pt[starts[bad_rows[2]]] = np.nan
    eta[starts[bad_rows[3]]] = -np.inf
    mu_bad = ak.with_field(mu, ak.unflatten(pt, counts), "pt")
    mu_bad = ak.with_field(mu_bad, ak.unflatten(eta, counts), "eta")
    cols_bad["Muon"] = mu_bad
    _write_cols(tmp / "bad.root", cols_bad)
    keep = np.setdiff1d(np.arange(600), bad_rows)
    cols_ref = {k: v[keep] for k, v in cols.items()}
    _write_cols(tmp / "ref.root", cols_ref)
    drop = TemplateConfig(nonfinite="drop")
    got = run_templates({"w": [str(tmp / "bad.root")]}, WTemplateProcessor(drop))
    ref = run_templates({"w": [str(tmp / "ref.root")]}, WTemplateProcessor(drop))
    assert got.output["w"]["nonfinite_events"] == 4 and ref.output["w"]["nonfinite_events"] == 0
    assert got.output["w"]["nevents"] == 600
    got.output["w"]["nevents"] -= 4
    got.output["w"]["nonfinite_events"] = 0
    _assert_same(got.output, ref.output)


def _rec_negative_bins(tmp: Path) -> None:
    """Negative template bins: clipped to zero and counted (WorkspaceWriter.clipped_negative_bins)."""
    from wfit.workspace import WorkspaceWriter, read_workspace

    w = WorkspaceWriter()
    w.add_channel("c", [hist.axis.Regular(3, 0, 1, name="x")])
    w.add_process("a", "c", np.array([-2.0, 5.0, -0.5]), signal=True)
    w.add_data("c", np.array([1.0, 5.0, 5.0]))
    w.write(tmp / "n.hdf5")
    assert w.clipped_negative_bins == {"c/a": 2}
    ws = read_workspace(tmp / "n.hdf5")
    np.testing.assert_array_equal(ws.norm[:, 0], [0.0, 5.0, 0.0])


def _rec_zero_observed(tmp: Path) -> None:
    """Bins with zero observed events: the fit converges to the analytic mu = sum(n) / sum(s)."""
    from wfit.fitter import FitStatus, fit_workspace
    from wfit.workspace import WorkspaceWriter

    s = np.array([10.0, 20.0, 30.0, 5.0])
    n = np.array([0.0, 25.0, 0.0, 7.0])
    w = WorkspaceWriter()
    w.add_channel("c", [hist.axis.Regular(4, 0, 1, name="x")])
    w.add_process("sig", "c", s, signal=True, variances=np.zeros(4))
    w.add_data("c", n)
    w.write(tmp / "z.hdf5")
    res = fit_workspace(tmp / "z.hdf5", bb_lite=False)
    assert res.status == FitStatus.CONVERGED
    assert res.values[0] == pytest.approx(n.sum() / s.sum(), rel=1e-8)


RECOVERIES: dict[str, Callable[[Path], None]] = {
    "empty ROOT file": _rec_empty_file,
    "NaN/inf weights and kinematics": _rec_nonfinite,
    "negative template bins": _rec_negative_bins,
    "zero-observed bins": _rec_zero_observed,
}


@pytest.mark.parametrize("case", sorted(RECOVERIES))
def test_documented_recovery(tmp_path: Path, case: str) -> None:
    RECOVERIES[case](tmp_path)


# ------------------------------------------------------------------------------ non-ASCII paths and names
def test_non_ascii_paths_and_names_run_end_to_end(tmp_path: Path) -> None:
    """Folders, files, a dataset and the outputs with non-ASCII names (accents, micro sign, CJK, a space) run
    through the processing, the workspace and `wfit fit` as ASCII ones do: the same histograms, the same fit."""
    import subprocess
    import sys

    from wfit.fitter import read_result
    from wfit.processors import AngularCoefficients, build_workspace

    cfg = TemplateConfig(
        absy_edges=(0.0, 2.4), eta_bins=(8, -2.4, 2.4), pt_bins=(6, 26.0, 56.0), eff_groups=2, pdf=False
    )
    got = {}
    for label, folder, name, dataset in (
        ("ascii", "plain", "w.root", "W"),
        ("unicode", "données µ/测试", "échantillon-ß.root", "W-é"),
    ):
        d = tmp_path / folder
        d.mkdir(parents=True)
        f = d / name
        _write_cols(f, _toy_cols(4000, seed=21))
        proc = WTemplateProcessor(
            cfg, signal_datasets={dataset}, coefficients=AngularCoefficients.constant(cfg, 0.2, -0.5)
        )
        run = run_templates({dataset: [str(f)]}, proc)
        assert run.failures == []
        ws = d / f"espace {label}-ü.hdf5"
        build_workspace(run.output, ws, samples={dataset: Sample("signal", xsec=10.0)}, config=cfg, lumi=400.0,
                        pseudo_data=3)  # fmt: skip
        out = d / "résultat-µ.hdf5"
        exe = os.path.join(os.path.dirname(sys.executable), "wfit")
        fit = subprocess.run([exe, "fit", str(ws), "-o", str(out), "-q"], capture_output=True, text=True)
        assert fit.returncode == 0, fit.stderr
        got[label] = (run.output[dataset], read_result(out))
    (out_a, fit_a), (out_u, fit_u) = got["ascii"], got["unicode"]
    _assert_same({"x": out_a}, {"x": out_u})
    np.testing.assert_array_equal(fit_a.values, fit_u.values)
    np.testing.assert_array_equal(fit_a.covariance, fit_u.covariance)
