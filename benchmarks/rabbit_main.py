"""The one place that knows how to reach rabbit's main branch (WMass/rabbit), for benchmarks and comparisons.

rabbit main and PyPI's rabbit-fit 0.2.5 (the project's test peer) are both the package ``rabbit``, so rabbit
main lives in an environment of its own and is only ever run as a child process of that environment's
interpreter: never imported here, never a dependency of the project. Which interpreter: the environment
variable ``WFIT_RABBIT_MAIN_PYTHON``, else ``../rabbit-main-venv/bin/python`` beside the repository (here
``/work/rabbit-main-venv``) when it exists. Install it there, from the repository root (the build writes
into the source tree, hence the copy; rabbit main wants ``tf_keras`` and does not declare it)::

    d=$(mktemp -d) && cp -r ../shared/peers/rabbit-main "$d" && python3 -m venv ../rabbit-main-venv && \\
        ../rabbit-main-venv/bin/pip install "$d/rabbit-main" tf_keras

API::

    python, why = find_rabbit_main()       # (interpreter, "") or (None, one-line reason and install hint)
    r = run_rabbit_main("ws.hdf5", ["--binByBinStatMode", "full", "--globalImpacts"], timeout=600)
    r["poi_values"], r["poi_errors"], r["nll"], r["wall_s"], r["peak_rss_mb"], r["impacts"]["global_impacts"]
    read_fitresults("fitresults.hdf5")     # the same dict (less the process measures) for an existing file

``run_rabbit_main`` fits the stored data with POIs as signal strengths mu (rabbit main's ``-t 0 --unblind
--allowNegativeParam``; rabbit fits the Asimov data set by default, blinds POIs fitted to data unless
``--unblind``, and fits sqrt(mu) unless ``--allowNegativeParam``, which 0.2.5 called ``--allowNegativePOI``).
rabbit main reads the workspaces that 0.2.5's ``TensorWriter`` writes. Its results file holds pickled
``hist`` objects; it is read by rabbit main's own reader (``wums.ioutils``) inside the rabbit-main
interpreter, which hands them back as JSON and an ``.npz`` of arrays.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATA_ARGS",
    "DEFAULT_PYTHON",
    "ENV_VAR",
    "INSTALL_HINT",
    "MU_ARGS",
    "check_rabbit_main",
    "find_rabbit_main",
    "read_fitresults",
    "run_rabbit_main",
]

ENV_VAR = "WFIT_RABBIT_MAIN_PYTHON"
DEFAULT_PYTHON = Path(__file__).resolve().parents[2] / "rabbit-main-venv" / "bin" / "python"
INSTALL_HINT = (
    "install rabbit main into its own environment (from the repository root): "
    'd=$(mktemp -d) && cp -r ../shared/peers/rabbit-main "$d" && python3 -m venv ../rabbit-main-venv && '
    f'../rabbit-main-venv/bin/pip install "$d/rabbit-main" tf_keras (or set {ENV_VAR} to its interpreter)'
)
DATA_ARGS = ["-t", "0", "--unblind"]  # fit the stored data (not Asimov), all POIs unblinded
MU_ARGS = ["--allowNegativeParam"]  # POIs are mu, not sqrt(mu) (0.2.5: --allowNegativePOI)

# Whether an interpreter's rabbit is the main branch: subpackages 0.2.5 does not have.
_PROBE = r"""
import importlib.util, json
spec = importlib.util.find_spec("rabbit")
print(json.dumps(None if spec is None else {
    "file": spec.origin,
    "main": all(importlib.util.find_spec(m) is not None for m in ("rabbit.bbstat", "rabbit.regularization")),
}))
"""

# Run in the rabbit-main interpreter: ``fit DEST OUTDIR RESULT RABBIT_FIT_ARGS...`` runs rabbit_fit's main()
# in this process, records its peak RSS and reads the results; ``read DEST FILE RESULT`` only reads.
# Writes DEST.json (with {"__array__": key} for arrays) and DEST.npz.
_CHILD = r"""
import glob, json, os, sys, time


def peak_rss_mb():
    try:  # VmHWM of this process: ru_maxrss would carry the forked parent's over exec
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read(path, result):
    import h5py
    import hist
    import numpy as np
    from wums import ioutils

    arrays = {}

    def arr(a):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(a)
        return {"__array__": key}

    def labels(ax):
        if isinstance(ax, (hist.axis.StrCategory, hist.axis.IntCategory)):
            return [x.decode() if isinstance(x, bytes) else x for x in ax]
        return np.asarray(ax.edges).tolist()

    def text(xs):
        return [x.decode() if isinstance(x, bytes) else str(x) for x in xs]

    with h5py.File(path, "r") as f:
        groups = [k for k in f.keys() if k == "results" or k.startswith("results_")]
        if result:
            key = result if result.startswith("results") else f"results_{result}"
        else:
            key = next((k for k in ("results", "results_asimov") if k in groups), sorted(groups)[0] if groups else None)
        if key not in groups:
            raise SystemExit(f"{key!r} not in {path}; it has {groups}")
        res = ioutils.pickle_load_h5py(f[key])
        meta = ioutils.pickle_load_h5py(f["meta"])
        out = {"fitresults": os.path.abspath(path), "result": key, "groups": groups, "scalars": {}, "hists": {},
               "other": []}
        for name, obj in res.items():
            if isinstance(obj, ioutils.H5PickleProxy):
                obj = obj.get()
            if isinstance(obj, hist.Hist) or (hasattr(obj, "axes") and hasattr(obj, "values")):
                h = {"axes": [[ax.name, labels(ax)] for ax in obj.axes], "values": arr(obj.values())}
                var = obj.variances()
                if var is not None:
                    h["variances"] = arr(var)
                out["hists"][name] = h
            elif np.ndim(obj) == 0 and isinstance(obj, (bool, int, float, np.number, np.bool_)):
                out["scalars"][name] = obj.item() if hasattr(obj, "item") else obj
            else:  # nested (mappings: histograms of observables), read them with rabbit's tools
                out["other"].append(name)
        out["pois"] = text(meta.get("pois", meta.get("signals", [])))
        out["nois"] = text(meta.get("nois", []))
        out["procs"] = text(meta.get("procs", []))
        out["command"] = meta.get("meta_info", {}).get("command")
    return out, arrays


def write(dest, out, arrays):
    import numpy as np

    np.savez(dest + ".npz", **arrays)
    with open(dest + ".json", "w") as f:
        json.dump(out, f)


mode, dest = sys.argv[1], sys.argv[2]
if mode == "read":
    write(dest, *read(sys.argv[3], sys.argv[4]))
else:
    outdir, result, rargs = sys.argv[3], sys.argv[4], sys.argv[5:]
    def stamps():
        return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(outdir, "*.hdf5"))}

    before = stamps()
    sys.argv = ["rabbit_fit", *rargs]
    from bin.rabbit_fit import main  # sets XLA_FLAGS before it imports TensorFlow, as its script does

    main()
    rss = peak_rss_mb()
    t_read = time.perf_counter()
    new = [p for p, t in stamps().items() if before.get(p) != t]  # the file this fit wrote
    if not new:
        raise SystemExit(f"rabbit_fit wrote no results file in {outdir}")
    out, arrays = read(max(new, key=os.path.getmtime), result)
    out["peak_rss_mb"] = rss
    out["read_s"] = time.perf_counter() - t_read
    write(dest, out, arrays)
"""


def _child_env(outdir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_DIR"] = os.path.join(outdir, "no-git")  # rabbit records the git state of the folder it runs in
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@cache
def check_rabbit_main(python: str) -> str | None:
    """``None`` when ``python`` runs and its ``rabbit`` is the main branch, else a one-line reason."""
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False, env=_child_env("/")
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run ({exc})"
    if proc.returncode != 0:
        return f"{python} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if found is None:
        return f"{python} has no rabbit"
    if not found["main"]:
        return f"the rabbit of {python} ({found['file']}) is not the main branch (no rabbit.bbstat/regularization)"
    return None


def find_rabbit_main() -> tuple[str | None, str]:
    """The interpreter of a rabbit-main environment and ``""``, or ``None`` and why not plus the install hint.

    ``WFIT_RABBIT_MAIN_PYTHON`` if set, else :data:`DEFAULT_PYTHON` if it exists; checked to be rabbit main.
    """
    python = os.environ.get(ENV_VAR) or (str(DEFAULT_PYTHON) if DEFAULT_PYTHON.exists() else None)
    if python is None:
        return None, f"rabbit main not found ({ENV_VAR} unset, no {DEFAULT_PYTHON}); {INSTALL_HINT}"
    why = check_rabbit_main(python)
    if why is not None:
        source = ENV_VAR if os.environ.get(ENV_VAR) else "default"
        return None, f"rabbit main not usable ({source}: {why}); {INSTALL_HINT}"
    return python, ""


def _python(python: str | None) -> str:
    if python is not None:
        why = check_rabbit_main(python)
        if why is not None:
            raise RuntimeError(f"{why}; {INSTALL_HINT}")
        return python
    found, why = find_rabbit_main()
    if found is None:
        raise RuntimeError(why)
    return found


def _load(dest: str) -> dict[str, Any]:
    """The child's JSON with its arrays put back, plus the usual views of a fit result."""
    with np.load(dest + ".npz") as npz:
        arrays = {k: npz[k] for k in npz.files}

    def fill(obj):
        if isinstance(obj, dict):
            if set(obj) == {"__array__"}:
                return arrays[obj["__array__"]]
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fill(v) for v in obj]
        return obj

    with open(dest + ".json") as f:
        out = fill(json.load(f))
    hists, scalars = out["hists"], out["scalars"]

    def parms(name):
        h = hists.get(name)
        if h is None:
            return [], None, None
        var = h.get("variances")
        return list(h["axes"][0][1]), h["values"], None if var is None else np.sqrt(var)

    names, values, errors = parms("parms")
    _, prefit_values, prefit_errors = parms("parms_prefit")
    pois = set(out["pois"])

    def by_name(arr, keep):
        return {} if arr is None else {n: float(v) for n, v in zip(names, arr, strict=True) if keep(n)}

    out.update(
        names=names,
        npoi=len(out["pois"]),
        values=values,
        errors=errors,
        prefit_values=prefit_values,
        prefit_errors=prefit_errors,
        poi_values=by_name(values, lambda n: n in pois),
        poi_errors=by_name(errors, lambda n: n in pois),
        nuisance_values=by_name(values, lambda n: n not in pois),
        nuisance_errors=by_name(errors, lambda n: n not in pois),
        nll=scalars.get("nllvalreduced"),
        nll_full=scalars.get("nllvalfull"),
        edm=scalars.get("edmval"),
        ndfsat=scalars.get("ndfsat"),
        covariance=hists["cov"]["values"] if "cov" in hists else None,
        impacts={k: h for k, h in hists.items() if "impacts" in k},
    )
    return out


def run_rabbit_main(
    workspace_path: str | os.PathLike,
    extra_args: Sequence[str] = (),
    outdir: str | os.PathLike | None = None,
    timeout: float | None = None,
    *,
    python: str | None = None,
    data: bool = True,
    allow_negative: bool = True,
    result: str | None = None,
) -> dict[str, Any]:
    """Fit ``workspace_path`` with rabbit main's ``rabbit_fit`` in a child process and return its results.

    The command is ``rabbit_fit WORKSPACE -o OUTDIR [-t 0 --unblind] [--allowNegativeParam] *extra_args``
    (``data`` and ``allow_negative`` switch off the bracketed parts; any rabbit_fit flag passes through,
    e.g. ``--binByBinStatMode full --binByBinStatType gamma``, ``--doImpacts``, ``--globalImpacts``,
    ``--asymImpacts``, ``--freezeParameters``, ``--paramModel``; later flags win, ``-o`` is OUTDIR).
    ``outdir`` defaults to a new temporary folder; ``python`` to :func:`find_rabbit_main`'s interpreter;
    ``result`` picks a results group (``"asimov"``, a pseudo-data or toy name; default the data fit, else
    Asimov). Raises ``RuntimeError`` when rabbit main is not available or the command fails, and
    ``subprocess.TimeoutExpired`` (child killed) after ``timeout`` seconds.

    Returns a dict: the process measures ``wall_s`` (the whole command: interpreter start, imports, reading
    the workspace, tracing, fit, covariance and writing its file; reading the results back excluded),
    ``cpu_s`` (user + system of the child), ``peak_rss_mb`` (the child's VmHWM after the fit), ``command``
    (the argument list), ``log`` (the tail of its output); and what :func:`read_fitresults` returns.
    """
    py = _python(python)
    outdir = os.path.abspath(outdir) if outdir is not None else tempfile.mkdtemp(prefix="rabbit_main_")
    os.makedirs(outdir, exist_ok=True)
    rargs = [
        os.path.abspath(workspace_path),  # first: --unblind takes the words after it
        "-o",
        outdir,
        *(DATA_ARGS if data else []),
        *(MU_ARGS if allow_negative else []),
        *map(str, extra_args),
    ]
    dest = os.path.join(outdir, "rabbit_main_summary")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [py, "-c", _CHILD, "fit", dest, outdir, result or "", *rargs],
        cwd=outdir,
        env=_child_env(outdir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = (proc.stdout + proc.stderr)[-4000:]
    if proc.returncode != 0:
        raise RuntimeError(f"rabbit main's rabbit_fit failed (exit {proc.returncode}):\n{log}")
    out = _load(dest)
    out.update(
        wall_s=wall - out["read_s"],
        cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        command=["rabbit_fit", *rargs],
        python=py,
        outdir=outdir,
        log=log,
    )
    return out


def read_fitresults(
    path: str | os.PathLike, result: str | None = None, *, python: str | None = None, timeout: float | None = 600
) -> dict[str, Any]:
    """Read a rabbit-main results file with rabbit main's own reader, in its interpreter.

    Returns a dict: ``names``, ``values``, ``errors`` (arrays, all parameters, POIs first), ``npoi``,
    ``pois``, ``nois``, ``procs``, ``poi_values``/``poi_errors`` and ``nuisance_values``/``nuisance_errors``
    (name -> float), ``prefit_values``/``prefit_errors``, ``nll`` (rabbit's reduced NLL at the minimum, the
    same offset as wfit's ``FitResult.nll``), ``nll_full`` (with ``--fullNll``), ``edm``, ``ndfsat``,
    ``covariance`` (array or ``None``), ``impacts`` (every results histogram whose name has "impacts":
    ``impacts``, ``impacts_grouped``, ``global_impacts``, ``gaussian_global_impacts``, ``impacts_asym``, ...
    each ``{"axes": [[axis name, labels or edges], ...], "values": array}``), ``hists`` (every results
    histogram the same way: ``parms``, ``cov``, ``epoch_loss``, ``nll_scan_*``, ``contour_scans``, ...),
    ``scalars`` (``nllvalreduced``, ``edmval``, ``ndfsat``, ...), ``other`` (nested entries such as
    ``mappings``, not read), ``result`` (the group read), ``groups`` (all results groups) and
    ``fitresults`` (the file).
    """
    py = _python(python)
    with tempfile.TemporaryDirectory(prefix="rabbit_main_read_") as tmp:
        dest = os.path.join(tmp, "summary")
        proc = subprocess.run(
            [py, "-c", _CHILD, "read", dest, os.path.abspath(path), result or ""],
            cwd=tmp,
            env=_child_env(tmp),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"reading {path} with rabbit main failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        return _load(dest)
