"""Coffea processors: W lepton (eta, pT, charge) templates with systematics, the DNN jet calibration
applied to jets, MET and mT, the toy W generator, the runner and the workspace builder.

Importing this package imports coffea, awkward and hist, never TensorFlow nor :mod:`wfit.fitter`.
"""

from __future__ import annotations

from .accumulator import Accumulator
from .cluster import local_cluster
from .config import HELICITIES, CurvatureVariation, TemplateConfig
from .corrections import default_corrections_path, load_corrections, make_example_corrections
from .helicity import (
    AngularCoefficients,
    collins_soper_costheta,
    gen_w_from_events,
    helicity_fractions,
    polarization_weights,
)
from .jetcache import JetCacheError, build_jet_cache
from .jetcorr import FEATURE_SOURCES, JetCalibration, JetMET, type1_met
from .moments import AngularCoefficientsProcessor
from .processor import WTemplateProcessor
from .refill import columns_config, hard_templates
from .runner import ChunkFailure, IncompleteRunError, RobustRun, run_templates
from .selection import Leptons, Selection, select_events, transverse_mass
from .systematics import SYSTEMATICS, UnknownVariationError
from .toy import ToyConfig, generate_events, write_toy
from .workspace_builder import Sample, build_workspace, fake_estimate, process_templates

__all__ = [
    "FEATURE_SOURCES",
    "HELICITIES",
    "SYSTEMATICS",
    "Accumulator",
    "AngularCoefficients",
    "AngularCoefficientsProcessor",
    "ChunkFailure",
    "CurvatureVariation",
    "IncompleteRunError",
    "JetCacheError",
    "JetCalibration",
    "JetMET",
    "Leptons",
    "RobustRun",
    "Sample",
    "Selection",
    "TemplateConfig",
    "ToyConfig",
    "UnknownVariationError",
    "WTemplateProcessor",
    "collins_soper_costheta",
    "columns_config",
    "build_jet_cache",
    "build_workspace",
    "default_corrections_path",
    "fake_estimate",
    "gen_w_from_events",
    "generate_events",
    "hard_templates",
    "helicity_fractions",
    "load_corrections",
    "local_cluster",
    "make_example_corrections",
    "polarization_weights",
    "process_templates",
    "run_templates",
    "select_events",
    "transverse_mass",
    "type1_met",
    "write_toy",
]
