"""Reading a pickle without running code from it: an unpickler that builds only an explicit list of types.

Unpickling calls whatever the stream names (``os.system``, ``builtins.eval``, any importable
function), so a pickle is code, not data. :func:`restricted_loads` reads a pickle with
:class:`RestrictedUnpickler`, which resolves only the names below and refuses every other one
before anything is called:

* plain Python values: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``, ``int``,
  ``float``, ``bool``, ``complex`` (the literals themselves need no name);
* numpy arrays, dtypes and scalars, as numpy pickles them (``numpy._core.multiarray._reconstruct``
  and ``scalar``, ``numpy._core.numeric._frombuffer``, ``numpy.dtype``, ``numpy.ndarray``; also
  under numpy 1's ``numpy.core``). An array is built from the bytes in the stream only: the
  placeholder array of ``_reconstruct`` must be empty, as numpy writes it;
* the axis types of ``hist`` and ``boost-histogram`` that rabbit stores in its channel
  metadata (``Regular``, ``Variable``, ``Integer``, ``IntCategory``, ``StrCategory``, ``Boolean``
  and their compiled ``boost_histogram._core.axis`` implementations), without transforms.

Persistent ids (``wums`` uses them for references to HDF5 objects) are refused too. The
objects built are plain data; a caller checks their sizes against the arrays they describe
before using them (an axis can claim any number of bins).

Example:
    >>> import pickle
    >>> from wfit.workspace.safe_pickle import restricted_loads
    >>> restricted_loads(pickle.dumps({"a": [1, 2.0, "x"]}), "file.hdf5", "meta")
    {'a': [1, 2.0, 'x']}
    >>> import os
    >>> class Evil:
    ...     def __reduce__(self):
    ...         return (os.system, ("echo hello",))
    >>> restricted_loads(pickle.dumps(Evil()), "file.hdf5", "meta")
    Traceback (most recent call last):
    ...
    wfit.workspace.schema.WorkspaceError: file.hdf5: dataset 'meta': is a pickle that needs posix.system, ...
"""

from __future__ import annotations

import builtins
import importlib
import io
import pickle
from typing import Any

import numpy as np

from .schema import dataset_error

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "restricted_loads"]

_AXES = ("Regular", "Variable", "Integer", "IntCategory", "StrCategory", "Boolean")
_CORE_AXES = (
    *(f"regular_{k}" for k in ("uoflow", "uoflow_growth", "uflow", "oflow", "none", "circular")),
    *(f"variable_{k}" for k in ("uoflow", "uoflow_growth", "uflow", "oflow", "none", "circular")),
    *(f"integer_{k}" for k in ("uoflow", "growth", "uflow", "oflow", "none", "circular")),
    *(f"category_{k}" for k in ("int", "int_growth", "int_none", "str", "str_growth", "str_none")),
    "boolean",
)
_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool", "complex")

#: Every ``(module, name)`` that :class:`RestrictedUnpickler` resolves; anything else is refused.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("builtins", n) for n in _BUILTINS]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [(f"numpy.{core}.multiarray", n) for core in ("core", "_core") for n in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [(m, n) for m in ("hist.axis", "boost_histogram.axis") for n in _AXES]
    + [("boost_histogram._core.axis", n) for n in _CORE_AXES]
)


class _Refused(pickle.UnpicklingError):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _numpy_core(sub: str) -> Any:
    # numpy 2 pickles name numpy._core, numpy 1 numpy.core; numpy 2 warns on numpy.core, so use _core
    try:
        return importlib.import_module(f"numpy._core.{sub}")
    except ImportError:  # pragma: no cover - numpy < 1.26
        return importlib.import_module(f"numpy.core.{sub}")


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in the stream: it can be passed to ``_reconstruct`` but not called.

    ``numpy.ndarray(shape)`` would allocate any size the stream asks for.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("numpy.ndarray called with a shape (numpy never pickles an array that way)")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy writes _reconstruct(ndarray, (0,), b'b') and then sets the real shape and bytes with BUILD
    if subtype is not _NdarrayType:
        raise _Refused(f"numpy _reconstruct of {subtype!r} (only numpy.ndarray itself)")
    if int(np.prod(np.asarray(shape, dtype=np.int64))) != 0:
        raise _Refused(f"numpy _reconstruct with shape {shape!r} (numpy writes an empty placeholder)")
    return _numpy_core("multiarray")._reconstruct(np.ndarray, shape, dtype)


def _resolve(module: str, name: str) -> Any:
    if module == "builtins":
        return getattr(builtins, name)
    if module == "numpy":
        return _NdarrayType if name == "ndarray" else np.dtype
    if module.startswith("numpy."):
        sub = module.rsplit(".", 1)[1]
        return _reconstruct if name == "_reconstruct" else getattr(_numpy_core(sub), name)
    return getattr(importlib.import_module(module), name)


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only :data:`ALLOWED_GLOBALS` and no persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"a persistent id ({type(pid).__name__}, a reference outside the pickle)")


def restricted_loads(data: bytes, path: str, dataset: str, fix: str = "") -> Any:
    """Unpickle ``data`` (stored in ``dataset`` of the file ``path``) with :class:`RestrictedUnpickler`.

    Args:
        data: The pickle.
        path, dataset: Where it was read from, for the error message.
        fix: What the user can do instead, appended to the error message.

    Raises:
        WorkspaceError: The pickle needs a name that is not allowed (nothing named in it has been
            called), or it is not a valid pickle.
    """
    hint = f"; {fix}" if fix else ""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except _Refused as err:
        raise dataset_error(
            path,
            dataset,
            f"is a pickle that needs {err.what}, which wfit does not unpickle (it would run code from the "
            f"file; only plain values, numpy arrays and hist axes are read){hint}",
        ) from None
    except Exception as err:  # a malformed stream fails in many ways (EOFError, ValueError, ...)
        raise dataset_error(path, dataset, f"is not a pickle that wfit can read ({err!r}){hint}") from err

