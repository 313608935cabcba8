"""The binned likelihood of a workspace in TensorFlow, float64, with exact derivatives.

Model (the conventions of rabbit, 0.2.5 and main, and of CMS combine):

* Expected yields for the workspace's systematic type (``ws.systematic_type``), with ``E_bp(theta) =
  sum_s theta_s logkavg_bps + theta_s alpha(theta_s) logkhalfdiff_bps``:

  - ``"log_normal"``: ``nu_bp = r_p * norm_bp * exp(E_bp)``;
  - ``"normal"`` (rabbit's additive systematics; the arrays hold yield differences):
    ``nu_bp = r_p * norm_bp + E_bp``, the shift not scaled by the signal strength (rabbit main also
    scales it by the POIs' starting values, 1 by default, so the two agree);

  with ``r_p = mu_p`` for signals (the POI is mu itself, not sqrt(mu)) and 1 otherwise; ``alpha`` is
  combine's smooth step ``t(3t^4 - 10t^2 + 15)/8`` with ``t = 2 theta``, clipped to [-1, 1].
* Data, either

  - Poisson terms with the saturated offset, ``nu - n - n (log nu - log n)`` (``log n := 0`` for
    ``n = 0``), so the NLL at the minimum is half the saturated chi2; or
  - with ``covariance_fit`` (rabbit's ``--covarianceFit``), the chi-square ``0.5 (n - nu)^T C (n - nu)``
    with the inverse data covariance ``C`` of the file (``hdata_cov_inv``).

* Gaussian constraints ``0.5 * w_s (theta_s - theta0_s)^2`` (``w = 0`` for free parameters).
* Barlow-Beeston lite (on by default), profiled analytically, as rabbit's automatic choice for each
  data term:

  - Poisson: one gamma-distributed ``beta_b`` per bin multiplying the total yield, with ``k_b =
    (sum_p sumw_bp)^2 / sum_p sumw2_bp`` and constraint ``k_b (beta_b - beta0_b - beta0_b log(beta_b /
    beta0_b))``: ``beta_b = (n_b + k_b beta0_b) / (nu_b + k_b)``;
  - chi-square: an additive ``sigma_b beta_b`` with ``sigma_b^2 = sum_p sumw2_bp`` and constraint
    ``0.5 (beta_b - beta0_b)^2`` (rabbit's ``normal-additive``). Profiling a Gaussian in a Gaussian
    gives the chi-square with ``C_eff = (C^-1 + diag(sigma^2))^-1 = C - C S (1 + S C S)^-1 S C``
    (Woodbury; ``S = diag(sigma)``) and residual ``n - nu - S beta0``.

* Full Barlow-Beeston (``bb_full``, rabbit main's ``--binByBinStatMode full --binByBinStatType gamma``): one
  gamma-constrained factor per bin and process, profiled per bin (:mod:`wfit.fitter.bbfull`); the gradient
  and Hessian then come from autodiff, at a cost of about one backward pass per parameter.

With Poisson data every bin's NLL depends on the parameters only through its total yield ``nu_b``,
so with ``g_b(nu_b)`` the profiled per-bin NLL,

    dL/dx_i = sum_b g'_b d_i nu_b,
    d2L/dx_i dx_j = sum_b [g''_b d_i nu_b d_j nu_b + g'_b d_i d_j nu_b] + constraints;

with the chi-square, ``g' = C_eff (nu - n + S beta0)`` and the first sum becomes ``J^T C_eff J`` with
``J = d nu / d x`` [bins x parameters]. The derivatives of ``nu_b`` are tensor contractions of the
log(kappa) array (for ``"normal"`` the yields are linear in ``theta`` but for the asymmetric step,
and ``d2 nu / d mu d theta = 0``). This gives the gradient in the same pass over the array as the
yields, and the exact Hessian (not a finite difference, not one Hessian-vector product per
parameter) in about one more pass and a ``[nsyst x nbins*nproc] @ [nbins*nproc x nsyst]`` matrix
product. The bins are processed in blocks sized to stay in cache, so each block of log(kappa) is
read once per evaluation.

The functions take the model's tensors as arguments and are shared by every :class:`Likelihood` of the
same structure (:mod:`wfit.fitter.traced`): a second fit of such a workspace in the process neither retraces
nor recompiles. Data can be replaced (toys) without retracing through :meth:`Likelihood.set_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wfit.fitter import bbfull, regularization
from wfit.fitter._tf import resolve_device, tf, to_tensor
from wfit.fitter.blocks import CompactBlock, iter_compact_blocks
from wfit.fitter.traced import JITTED, Block, call_batch, flatten, shared_batch_function, shared_function
from wfit.workspace import Workspace
from wfit.workspace.schema import SYSTEMATIC_TYPES

__all__ = ["LARGE_HESSIAN_FLOPS", "Likelihood", "alpha_step"]

#: Exact Hessians above this many floating-point operations (about 10 ms on one core) are worth avoiding:
#: :meth:`Likelihood.minimizer_options`.
LARGE_HESSIAN_FLOPS = 1e9


def alpha_step(theta):
    """Combine's asymmetric log-normal interpolation step ``alpha(theta)`` and its derivatives.

    Returns ``(theta*alpha, d(theta*alpha)/dtheta, d2(theta*alpha)/dtheta2)``.
    """
    t = 2.0 * theta
    t2 = t * t
    inside = tf.abs(t) < 1.0
    alpha = tf.where(inside, 0.125 * t * (t2 * (3.0 * t2 - 10.0) + 15.0), tf.sign(t))
    # d alpha / d theta = 2 * 15 (t^2 - 1)^2 / 8 ; d2 alpha / d theta2 = 30 t (t^2 - 1) (zero outside)
    dalpha = tf.where(inside, 3.75 * tf.square(t2 - 1.0), tf.zeros_like(t))
    d2alpha = tf.where(inside, 30.0 * t * (t2 - 1.0), tf.zeros_like(t))
    return theta * alpha, alpha + theta * dalpha, 2.0 * dalpha + theta * d2alpha


class Likelihood:
    """The NLL of a workspace and its exact gradient and Hessian, as ``tf.function``s.

    Parameters are ``x = [mu_1..mu_npoi, theta_1..theta_nsyst]`` in the order of
    :attr:`names`: POIs named after the signal processes, then nuisances as in ``hsysts``.

    The log(kappa) tensor is stored in blocks of consecutive bins, each keeping only the
    nuisances that act in it: nuisances that are local in the observable (an efficiency
    uncertainty per eta bin, a momentum scale per eta region) cost nothing outside their bins.
    A workspace read with ``load_logk=False`` is streamed from its file block by block, so the
    full tensor is never held in memory.

    Args:
        ws: The workspace (see :func:`wfit.workspace.read_workspace`); its ``systematic_type``
            selects log-normal or additive systematics.
        bb_lite: Barlow-Beeston lite for the MC statistical uncertainty.
        data: Observed counts for the unmasked bins; defaults to ``ws.data_obs``.
        covariance_fit: The chi-square fit with the workspace's inverse data covariance
            (``ws.data_cov_inv``, rabbit's ``--covarianceFit``) instead of Poisson terms.
        priors: Gaussian priors ``(parameter index, mean, sigma)`` (:func:`wfit.fitter.fitting.prior_indices`).
        bb_full: Full Barlow-Beeston instead of lite (:mod:`wfit.fitter.bbfull`): one gamma-constrained factor
            per bin and process, profiled by a per-bin solve; its derivatives come from TensorFlow's autodiff.
        regularize: Masked channels whose cross sections carry the curvature penalty of
            :mod:`wfit.fitter.regularization`, of strength ``exp(2 tau)`` (:meth:`set_tau` changes it).
        device: ``"cpu"``, ``"gpu"`` or a TensorFlow device string; ``None`` picks the GPU when
            TensorFlow sees one.
        block_bytes: Target size in bytes of one block of the (uncompacted) log(kappa) tensor.
        jit_compile: Compile the functions with XLA. ``None`` compiles small models (under 4 MB of
            log(kappa) in at most 8 blocks), where fusing the many small operations halves the time
            per call; for large models TensorFlow's own kernels are faster and compile in no time.

    Example:
        >>> from wfit.fitter.likelihood import Likelihood
        >>> ll = Likelihood(ws)  # doctest: +SKIP
        >>> f, g, h = ll.nll_grad_hess(ll.x0)  # doctest: +SKIP
    """

    def __init__(
        self,
        ws: Workspace,
        *,
        bb_lite: bool = True,
        data: np.ndarray | None = None,
        device: str | None = None,
        block_bytes: int = 8 * 1024**2,
        jit_compile: bool | None = None,
        covariance_fit: bool = False,
        priors: Sequence[tuple[int, float, float]] = (),
        bb_full: bool = False,
        regularize: Sequence[str] = (),
        tau: float = 0.0,
    ) -> None:
        if ws.systematic_type not in SYSTEMATIC_TYPES:
            raise ValueError(f"{ws.path}: systematic type {ws.systematic_type!r}; wfit models {SYSTEMATIC_TYPES}")
        if covariance_fit and ws.data_cov_inv is None:
            raise ValueError(
                f"{ws.path}: covariance_fit needs the inverse data covariance hdata_cov_inv, which the file lacks "
                "(rabbit's TensorWriter writes it after add_data_covariance or add_to_data_covariance)"
            )
        if bb_full and (not bb_lite or covariance_fit):
            raise ValueError("full Barlow-Beeston is a Poisson fit's MC-statistics treatment: it needs bb_lite=True "
                             "and covariance_fit=False")
        self.ws = ws
        self.bb_lite = bool(bb_lite)
        self.bb_full = bool(bb_full)
        self.additive = ws.systematic_type == "normal"
        self.covariance_fit = bool(covariance_fit)
        self.device = resolve_device(device)
        self.npoi = len(ws.signals)
        self.nsyst = ws.nsyst
        self.nparams = self.npoi + self.nsyst
        self.names = list(ws.signals) + list(ws.systs)
        self.x0 = np.concatenate([np.ones(self.npoi), np.zeros(self.nsyst)])
        nb, nproc, nsyst = ws.nbins, ws.nproc, ws.nsyst
        nasym = len(ws.asym_idx)
        self._nproc = nproc
        self._has_asym = nasym > 0
        self.stored_bytes = 0  # bytes of log(kappa) kept after compaction

        with tf.device(self.device):
            row_bytes = 8 * nproc * max(1, nsyst + nasym)
            # at most ~64 blocks: each block adds operations to the traced graph
            step = max(1, min(nb, block_bytes // row_bytes), -(-nb // 64))
            self._blocks = [self._make_block(cb) for cb in iter_compact_blocks(ws, step, stop=nb)]
            # masked channels (generator-level bins for cross sections): not in the NLL
            self._mblocks = [self._make_block(cb) for cb in iter_compact_blocks(ws, step, start=nb)]
            self._asym_idx = tf.constant(ws.asym_idx.reshape(-1, 1), dtype=tf.int64)
            self._cw = tf.constant(ws.constraint_weights)
            self._theta0 = tf.Variable(np.zeros(nsyst), dtype=tf.float64, trainable=False, name="theta0")
            self._nobs = tf.Variable(np.zeros(nb), dtype=tf.float64, trainable=False, name="nobs")
            self._lognobs = tf.Variable(np.zeros(nb), dtype=tf.float64, trainable=False, name="lognobs")
            kstat, bbmask, varw = bbfull.statistics(ws, self.bb_full)
            self._kstat = tf.constant(kstat)
            self._bbmask = tf.constant(bbmask)
            self._beta0 = tf.Variable(np.ones(bbmask.shape), dtype=tf.float64, trainable=False, name="beta0")
            if self.covariance_fit:
                self._setup_covariance(ws.data_cov_inv, np.sqrt(varw))
            self._prior_idx = self._prior_mean = self._prior_w = None
            if priors:  # Gaussian priors: 0.5 w (x_i - m)^2, w = 1/sigma^2
                idx = np.array([int(i) for i, _, _ in priors], dtype=np.int64)
                if len(set(idx.tolist())) != len(idx) or idx.min() < 0 or idx.max() >= self.nparams:
                    raise ValueError(f"prior indices {idx.tolist()} must be distinct and in [0, {self.nparams})")
                self._prior_idx = tf.constant(idx.reshape(-1, 1))
                self._prior_mean = tf.constant([float(m) for _, m, _ in priors], dtype=tf.float64)
                self._prior_w = tf.constant([1.0 / float(s) ** 2 for _, _, s in priors], dtype=tf.float64)
            self._reg_lap = self._reg_inv_nu0 = self._reg_strength = None
            if regularize:
                lap, inv_nu0 = regularization.penalty_setup(ws, list(regularize))
                self._reg_lap, self._reg_inv_nu0 = tf.constant(lap), tf.constant(inv_nu0)
                self._reg_strength = tf.Variable(np.exp(2.0 * float(tau)), dtype=tf.float64, trainable=False,
                                                 name="regularization_strength")
        self._nominal_total = ws.norm[:nb].sum(axis=1)
        self.set_data(ws.data_obs if data is None else data)

        spec = [tf.TensorSpec([self.nparams], tf.float64)]
        small = self.stored_bytes < 4 * 1024**2 and len(self._blocks) + len(self._mblocks) <= 8
        # the autodiff Hessian of full Barlow-Beeston (a vectorised jacobian) does not compile with XLA
        # (nor does the regularisation's)
        jit = (small and not self.bb_full and not regularize) if jit_compile is None else bool(jit_compile)
        self._jit = jit
        self._x_spec = spec[0]
        self._flat, self._layout = flatten(self)
        self._fns: dict[str, Any] = {}
        self._concrete_fns: dict[str, Any] = {}

    def _setup_covariance(self, cov_inv: np.ndarray, sigma: np.ndarray) -> None:
        """The chi-square's matrices: ``C``, and with BB-lite ``C_eff`` and the profiled-beta map ``M``."""
        c = 0.5 * (cov_inv + cov_inv.T)  # the quadratic form sees the symmetric part only
        self._sigma = tf.constant(sigma if self.bb_lite else np.zeros_like(sigma))
        self._cinv = tf.constant(c)
        if self.bb_lite:
            # beta = beta0 + M (n - nu - S beta0), M = (1 + S C S)^-1 S C; C_eff = C - C S M
            a = np.eye(len(sigma)) + sigma[:, None] * c * sigma[None, :]
            m = np.linalg.solve(a, sigma[:, None] * c)
            ceff = c - (c * sigma[None, :]) @ m
            self._bbmap = tf.constant(m)
            self._ceff = tf.constant(0.5 * (ceff + ceff.T))
        else:
            self._bbmap = None
            self._ceff = self._cinv

    def _make_block(self, cb: CompactBlock) -> Block:
        nrow, dev = len(cb.norm), self.device
        self.stored_bytes += 8 * nrow * (len(cb.cols) + len(cb.dcols))
        d = dsel = dcols = None
        if cb.half is not None:
            d = to_tensor(cb.half, dev)
            onehot = np.zeros((len(cb.dcols), len(cb.cols)))
            onehot[np.arange(len(cb.dcols)), np.searchsorted(cb.cols, self.ws.asym_idx[cb.dcols])] = 1.0
            dsel = tf.constant(onehot)
            dcols = tf.constant(cb.dcols, dtype=tf.int64)
        sig = np.flatnonzero(cb.row_proc < self.npoi)
        return Block(
            nb=cb.b1 - cb.b0,
            dense=cb.dense,
            a=to_tensor(cb.avg, dev),
            cols=tf.constant(cb.cols, dtype=tf.int64),
            d=d,
            dcols=dcols,
            dsel=dsel,
            norm=to_tensor(cb.norm, dev),
            row_bin=tf.constant(cb.row_bin, dtype=tf.int64),
            row_proc=tf.constant(cb.row_proc, dtype=tf.int64),
            sig_rows=tf.constant(sig, dtype=tf.int64),
            sig_index=tf.constant(np.stack([cb.row_bin[sig], cb.row_proc[sig]], axis=1), dtype=tf.int64),
            b0=cb.b0,
            b1=cb.b1,
        )

    # ------------------------------------------------------------------------------- state
    def set_data(
        self, nobs: np.ndarray, theta0: np.ndarray | None = None, beta0: np.ndarray | None = None
    ) -> None:
        """Replace the observed counts (and global observables) without retracing."""
        nobs = np.asarray(nobs, dtype=np.float64)
        if nobs.shape != (self.ws.nbins,):
            raise ValueError(f"data has shape {nobs.shape}, the workspace has {self.ws.nbins} unmasked bins")
        if not np.all(np.isfinite(nobs)):
            raise ValueError("data must be finite")
        if np.any(nobs < 0) and not self.covariance_fit:
            raise ValueError("data must be >= 0 (negative data need the chi-square fit with a data covariance)")
        empty = np.flatnonzero((nobs > 0) & (self._nominal_total == 0.0))
        if len(empty) and not self.covariance_fit:
            where = ", ".join(self.ws.describe_bin(b) for b in empty[:5])
            raise ValueError(
                f"{self.ws.path}: {len(empty)} bins have observed events but no expected events from any process "
                f"({where}{', ...' if len(empty) > 5 else ''}); the likelihood is -infinity there: merge or drop "
                "these bins, or add the missing process (e.g. a background or fake estimate)"
            )
        self._nobs.assign(nobs)
        self._lognobs.assign(np.log(np.where(nobs > 0, nobs, 1.0)))
        self._theta0.assign(np.zeros(self.nsyst) if theta0 is None else np.asarray(theta0, dtype=np.float64))
        # the additive beta of the chi-square fit is centred on 0, the multiplicative one on 1
        shape = tuple(self._beta0.shape)
        default_beta0 = np.zeros(shape) if self.covariance_fit else np.ones(shape)
        self._beta0.assign(default_beta0 if beta0 is None else np.asarray(beta0, dtype=np.float64))

    def set_tau(self, tau: float) -> None:
        """Set the regularisation strength to ``exp(2 tau)`` without retracing."""
        if self._reg_strength is None:
            raise ValueError("set_tau: this likelihood has no regularisation (Likelihood(..., regularize=[channel]))")
        self._reg_strength.assign(np.exp(2.0 * float(tau)))

    @property
    def data(self) -> np.ndarray:
        return self._nobs.numpy()

    @property
    def bb_masked(self) -> np.ndarray:
        """Unmasked bins without Barlow-Beeston treatment (no MC statistics: sum w^2 = 0 or sum w = 0); with full
        Barlow-Beeston, the [bins, processes] without a factor."""
        return self._bbmask.numpy()

    @property
    def kstat(self) -> np.ndarray:
        """Effective MC statistics per unmasked bin, ``(sum w)^2 / sum w^2`` (per bin and process with full
        Barlow-Beeston)."""
        return self._kstat.numpy()

    # ------------------------------------------------------------------------------- traced functions
    def _function(self, name: str) -> Any:
        """The shared ``tf.function`` ``name`` (:data:`wfit.fitter.traced.BODIES`) of this model's structure."""
        fn = self._fns.get(name)
        if fn is None:
            fn = self._fns[name] = shared_function(self, name, self._flat, self._layout, self._jit)
        return fn

    def _call(self, name: str, x: np.ndarray) -> Any:
        # The concrete function skips tf.function's argument binding: half the cost of a small call.
        fn = self._concrete_fns.get(name)
        if fn is None:
            fn = self._concrete_fns[name] = self._function(name).get_concrete_function()
        # Variables (data, global observables) are passed as their values: binding a tensor costs less.
        return fn(self._x(x), *(t.value() if isinstance(t, tf.Variable) else t for t in self._flat))

    # ------------------------------------------------------------------------------- public
    def nll(self, x: np.ndarray) -> float:
        """The NLL at ``x``."""
        return float(self._call("_f_nll", x))

    def nll_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """The NLL and its gradient at ``x``."""
        f, g = self._call("_f_grad", x)
        return float(f), g.numpy()

    def nll_grad_hess(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """The NLL, gradient and exact Hessian at ``x``."""
        f, g, h = self._call("_f_hess", x)
        return float(f), g.numpy(), h.numpy()

    @property
    def hessian_flops(self) -> tuple[float, float]:
        """Floating-point operations of one exact Hessian and of one Gauss-Newton matrix (the products over the
        log(kappa) blocks, which dominate on large models)."""
        exact = gn = 0.0
        for blk in self._blocks:
            rows, cols = (int(d) for d in blk.a.shape)
            gn += 2.0 * blk.nb * cols**2 + 2.0 * rows * cols
            exact += 0.0 if self.additive else 2.0 * rows * cols**2
        return exact + gn, gn

    def minimizer_options(self) -> dict[str, Any]:
        """The extra functions :func:`~wfit.fitter.minimize.minimize` works with on this model: where one exact
        Hessian costs more than :data:`LARGE_HESSIAN_FLOPS`, the NLL alone to judge trial points and, where the
        Gauss-Newton matrix costs under a quarter of it and the Hessian more than twice ``nparams^3``, that matrix
        for the iterations before the exact check."""
        exact, gn = self.hessian_flops
        if exact < LARGE_HESSIAN_FLOPS:
            return {}
        out: dict[str, Any] = {"fun": self.nll}
        # The approximation takes more iterations; it pays only where the Hessian, not the linear algebra of each
        # iteration (a Cholesky factorisation, n^3/3), is the cost: measured on a W-mass-like model with 4000
        # nuisances (a 3 GFLOP Hessian, 24 GFLOP factorisations) the exact iterations were twice as fast.
        if not self.bb_full and gn < 0.25 * exact and exact > 2.0 * self.nparams**3:
            out["approx"] = self.nll_grad_gauss_newton
        return out

    def nll_grad_gauss_newton(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """The NLL, gradient and the Gauss-Newton (Fisher scoring) approximation of the Hessian at ``x``: without
        the yields' second derivatives, which cost about ``nproc`` times the rest on dense models (the exact
        Hessian with full Barlow-Beeston)."""
        f, g, h = self._call("_f_hess_gn" if not self.bb_full else "_f_hess", x)
        return float(f), g.numpy(), h.numpy()

    def nll_grad_hess_batch(
        self, x: np.ndarray, nobs: np.ndarray, theta0: np.ndarray, beta0: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """NLL [N], gradient [N, nparams] and Hessian [N, nparams, nparams] of N data sets (toys) at N points,
        as one vectorised computation (:func:`wfit.fitter.traced.shared_batch_function`).

        ``nobs`` [N, bins], ``theta0`` [N, nsyst] and ``beta0`` [N, ...] replace the data and global observables
        of :meth:`set_data` for each toy; the likelihood's own data are not changed.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"nll_grad_hess_batch: x has shape {x.shape}, expected (N toys, {self.nparams})")
        ntoy = x.shape[0]
        expected = {"x": (x, (ntoy, self.nparams)), "nobs": (nobs, (ntoy, *self._nobs.shape)),
                    "theta0": (theta0, (ntoy, *self._theta0.shape)), "beta0": (beta0, (ntoy, *self._beta0.shape))}
        for name, (value, shape) in expected.items():
            if np.shape(value) != shape:
                raise ValueError(f"nll_grad_hess_batch: {name} has shape {np.shape(value)}, expected {shape} "
                                 "(one row per toy)")
        fn = self._fns.get("_f_hess_batch")
        if fn is None:
            fn = self._fns["_f_hess_batch"] = shared_batch_function(self, self._flat, self._layout)
        return call_batch(fn, self._flat, x, nobs, theta0, beta0)

    def hessian_fixed_beta(self, x: np.ndarray) -> np.ndarray:
        """The Hessian with the BB-lite parameters held at their profiled values (no MC-stat part)."""
        return self._call("_f_hess_fixed_beta", x)[2].numpy()

    def masked_yields(self, x: np.ndarray) -> np.ndarray:
        """Expected yields [masked bins, nproc] of the masked channels (cross-section bins) at ``x``."""
        return self._call("_f_masked", x).numpy()

    def expected_yields(self, x: np.ndarray) -> np.ndarray:
        """Expected events per unmasked bin at ``x`` (including the profiled BB-lite factor)."""
        return self._call("_f_yields", x).numpy()

    def asimov_data(self, x: np.ndarray | None = None) -> np.ndarray:
        """Expected events per unmasked bin without BB-lite scaling (the Asimov data set)."""
        with tf.device(self.device):
            return self._yields(self._x(self.x0 if x is None else x), bb_lite=False).numpy()

    def tracing_count(self) -> int:
        """Number of traces of the NLL/gradient/Hessian functions (each is traced once per model structure)."""
        return sum(self._function(name).experimental_get_tracing_count() for name in JITTED)

    def _x(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.nparams,):
            raise ValueError(f"parameter vector has shape {x.shape}, expected ({self.nparams},)")
        return tf.constant(x)  # the traced functions place it on their device

    # ------------------------------------------------------------------------------- maths
    def _split(self, x):
        mu, theta = x[: self.npoi], x[self.npoi :]
        r = tf.concat([mu, tf.ones([self._nproc - self.npoi], tf.float64)], axis=0)
        if self._has_asym:
            theta_a = tf.gather_nd(theta, self._asym_idx)
            ta, dta, d2ta = alpha_step(theta_a)
        else:
            ta = dta = d2ta = None
        return mu, theta, r, ta, dta, d2ta

    def _rows(self, blk: Block, values):
        """Per-bin values broadcast to the block's rows."""
        if blk.dense:
            return tf.reshape(tf.broadcast_to(values[:, None], [blk.nb, self._nproc]), [-1])
        return tf.gather(values, blk.row_bin)

    def _bin_sum(self, blk: Block, rows):
        """Sum of row values per bin (rows may carry trailing dimensions)."""
        if blk.dense:
            return tf.reduce_sum(tf.reshape(rows, tf.concat([[blk.nb, self._nproc], tf.shape(rows)[1:]], 0)), 1)
        return tf.math.unsorted_segment_sum(rows, blk.row_bin, blk.nb)

    def _block_yields(self, blk: Block, theta, ta, r):
        """Yields per row: their derivative with respect to the signal strength (``nuhat``) and ``nu``.

        ``nuhat`` is the yield without the signal strength for log-normal systematics and the
        nominal yield for additive ones.
        """
        e = tf.linalg.matvec(blk.a, tf.gather(theta, blk.cols))
        if blk.d is not None:
            e = e + tf.linalg.matvec(blk.d, tf.gather(ta, blk.dcols))
        nuhat = blk.norm if self.additive else blk.norm * tf.exp(e)
        if blk.dense:
            nu = tf.reshape(tf.reshape(nuhat, [blk.nb, self._nproc]) * r, [-1])
        else:
            nu = nuhat * tf.gather(r, blk.row_proc)
        if self.additive:
            nu = nu + e
        return nuhat, nu

    def _signal_matrix(self, blk: Block, rows):
        """[nb, npoi] matrix of per-row values of the signal processes."""
        if blk.dense:
            return tf.reshape(rows, [blk.nb, self._nproc])[:, : self.npoi]
        return tf.scatter_nd(blk.sig_index, tf.gather(rows, blk.sig_rows), [blk.nb, self.npoi])

    def _per_bin(self, nu_b, sl, profile_bb: bool = True):
        """Profiled per-bin NLL g(nu) and its first two derivatives with respect to nu.

        With ``profile_bb=False`` the second derivative is taken at fixed beta (rabbit's
        ``profile=False``), which separates the MC-statistical part of the uncertainty.
        """
        n = self._nobs[sl]
        has_n = n > 0.0
        nu_safe = tf.where(has_n, nu_b, tf.ones_like(nu_b))
        n_over_nu = tf.where(has_n, n / nu_safe, tf.zeros_like(nu_b))
        if not self.bb_lite:
            g = nu_b - n - n * (tf.math.log(nu_safe) - self._lognobs[sl])
            return g, 1.0 - n_over_nu, n_over_nu / nu_safe
        k, mask, beta0 = self._kstat[sl], self._bbmask[sl], self._beta0[sl]
        beta = self._bb_lite_beta(nu_b, sl)
        nub = nu_b * beta
        nub_safe = tf.where(has_n, nub, tf.ones_like(nub))
        beta0_safe = tf.where(beta0 > 0.0, beta0, tf.ones_like(beta0))
        beta_safe = tf.where(beta0 > 0.0, beta, tf.ones_like(beta))
        lbeta = tf.where(
            mask,
            tf.zeros_like(k),
            k * (beta - beta0) - k * beta0 * (tf.math.log(beta_safe) - tf.math.log(beta0_safe)),
        )
        g = nub - n - n * (tf.math.log(nub_safe) - self._lognobs[sl]) + lbeta
        # Envelope theorem: dg/dnu at the profiled beta is beta - n/nu; beta'(nu) = -beta/(nu + k).
        g1 = beta - n_over_nu
        g2 = n_over_nu / nu_safe
        if profile_bb:
            g2 = g2 + tf.where(mask, tf.zeros_like(k), -beta / (nu_b + k))
        return g, g1, g2

    def _bb_lite_beta(self, nu_b, sl=slice(None)):
        """The profiled Barlow-Beeston lite factor of the Poisson bins ``sl`` with yields ``nu_b``:
        ``(n + k beta0) / (nu + k)``, ``beta0`` where the bin has none."""
        k, mask, beta0 = self._kstat[sl], self._bbmask[sl], self._beta0[sl]
        return tf.where(mask, beta0, (self._nobs[sl] + k * beta0) / (nu_b + k))

    def _chi2_residual(self, nu_all):
        """``n - nu - S beta0``: the residual of the chi-square with the profiled additive beta."""
        return self._nobs - nu_all - self._sigma * self._beta0

    def _constraints(self, x):
        """The constraint and prior terms of the NLL."""
        f = 0.5 * tf.reduce_sum(self._cw * tf.square(x[self.npoi :] - self._theta0))
        if self._prior_idx is not None:  # Gaussian priors (maximum a posteriori)
            f = f + 0.5 * tf.reduce_sum(self._prior_w * tf.square(tf.gather_nd(x, self._prior_idx) - self._prior_mean))
        return f

    def _evaluate(self, x, order: int, profile_bb: bool = True, gauss_newton: bool = False):
        if self.bb_full:
            out = bbfull.evaluate(self, x, order, profile_bb)
        else:
            out = self._evaluate_data(x, order, profile_bb, gauss_newton)
        return out if self._reg_lap is None else regularization.add_penalty(self, x, order, out)

    def _evaluate_data(self, x, order: int, profile_bb: bool = True, gauss_newton: bool = False):
        """NLL (``order`` 0), gradient (1) and Hessian (2); with ``gauss_newton`` the Hessian leaves out the terms
        with second derivatives of the yields (each weighted by the bin's ``dL/dnu``, zero on average at the
        minimum): ``J^T g'' J`` plus the constraints, the Gauss-Newton (Fisher scoring) matrix."""
        mu, theta, r, ta, dta, d2ta = self._split(x)
        npoi, ns = self.npoi, self.nsyst
        f = tf.constant(0.0, tf.float64)
        g_theta = tf.zeros([ns], tf.float64)
        g_asym = tf.zeros([tf.size(self._asym_idx)], tf.float64) if self._has_asym else None
        g_mu = tf.zeros([npoi], tf.float64)
        h_tt = tf.zeros([ns, ns], tf.float64)
        h_mt = tf.zeros([npoi, ns], tf.float64)
        # the blocks' pieces over some of the nuisances, scattered into the full matrices at once at the end
        # (one pass over an [nsyst, nsyst] matrix instead of one per block)
        tt_idx, tt_val, mt_idx, mt_val = [], [], [], []
        h_mm = tf.zeros([npoi, npoi], tf.float64)
        yields = []
        for blk in self._blocks:
            nuhat, nu = self._block_yields(blk, theta, ta, r)
            yields.append((nuhat, nu, self._bin_sum(blk, nu)))
        if self.covariance_fit:
            # not separable in bins: dL/dnu = C_eff (nu - n + S beta0), d2L/dnu2 = C_eff (or C at fixed beta)
            resid = self._chi2_residual(tf.concat([y[2] for y in yields], axis=0))
            c_resid = tf.linalg.matvec(self._ceff, resid)
            f = f + 0.5 * tf.reduce_sum(resid * c_resid)
            per_bin = [(-c_resid[blk.b0 : blk.b1], None) for blk in self._blocks]
            jac = []
        else:
            per_bin = []
            for blk, (_, _, nu_b) in zip(self._blocks, yields, strict=True):
                g, g1, g2 = self._per_bin(nu_b, slice(blk.b0, blk.b1), profile_bb)
                f = f + tf.reduce_sum(g)
                per_bin.append((g1, g2))
        for blk, (nuhat, nu, _), (g1, g2) in zip(self._blocks, yields, per_bin, strict=True):
            if order == 0:
                break
            g1_rows = self._rows(blk, g1)
            # dL/d(exponent) per row: d nu_row / d E_row is nu_row (log-normal) or 1 (additive)
            gw = g1_rows if self.additive else g1_rows * nu
            cols = blk.cols[:, None]
            g_theta = tf.tensor_scatter_nd_add(g_theta, cols, tf.linalg.matvec(blk.a, gw, transpose_a=True))
            if blk.d is not None:
                g_asym = tf.tensor_scatter_nd_add(
                    g_asym, blk.dcols[:, None], tf.linalg.matvec(blk.d, gw, transpose_a=True)
                )
            j_m = self._signal_matrix(blk, nuhat)  # d nu_b / d mu
            g_mu = g_mu + tf.linalg.matvec(j_m, g1, transpose_a=True)
            if order == 1:
                continue
            at = blk.a  # d E_row / d theta_k
            if blk.d is not None:
                at = at + tf.matmul(blk.d * tf.gather(dta, blk.dcols), blk.dsel)
            # d nu_b / d theta_k
            if self.additive:
                j_t = self._bin_sum(blk, at)
            elif blk.dense:  # one pass over the block, without a [rows, columns] temporary
                j_t = tf.einsum("bp,bps->bs", tf.reshape(nu, [blk.nb, self._nproc]),
                                tf.reshape(at, [blk.nb, self._nproc, -1]))
            else:
                j_t = self._bin_sum(blk, nu[:, None] * at)
            h_k = None
            if not (self.additive or gauss_newton):
                # sum_rows g'_b nu_row at_row at_row^T : second derivative of the log-normal yields
                h_k = tf.matmul(at, at * gw[:, None], transpose_a=True)
            h_mt_k = None
            if self.covariance_fit:
                jt_full = tf.transpose(tf.scatter_nd(cols, tf.transpose(j_t), [ns, blk.nb]))
                jac.append(tf.concat([j_m, jt_full], axis=1))
            else:
                j_t2 = g2[:, None] * j_t
                h_k = tf.matmul(j_t, j_t2, transpose_a=True) + (0.0 if h_k is None else h_k)
                h_mm = h_mm + tf.matmul(j_m, g2[:, None] * j_m, transpose_a=True)
                h_mt_k = tf.matmul(j_m, j_t2, transpose_a=True)
            if not (self.additive or gauss_newton):
                # d2 nu_b / d mu_p d theta_k = nuhat_row at_row for the rows of process p
                if blk.dense:
                    at3 = tf.reshape(at, [blk.nb, self._nproc, -1])[:, :npoi, :]
                    mixed = tf.einsum("bp,bps->ps", g1[:, None] * j_m, at3)
                else:
                    w_sig = tf.gather(g1_rows * nuhat, blk.sig_rows)
                    mixed = tf.math.unsorted_segment_sum(
                        w_sig[:, None] * tf.gather(at, blk.sig_rows), blk.sig_index[:, 1], npoi
                    )
                h_mt_k = mixed if h_mt_k is None else h_mt_k + mixed
            # scatter the block's [Sk, Sk] and [npoi, Sk] pieces into the full matrices (added directly where the
            # block has every nuisance: its columns are sorted, so they are then all of them in order)
            every = int(blk.a.shape[1]) == ns
            if h_k is not None and every:
                h_tt = h_tt + h_k
            elif h_k is not None:
                ii, jj = tf.meshgrid(blk.cols, blk.cols, indexing="ij")
                tt_idx.append(tf.stack([tf.reshape(ii, [-1]), tf.reshape(jj, [-1])], 1))
                tt_val.append(tf.reshape(h_k, [-1]))
            if h_mt_k is not None and every:
                h_mt = h_mt + h_mt_k
            elif h_mt_k is not None:
                mt_idx.append(cols)
                mt_val.append(tf.transpose(h_mt_k))
        if tt_idx:
            h_tt = tf.tensor_scatter_nd_add(h_tt, tf.concat(tt_idx, 0), tf.concat(tt_val, 0))
        if mt_idx:
            h_mt = h_mt + tf.transpose(tf.scatter_nd(tf.concat(mt_idx, 0), tf.concat(mt_val, 0), [ns, npoi]))
        # constraints and priors
        f = f + self._constraints(x)
        dtheta = theta - self._theta0
        if self._prior_idx is not None:
            dprior = tf.gather_nd(x, self._prior_idx) - self._prior_mean
        if order == 0:
            return f
        g_theta = g_theta + self._cw * dtheta
        if self._has_asym:
            g_theta = g_theta + tf.scatter_nd(self._asym_idx, g_asym * dta, [ns])
        grad = tf.concat([g_mu, g_theta], axis=0)
        if self._prior_idx is not None:
            grad = grad + tf.scatter_nd(self._prior_idx, self._prior_w * dprior, [self.nparams])
        if order == 1:
            return f, grad
        diag = self._cw
        if self._has_asym and not gauss_newton:
            diag = diag + tf.scatter_nd(self._asym_idx, g_asym * d2ta, [ns])
        h_tt = h_tt + tf.linalg.diag(diag)
        top = tf.concat([h_mm, h_mt], axis=1)
        bottom = tf.concat([tf.transpose(h_mt), h_tt], axis=1)
        hess = tf.concat([top, bottom], axis=0)
        if self._prior_idx is not None:
            hess = hess + tf.linalg.diag(tf.scatter_nd(self._prior_idx, self._prior_w, [self.nparams]))
        if self.covariance_fit:
            j = tf.concat(jac, axis=0)  # [nbins, nparams]
            c = self._ceff if profile_bb else self._cinv
            hess = hess + tf.matmul(j, tf.matmul(c, j), transpose_a=True)
        hess = 0.5 * (hess + tf.transpose(hess))
        return f, grad, hess

    def _yields(self, x, bb_lite: bool):
        if self.bb_full and bb_lite:
            return bbfull.bin_totals(self, x)
        _, theta, r, ta, _, _ = self._split(x)
        out = []
        if self.covariance_fit:
            nu_all = tf.concat([self._bin_sum(b, self._block_yields(b, theta, ta, r)[1]) for b in self._blocks], 0)
            if not (bb_lite and self.bb_lite):
                return nu_all
            beta = self._beta0 + tf.linalg.matvec(self._bbmap, self._chi2_residual(nu_all))
            return nu_all + self._sigma * beta
        for blk in self._blocks:
            nu_b = self._bin_sum(blk, self._block_yields(blk, theta, ta, r)[1])
            if bb_lite:
                nu_b = nu_b * self._bb_lite_beta(nu_b, slice(blk.b0, blk.b1))
            out.append(nu_b)
        return tf.concat(out, axis=0)

    def _process_yields(self, x, masked: bool):
        """Expected yields per bin and process, [bins, nproc], of the unmasked or masked channels."""
        _, theta, r, ta, _, _ = self._split(x)
        out = [tf.zeros([0, self._nproc], tf.float64)]
        for blk in self._mblocks if masked else self._blocks:
            nu = self._block_yields(blk, theta, ta, r)[1]
            if blk.dense:
                out.append(tf.reshape(nu, [blk.nb, self._nproc]))
            else:
                idx = tf.stack([blk.row_bin, blk.row_proc], axis=1)
                out.append(tf.scatter_nd(idx, nu, [blk.nb, self._nproc]))
        return tf.concat(out, axis=0)
