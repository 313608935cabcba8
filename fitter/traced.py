"""The likelihood's ``tf.function``s, shared by every :class:`~wfit.fitter.likelihood.Likelihood` of one
structure.

A traced function reads no tensor of any instance: it takes the parameters and the model's tensors (the
compact log(kappa) blocks, the constraints, the data as it is at the call) as arguments, and rebuilds the model
from them inside the trace (:func:`view`). So a second fit of a workspace with the same sizes, blocks and options
in the process (the next fit on a Dask worker, a notebook cell run again, a soak) neither retraces nor
recompiles. XLA keeps every function it compiles for the lifetime of the process, so functions of their own per
instance grew a long-lived fit worker by about 8 MiB per fit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wfit.fitter._tf import tf

__all__ = ["Block", "DATA_STATE", "call_batch", "flatten", "shared_batch_function", "shared_function", "view"]


@dataclass(frozen=True)
class Block:
    """Tensors of one :class:`~wfit.fitter.blocks.CompactBlock` (rows: non-zero (bin, process) pairs)."""

    nb: int  # bins in the block
    dense: bool  # rows are all [nb x nproc] pairs, bin-major
    a: object  # logk average [R, Sk]
    cols: object  # int64 [Sk]: nuisances of the columns
    d: object | None  # logk half-difference [R, Sak]
    dcols: object | None  # int64 [Sak] into the asymmetric list
    dsel: object | None  # one-hot [Sak, Sk]: half-difference column -> block column
    norm: object  # [R]
    row_bin: object  # int64 [R], relative to the block
    row_proc: object  # int64 [R]
    sig_rows: object  # int64 [Rs]: rows of signal processes
    sig_index: object  # int64 [Rs, 2]: their (bin, POI)
    b0: int
    b1: int


BLOCK_TENSORS = ("a", "cols", "d", "dcols", "dsel", "norm", "row_bin", "row_proc", "sig_rows", "sig_index")
#: The model's tensors (and variables: data, global observables) that the traced maths read, and the plain
#: values that decide the graph's structure.
STATE = (
    "_asym_idx", "_cw", "_theta0", "_nobs", "_lognobs", "_kstat", "_bbmask", "_beta0",
    "_sigma", "_cinv", "_bbmap", "_ceff", "_prior_idx", "_prior_mean", "_prior_w",
    "_reg_lap", "_reg_inv_nu0", "_reg_strength",
)  # fmt: skip
STATIC = ("npoi", "nsyst", "nparams", "_nproc", "_has_asym", "bb_lite", "bb_full", "additive", "covariance_fit")
#: The state that differs between pseudo-experiments: a batched function takes one of each per toy.
DATA_STATE = ("_nobs", "_lognobs", "_theta0", "_beta0")
#: What each traced function computes, from a view of the model and the parameters.
BODIES: dict[str, Callable[[Any, Any], Any]] = {
    "_f_nll": lambda m, x: m._evaluate(x, 0),
    "_f_grad": lambda m, x: m._evaluate(x, 1),
    "_f_hess": lambda m, x: m._evaluate(x, 2),
    "_f_hess_fixed_beta": lambda m, x: m._evaluate(x, 2, profile_bb=False),
    "_f_hess_gn": lambda m, x: m._evaluate(x, 2, gauss_newton=True),
    "_f_masked": lambda m, x: m._process_yields(x, masked=True),
    "_f_yields": lambda m, x: m._yields(x, m.bb_lite),
}
#: The functions compiled with XLA when the model asks for it (small models).
JITTED = ("_f_nll", "_f_grad", "_f_hess", "_f_hess_gn")
#: Traced functions by (name, XLA, device, structure, tensor shapes); the oldest are dropped beyond the limit.
_TRACED: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_TRACED_MAX = 64


def flatten(model: Any) -> tuple[list[Any], tuple[Any, ...]]:
    """A model's tensors in a fixed order, and the structure (:func:`view`'s ``layout``) they fill."""
    flat: list[Any] = []
    groups = []
    for blocks in (model._blocks, model._mblocks):
        lays = []
        for blk in blocks:
            fields = []
            for name in BLOCK_TENSORS:
                t = getattr(blk, name)
                fields.append(t is not None)
                if t is not None:
                    flat.append(t)
            lays.append((blk.nb, blk.dense, blk.b0, blk.b1, tuple(fields)))
        groups.append(tuple(lays))
    present = tuple(getattr(model, name, None) is not None for name in STATE)
    flat += [getattr(model, name) for name, has in zip(STATE, present, strict=True) if has]
    statics = tuple(getattr(model, name) for name in STATIC)
    return flat, (statics, tuple(groups), present)


def view(cls: type, layout: tuple[Any, ...], flat: tuple[Any, ...]) -> Any:
    """An instance of ``cls`` made of the structure ``layout`` and the tensors ``flat`` (symbolic inside a
    trace), without running its constructor: the maths methods then read only these."""
    statics, groups, present = layout
    model = object.__new__(cls)
    for name, value in zip(STATIC, statics, strict=True):
        setattr(model, name, value)
    it = iter(flat)

    def block(lay: tuple[Any, ...]) -> Block:
        nb, dense, b0, b1, fields = lay
        tensors = {name: (next(it) if has else None) for name, has in zip(BLOCK_TENSORS, fields, strict=True)}
        return Block(nb=nb, dense=dense, b0=b0, b1=b1, **tensors)

    model._blocks = [block(lay) for lay in groups[0]]
    model._mblocks = [block(lay) for lay in groups[1]]
    for name, has in zip(STATE, present, strict=True):
        setattr(model, name, next(it) if has else None)
    return model


def shared_function(model: Any, name: str, flat: list[Any], layout: tuple[Any, ...], jit: bool) -> Any:
    """The ``tf.function`` ``name`` (of :data:`BODIES`) for this structure, traced at most once per process
    (while in the cache); called as ``fn(x, *flat)``."""
    jit = jit and name in JITTED
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in flat]
    shapes = tuple((tuple(s.shape.as_list()), s.dtype.name) for s in specs)
    key = (name, jit, model.device, layout, shapes)
    fn = _TRACED.get(key)
    if fn is not None:
        _TRACED.move_to_end(key)
        return fn
    cls, body = type(model), BODIES[name]
    fn = tf.function(
        lambda x, *args: body(view(cls, layout, args), x),
        input_signature=[tf.TensorSpec([model.nparams], tf.float64), *specs],
        jit_compile=jit,
        autograph=False,  # the maths branch on static structure only; converting it made tracing 1.7x slower
    )
    _TRACED[key] = fn
    while len(_TRACED) > _TRACED_MAX:
        _TRACED.popitem(last=False)
    return fn


def shared_batch_function(model: Any, flat: list[Any], layout: tuple[Any, ...]) -> Any:
    """The NLL, gradient and Hessian of a batch of data sets as one vectorised computation
    (``tf.vectorized_map`` over the toys), traced once per structure; called as
    ``fn(X, NOBS, LOGNOBS, THETA0, BETA0, *flat)`` with a leading toy dimension on the first five."""
    statics, groups, present = layout
    nblock = sum(sum(fields) for lays in groups for *_, fields in lays)
    names = [n for n, has in zip(STATE, present, strict=True) if has]
    where = [nblock + names.index(n) for n in DATA_STATE]
    specs = [tf.TensorSpec(t.shape, t.dtype) for t in flat]
    shapes = tuple((tuple(s.shape.as_list()), s.dtype.name) for s in specs)
    key = ("_f_hess_batch", False, model.device, layout, shapes)
    fn = _TRACED.get(key)
    if fn is not None:
        _TRACED.move_to_end(key)
        return fn
    cls = type(model)
    batch_specs = [tf.TensorSpec([None, model.nparams], tf.float64)] + [
        tf.TensorSpec([None, *specs[i].shape], tf.float64) for i in where
    ]

    def batched(x, nobs, lognobs, theta0, beta0, *args):
        def one(per_toy):
            xi, *data = per_toy
            tensors = list(args)
            for i, t in zip(where, data, strict=True):
                tensors[i] = t
            return view(cls, layout, tensors)._evaluate(xi, 2)

        return tf.vectorized_map(one, (x, nobs, lognobs, theta0, beta0))

    fn = tf.function(batched, input_signature=[*batch_specs, *specs])
    _TRACED[key] = fn
    while len(_TRACED) > _TRACED_MAX:
        _TRACED.popitem(last=False)
    return fn


def call_batch(fn: Any, flat: list[Any], x: Any, nobs: Any, theta0: Any, beta0: Any) -> tuple[Any, Any, Any]:
    """Call a :func:`shared_batch_function` on numpy arrays; returns numpy ``(f, g, h)``."""
    import numpy as np

    nobs = np.asarray(nobs, dtype=np.float64)
    lognobs = np.log(np.where(nobs > 0, nobs, 1.0))
    batch = [tf.constant(np.asarray(a, dtype=np.float64)) for a in (x, nobs, lognobs, theta0, beta0)]
    args = [t.value() if isinstance(t, tf.Variable) else t for t in flat]
    # the trace names each scatter operation that vectorized_map runs as a loop: keep it off the terminal
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        f, g, h = fn(*batch, *args)
    finally:
        logger.setLevel(level)
    return f.numpy(), g.numpy(), h.numpy()
