"""TensorFlow, imported once for the fitter, with an install hint and zero-copy array hand-over."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the CLI

try:
    import tensorflow as tf
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "wfit.fitter needs TensorFlow: pip install 'tensorflow>=2.16' (or 'tensorflow[and-cuda]' for a GPU)"
    ) from err

__all__ = ["tf", "to_tensor"]


def to_tensor(arr: np.ndarray, device: str):
    """A float64 tensor on ``device`` holding ``arr``.

    On the CPU the tensor shares the array's memory through DLPack (no copy, so a large workspace
    is held once); on an accelerator it is copied there once.
    """
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
