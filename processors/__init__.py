"""Coffea processors: W lepton (eta, pT, charge) templates with systematics, the DNN jet calibration
applied to jets, MET and mT, the toy W generator and the workspace builder.

Importing this package imports coffea, awkward and hist, never TensorFlow nor :mod:`wfit.fitter`.
"""

from __future__ import annotations

from .config import HELICITIES, CurvatureVariation, TemplateConfig
from .corrections import default_corrections_path, load_corrections, make_example_corrections
from .helicity import (
    AngularCoefficients,
    AngularCoefficientsProcessor,
    collins_soper_costheta,
    gen_w_from_events,
    helicity_fractions,
    polarization_weights,
)
from .jetcorr import FEATURE_SOURCES, JetCalibration, JetMET, type1_met
from .processor import Accumulator, WTemplateProcessor, local_cluster, run_templates
from .robust import ChunkFailure, RobustRun, run_robust
from .selection import Leptons, Selection, select_events, transverse_mass
from .toy import ToyConfig, generate_events, write_toy
from .workspace_builder import Sample, build_workspace, fake_estimate, process_templates

__all__ = [
    "FEATURE_SOURCES",
    "HELICITIES",
    "Accumulator",
    "AngularCoefficients",
    "AngularCoefficientsProcessor",
    "ChunkFailure",
    "CurvatureVariation",
    "JetCalibration",
    "JetMET",
    "Leptons",
    "RobustRun",
    "Sample",
    "Selection",
    "TemplateConfig",
    "ToyConfig",
    "WTemplateProcessor",
    "collins_soper_costheta",
    "build_workspace",
    "default_corrections_path",
    "fake_estimate",
    "gen_w_from_events",
    "generate_events",
    "helicity_fractions",
    "load_corrections",
    "local_cluster",
    "make_example_corrections",
    "polarization_weights",
    "process_templates",
    "run_robust",
    "run_templates",
    "select_events",
    "transverse_mass",
    "type1_met",
    "write_toy",
]
