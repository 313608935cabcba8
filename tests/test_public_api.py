"""The public API is frozen here: changing it is a visible decision."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

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
            "iter_logk_blocks",
            "read_workspace",
        ]
    )


def test_fitter_api():
    assert sorted(wfit.fitter.__all__) == sorted(
        ["FitOptions", "FitResult", "FitStatus", "Likelihood", "fit", "fit_workspace", "goodness_of_fit", "impacts",
         "read_result", "run_toys", "scan", "scan2d"]
    )


@pytest.mark.parametrize("package", ["wfit.workspace", "wfit.fitter", "wfit.processors", "wfit.calib"])
def test_public_names_are_defined_where_they_live(package: str) -> None:
    """Each name in ``__all__`` is listed once, appears in ``dir()``, and is the object defined under that name
    in a module of its own package (not another package's object re-exported); the spelling says the kind:
    ``CamelCase`` a class, ``snake_case`` a function, ``UPPER_CASE`` a constant."""
    mod = importlib.import_module(package)
    assert len(set(mod.__all__)) == len(mod.__all__), sorted(n for n in mod.__all__ if mod.__all__.count(n) > 1)
    assert set(mod.__all__) <= set(dir(mod)), sorted(set(mod.__all__) - set(dir(mod)))
    for name in mod.__all__:
        obj = getattr(mod, name)
        if name.isupper():
            assert not callable(obj), name
            continue
        if name[0].isupper():
            assert inspect.isclass(obj), (name, obj)
        else:
            assert inspect.isfunction(obj), (name, obj)
        home = obj.__module__
        assert home == package or home.startswith(f"{package}."), (name, home)
        assert obj.__name__ == name, (name, obj.__name__)
        assert getattr(importlib.import_module(home), name) is obj, (name, home)


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
