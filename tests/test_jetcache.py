"""The per-file cache of the DNN jet correction (wfit.processors.jetcache): templates with and without it are
the same bits, stale entries are never used, an unwritable directory fails before any chunk, and concurrent
writers leave one valid entry."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uproot

from wfit.calib.export import OnnxCalibrator
from wfit.processors import (
    JetCacheError,
    JetCalibration,
    TemplateConfig,
    ToyConfig,
    WTemplateProcessor,
    build_jet_cache,
    run_templates,
    write_toy,
)
from wfit.processors.jetcache import EntryKey, JetCache, file_identity

CFG = TemplateConfig(curvature=None, qcd_scale=False, pdf=False)  # weight systematics and jetCalib{Up,Down}


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Constituent models of the PFNano features, randomly initialised with three seeds (the cache does not care
    what the model learnt), the third with a resolution head, exported to ONNX."""
    from tests.builders import random_constituent_models

    return random_constituent_models(tmp_path_factory.mktemp("cachemodels"), {"v1": 1, "v2": 2, "reso": 3},
                                     resolution={"reso"})  # fmt: skip


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cachetoy") / "w.root"
    write_toy(path, 4000, process="W", seed=3, config=ToyConfig(pfnano=True, n_pdf=3), block_size=1000)
    return str(path)


def _run(path: str | list[str], calib: JetCalibration | None, chunksize: int = 100_000, **kw: Any) -> Any:
    files = [path] if isinstance(path, str) else path
    proc = WTemplateProcessor(CFG, jet_calibration=calib)
    return run_templates({"W": files}, proc, chunksize=chunksize, **kw).output["W"]


def _assert_identical(a: Any, b: Any) -> None:
    """Every histogram bit for bit (values and variances, flow bins included), every count exactly."""
    assert set(a) == set(b)
    for key in a:
        if hasattr(a[key], "axes"):
            assert list(a[key].axes) == list(b[key].axes), key
            np.testing.assert_array_equal(a[key].values(flow=True), b[key].values(flow=True), err_msg=key)
            np.testing.assert_array_equal(a[key].variances(flow=True), b[key].variances(flow=True), err_msg=key)
        elif key != "jet_calibration":
            assert a[key] == b[key], key


class _Counter:
    """Counts the jets that onnxruntime is asked for (OnnxCalibrator.predict_outputs, patched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.jets = 0
        original = OnnxCalibrator.predict_outputs

        def counted(calibrator: OnnxCalibrator, arrays: Any) -> Any:
            out = original(calibrator, arrays)
            self.jets += len(out["log_correction"])
            return out

        monkeypatch.setattr(OnnxCalibrator, "predict_outputs", counted)


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("*.root"))


def _leftovers(cache_dir: Path) -> list[Path]:
    """Temporary files or folders of unfinished writes (wfit.atomic's hidden folders, probe files)."""
    return [p for p in cache_dir.rglob(".*")]


# ---------------------------------------------------------------------- identical templates
def test_templates_with_and_without_the_cache_are_identical(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _Counter(monkeypatch)
    reference = _run(toy, JetCalibration(models["v1"]))
    computed = counter.jets
    assert computed > 3000
    assert reference["templates_syst"][{"syst": "jetCalibUp"}].sum().value != reference["templates_syst"][
        {"syst": "nominal"}].sum().value  # fmt: skip

    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    counter.jets = 0
    cold = _run(toy, calib)
    assert counter.jets == computed  # the first pass computes what a pass without the cache does
    assert len(_entries(tmp_path / "cache")) == 1
    counter.jets = 0
    warm = _run(toy, calib)
    assert counter.jets == 0  # the second reads the cache only
    _assert_identical(cold, reference)
    _assert_identical(warm, reference)
    assert not _leftovers(tmp_path / "cache")


def test_a_cache_written_with_one_chunking_serves_another(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries of 1000-event chunks serve 1500-event chunks (two or three entries each) and the whole file."""
    counter = _Counter(monkeypatch)
    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    _run(toy, calib, chunksize=1000, align_clusters=False)
    assert len(_entries(tmp_path / "cache")) == 4
    for chunksize in (1500, 100_000):
        reference = _run(toy, JetCalibration(models["v1"]), chunksize=chunksize, align_clusters=False)
        counter.jets = 0
        warm = _run(toy, calib, chunksize=chunksize, align_clusters=False)
        assert counter.jets == 0, chunksize
        _assert_identical(warm, reference)


def test_a_range_that_no_entry_covers_is_computed(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _Counter(monkeypatch)
    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    _run(toy, calib, chunksize=1000, align_clusters=False)
    gone = next(p for p in _entries(tmp_path / "cache") if p.name == "2000-3000.root")
    gone.unlink()
    counter.jets = 0
    warm = _run(toy, calib, chunksize=4000, align_clusters=False)
    events = uproot.open(toy)["Events"].arrays(["Jet_pt"], entry_start=2000, entry_stop=3000)
    assert 0 < counter.jets <= sum(len(j) for j in events["Jet_pt"])  # only the missing range's jets
    _assert_identical(warm, _run(toy, JetCalibration(models["v1"]), chunksize=4000, align_clusters=False))
    assert [p.name for p in _entries(tmp_path / "cache")] == ["0-1000.root", "0-4000.root", "1000-2000.root",
                                                              "3000-4000.root"]  # fmt: skip


def test_warm_pass_takes_the_stored_met_changes_and_other_settings_the_jets(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm pass with the writer's MET settings is served by the entry's per-event MET columns (no jet column
    read); a calibration with another MET threshold or variation size ignores those columns, rebuilds the MET
    from the cached jets (the model does not run) and equals a pass without the cache with its own settings. A
    pass that needs more events than the first one (all systematics after the nominal alone) computes only
    those and equals a pass without the cache."""
    counter = _Counter(monkeypatch)
    cache = tmp_path / "cache"
    calib = JetCalibration(models["v1"], cache_dir=cache)
    _run(toy, calib)
    (entry,) = _entries(cache)
    events = uproot.open(entry)["JetCorrectionEvents"]
    assert {"metState", "metDx_nominal", "metDy_up", "metDx_down"} <= set(events.keys())
    assert events["metState"].array(library="np").sum() > 1000

    read: list[bool] = []
    original = JetCache.read

    def logged(self: JetCache, *args: Any, jets: bool = True, **kw: Any) -> Any:
        read.append(jets)
        return original(self, *args, jets=jets, **kw)

    monkeypatch.setattr(JetCache, "read", logged)
    counter.jets = 0
    warm = _run(toy, calib)
    assert counter.jets == 0 and read and not any(read)  # per-event columns only
    _assert_identical(warm, _run(toy, JetCalibration(models["v1"])))

    for settings in ({"met_jet_pt_min": 25.0}, {"variation": 0.05}):
        read.clear()
        counter.jets = 0
        other = _run(toy, JetCalibration(models["v1"], cache_dir=cache, **settings))  # type: ignore[arg-type]
        assert counter.jets == 0 and any(read), settings  # the jets' columns serve, the model does not run
        _assert_identical(other, _run(toy, JetCalibration(models["v1"], **settings)))  # type: ignore[arg-type]

    fresh = tmp_path / "fresh"
    nominal = WTemplateProcessor(TemplateConfig(variations=False), jet_calibration=JetCalibration(models["v1"],
                                                                                                  cache_dir=fresh))
    run_templates({"W": [toy]}, nominal, chunksize=100_000)
    counter.jets = 0
    full_cfg = TemplateConfig(qcd_scale=False, pdf=False)  # with the muon momentum re-selections
    warm = run_templates({"W": [toy]}, WTemplateProcessor(full_cfg, jet_calibration=JetCalibration(
        models["v1"], cache_dir=fresh)), chunksize=100_000).output["W"]  # fmt: skip
    assert 0 < counter.jets < 400  # the events that only a momentum re-selection selects
    reference = run_templates({"W": [toy]}, WTemplateProcessor(full_cfg, jet_calibration=JetCalibration(
        models["v1"])), chunksize=100_000).output["W"]  # fmt: skip
    _assert_identical(warm, reference)


def test_met_changes_of_an_entry_replaced_during_a_chunk_are_recomputed(models: dict[str, str], toy: str,
                                                                        tmp_path: Path) -> None:
    """Another worker replaces the entry between the reads of two variations with one that holds fewer events:
    the events no longer held are evaluated again, and every variation's MET equals a pass without the cache,
    bit for bit."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    n = uproot.open(toy)["Events"].num_entries
    metadata = {"dataset": "W", "filename": toy, "entrystart": 0, "entrystop": n, "fileuuid": file_identity(toy).uuid}

    def events() -> Any:
        return NanoEventsFactory.from_root({toy: "Events"}, schemaclass=NanoAODSchema, mode="virtual",
                                           metadata=dict(metadata)).events()  # fmt: skip

    cache_dir = tmp_path / "cache"
    calib = JetCalibration(models["v1"], cache_dir=cache_dir)
    ev = events()
    met_pt, met_phi = np.asarray(ev.MET.pt, dtype=np.float64), np.asarray(ev.MET.phi, dtype=np.float64)
    everything = np.ones(n, dtype=bool)
    assert calib.evaluate(ev, met_pt, met_phi).ensure(everything)  # every event's jets, stored
    jm = calib.evaluate(events(), met_pt, met_phi)
    assert not jm.ensure(everything)  # the nominal changes and which events are held: read, nothing computed
    assert jm.cached_events == n

    # The replacement: the jets and MET changes of the first half of the events only.
    cache, key = JetCache(cache_dir), EntryKey(file_identity(toy), calib.model.sha256, 0, n)
    settings = {"met_jet_pt_min": calib.met_jet_pt_min, "variation": calib.variation, "min_raw_pt": calib.min_raw_pt}
    got = cache.read(key, np.arange(n), jm.counts, met_settings=settings, met_variations=["nominal", "up", "down"])
    h, n_jets = n // 2, int(jm.counts[: n // 2].sum())
    cache.write(key, np.arange(h), jm.counts[:h], {c: v[:n_jets] for c, v in got.values.items()},
                met_known=got.met_known[:h], met={v: (x[:h], y[:h]) for v, (x, y) in got.met.items()},
                met_settings=settings)  # fmt: skip

    fresh = JetCalibration(models["v1"]).evaluate(events(), met_pt, met_phi)
    for variation in ("up", "down", "nominal"):
        want = fresh.met_xy(everything, variation)
        have = jm.met_xy(everything, variation)
        np.testing.assert_array_equal(have[0], want[0], err_msg=variation)
        np.testing.assert_array_equal(have[1], want[1], err_msg=variation)
    assert 0 < jm.computed_jets <= int(jm.counts[h:].sum())  # only the events no longer held


def test_resolution_head_outputs_are_cached(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _Counter(monkeypatch)
    reference = _run(toy, JetCalibration(models["reso"]))
    assert {"jetResoUp", "jetResoDown"} <= set(reference["templates_syst"].axes["syst"])
    calib = JetCalibration(models["reso"], cache_dir=tmp_path / "cache")
    _run(toy, calib)
    (entry,) = _entries(tmp_path / "cache")
    assert {"dnnLogQuantile0", "dnnLogQuantile1"} <= set(uproot.open(entry)["JetCorrections"].keys())
    counter.jets = 0
    warm = _run(toy, calib)
    assert counter.jets == 0
    _assert_identical(warm, reference)


def test_cache_built_on_dask_serves_the_processor(
    models: dict[str, str], toy: str, tmp_path: Path, dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    built = build_jet_cache(dask_client, {"W": [toy], "again": [toy]}, calib, chunksize=2500)
    assert built == {toy: [(0, 2500, "computed"), (2500, 4000, "computed")]}
    assert build_jet_cache(None, {"W": [toy]}, calib) == {toy: [(0, 4000, "cached")]}
    counter = _Counter(monkeypatch)
    warm = _run(toy, calib, chunksize=1000, align_clusters=False)
    assert counter.jets == 0
    _assert_identical(warm, _run(toy, JetCalibration(models["v1"]), chunksize=1000, align_clusters=False))
    with pytest.raises(ValueError, match="the calibration has no cache directory"):
        build_jet_cache(None, {"W": [toy]}, JetCalibration(models["v1"]))


def test_warm_pass_reads_neither_constituents_nor_jet_kinematics(
    models: dict[str, str], toy: str, tmp_path: Path
) -> None:
    """NanoEvents' access log of a chunk: a cold pass reads the model's inputs lazily (not PFCands_charge, the
    split comes from pdgId), a warm one reads nJet of the jets and nothing of the constituents."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    proc = WTemplateProcessor(CFG, jet_calibration=calib)
    n = uproot.open(toy)["Events"].num_entries

    def read() -> set[str]:
        log: list = []
        metadata = {"dataset": "W", "filename": toy, "entrystart": 0, "entrystop": n,
                    "fileuuid": file_identity(toy).uuid}  # fmt: skip
        events = NanoEventsFactory.from_root(
            {toy: "Events"}, schemaclass=NanoAODSchema, mode="virtual", access_log=log, metadata=metadata,
            preload=proc.branches("W"),
        ).events()  # fmt: skip
        proc.process(events)
        return {entry.branch for entry in log} - set(proc.branches("W"))

    cold = read()
    assert {"PFCands_pt", "JetPFCands_pFCandsIdx", "JetSVs_d3d", "Jet_pt"} <= cold
    assert "PFCands_charge" not in cold
    assert cold <= set(calib.branches("model"))
    warm = read()
    assert not {b for b in warm if b.startswith(("PFCands", "JetPFCands", "JetSVs", "Jet_"))}, warm
    assert proc.branches("W").count("nJet") == 1 and not [b for b in proc.branches("W") if b.startswith("Jet_")]


def test_events_dropped_from_a_chunk_are_left_unknown(models: dict[str, str], toy: str, tmp_path: Path) -> None:
    """A chunk of which events were dropped (NaN values) stores the others; a later pass with every event
    computes only the dropped ones, and equals a pass without the cache."""
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    n = uproot.open(toy)["Events"].num_entries
    metadata = {"dataset": "W", "filename": toy, "entrystart": 0, "entrystop": n, "fileuuid": file_identity(toy).uuid}

    def events() -> Any:
        return NanoEventsFactory.from_root({toy: "Events"}, schemaclass=NanoAODSchema, mode="virtual",
                                           metadata=dict(metadata)).events()  # fmt: skip

    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    keep = np.ones(n, dtype=bool)
    keep[[5, 17, 2500]] = False
    ev = events()[keep]
    zeros = np.zeros(int(keep.sum()))
    partial = calib.evaluate(ev, zeros, zeros)
    assert partial.ensure(np.ones(len(zeros), dtype=bool))
    full = calib.evaluate(events(), np.zeros(n), np.zeros(n))
    assert full.ensure(np.ones(n, dtype=bool))
    assert full.computed_jets == int(full.counts[~keep].sum())
    fresh = JetCalibration(models["v1"]).evaluate(events(), np.zeros(n), np.zeros(n))
    fresh.ensure(np.ones(n, dtype=bool))
    np.testing.assert_array_equal(full.correction, fresh.correction)
    np.testing.assert_array_equal(partial.correction, fresh.correction[np.repeat(keep, fresh.counts)])


# ---------------------------------------------------------------------- stale entries
def test_another_model_is_recomputed_not_read(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model edited in place (same path, another SHA-256) is computed again and gives what a pass without the
    cache gives with it; the old model's entries stay for the old model."""
    model = tmp_path / "model.onnx"
    shutil.copy(models["v1"], model)
    shutil.copy(models["v1"] + ".features.yaml", str(model) + ".features.yaml")
    cache = tmp_path / "cache"
    _run(toy, JetCalibration(model, cache_dir=cache))
    shutil.copy(models["v2"], model)
    shutil.copy(models["v2"] + ".features.yaml", str(model) + ".features.yaml")
    counter = _Counter(monkeypatch)
    calib = JetCalibration(model, cache_dir=cache)
    recomputed = _run(toy, calib)
    assert counter.jets > 3000
    fresh = _run(toy, JetCalibration(models["v2"]))
    _assert_identical(recomputed, fresh)
    old = _run(toy, JetCalibration(models["v1"]))
    assert not np.array_equal(old["templates_syst"].values(), fresh["templates_syst"].values())
    assert len({p.parent.name for p in _entries(cache)}) == 2  # one folder per model SHA-256


def test_a_model_changed_under_a_calibration_is_refused(models: dict[str, str], tmp_path: Path) -> None:
    """The key is read on the driver; a worker whose model file differs refuses to run it."""
    model = tmp_path / "model.onnx"
    shutil.copy(models["v1"], model)
    calib = OnnxCalibrator(str(model))
    _ = calib.sha256
    shutil.copy(models["v2"], model)
    with pytest.raises(ValueError, match=r"model\.onnx: the model file changed since it was first read"):
        _ = calib.session


def test_a_rewritten_input_file_is_recomputed(
    models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.root"
    write_toy(path, 1500, process="W", seed=8, config=ToyConfig(pfnano=True, n_pdf=3))
    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "cache")
    _run(str(path), calib)
    before = file_identity(str(path))
    write_toy(path, 1500, process="W", seed=9, config=ToyConfig(pfnano=True, n_pdf=3))
    assert file_identity(str(path)) != before  # a new ROOT UUID (and here also another size)
    counter = _Counter(monkeypatch)
    again = _run(str(path), calib)
    assert counter.jets > 1000
    _assert_identical(again, _run(str(path), JetCalibration(models["v1"])))


def test_an_entry_that_does_not_describe_the_file_is_never_used(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries under the right key but of another file (copied in), with other jet counts, or damaged, are
    detected, removed and recomputed."""
    other = tmp_path / "other.root"
    write_toy(other, 4000, process="W", seed=4, config=ToyConfig(pfnano=True, n_pdf=3), block_size=1000)
    cache = tmp_path / "cache"
    calib = JetCalibration(models["v1"], cache_dir=cache)
    reference = _run(toy, JetCalibration(models["v1"]))
    _run(str(other), calib)
    (foreign,) = _entries(cache)
    target = Path(JetCache(cache).folder(file_identity(toy), calib.model.sha256)) / foreign.name
    counter = _Counter(monkeypatch)
    for damage in ("foreign", "counts", "truncated"):
        target.parent.mkdir(parents=True, exist_ok=True)
        if damage == "foreign":  # the other file's entry, under this file's key
            shutil.copy(foreign, target)
        elif damage == "counts":  # this file's key and metadata, the other file's jets
            ident = file_identity(toy)
            counts = uproot.open(other)["Events"]["nJet"].array(library="np")
            n_jets = int(counts.sum())
            values = {c: np.zeros(n_jets, np.float32) for c in ("pt", "rawFactor", "phi", "dnnLogCorrection")}
            JetCache(cache).write(EntryKey(ident, calib.model.sha256, 0, 4000), np.arange(4000), counts, values)
        else:
            target.write_bytes(foreign.read_bytes()[:5000])
        counter.jets = 0
        got = _run(toy, calib)
        assert counter.jets > 3000, damage
        _assert_identical(got, reference)
        target.unlink()


# ---------------------------------------------------------------------- errors and concurrency
def test_unwritable_cache_directory_is_an_error_before_any_work(
    models: dict[str, str], toy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    bad = blocker / "jetcache"
    with pytest.raises(JetCacheError) as err:
        JetCalibration(models["v1"], cache_dir=bad)
    assert type(err.value) is JetCacheError
    assert f"jet-correction cache directory {str(bad)!r} cannot be written" in str(err.value)
    with pytest.raises(JetCacheError, match="is a URL"):
        JetCalibration(models["v1"], cache_dir="root://eos.example//jetcache")

    # Writable when constructed, not any more when the run starts: the pre-flight check stops it.
    cache = tmp_path / "cache"
    calib = JetCalibration(models["v1"], cache_dir=cache)
    shutil.rmtree(cache)
    cache.write_text("now a file")

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a chunk was processed")

    monkeypatch.setattr(WTemplateProcessor, "process", never)
    with pytest.raises(JetCacheError) as err:
        run_templates({"W": [toy]}, WTemplateProcessor(CFG, jet_calibration=calib))
    assert type(err.value) is JetCacheError
    assert repr(str(cache)) in str(err.value)
    if os.geteuid() != 0:  # permissions do not stop root
        os.remove(cache)
        cache.mkdir(mode=0o500)
        with pytest.raises(JetCacheError, match="cannot be written"):
            JetCalibration(models["v1"], cache_dir=cache)


def test_two_writers_of_one_entry_leave_one_valid_file(models: dict[str, str], toy: str, tmp_path: Path) -> None:
    """Writers released at once by a barrier (threads), then two worker processes processing the same chunks:
    one readable entry per range, no temporary files, and the entry serves a warm pass."""
    cache = JetCache(tmp_path / "threads")
    ident = file_identity(toy)
    counts = uproot.open(toy)["Events"]["nJet"].array(library="np")
    rng = np.random.default_rng(1)
    values = {c: rng.normal(size=int(counts.sum())).astype(np.float32) for c in ("pt", "rawFactor", "phi",
                                                                                "dnnLogCorrection")}  # fmt: skip
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            barrier.wait()
            cache.write(EntryKey(ident, "f" * 64, 0, len(counts)), np.arange(len(counts)), counts, values)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(_entries(tmp_path / "threads")) == 1 and not _leftovers(tmp_path / "threads")
    got = cache.read(EntryKey(ident, "f" * 64, 0, len(counts)), np.arange(len(counts)), counts)
    assert got.known.all() and not got.stale
    np.testing.assert_array_equal(got.values["dnnLogCorrection"], values["dnnLogCorrection"])

    # Two processes reach the same chunks at the same time (the file in two datasets).
    calib = JetCalibration(models["v1"], cache_dir=tmp_path / "workers")
    proc = WTemplateProcessor(CFG, jet_calibration=calib)
    both = run_templates({"a": [toy], "b": [toy]}, proc, executor="futures", workers=2, chunksize=2000,
                         align_clusters=False).output  # fmt: skip
    assert [p.name for p in _entries(tmp_path / "workers")] == ["0-2000.root", "2000-4000.root"]
    assert not _leftovers(tmp_path / "workers")
    reference = _run(toy, JetCalibration(models["v1"]), chunksize=2000, align_clusters=False)
    _assert_identical(both["a"], reference)
    _assert_identical(both["b"], reference)
    _assert_identical(_run(toy, calib, chunksize=2000, align_clusters=False), reference)
