"""wfit: a CMS-style precision W-boson measurement, from NanoAOD to the fit result.

The package has three stages that meet at files:

* :mod:`wfit.calib` trains the DNN jet calibration and exports it to ONNX;
* :mod:`wfit.processors` holds the coffea processors that fill (eta, pT, charge) templates
  and write the HDF5 workspace (:mod:`wfit.workspace` defines that format);
* :mod:`wfit.fitter` is the TensorFlow binned maximum-likelihood fit and owns the ``wfit`` CLI.

Importing :mod:`wfit` imports none of the heavy stacks (TensorFlow, coffea).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wfit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
