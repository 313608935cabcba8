"""An independent numpy implementation of the NLL, written from the formulas (not from the fitter).

It works on complex numbers so that derivatives can be taken by complex-step differentiation,
``f'(x) = Im f(x + i h) / h``, which is exact to rounding (no subtractive cancellation).
"""

from __future__ import annotations

import numpy as np

from wfit.workspace import Workspace


def _alpha(theta):
    t = 2.0 * theta
    a = t * (3.0 * t**4 - 10.0 * t**2 + 15.0) / 8.0
    # clip on the real part; the derivative is zero outside |t| < 1
    return np.where(np.abs(t.real) < 1.0, a, np.sign(t.real))


def yields(ws: Workspace, x):
    """Expected events per unmasked bin, before the Barlow-Beeston factor."""
    npoi = len(ws.signals)
    nb = ws.nbins
    mu, theta = x[:npoi], x[npoi:]
    half = np.zeros(ws.logk_avg.shape)
    if ws.logk_halfdiff is not None:
        half[:, :, ws.asym_idx] = ws.logk_halfdiff
    expo = np.einsum("bps,s->bp", ws.logk_avg[:nb], theta) + np.einsum(
        "bps,s->bp", half[:nb], theta * _alpha(theta)
    )
    r = np.concatenate([mu, np.ones(ws.nproc - npoi)])
    return np.sum(ws.norm[:nb] * r * np.exp(expo), axis=1)


def bin_nll(ws: Workspace, nu, data=None, bb_lite: bool = True):
    """The NLL of each bin for the expected events ``nu``, the Barlow-Beeston factor profiled."""
    n = ws.data_obs if data is None else data
    nb = ws.nbins
    lb = 0.0
    if bb_lite:
        sw, sw2 = ws.sumw[:nb].sum(1), ws.sumw2[:nb].sum(1)
        ok = (sw2 > 0) & (sw != 0)
        k = np.where(ok, sw**2 / np.where(ok, sw2, 1.0), 1.0)
        beta = np.where(ok, (n + k) / (nu + k), 1.0)
        nu = nu * beta
        lb = np.where(ok, k * (beta - 1.0) - k * np.log(beta), 0.0)
    logn = np.log(np.where(n > 0, n, 1.0))
    lognu = np.log(np.where(n > 0, nu, 1.0))
    return nu - n - n * (lognu - logn) + lb


def nll(ws: Workspace, x, data=None, bb_lite: bool = True):
    theta = x[len(ws.signals) :]
    lc = 0.5 * np.sum(ws.constraint_weights * theta**2)
    return np.sum(bin_nll(ws, yields(ws, x), data, bb_lite)) + lc


def grad_complex_step(ws: Workspace, x, h: float = 1e-40, **kw) -> np.ndarray:
    g = np.empty(x.size)
    for i in range(x.size):
        xc = x.astype(complex)
        xc[i] += 1j * h
        g[i] = nll(ws, xc, **kw).imag / h
    return g
