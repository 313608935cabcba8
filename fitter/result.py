"""The fit result and its HDF5 file (plain datasets and attributes, no pickles)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from wfit.atomic import atomic_write_hdf5
from wfit.fitter.minimize import FitStatus
from wfit.fitter.options import describe_priors

__all__ = ["FitResult", "read_result"]

_RESULT_FORMAT = 1


@dataclass
class FitResult:
    """Parameters at the minimum with their covariance.

    Attributes:
        names: Parameter names: POIs (signal strengths mu, one per signal process) then nuisances.
        npoi: Number of POIs at the front of ``names``.
        values: Fitted values.
        errors: Square roots of the covariance diagonal (Hessian uncertainties).
        covariance: Inverse of the exact Hessian at the minimum (NaN if not positive definite).
        nll: NLL at the minimum (saturated offset: twice it is the saturated chi2 without BB terms).
        edm: Estimated distance to the minimum.
        status: :class:`~wfit.fitter.minimize.FitStatus`.
        niter: Minimiser iterations.
        timings: Seconds spent per stage (``load``, ``setup``, ``minimize``, ``covariance``).
        workspace: Path of the input workspace.
        workspace_sha256: Checksum of the input workspace.
        options: The fit options, :meth:`FitOptions.to_dict` with the device that TensorFlow used
            (``FitOptions.from_dict(options, strict=False)`` reads them back); a cluster fit adds the
            ``worker`` and its ``resources``.
        version: wfit version that made the result.
        extra: Post-fit products by name (goodness of fit, impacts, scans), written under ``extra/``.
        blinding: The :class:`~wfit.fitter.blinding.Blinding` of a blinded fit whose values are still the fitted
            ones (what ``fit_workspace``'s ``post_fit`` hook receives); not written. A shown (blinded) result has
            ``options["blinded"]`` instead.
    """

    names: list[str]
    npoi: int
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    nll: float
    edm: float
    status: FitStatus
    niter: int
    timings: dict[str, float] = field(default_factory=dict)
    workspace: str = ""
    workspace_sha256: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    blinding: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status == FitStatus.CONVERGED

    @property
    def pois(self) -> dict[str, tuple[float, float]]:
        """POI name -> (value, uncertainty)."""
        return {
            n: (float(v), float(e))
            for n, v, e in zip(self.names[: self.npoi], self.values[: self.npoi], self.errors[: self.npoi], strict=True)
        }

    def correlation(self) -> np.ndarray:
        """Correlation matrix from the covariance."""
        d = np.sqrt(np.diag(self.covariance))
        return self.covariance / np.outer(d, d)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no parameter {name!r}; parameters: {self.names[:10]}...") from None

    def summary(self, max_nuisances: int = 10) -> str:
        """A text table of the POIs (and the largest nuisance pulls) with NLL, EDM and status."""
        lines = [f"{'parameter':<32} {'value':>12} {'uncertainty':>12}", "-" * 58]
        for n, v, e in zip(self.names[: self.npoi], self.values[: self.npoi], self.errors[: self.npoi], strict=True):
            lines.append(f"{n:<32} {v:>12.6f} {e:>12.6f}")
        nuis = np.arange(self.npoi, len(self.names))
        if len(nuis) and max_nuisances > 0:
            order = nuis[np.argsort(-np.abs(self.values[nuis]))][:max_nuisances]
            lines.append(f"-- {min(max_nuisances, len(nuis))} of {len(nuis)} nuisances, largest |pull| first")
            for i in order:
                lines.append(f"{self.names[i]:<32} {self.values[i]:>12.6f} {self.errors[i]:>12.6f}")
        priors = (self.options or {}).get("priors") or []
        if priors:
            lines.append(f"-- Gaussian priors (maximum a posteriori): {describe_priors(priors)}")
        blinded = (self.options or {}).get("blinded") or []
        if blinded:
            lines.append(f"-- BLINDED: {len(blinded)} parameters shown with hidden offsets ({', '.join(blinded[:4])}"
                         f"{', ...' if len(blinded) > 4 else ''}); --unblind NAME reveals one")
        lines.append("-" * 58)
        lines.append(
            f"NLL = {self.nll:.6f}   EDM = {self.edm:.3g}   status = {int(self.status)} "
            f"({self.status.describe()})   iterations = {self.niter}"
        )
        return "\n".join(lines)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the result to HDF5 atomically."""

        def body(f: h5py.File) -> None:
            f.attrs["format"] = _RESULT_FORMAT
            f.attrs["wfit_version"] = self.version
            f.attrs["workspace"] = self.workspace
            f.attrs["workspace_sha256"] = self.workspace_sha256
            f.attrs["npoi"] = self.npoi
            f.attrs["nll"] = self.nll
            f.attrs["edm"] = self.edm
            f.attrs["status"] = int(self.status)
            f.attrs["status_text"] = self.status.describe()
            f.attrs["niter"] = self.niter
            f.attrs["options"] = json.dumps(self.options)
            f.attrs["timings"] = json.dumps(self.timings)
            f.create_dataset("names", data=np.array(self.names, dtype=object), dtype=h5py.string_dtype())
            f.create_dataset("values", data=self.values)
            f.create_dataset("errors", data=self.errors)
            # uncompressed: gzip saved 5% of a 4100 x 4100 covariance for 2.5 s of a 0.4 s write
            f.create_dataset("covariance", data=self.covariance)
            for k, v in self.extra.items():
                v = np.asarray(v)
                if v.dtype.kind in "OU":  # names: variable-length strings, not pickles
                    f.create_dataset(f"extra/{k}", data=v.astype(object), dtype=h5py.string_dtype())
                else:
                    f.create_dataset(f"extra/{k}", data=v)

        atomic_write_hdf5(path, body)


def read_result(path: str | os.PathLike[str]) -> FitResult:
    """Read a result file written by :meth:`FitResult.write`."""
    with h5py.File(path, "r") as f:
        if "values" not in f or "format" not in f.attrs:
            raise ValueError(f"{path}: not a wfit fit result (no 'values' dataset or 'format' attribute)")
        extra = {}
        for k in f.get("extra", {}):
            d = f["extra"][k]
            extra[k] = d.asstr()[...] if h5py.check_string_dtype(d.dtype) else d[...]
        return FitResult(
            names=[s.decode() if isinstance(s, bytes) else s for s in f["names"][...]],
            npoi=int(f.attrs["npoi"]),
            values=f["values"][...],
            errors=f["errors"][...],
            covariance=f["covariance"][...],
            nll=float(f.attrs["nll"]),
            edm=float(f.attrs["edm"]),
            status=FitStatus(int(f.attrs["status"])),
            niter=int(f.attrs["niter"]),
            timings=json.loads(f.attrs["timings"]),
            workspace=str(f.attrs["workspace"]),
            workspace_sha256=str(f.attrs["workspace_sha256"]),
            options=json.loads(f.attrs["options"]),
            version=str(f.attrs["wfit_version"]),
            extra=extra,
        )
