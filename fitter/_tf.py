"""TensorFlow, imported once for the fitter (quietly), with an install hint and zero-copy array hand-over.

``from wfit.fitter._tf import tf`` imports TensorFlow on first use (:func:`import_tensorflow`); importing
this module alone does not, so that :mod:`wfit.pipeline` can read :func:`tf_environ` without it.

TensorFlow's C++ layer writes start-up lines (the oneDNN notice, "Could not find cuda drivers", the CUDA
plugin's failed cuInit on a machine without a GPU, absl's "All log messages before absl::InitializeLog()")
straight to file descriptor 2, before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. They are kept out of the user's
terminal by pointing descriptor 2 at a temporary file during the import and the device enumeration, and
writing back what was written there: everything when verbose (``wfit fit -v``, or ``WFIT_TF_LOG=1`` in the
environment, as on the workers of :func:`wfit.pipeline.local_chain_cluster` with ``tensorflow_log=True``),
else every line but TensorFlow's own.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["TF_LOG_ENV", "import_tensorflow", "resolve_device", "tf", "tf_environ", "to_tensor"]

#: Environment variable: ``1`` shows TensorFlow's start-up and C++ log lines (what ``wfit fit -v`` does).
TF_LOG_ENV = "WFIT_TF_LOG"

tf: ModuleType  # set by import_tensorflow; reading it through the module imports TensorFlow

# absl's prefix: severity, MMDD, time (seconds since the epoch before absl is initialised), thread,
# file:line ("I0000 00:00:1796194497.936821    4493 port.cc:153] "); absl's note that it writes to stderr
# until it is initialised; the second line of cpu_feature_guard's message.
_TF_LINE = re.compile(
    rb"^([IWEF]\d{4} [\d:.]+\s+\d+ [\w./+-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: )"
)
_lock = threading.Lock()


def _verbose_from_env() -> bool:
    return os.environ.get(TF_LOG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def tf_environ(verbose: bool = False) -> dict[str, str]:
    """Environment variables that make a process (a Dask worker) import TensorFlow quietly, or verbosely.

    Quiet is also what a process does without them; they matter where the environment that a worker
    inherits says otherwise.

    Args:
        verbose: Show TensorFlow's start-up and C++ log lines (INFO and WARNING included).

    Returns:
        ``{"TF_CPP_MIN_LOG_LEVEL": "2"}``, or ``{"WFIT_TF_LOG": "1", "TF_CPP_MIN_LOG_LEVEL": "0"}``.
    """
    return {TF_LOG_ENV: "1", "TF_CPP_MIN_LOG_LEVEL": "0"} if verbose else {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _drop_tensorflow_lines(text: bytes) -> bytes:
    return b"".join(line for line in text.splitlines(keepends=True) if not _TF_LINE.match(line))


def _flush_stderr() -> None:
    # Python's own buffered stderr lines go where descriptor 2 pointed when they were written.
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


@contextlib.contextmanager
def _stderr_fd_held(verbose: bool) -> Iterator[None]:
    """Point file descriptor 2 at a temporary file; write back all of it (verbose) or all but TensorFlow's."""
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing reaches a terminal anyway
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as held:
        _flush_stderr()
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read()
            if not (verbose or failed):
                text = _drop_tensorflow_lines(text)
            if text:
                os.write(2, text)


def import_tensorflow(verbose: bool | None = None) -> ModuleType:
    """Import TensorFlow once and enumerate its devices, without its start-up lines unless ``verbose``.

    Args:
        verbose: Show TensorFlow's start-up and C++ log lines; ``None`` reads ``$WFIT_TF_LOG``. Only the
            first call in a process imports, so only its ``verbose`` counts.

    Returns:
        The ``tensorflow`` module.

    Raises:
        ImportError: TensorFlow is not installed (with the pip command that installs it).
    """
    with _lock:
        if "tf" in globals():
            return globals()["tf"]
        verbose = _verbose_from_env() if verbose is None else verbose
        if not verbose:
            # C++ INFO and WARNING lines after start-up (XLA's "Compiled cluster using XLA!").
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        held = contextlib.nullcontext() if "tensorflow" in sys.modules else _stderr_fd_held(verbose)
        with held:
            try:
                import tensorflow
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "wfit.fitter needs TensorFlow: pip install 'tensorflow>=2.16' "
                    "(or 'tensorflow[and-cuda]' for a GPU)"
                ) from err
            # The CUDA plugin calls cuInit (and says it failed, on a machine without a GPU) here.
            tensorflow.config.list_physical_devices()
        globals()["tf"] = tensorflow
        return tensorflow


def __getattr__(name: str) -> Any:
    if name == "tf":
        return import_tensorflow()
    raise AttributeError(f"module 'wfit.fitter._tf' has no attribute {name!r}")


def to_tensor(arr: np.ndarray, device: str):
    """A float64 tensor on ``device`` holding ``arr``.

    On the CPU the tensor shares the array's memory through DLPack (no copy, so a large workspace
    is held once); on an accelerator it is copied there once.
    """
    tf = import_tensorflow()
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.ctypes.data % 64:
        # TensorFlow's CPU kernels require 64-byte alignment: copy into an aligned buffer.
        from wfit.workspace import aligned_empty

        out = aligned_empty(arr.shape)
        out[...] = arr
        arr = out
    if "CPU" in device.upper():
        with tf.device(device):
            return tf.experimental.dlpack.from_dlpack(arr.__dlpack__())
    with tf.device(device):
        return tf.identity(tf.constant(arr))


def resolve_device(device: str | None) -> str:
    """Map ``None``/``"auto"``/``"cpu"``/``"gpu"`` to a TensorFlow device string."""
    tf = import_tensorflow()
    gpus = tf.config.list_logical_devices("GPU")
    if device in (None, "auto"):
        return gpus[0].name if gpus else "/CPU:0"
    low = device.lower()
    if low == "cpu":
        return "/CPU:0"
    if low == "gpu":
        if not gpus:
            raise RuntimeError(
                "device='gpu' but TensorFlow sees no GPU; use device='cpu' or install tensorflow[and-cuda]"
            )
        return gpus[0].name
    return device
