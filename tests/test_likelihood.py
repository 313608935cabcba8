"""The fitter's NLL, gradient and exact Hessian against independent implementations."""

from __future__ import annotations

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

    def naive(xt):
        mu, th = xt[:npoi], xt[npoi:]
        t = 2 * th
        al = tf.clip_by_value(0.125 * t * (t * t * (3 * t * t - 10) + 15), -1.0, 1.0)
        e = tf.einsum("bps,s->bp", a, th) + tf.einsum("bps,s->bp", d, th * al)
        r = tf.concat([mu, tf.ones(ws.nproc - npoi, tf.float64)], 0)
        nu = tf.reduce_sum(norm * tf.exp(e) * r, 1)
        lb = tf.constant(0.0, tf.float64)
        if bb_lite:
            beta = tf.where(okt, (n + k) / (nu + k), tf.ones_like(nu))
            nu = nu * beta
            lb = tf.reduce_sum(tf.where(okt, k * (beta - 1) - k * tf.math.log(beta), tf.zeros_like(nu)))
        ln = tf.math.log(tf.where(n > 0, n, tf.ones_like(n)))
        lnu = tf.math.log(tf.where(n > 0, nu, tf.ones_like(nu)))
        return tf.reduce_sum(nu - n - n * (lnu - ln)) + lb + 0.5 * tf.reduce_sum(th * th)

    xt = tf.constant(x)
    with tf.GradientTape() as t2:
        t2.watch(xt)
        with tf.GradientTape() as t1:
            t1.watch(xt)
            v = naive(xt)
        gt = t1.gradient(v, xt)
    ht = t2.jacobian(gt, xt).numpy()
    np.testing.assert_allclose(f, v.numpy(), rtol=1e-12)
    np.testing.assert_allclose(g, gt.numpy(), rtol=1e-10, atol=1e-12 * np.max(np.abs(g)))
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
