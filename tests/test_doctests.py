"""The examples in the docstrings run and print what they show (doctest), one test per module.

The modules are found by walking the installed package: the source folders (``fitter/``, ``processors/``,
``calib/``) are mapped to ``wfit.fitter`` etc. by setuptools, so pytest's ``--doctest-modules`` would import
them under the wrong names. An example that writes a file must write it into a ``tempfile`` folder: each
module runs in an empty working directory that must still be empty afterwards.
"""

from __future__ import annotations

import doctest
import gc
import importlib
import os
import pkgutil
import tempfile
import warnings
from pathlib import Path

import pytest

#: Packages whose modules are searched for examples; walk_packages descends into their subpackages. The
#: subpackages in folders of their own (package-dir in pyproject.toml) are not under wfit's path: list them.
ROOTS = ("wfit", "wfit.fitter", "wfit.processors", "wfit.calib", "wfit.workspace")


def _source(origin: str | None) -> str:
    if origin is None or not origin.endswith(".py") or not os.path.exists(origin):
        return ""
    return Path(origin).read_text(encoding="utf-8")


def _modules_with_examples() -> list[str]:
    """Module names whose source holds an interactive example (``>>>``), found without importing them.

    A subpackage that fails to import is kept, so that its test fails on the import instead of the package
    dropping out of the list.
    """
    found: dict[str, str] = {}
    broken: set[str] = set()
    for root in ROOTS:
        pkg = importlib.import_module(root)
        found[root] = _source(getattr(pkg, "__file__", None))
        if not hasattr(pkg, "__path__"):
            continue
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{root}.", onerror=broken.add):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            spec = info.module_finder.find_spec(info.name, None)
            found[info.name] = _source(None if spec is None else spec.origin)
    return sorted({name for name, text in found.items() if ">>>" in text} | broken)


MODULES = _modules_with_examples()


def test_the_walk_finds_every_package() -> None:
    """The walk reaches modules of each root package (a mapping error would silently test nothing)."""
    for root in ("wfit", "wfit.fitter", "wfit.processors", "wfit.calib"):
        assert any(m == root or m.startswith(f"{root}.") for m in MODULES), (root, MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    assert tests, f"{name} has '>>>' in its source but no example that doctest finds in its docstrings"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    # tempfile.mkdtemp() folders of the examples go under this test's folder, which pytest removes
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    gc.collect()  # what earlier tests left to the collector warns here, not inside the block
    with warnings.catch_warnings(record=True) as caught:
        # other warnings stay errors (pyproject's filterwarnings) and fail their example; a file an example
        # leaves open warns in its destructor, where an error could not reach the runner: record it instead
        warnings.simplefilter("always", ResourceWarning)
        for test in tests:
            runner.run(test, out=report.append)
        gc.collect()
    report += [f"{w.filename}: {w.category.__name__}: {w.message}\n" for w in caught]
    # examples marked +SKIP are not counted in tries: a module may have none to run
    assert (runner.failures, len(caught)) == (0, 0), (
        f"{runner.failures} of {runner.tries} examples in {name} failed, {len(caught)} warned:\n" + "".join(report)
    )
    assert sorted(p.name for p in work.iterdir()) == [], f"examples in {name} wrote into the working directory"
