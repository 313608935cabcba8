"""The import graph of wfit's own modules, read from the source (AST), against the rules of STYLE.md: no import
circles, and the pure-numpy physics modules of the processors do not import coffea."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: wfit's packages with folders of their own; subpackages (``wfit.workspace``) are found inside them.
PACKAGES = ("wfit", "wfit.fitter", "wfit.processors", "wfit.calib")


def _package_dirs() -> dict[str, Path]:
    """``{package: folder}`` of wfit's top-level packages, where the installation finds them (setuptools'
    package-dir maps ``fitter/``, ``processors/`` and ``calib/`` to ``wfit.fitter`` etc.)."""
    out = {}
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        assert spec is not None and spec.submodule_search_locations, pkg
        out[pkg] = Path(next(iter(spec.submodule_search_locations)))
    return out


def _modules() -> dict[str, Path]:
    """Every module of wfit: ``{dotted name: file}`` (a package's name maps to its ``__init__.py``)."""
    dirs = _package_dirs()
    out: dict[str, Path] = {}
    for pkg, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.setdefault(".".join([pkg, *parts]), path)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: list[ast.stmt], lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run: those of the module body, including ``if``/``try``/``with`` blocks, and
    with ``lazy`` those inside functions and classes (run when called); never ``if TYPE_CHECKING:`` blocks."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(node.orelse, lazy)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if lazy:
                yield from _imports(node.body, lazy)
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, ()):
                    yield from _imports(child.body if isinstance(child, ast.ExceptHandler) else [child], lazy)


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> set[str]:
    """The wfit modules that an import statement of module ``name`` loads (the most specific known ones)."""
    if isinstance(node, ast.Import):
        wanted = [alias.name for alias in node.names]
    else:
        if node.level:
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        wanted = [f"{base}.{alias.name}" for alias in node.names] + [base]
    out = set()
    for target in wanted:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def _graph(lazy: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _imports(tree.body, lazy):
            edges |= _targets(name, path, node, modules)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_scan_sees_the_modules_and_their_imports() -> None:
    graph = _graph(lazy=False)
    assert {"wfit.processors.processor", "wfit.processors.helicity", "wfit.fitter"} <= set(graph)
    assert "wfit.processors.helicity" in graph["wfit.processors.processor"]
    assert "wfit.processors.config" in graph["wfit.processors.helicity"]
    # A circle is found when there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("lazy", [False, True], ids=["at import", "with the imports inside functions"])
def test_no_import_circles(lazy: bool) -> None:
    """No circle among wfit's modules, neither in what importing them runs nor counting the imports that
    functions make when called: a circle is a module that can only be imported half-initialised."""
    assert _cycles(_graph(lazy)) == []


@pytest.mark.parametrize("module", ["helicity", "systematics", "selection", "config"])
def test_physics_modules_do_not_import_coffea(module: str) -> None:
    """The pure-numpy physics of the processors loads, in a fresh interpreter, without coffea (and without
    running the package's ``__init__``, which imports the coffea processors)."""
    code = f"""
import importlib.util, sys, types
pkg = types.ModuleType("_physics")
pkg.__path__ = [{str(ROOT / "processors")!r}]
sys.modules["_physics"] = pkg
spec = importlib.util.spec_from_file_location("_physics.{module}", {str(ROOT / "processors" / f"{module}.py")!r})
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
print(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("coffea", "hist", "uproot", "tensorflow")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
