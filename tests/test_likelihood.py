"""The fitter's NLL, gradient and exact Hessian against independent implementations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests import reference_nll
from tests.builders import build_random_model, write_wfit
from wfit.fitter._tf import tf
from wfit.fitter.likelihood import Likelihood
from wfit.workspace import read_workspace


@pytest.fixture(scope="module", params=["asymmetric", "symmetric"])
def ws(request, tmp_path_factory):
    m = build_random_model(seed=11, asymmetric=request.param == "asymmetric")
    path = str(tmp_path_factory.mktemp("ll") / "ws.hdf5")
    write_wfit(m, path)
    return read_workspace(path)


def _point(ws, seed):
    rng = np.random.default_rng(seed)
    # nuisances spread over both sides of |2 theta| = 1, where the asymmetric step changes regime
    return np.concatenate([rng.uniform(0.5, 1.5, len(ws.signals)), rng.normal(0.0, 0.8, ws.nsyst)])


@pytest.mark.parametrize("bb_lite", [True, False])
def test_nll_and_gradient_match_numpy(ws, bb_lite):
    ll = Likelihood(ws, bb_lite=bb_lite, block_bytes=2048)  # several blocks
    assert len(ll._blocks) > 1
    for seed in range(3):
        x = _point(ws, seed)
        f, g = ll.nll_grad(x)
        ref = reference_nll.nll(ws, x, bb_lite=bb_lite)
        np.testing.assert_allclose(f, ref, rtol=1e-12)
        np.testing.assert_allclose(ll.nll(x), ref, rtol=1e-12)
        gref = reference_nll.grad_complex_step(ws, x, bb_lite=bb_lite)
        np.testing.assert_allclose(g, gref, rtol=1e-10, atol=1e-10 * np.max(np.abs(gref)))


@pytest.mark.parametrize("bb_lite", [True, False])
def test_hessian_matches_numpy_differences(ws, bb_lite):
    """Hessian against Richardson-extrapolated central differences of the complex-step gradient."""
    ll = Likelihood(ws, bb_lite=bb_lite)
    x = _point(ws, 5)
    # keep away from the kinks of the clipped step at |2 theta| = 1
    x[len(ws.signals) :] = np.clip(x[len(ws.signals) :], -0.45, 0.45)
    _, _, h = ll.nll_grad_hess(x)
    href = np.empty_like(h)
    for j in range(x.size):

        def diff(step, j=j):
            e = np.zeros(x.size)
            e[j] = step
            return (
                reference_nll.grad_complex_step(ws, x + e, bb_lite=bb_lite)
                - reference_nll.grad_complex_step(ws, x - e, bb_lite=bb_lite)
            ) / (2 * step)

        href[:, j] = (4 * diff(5e-4) - diff(1e-3)) / 3
    np.testing.assert_allclose(h, href, rtol=1e-8, atol=1e-9 * np.max(np.abs(href)))


@pytest.mark.parametrize("bb_lite", [True, False])
def test_hessian_matches_autodiff_of_naive_nll(ws, bb_lite):
    """Second reference: TensorFlow autodiff (tape.jacobian) of a direct transcription of the NLL."""
    ll = Likelihood(ws, bb_lite=bb_lite)
    x = _point(ws, 9)
    f, g, h = ll.nll_grad_hess(x)
    v, gt, ht = _autodiff(_naive_nll(ws, bb_lite, covariance=False), x)
    np.testing.assert_allclose(f, v, rtol=1e-12)
    np.testing.assert_allclose(g, gt, rtol=1e-10, atol=1e-12 * np.max(np.abs(g)))
    np.testing.assert_allclose(h, ht, rtol=1e-10, atol=1e-12 * np.max(np.abs(ht)))


def test_block_size_does_not_change_the_result(ws):
    x = _point(ws, 3)
    one = Likelihood(ws, block_bytes=1 << 40).nll_grad_hess(x)
    many = Likelihood(ws, block_bytes=1).nll_grad_hess(x)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_streamed_and_compacted_blocks_equal_in_memory(tmp_path):
    """Local nuisances are dropped from blocks where they vanish; results stay identical."""
    m = build_random_model(seed=12, nbins=(16, 16), nshape=6)
    # make two nuisances local: they act on the first four bins of ch0 only
    for name in ("shape1", "shape2"):
        for (c, p), (up, down) in m.shape[name].items():
            nom = m.nominal[(c, p)]
            keep = np.zeros(nom.size, bool)
            keep[:4] = c == "ch0"
            m.shape[name][(c, p)] = (
                np.where(keep, up, nom),
                None if down is None else np.where(keep, down, nom),
            )
    path = str(tmp_path / "local.hdf5")
    write_wfit(m, path)
    full = read_workspace(path)
    lazy = read_workspace(path, load_logk=False)
    assert lazy.logk_avg is None
    x = _point(full, 4)
    whole = Likelihood(full, block_bytes=1 << 40)
    small = Likelihood(lazy, block_bytes=1)  # one bin per block, streamed from the file
    assert small.stored_bytes < whole.stored_bytes
    for a, b in zip(whole.nll_grad_hess(x), small.nll_grad_hess(x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_functions_are_traced_once(ws):
    ll = Likelihood(ws)
    for seed in range(3):
        ll.nll_grad_hess(_point(ws, seed))
        ll.nll_grad(_point(ws, seed))
        ll.nll(_point(ws, seed))
    ll.set_data(ws.data_obs + 1.0)  # new data (a toy) must not retrace either
    ll.nll_grad_hess(_point(ws, 0))
    assert ll.tracing_count() == 3


def test_asimov_data_equals_nominal_sum(ws):
    ll = Likelihood(ws)
    np.testing.assert_allclose(ll.asimov_data(), ws.norm[: ws.nbins].sum(axis=1), rtol=1e-14)


def test_sparse_file_without_densifying_equals_dense(tmp_path):
    m = build_random_model(seed=13)
    write_wfit(m, str(tmp_path / "d.hdf5"))
    write_wfit(m, str(tmp_path / "s.hdf5"), sparse=True)
    dense = read_workspace(tmp_path / "d.hdf5")
    coo = read_workspace(tmp_path / "s.hdf5", densify_sparse=False)
    assert coo.logk_avg is None and coo.sparse_coo is not None
    x = _point(dense, 6)
    a, b = Likelihood(dense), Likelihood(coo, block_bytes=4096)
    for u, v in zip(a.nll_grad_hess(x), b.nll_grad_hess(x), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.masked_yields(x), b.masked_yields(x), rtol=1e-13)
    # masked yields: the masked channel's templates scaled by the signal strengths and the lumi lnN,
    # the only nuisance that acts there
    npoi = len(dense.signals)
    lumi = np.exp(x[npoi + dense.systs.index("lumi")] * np.log(1.025))
    expected = dense.norm[dense.nbins :] * np.r_[x[:npoi], np.ones(dense.nproc - npoi)] * lumi
    np.testing.assert_allclose(a.masked_yields(x), expected, rtol=1e-13)


# ------------------------------------------------------------- additive systematics and the chi-square fit
def _model_variant(ws, additive: bool, covariance: bool):
    """``ws`` turned into rabbit's other models: additive shifts (``systematic_type="normal"``) of a size
    comparable to the log-normal ones, one shifted row without nominal yield, and a correlated data
    covariance."""
    rng = np.random.default_rng(31)
    changes = {}
    if additive:
        avg = ws.logk_avg * ws.norm[:, :, None]
        avg[0, 1, :2] = [0.3, -0.2]  # an empty template bin (norm = 0) that is shifted all the same
        changes["logk_avg"] = avg
        if ws.logk_halfdiff is not None:
            changes["logk_halfdiff"] = ws.logk_halfdiff * ws.norm[:, :, None]
        changes["systematic_type"] = "normal"
    if covariance:
        nb = ws.nbins
        v = rng.normal(0.0, 1.0, (nb, 3)) * np.sqrt(ws.data_obs + 1.0)[:, None] * 0.3
        changes["data_cov_inv"] = np.linalg.inv(np.diag(ws.data_obs + 1.0) + v @ v.T)
    return dataclasses.replace(ws, **changes)


def _naive_nll(ws, bb_lite: bool, covariance: bool, fixed_beta: np.ndarray | None = None):
    """A direct transcription of the NLL (rabbit's formulas), to differentiate with TensorFlow.

    With ``covariance`` the additive beta is profiled by solving its linear equations (not by the
    likelihood's closed form), or held at ``fixed_beta``.
    """
    nb, npoi = ws.nbins, len(ws.signals)
    half = np.zeros(ws.logk_avg.shape)
    if ws.logk_halfdiff is not None:
        half[:, :, ws.asym_idx] = ws.logk_halfdiff
    norm, a, d = (tf.constant(v[:nb]) for v in (ws.norm, ws.logk_avg, half))
    n = tf.constant(ws.data_obs)
    sw, sw2 = ws.sumw[:nb].sum(1), ws.sumw2[:nb].sum(1)
    ok = (sw2 > 0) & (sw != 0)
    k = tf.constant(np.where(ok, sw**2 / np.where(ok, sw2, 1), 1.0))
    okt = tf.constant(ok)
    additive = ws.systematic_type == "normal"

    def naive(xt):
        mu, th = xt[:npoi], xt[npoi:]
        t = 2 * th
        al = tf.clip_by_value(0.125 * t * (t * t * (3 * t * t - 10) + 15), -1.0, 1.0)
        e = tf.einsum("bps,s->bp", a, th) + tf.einsum("bps,s->bp", d, th * al)
        r = tf.concat([mu, tf.ones(ws.nproc - npoi, tf.float64)], 0)
        nu = tf.reduce_sum(norm * r + e if additive else norm * tf.exp(e) * r, 1)
        lc = 0.5 * tf.reduce_sum(th * th)
        if covariance:
            c = tf.constant(ws.data_cov_inv)
            res = n - nu
            if not bb_lite:
                return 0.5 * tf.reduce_sum(res * tf.linalg.matvec(c, res)) + lc
            s = tf.constant(np.sqrt(sw2))
            if fixed_beta is None:
                lhs = tf.eye(nb, dtype=tf.float64) + s[:, None] * c * s[None, :]
                beta = tf.linalg.solve(lhs, (s * tf.linalg.matvec(c, res))[:, None])[:, 0]
            else:
                beta = tf.constant(fixed_beta)
            res = res - s * beta
            return 0.5 * tf.reduce_sum(res * tf.linalg.matvec(c, res)) + 0.5 * tf.reduce_sum(beta * beta) + lc
        lb = tf.constant(0.0, tf.float64)
        if bb_lite:
            beta = tf.where(okt, (n + k) / (nu + k), tf.ones_like(nu))
            nu = nu * beta
            lb = tf.reduce_sum(tf.where(okt, k * (beta - 1) - k * tf.math.log(beta), tf.zeros_like(nu)))
        ln = tf.math.log(tf.where(n > 0, n, tf.ones_like(n)))
        lnu = tf.math.log(tf.where(n > 0, nu, tf.ones_like(nu)))
        return tf.reduce_sum(nu - n - n * (lnu - ln)) + lb + lc

    return naive


def _autodiff(fn, x):
    xt = tf.constant(x)
    with tf.GradientTape() as t2:
        t2.watch(xt)
        with tf.GradientTape() as t1:
            t1.watch(xt)
            v = fn(xt)
        gt = t1.gradient(v, xt)
    return v.numpy(), gt.numpy(), t2.jacobian(gt, xt).numpy()


@pytest.mark.parametrize(
    ("additive", "covariance"), [(True, False), (False, True), (True, True)], ids=["normal", "chi2", "normal-chi2"]
)
@pytest.mark.parametrize("bb_lite", [True, False], ids=["bblite", "nobb"])
def test_additive_and_chi2_models_match_autodiff(ws, additive, covariance, bb_lite):
    """The exact Hessian of additive systematics and of the chi-square fit (with its additive BB-lite)
    against TensorFlow autodiff of a direct transcription, and the chi-square's Hessian at fixed beta
    (the split of the MC-statistical part) against autodiff with beta held at its profiled value."""
    wv = _model_variant(ws, additive, covariance)
    ll = Likelihood(wv, bb_lite=bb_lite, covariance_fit=covariance, block_bytes=2048)  # several blocks
    assert len(ll._blocks) > 1
    x = _point(wv, 9)
    f, g, h = ll.nll_grad_hess(x)
    v, gt, ht = _autodiff(_naive_nll(wv, bb_lite, covariance), x)
    np.testing.assert_allclose(f, v, rtol=1e-12)
    np.testing.assert_allclose(g, gt, rtol=1e-10, atol=1e-12 * np.max(np.abs(gt)))
    np.testing.assert_allclose(h, ht, rtol=1e-10, atol=1e-12 * np.max(np.abs(ht)))
    # the blocks of one bin give the same numbers
    for u, w in zip(Likelihood(wv, bb_lite=bb_lite, covariance_fit=covariance, block_bytes=1).nll_grad_hess(x),
                    (f, g, h), strict=True):
        np.testing.assert_allclose(u, w, rtol=1e-12, atol=1e-12)
    if covariance and bb_lite:
        nu = ll.expected_yields(x)
        nu0 = ll.asimov_data(x)
        beta = (nu - nu0) / np.sqrt(wv.sumw2[: wv.nbins].sum(1))
        _, _, hf = _autodiff(_naive_nll(wv, bb_lite, covariance, fixed_beta=beta), x)
        np.testing.assert_allclose(ll.hessian_fixed_beta(x), hf, rtol=1e-10, atol=1e-12 * np.max(np.abs(hf)))


def test_additive_yields_are_linear_in_the_symmetric_nuisances(ws):
    """nu(theta) = r norm + theta delta: the expected yields of a symmetric nuisance move linearly."""
    wv = _model_variant(ws, additive=True, covariance=False)
    ll = Likelihood(wv, bb_lite=False)
    sym = [i for i in range(wv.nsyst) if i not in set(wv.asym_idx)]
    x0 = ll.x0.copy()
    j = ll.npoi + sym[0]
    step = np.zeros_like(x0)
    step[j] = 1.0
    y0, y1, y2 = (ll.asimov_data(x0 + t * step) for t in (0.0, 1.0, 2.5))
    np.testing.assert_allclose(y2 - y0, 2.5 * (y1 - y0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(y1 - y0, wv.logk_avg[: wv.nbins, :, sym[0]].sum(1), rtol=1e-12, atol=1e-12)
