"""The public API is frozen here: changing it is a visible decision."""

from __future__ import annotations

import subprocess
import sys

import wfit.fitter
import wfit.workspace


def test_workspace_api():
    assert sorted(wfit.workspace.__all__) == sorted(
        [
            "SCHEMA_VERSION",
            "Channel",
            "Workspace",
            "WorkspaceError",
            "WorkspaceWriter",
            "CompactBlock",
            "iter_compact_blocks",
            "iter_logk_blocks",
            "read_workspace",
        ]
    )


def test_fitter_api():
    assert sorted(wfit.fitter.__all__) == sorted(
        ["FitResult", "FitStatus", "Likelihood", "fit", "fit_workspace", "goodness_of_fit", "impacts",
         "read_result", "run_toys", "scan", "scan2d"]
    )
    for name in wfit.fitter.__all__:
        assert getattr(wfit.fitter, name) is not None


def _imported(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_fitter_does_not_import_coffea():
    mods = _imported("import wfit.fitter; from wfit.fitter import fit_workspace")
    assert "tensorflow" in mods  # the fitter itself does need it, once a name is used
    assert "coffea" not in mods and "awkward" not in mods


def test_processors_and_calib_do_not_import_tensorflow():
    assert "tensorflow" not in _imported("import wfit.processors")
    assert "tensorflow" not in _imported("import wfit.calib")
    assert "tensorflow" not in _imported("import wfit, wfit.workspace")
