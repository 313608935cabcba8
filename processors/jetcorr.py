"""The DNN jet pT calibration inside the template processor: NanoAOD -> model inputs -> onnxruntime ->
corrected jets -> type-1 MET -> mT, with the jet-calibration systematics.

The model is an ONNX file written by :func:`wfit.calib.export_onnx`; its feature specification travels in
the file's metadata (and in the ``<file>.features.yaml`` sidecar). This module holds the calibration's
configuration and checks (:class:`JetCalibration`); which NanoAOD branch feeds which feature is
:mod:`wfit.processors.jetinputs` (the inputs themselves are built by the one definition of the features,
:func:`wfit.calib.features.build_inputs`, through :class:`wfit.calib.OnnxCalibrator`), and the corrected jets
and MET of a chunk are :mod:`wfit.processors.jetmet`.

Files without constituents (plain NanoAOD such as ``nano_dy.root``): a model that needs constituents runs
there only through a **jet-level fallback model** (``fallback_model``, an ONNX file exported from a model
trained without constituents, e.g. with ``features: {constituents: {}}``); which model corrected which file is
recorded in the output (``jet_calibration``). Without a fallback such a file is an error, reported by the
pre-flight check (:meth:`JetCalibration.check_file`, called by :func:`wfit.processors.run_templates`) before
any chunk is processed. Zero constituents are never substituted: the model was not trained on such jets.

Type-1 MET: ``MET' = MET - sum_j (pT'_j - Jet_pt_j) (cos phi_j, sin phi_j)`` over jets with corrected
``pT'_j > met_jet_pt_min`` (15 GeV by default), where ``Jet_pt`` is the NanoAOD (standard-JEC) pT that the
stored MET was type-1 corrected with. The lepton, and the jet that may contain it, are not treated apart
(CMS's type-1 also subtracts muons from jets and skips jets with a large electromagnetic fraction).

Systematic ``jetCalib{Up,Down}``: the predicted correction times ``1 +- variation`` for every jet, carried
to the MET (jets may cross the threshold) and to mT in the same pass.

Systematic ``jetReso{Up,Down}``, for a model with a resolution head (:attr:`wfit.calib.FeatureSpec.quantiles`,
e.g. trained with ``model: {resolution: {quantiles: [0.16, 0.84]}}``): every jet moved to the upper (lower)
bound of its own predicted interval of pT_gen, ``raw pT * exp(q_84)`` (``exp(q_16)``), the model's predicted
quantiles of ``log(pt_gen / pt)`` (:func:`wfit.calib.onnx_spec.interval_levels`), carried to the MET and mT
like ``jetCalib``: a per-jet resolution, as CMS regressions store beside the correction, as a nuisance. Files
corrected by a fallback model without a head get the nominal there (no variation), so that every file of a
dataset fills the same histograms.

What is read and run. Jets change only the MET, hence only mT, so the model runs only on the jets of the
events that some selection needs (those passing the lepton preselection, or one of its momentum-varied
re-selections; lazily, :class:`JetMET`), and of those only on jets with raw pT of at least ``min_raw_pt``
(``met_jet_pt_min / 2`` by default: a softer jet would need a correction above 2 to pass the type-1 threshold;
it is left out of the MET like any jet below it, in every pass alike). The constituent branches are read
through NanoEvents' lazy (virtual) arrays only when some jet is evaluated, and only the links of the wanted
events are followed.

With ``cache_dir`` (:mod:`wfit.processors.jetcache`) the model's outputs are kept per input file and model:
the first pass over a chunk writes them with each event's type-1 MET change per variation, and later passes
with the same MET settings read those (two numbers per event and variation): neither the constituents, the
jets nor the model are touched. Results are the same bits with or without the cache.

Example:
    >>> calib = JetCalibration("model.onnx", fallback_model="jet_level.onnx", cache_dir="jetcache")  # doctest: +SKIP
    >>> proc = WTemplateProcessor(jet_calibration=calib)                                           # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from wfit.calib.export import OnnxCalibrator
from wfit.calib.onnx_spec import interval_levels

from .jetcache import JetCache
from .jetinputs import (
    CHARGED_PDGIDS,
    FEATURE_SOURCES,
    NEUTRAL_PDGIDS,
    event_branches,
    model_branches,
    unmapped_features,
)
from .jetmet import MET_BRANCHES, JetMET, chunk_entry, type1_met

__all__ = [
    "CHARGED_PDGIDS",
    "FEATURE_SOURCES",
    "MET_BRANCHES",
    "NEUTRAL_PDGIDS",
    "JetCalibration",
    "JetMET",
    "jet_models_used",
    "type1_met",
]


class JetCalibration:
    """A DNN jet calibration for :class:`~wfit.processors.WTemplateProcessor`; checked when constructed.

    Construction reads the ONNX files (not an onnxruntime session) and checks: the file exists; its feature
    specification (metadata, and the sidecar when present) matches the graph (:func:`wfit.calib.read_feature_spec`);
    every feature has a NanoAOD source; the fallback is a jet-level model; the cache directory can be written.
    onnxruntime sessions are created lazily on the worker and are not pickled (:class:`wfit.calib.OnnxCalibrator`).

    Args:
        model: ONNX file from :func:`wfit.calib.export_onnx`.
        fallback_model: A jet-level ONNX model (no constituents) for files without ``JetPFCands``/``PFCands``/
            ``JetSVs``; None makes such files an error (when ``model`` needs constituents).
        variation: Relative size of the ``jetCalib{Up,Down}`` variation of the predicted correction.
        met_jet_pt_min: Corrected-pT threshold of the jets propagated to the MET, GeV.
        batch_size: Jets per feature-building and inference batch.
        threads: onnxruntime intra-op threads (1: one core per worker).
        cache_dir: Directory of the per-file correction cache (:mod:`wfit.processors.jetcache`; a shared file
            system on a batch cluster), or None to compute the correction in every pass.
        min_raw_pt: Jets with a lower raw pT are not corrected and stay out of the type-1 MET, GeV; None for
            ``met_jet_pt_min / 2`` (such a jet would need a correction above 2 to pass the threshold), 0 to
            correct every jet.

    Attributes:
        cache: The :class:`~wfit.processors.jetcache.JetCache`, or None.

    Raises:
        FileNotFoundError: A model file does not exist.
        wfit.calib.onnx_spec.ModelSpecError: A specification missing or disagreeing with the graph (a
            ``ValueError``).
        ValueError: A feature without a NanoAOD source, a fallback that needs constituents, or a bad option; the
            message names the file, the input or feature, and the fix.
        wfit.processors.jetcache.JetCacheError: ``cache_dir`` cannot be created or written (an ``OSError``
            naming the directory).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        fallback_model: str | os.PathLike[str] | None = None,
        variation: float = 0.02,
        met_jet_pt_min: float = 15.0,
        batch_size: int = 100_000,
        threads: int = 1,
        cache_dir: str | os.PathLike[str] | None = None,
        min_raw_pt: float | None = None,
    ) -> None:
        if not 0.0 <= variation < 1.0:
            raise ValueError(f"JetCalibration.variation must be in [0, 1), got {variation}")
        if batch_size < 1:
            raise ValueError(f"JetCalibration.batch_size must be positive, got {batch_size}")
        if min_raw_pt is not None and not min_raw_pt >= 0.0:
            raise ValueError(f"JetCalibration.min_raw_pt must be >= 0 GeV (or None), got {min_raw_pt}")
        self.variation = float(variation)
        self.met_jet_pt_min = float(met_jet_pt_min)
        self.min_raw_pt = self.met_jet_pt_min / 2.0 if min_raw_pt is None else float(min_raw_pt)
        self.model = self._calibrator(model, batch_size, threads)
        self.specs = {"model": self.model.spec}
        self.fallback = None
        if fallback_model is not None:
            self.fallback = self._calibrator(fallback_model, batch_size, threads)
            self.specs["fallback"] = self.fallback.spec
            if self.specs["fallback"].constituents:
                raise ValueError(
                    f"{self.fallback.path}: the fallback model needs constituents "
                    f"({[c.name for c in self.specs['fallback'].constituents]}); it is used where a file has "
                    "none: export a model trained without constituents (features: {constituents: {}})"
                )
        for role, spec in self.specs.items():
            bad = unmapped_features(spec)
            if bad:
                path = self.model.path if role == "model" else self.fallback.path  # type: ignore[union-attr]
                raise ValueError(
                    f"{path}: feature(s) {bad} have no NanoAOD source (see wfit.processors.jetcorr."
                    "FEATURE_SOURCES); train the model without them, e.g. with wfit.calib's configs/pfnano.yaml"
                )
        self._checked: dict[tuple[str, str, int, int], str] = {}  # check_file's answers per file state
        self.cache = None if cache_dir is None else JetCache(cache_dir)
        if self.cache is not None:  # the key of every entry: read on the driver, checked on the workers
            for calibrator in (self.model, self.fallback):
                if calibrator is not None:
                    _ = calibrator.sha256

    @staticmethod
    def _calibrator(path: str | os.PathLike[str], batch_size: int, threads: int) -> OnnxCalibrator:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: jet calibration model not found; pass the .onnx file written by wfit.calib.export_onnx"
            )
        return OnnxCalibrator(path, threads=threads, chunk_size=batch_size)

    @property
    def has_resolution(self) -> bool:
        """Whether the main model has a resolution head: the processor then fills ``jetReso{Up,Down}`` (for files
        that the fallback corrects, and a fallback without a head, those are the nominal)."""
        return interval_levels(self.specs["model"].quantiles) is not None

    @property
    def needs_constituents(self) -> bool:
        """Whether the main model reads constituents."""
        return bool(self.specs["model"].constituents)

    def branches(self, role: str = "model") -> list[str]:
        """NanoAOD branches that the ``"model"`` or the ``"fallback"`` reads."""
        return model_branches(self.specs[role])

    def preload_branches(self) -> list[str]:
        """The branches worth reading in the processor's one bulk read per chunk.

        Without a cache, everything either model reads. With one, only ``nJet``: a chunk that the cache holds
        reads nothing else of the jets (the cache has the kinematics that the type-1 MET needs), and one that it
        does not reads :data:`MET_BRANCHES` and the model's inputs lazily.
        """
        if self.cache is not None:
            return ["nJet"]
        out = self.branches("model") + (self.branches("fallback") if self.fallback is not None else [])
        return list(dict.fromkeys(out))

    def check_cache(self) -> None:
        """Check that the cache directory (if any) can be written (:meth:`JetCache.check`)."""
        if self.cache is not None:
            self.cache.check()

    def choose(self, fields: Iterable[str]) -> str:
        """``"model"`` or ``"fallback"`` for a file with these branches; raises if neither can run there.

        Args:
            fields: The file's branch names.
        """
        have = set(fields)
        missing = [b for b in self.branches("model") if b not in have]
        if not missing:
            return "model"
        if self.fallback is not None and all(b in have for b in self.branches("fallback")):
            return "fallback"
        hint = (
            "use PFNano files or pass fallback_model= (a jet-level model)"
            if self.needs_constituents and self.fallback is None
            else "use NanoAOD with these branches"
        )
        raise ValueError(f"branches {missing} needed by the jet calibration {self.model.path} are missing: {hint}")

    def check_file(self, path: str, treename: str = "Events") -> str:
        """Pre-flight check of one input file (branch names only); returns the role that will run on it.

        The answer is remembered per local file, its size and modification time: a later run over the same files
        does not open them again here.
        """
        import uproot

        from wfit.atomic import is_remote

        key = None
        if not is_remote(path):
            st = os.stat(path.removeprefix("file://"))
            key = (os.path.abspath(path.removeprefix("file://")), treename, st.st_size, st.st_mtime_ns)
            if key in self._checked:
                return self._checked[key]
        with uproot.open(path) as f:
            keys = f[treename].keys()
        if "Rho_fixedGridRhoFastjetAll" in keys:  # NanoAOD v12+ name
            keys.append("fixedGridRhoFastjetAll")
        try:
            role = self.choose(keys)
        except ValueError as err:
            raise ValueError(f"file {path!r}: {err}") from None
        if key is not None:
            self._checked[key] = role
        return role

    def evaluate(self, events: Any, met_pt: np.ndarray, met_phi: np.ndarray) -> JetMET:
        """The lazy corrected jets and MET of one chunk of NanoEvents (see :class:`JetMET`).

        The cache is used when the events carry coffea's chunk metadata (``filename``, ``entrystart``,
        ``entrystop``, as :func:`~wfit.processors.run_templates` gives them); other events are computed in place.
        """
        fname = events.metadata.get("filename", "?")
        try:
            role = self.choose(event_branches(events))
        except ValueError as err:
            raise ValueError(f"file {fname!r}: {err}") from None
        calibrator = self.model if role == "model" else self.fallback
        assert calibrator is not None
        return JetMET(
            self,
            calibrator,
            self.specs[role],
            events,
            met_pt,
            met_phi,
            chunk_entry(self.cache, events, calibrator.sha256),
        )


def jet_models_used(calibration: JetCalibration | None, fileset: Mapping[str, Any]) -> dict[str, str]:
    """Pre-flight: check the cache directory and every file of a coffea fileset; ``{file: "model" or "fallback"}``.

    Raises:
        ValueError: A file lacks branches that the calibration needs (naming the file and the fix).
        wfit.processors.jetcache.JetCacheError: The cache directory cannot be written (naming it).
    """
    out: dict[str, str] = {}
    if calibration is None:
        return out
    calibration.check_cache()
    for files in fileset.values():
        if isinstance(files, Mapping):
            files = files.get("files", files)
        if isinstance(files, str):
            files = [files]
        items = files.items() if isinstance(files, Mapping) else ((f, "Events") for f in files)
        for path, tree in items:
            out[str(path)] = calibration.check_file(str(path), tree or "Events")
    return out
