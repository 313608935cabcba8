"""What a user's terminal shows: no TensorFlow start-up lines from ``wfit fit`` or the main job unless asked.

Reference: the lines TensorFlow 2.21 wrote to stderr on this machine (no GPU) before they were held back,
measured with ``wfit fit examples/example_workspace.hdf5`` and ``examples/run_chain.py`` (from the fit
worker) and quoted in ``MEASURED``; the commands run here in subprocesses with the user's environment
(no ``TF_CPP_MIN_LOG_LEVEL``, which the test session itself sets).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_WS = ROOT / "examples" / "example_workspace.hdf5"

MEASURED = b"""\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796194497.936821    4493 port.cc:153] oneDNN custom operations are on. You may see slightly \
different numerical results due to floating-point round-off errors from different computation orders. To turn \
them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796194497.937699    4493 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will \
not be used.
I0000 00:00:1796194514.661647    4827 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use \
available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild \
TensorFlow with the appropriate compiler flags.
E0000 00:00:1796194505.793852    4627 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed \
call to cuInit: UNKNOWN ERROR (303)
"""
MARKERS = ("cuda", "onednn", "absl", "cpu_feature_guard", "I0000", "W0000", "E0000")
TF_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ", re.MULTILINE)  # absl's


def _user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "WFIT_TF_LOG")}
    return {**env, **extra}


def _tensorflow_lines(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if TF_PREFIX.match(line) or any(m.lower() in line.lower() for m in MARKERS)
    ]


def test_measured_lines_are_what_the_markers_catch() -> None:
    from wfit.fitter._tf import _drop_tensorflow_lines

    lines = MEASURED.decode().splitlines()
    assert len(_tensorflow_lines(MEASURED.decode())) == len(lines) - 1  # all but cpu_feature_guard's 2nd line
    assert len(TF_PREFIX.findall(MEASURED.decode())) == len(lines) - 2  # prefixed: all but the note and the 2nd line
    # Held back: TensorFlow's lines (and their continuation); kept: anything else written meanwhile.
    other = b"distributed.worker - WARNING - a line of someone else\n"
    assert _drop_tensorflow_lines(MEASURED + other + MEASURED) == other


def test_wfit_fit_is_quiet_unless_verbose(tmp_path: Path) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "wfit")
    quiet = subprocess.run(
        [exe, "fit", str(EXAMPLE_WS), "-o", str(tmp_path / "q.hdf5")], env=_user_env(), capture_output=True, text=True
    )
    assert quiet.returncode == 0, quiet.stderr
    assert _tensorflow_lines(quiet.stderr) == [] and _tensorflow_lines(quiet.stdout) == []
    assert "wfit: fitting on" in quiet.stderr and "iteration   1" in quiet.stderr  # its own lines stay
    assert "converged" in quiet.stdout

    verbose = subprocess.run(
        [exe, "fit", str(EXAMPLE_WS), "-o", str(tmp_path / "v.hdf5"), "-q", "-v"],
        env=_user_env(),
        capture_output=True,
        text=True,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert TF_PREFIX.search(verbose.stderr), verbose.stderr  # with -v TensorFlow's lines pass

    from wfit.fitter import read_result

    np.testing.assert_array_equal(read_result(tmp_path / "q.hdf5").values, read_result(tmp_path / "v.hdf5").values)


def test_main_job_is_quiet(tmp_path: Path) -> None:
    """examples/run_chain.py, small: the fit worker imports TensorFlow without its start-up lines, and the
    processing workers do not repeat NanoAODSchema's per-chunk warnings (the real NanoAOD files of the main
    job lack optional cross-references, so coffea would warn for each chunk)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "run_chain.py"), "--outdir", str(tmp_path), "--events", "20000",
         "--cpu-workers", "1"],
        env=_user_env(),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fit on worker" in proc.stdout and "converged" in proc.stdout
    assert _tensorflow_lines(proc.stderr) == [] and _tensorflow_lines(proc.stdout) == []
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-3000:]


def test_workers_get_the_verbosity() -> None:
    from wfit.pipeline import local_chain_cluster

    def environ() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("WFIT_TF_LOG", "TF_CPP_MIN_LOG_LEVEL")}

    with local_chain_cluster(cpu_workers=0, gpu_workers=1, tensorflow_log=True) as client:
        (seen,) = client.run(environ).values()
    # over what the workers inherit from this process (the test session's TF_CPP_MIN_LOG_LEVEL=2)
    assert seen == {"WFIT_TF_LOG": "1", "TF_CPP_MIN_LOG_LEVEL": "0"}
