"""Composed derived quantities (select, project, normalize, ratio, asymmetry, helicity fractions) and their joint
covariance, against independent references.

References: each quantity written again in plain numpy as a function of the parameters (the masked yields
rebuilt from the templates that the test injected, ``sum_p mu_p T_p kappa^theta``, times the Barlow-Beeston
factors), its Jacobian by central finite differences, and ``J C J^T + J_beta V J_beta^T`` with the fit's
covariance ``C`` and the injected MC-statistical variances ``V = sumw2 / sumw^2``; and closed forms for two
independent counts (a linear quantity, whose propagation is exact, and the asymmetry, ratio and fractions).
"""

from __future__ import annotations

import dataclasses

import h5py
import hist
import numpy as np
import pytest

from tests.builders import build_random_model, write_wfit
from tests.reference_fit import jacobian_fd
from wfit.fitter import Likelihood, fit, read_result
from wfit.fitter.cli import main
from wfit.fitter.derived import (
    DerivedSet,
    asymmetry,
    channel,
    evaluate,
    masked_channel,
    normalized,
    parse_quantity,
    ratio,
    summed,
)
from wfit.workspace import WorkspaceWriter, read_workspace

SHAPE = (2, 3, 3)  # charge x absy x helicity
NSIG = 4


@pytest.fixture(scope="module")
def helicity_model(tmp_path_factory):
    """Four signals, each with its own generator template over charge x |y| x helicity (masked, with MC
    statistics), a luminosity lnN on all of them and an efficiency lnN on the first; a background with a shape."""
    rng = np.random.default_rng(11)
    reco = hist.axis.Regular(40, 0.0, 1.0, name="x")
    gen = [hist.axis.Integer(0, 2, name="charge"), hist.axis.Regular(3, 0.0, 2.4, name="absy"),
           hist.axis.Integer(0, 3, name="helicity")]
    w = WorkspaceWriter()
    w.add_channel("reco", [reco])
    w.add_channel("xsec", gen, masked=True)
    templates, variances, total = [], [], np.zeros(40)
    for p in range(NSIG):
        shape = 400 * np.exp(-0.5 * ((reco.centers - (0.15 + 0.22 * p)) / 0.07) ** 2) + 1
        w.add_process(f"sig{p}", "reco", shape, signal=True, variances=0.05 * shape)
        t = rng.uniform(20.0, 200.0, SHAPE)
        v = t * rng.uniform(0.001, 0.01, SHAPE)
        w.add_process(f"sig{p}", "xsec", t, signal=True, variances=v)
        templates.append(t)
        variances.append(v)
        total += shape
    sigs = [f"sig{p}" for p in range(NSIG)]
    w.add_norm_systematic("lumi", sigs, ["reco", "xsec"], 1.02)
    w.add_norm_systematic("eff0", "sig0", ["reco", "xsec"], 1.05)
    bkg = 30 * np.ones(40)
    w.add_process("bkg", "reco", bkg, variances=0.1 * bkg)
    w.add_shape_systematic("bkgshape", "bkg", "reco", bkg * np.exp(0.2 * reco.centers))
    w.add_data("reco", rng.poisson(total + bkg).astype(float))
    path = str(tmp_path_factory.mktemp("compose") / "ws.hdf5")
    w.write(path)
    ll = Likelihood(read_workspace(path))
    res = fit(ll, tol=1e-14)
    assert res.ok
    t, v = np.array(templates), np.array(variances)
    beta_var = (v.sum(0) / t.sum(0) ** 2).ravel()  # BB-lite variance of each masked bin's factor
    return ll, res, t, beta_var


def _reference_yields(res, templates):
    """The masked yields as a function of (parameters, Barlow-Beeston factors), from the injected templates."""
    names = res.names
    i_mu = [names.index(f"sig{p}") for p in range(NSIG)]
    i_lumi, i_eff = names.index("lumi"), names.index("eff0")

    def yields(x, beta):
        scale = x[i_mu] * 1.02 ** x[i_lumi]
        scale = scale * np.array([1.05 ** x[i_eff], 1.0, 1.0, 1.0])
        return np.einsum("p,pijk->ijk", scale, templates) * beta.reshape(SHAPE)

    return yields


def _assert_cov_close(actual, expected, tol=1e-6, msg=""):
    """Covariances equal to ``tol`` in units of the reference's standard deviations (entry ij over s_i s_j; a bin
    without variance, such as y_0 / y_0, to ``tol`` absolute)."""
    d = np.sqrt(np.diag(expected))
    np.testing.assert_allclose(np.diag(actual), np.diag(expected), rtol=tol, atol=tol * 1e-6 * d.max() ** 2,
                               err_msg=msg)
    d = np.where(d > 0, d, 1.0)
    np.testing.assert_allclose((actual - expected) / np.outer(d, d), 0.0, atol=tol, err_msg=msg)


def _reference_propagation(res, yields, beta_var, fn):
    """numpy values and covariance of ``fn(yields)``: central-difference Jacobians in x and beta."""
    beta0 = np.ones(beta_var.size)
    jx = jacobian_fd(lambda x: fn(yields(x, beta0)).ravel(), res.values)
    jb = jacobian_fd(lambda b: fn(yields(res.values, b)).ravel(), beta0)
    return fn(yields(res.values, beta0)).ravel(), jx @ res.covariance @ jx.T + (jb * beta_var) @ jb.T


# Each expression with its numpy formula (Y: charge x absy x helicity) and the axes the result must have.
CASES = {
    "xsec": (lambda y: y, ("charge", "absy", "helicity")),
    "select(xsec, charge=0, absy=0:2)": (lambda y: y[0, 0:2, :], ("absy", "helicity")),
    "select(xsec, helicity=::2)": (lambda y: y[:, :, ::2], ("charge", "absy", "helicity")),
    "project(xsec, helicity, absy)": (lambda y: y.sum(axis=0).T, ("helicity", "absy")),
    "project(xsec)": (lambda y: np.array(y.sum()), ()),
    "normalize(project(xsec, absy))": (lambda y: y.sum(axis=(0, 2)) / y.sum(), ("absy",)),
    "normalize(xsec, absy, helicity)": (lambda y: y / y.sum(axis=(1, 2), keepdims=True),
                                        ("charge", "absy", "helicity")),
    "helicity_fractions(xsec)": (lambda y: y / y.sum(axis=2, keepdims=True), ("charge", "absy", "helicity")),
    "helicity_fractions(project(xsec, helicity, charge), helicity)": (
        lambda y: (y.sum(axis=1) / y.sum(axis=(1, 2))[:, None]).T, ("helicity", "charge")),
    "asymmetry(xsec, charge)": (lambda y: (y[0] - y[1]) / (y[0] + y[1]), ("absy", "helicity")),
    "asymmetry(project(xsec, charge), charge)": (
        lambda y: np.array((y[0].sum() - y[1].sum()) / y.sum()), ()),
    "ratio(select(xsec, charge=0), select(xsec, charge=1))": (lambda y: y[0] / y[1], ("absy", "helicity")),
    "angular_coefficients(xsec)": (lambda y: y[:, :, 1:] / y[:, :, :1], ("charge", "absy", "helicity")),
    # broadcast by name: the denominator's axes (in another order) are some of the numerator's
    "ratio(xsec, project(xsec, absy, charge))": (lambda y: y / y.sum(axis=2, keepdims=True),
                                                  ("charge", "absy", "helicity")),
    "ratio(project(xsec, absy), select(xsec, charge=1, helicity=0))": (
        lambda y: y.sum(axis=(0, 2)) / y[1, :, 0], ("absy",)),
    # the same shape under other axis names: bin by bin, axes a0, a1, ...
    "ratio(select(xsec, charge=0, helicity=0), select(xsec, charge=0, absy=0))": (
        lambda y: y[0, :, 0] / y[0, 0, :], ("a0",)),
}


def test_every_quantity_and_the_joint_covariance_equal_numpy_with_finite_differences(helicity_model):
    ll, res, templates, beta_var = helicity_model
    yields = _reference_yields(res, templates)
    ev = evaluate(ll, res, *CASES)  # one propagation of all of them
    assert ev.names == [str(parse_quantity(e)) for e in CASES]
    # the whole joint covariance (every cross-covariance) against the reference of the concatenated function
    fns = [fn for fn, _ in CASES.values()]
    values, cov = _reference_propagation(res, yields, beta_var,
                                         lambda y: np.concatenate([np.ravel(f(y)) for f in fns]))
    np.testing.assert_allclose(ev.values, values, rtol=1e-12)
    _assert_cov_close(ev.covariance, cov)
    for text, (fn, axes) in CASES.items():
        d = ev[text]
        expected = fn(yields(res.values, np.ones(beta_var.size)))
        assert tuple(d.axes) == axes and d.shape == expected.shape, text
        np.testing.assert_allclose(d.values, expected, rtol=1e-12, err_msg=text)
        v, c = _reference_propagation(res, yields, beta_var, fn)
        _assert_cov_close(d.covariance, c, msg=text)
        np.testing.assert_allclose(d.errors.ravel(), np.sqrt(np.diag(c)), rtol=1e-6, err_msg=text)
    # the MC-statistical term matters here: without it the covariance would differ
    x_only = jacobian_fd(lambda x: yields(x, np.ones(beta_var.size)).ravel(), res.values)
    assert not np.allclose(ev["xsec"].covariance, x_only @ res.covariance @ x_only.T, rtol=1e-3)


def test_cross_covariance_is_the_off_diagonal_block_of_the_concatenated_quantity(helicity_model):
    """select(charge=0) and select(charge=1) together are xsec itself (charge is its first axis, C order)."""
    ll, res, templates, beta_var = helicity_model
    xsec = channel("xsec")
    plus, minus = xsec.select(charge=0), xsec.select(charge=1)
    ev = evaluate(ll, res, plus, minus)
    whole = evaluate(ll, res, xsec)[0].covariance
    n = 9
    np.testing.assert_allclose(ev.block(plus, minus), whole[:n, n:], rtol=1e-12)
    np.testing.assert_allclose(ev.block(1, 0), ev.block(0, 1).T, rtol=1e-12)
    np.testing.assert_allclose(ev.covariance, whole, rtol=1e-12)
    # and against numpy: cov(y[0], y[1]) from the reference propagation of all of xsec
    _, cov = _reference_propagation(res, _reference_yields(res, templates), beta_var, lambda y: y)
    d = np.sqrt(np.diag(cov))
    np.testing.assert_allclose((ev.block("select(xsec, charge=0)", "select(xsec,charge=1)") - cov[:n, n:])
                               / np.outer(d[:n], d[n:]), 0.0, atol=1e-6)
    assert np.abs(ev.block(0, 1)).max() > 1e-3 * np.abs(ev.block(0, 0)).max()  # lumi correlates them
    # evaluated alone, a quantity has the same values and covariance as in the joint evaluation
    alone = evaluate(ll, res, minus)[0]
    np.testing.assert_allclose(alone.covariance, ev[minus].covariance, rtol=1e-12)
    np.testing.assert_allclose(alone.values, ev[minus].values, rtol=1e-14)


def test_the_single_quantity_shortcuts_are_the_composed_expressions(helicity_model):
    ll, res, templates, beta_var = helicity_model
    yields = _reference_yields(res, templates)
    for old, fn in (
        (masked_channel(ll, res, "xsec"), lambda y: y),
        (summed(ll, res, "xsec", ["helicity", "charge"]), lambda y: y.sum(axis=1).T),
        (normalized(ll, res, "xsec"), lambda y: y / y.sum()),
        (asymmetry(ll, res, "xsec", "charge"), lambda y: (y[0] - y[1]) / y.sum(axis=0)),
    ):
        v, c = _reference_propagation(res, yields, beta_var, fn)
        np.testing.assert_allclose(old.values.ravel(), v, rtol=1e-12, err_msg=old.name)
        _assert_cov_close(old.covariance, c, msg=old.name)


@pytest.fixture(scope="module")
def two_counts(tmp_path_factory):
    """Two reco bins, each filled by one signal only (s_i events at mu = 1), n_i observed, no systematics or MC
    statistics: mu_i = n_i / s_i exactly, with independent variances n_i / s_i^2; the masked channel holds
    g_i events of signal i in charge bin i."""
    s, n, g = np.array([400.0, 250.0]), np.array([436.0, 241.0]), np.array([1000.0, 700.0])
    w = WorkspaceWriter()
    w.add_channel("reco", [hist.axis.Regular(2, 0.0, 2.0, name="x")])
    w.add_channel("xsec", [hist.axis.Integer(0, 2, name="charge")], masked=True)
    for i in range(2):
        w.add_process(f"sig{i}", "reco", s * (np.arange(2) == i), signal=True, variances=np.zeros(2))
        w.add_process(f"sig{i}", "xsec", g * (np.arange(2) == i), signal=True, variances=np.zeros(2))
    w.add_data("reco", n)
    path = str(tmp_path_factory.mktemp("counts") / "ws.hdf5")
    w.write(path)
    ll = Likelihood(read_workspace(path), bb_lite=False)
    res = fit(ll, tol=1e-16)
    assert res.ok
    y, var = g * n / s, (g / s) ** 2 * n  # the cross sections and their (independent) variances
    return ll, res, y, var


def test_linear_and_closed_form_propagation_of_two_independent_counts(two_counts):
    ll, res, y, var = two_counts
    np.testing.assert_allclose(res.values, y / [1000.0, 700.0], rtol=1e-9)
    xsec = channel("xsec")
    ev = evaluate(ll, res, xsec, xsec.project(), xsec.asymmetry("charge"),
                  ratio(xsec.select(charge=0), xsec.select(charge=1)), xsec.normalize())
    tot = y.sum()
    # linear: exact
    np.testing.assert_allclose(ev[0].values, y, rtol=1e-9)
    np.testing.assert_allclose(ev[0].covariance, np.diag(var), rtol=1e-8, atol=1e-12 * var.max())
    np.testing.assert_allclose(ev[1].values, tot, rtol=1e-9)
    np.testing.assert_allclose(ev[1].covariance, [[var.sum()]], rtol=1e-8)
    # A = (y0 - y1) / (y0 + y1): var A = 4 (y1^2 var0 + y0^2 var1) / (y0 + y1)^4
    var_a = 4 * (y[1] ** 2 * var[0] + y[0] ** 2 * var[1]) / tot**4
    np.testing.assert_allclose(ev[2].values, (y[0] - y[1]) / tot, rtol=1e-9)
    np.testing.assert_allclose(ev[2].covariance, [[var_a]], rtol=1e-8)
    # R = y0 / y1: var R = R^2 (var0 / y0^2 + var1 / y1^2)
    r = y[0] / y[1]
    np.testing.assert_allclose(ev[3].covariance, [[r**2 * (var[0] / y[0] ** 2 + var[1] / y[1] ** 2)]], rtol=1e-8)
    # f0 = y0 / (y0 + y1) = (1 + A) / 2: var f0 = var A / 4, cov(f0, f1) = -var f0, cov(A, f) = (var A / 2, -var A / 2)
    np.testing.assert_allclose(ev[4].covariance, var_a / 4 * np.array([[1, -1], [-1, 1]]), rtol=1e-8)
    np.testing.assert_allclose(ev.block(2, 4), [[var_a / 2, -var_a / 2]], rtol=1e-8)
    np.testing.assert_allclose(ev.block(1, 0), [var], rtol=1e-8)  # cov(total, y_i) = var_i


def test_expressions_print_and_parse_back():
    xsec = channel("xsec")
    built = [
        xsec.select(charge=0, absy=slice(0, 2)),
        xsec.select({"eta-bin": slice(1, None, 2)}),
        xsec.project("absy").normalize(),
        xsec.normalize("absy", "helicity"),
        xsec.helicity_fractions(),
        xsec.asymmetry("charge"),
        ratio(xsec.select(charge=0), xsec.select(charge=1)),
        xsec.angular_coefficients("hel"),
        channel("my-channel").project("q"),
        channel("normalize").project(),  # a channel may be named like a function
    ]
    texts = [
        "select(xsec, charge=0, absy=0:2)",
        "select(xsec, 'eta-bin'=1::2)",
        "normalize(project(xsec, absy))",
        "normalize(xsec, absy, helicity)",
        "helicity_fractions(xsec, helicity)",
        "asymmetry(xsec, charge)",
        "ratio(select(xsec, charge=0), select(xsec, charge=1))",
        "ratio(select(xsec, hel=1:), select(xsec, hel=0))",
        "project('my-channel', q)",
        "project(normalize)",
    ]
    for q, text in zip(built, texts, strict=True):
        assert str(q) == text
        assert parse_quantity(text) == q
        assert parse_quantity(str(q)) == q
    assert parse_quantity("  normalize (project( xsec ,absy ) ) ") == xsec.project("absy").normalize()
    assert parse_quantity("angular_coefficients(xsec, hel)") == xsec.angular_coefficients("hel")
    assert parse_quantity("helicity_fractions(xsec)") == xsec.normalize("helicity")
    assert parse_quantity("select(xsec, charge=1, absy=:2)") == xsec.select(charge=1, absy=slice(None, 2))
    assert channel("xsec").channels() == ("xsec",)
    assert ratio(channel("a"), channel("b").project()).channels() == ("a", "b")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("normalize(xsec", "expected ',' or ')' in normalize(QUANTITY[, AXIS, ...]), found the end of the "
                           "expression at column 15"),
        ("foo(xsec)", "unknown function 'foo'; the functions are select, project, normalize, asymmetry"),
        ("__import__('os').system('true')", "unknown function '__import__'"),
        ("asymmetry(xsec)", "asymmetry takes asymmetry(QUANTITY, AXIS), got 0 argument(s)"),
        ("ratio(xsec, xsec, xsec)", "ratio takes ratio(QUANTITY, QUANTITY), got 2"),
        ("select(xsec)", "select takes select(QUANTITY, AXIS=INDEX or AXIS=START:STOP, ...), got 0"),
        ("select(xsec, charge)", "expected '=' after the axis 'charge'"),
        ("select(xsec, charge=)", "expected a bin index or a slice START:STOP after charge="),
        ("select(xsec, charge=0, charge=1)", "select: axis ['charge'] given twice"),
        ("xsec)", "unexpected ')' after the quantity xsec at column 5"),
        ("asymmetry(xsec, charge) + 1", "unexpected character '+' at column 25"),
        ("", "expected a channel name or one of the functions"),
        ("project(xsec, 3)", "expected an axis name in project(QUANTITY[, AXIS, ...]), found '3'"),
    ],
)
def test_syntax_errors_say_where_and_what_is_allowed(text, words):
    with pytest.raises(ValueError) as err:
        parse_quantity(text)
    assert words in str(err.value)


def test_errors_name_the_quantity_the_channel_or_axis_and_what_is_allowed(helicity_model):
    ll, res, _, _ = helicity_model
    ws = ll.ws
    xsec = channel("xsec")
    axes = "charge (2 bins), absy (3 bins), helicity (3 bins)"
    cases = [
        (channel("reco"), "channel 'reco' is not masked: derived cross sections come from masked channels "
                          "(generator-level templates); the masked channels are ['xsec']"),
        (channel("nosuch").normalize(), "no channel 'nosuch' in"),
        (xsec.project("eta"), f"project(xsec, eta): xsec has no axis 'eta'; its axes are {axes}"),
        (xsec.asymmetry("absy"), "asymmetry(xsec, absy): axis 'absy' of xsec has 3 bins; an asymmetry needs an "
                                 f"axis of 2 bins (select two first); the axes are {axes}"),
        (xsec.select(charge=0).asymmetry("charge"), "select(xsec, charge=0) has no axis 'charge'; its axes are "
                                                    "absy (3 bins), helicity (3 bins)"),
        (xsec.helicity_fractions("hel"), "xsec has no axis 'hel'"),
        (xsec.select(charge=2), "bin 2 of axis 'charge' of xsec is out of range; it has 2 bins, 0 to 1"),
        (xsec.select(charge=-1), "bin -1 of axis 'charge'"),
        (xsec.select(absy=slice(0, 5)), "slice 0:5 of axis 'absy' of xsec: bounds must lie in 0 to 3"),
        (xsec.select(absy=slice(2, 2)), "slice 2:2 of axis 'absy' of xsec selects no bin"),
        (xsec.project("absy", "absy"), "an axis is named twice"),
        (ratio(xsec.project("absy"), xsec.project("helicity", "charge")),
         "ratio(project(xsec, absy), project(xsec, helicity, charge)): incompatible shapes: the numerator "
         "project(xsec, absy) has axes absy (3 bins), the denominator project(xsec, helicity, charge) has "
         "helicity (3 bins), charge (2 bins)"),
        (ratio(xsec.project(), xsec.project("charge")), "incompatible shapes"),
    ]
    for q, words in cases:
        with pytest.raises(ValueError) as err:
            q.structure(ws)
        assert words in str(err.value), (str(q), str(err.value))
    with pytest.raises(ValueError, match="xsec has no axis 'eta'"):
        evaluate(ll, res, xsec, "project(xsec, eta)")  # checked before any evaluation
    with pytest.raises(ValueError, match="give at least one quantity"):
        evaluate(ll, res)
    with pytest.raises(TypeError, match="slice bounds must be integers"):
        xsec.select(absy=slice(0.5, 2))
    with pytest.raises(TypeError, match="give a bin index"):
        xsec.select(charge=True)
    with pytest.raises(TypeError, match="the denominator must be a Quantity"):
        ratio(xsec, "xsec")
    with pytest.raises(TypeError, match="quantities are Quantity objects or their text"):
        evaluate(ll, res, 3)
    with pytest.raises(KeyError, match="was not evaluated"):
        evaluate(ll, res, xsec)["project(xsec)"]


def test_a_blinded_fit_gives_blinded_quantities(helicity_model):
    """The quantities of a blinded fit are those of its shown parameters (POIs mu / exp(v)), from the fitted
    result of the post_fit hook as from the shown one; the fitted cross sections never come out."""
    from wfit.fitter.blinding import Blinding

    ll, res, templates, beta_var = helicity_model
    blinding = Blinding.for_parameters(res.names, npoi=res.npoi, noi=[], integer_data=True)
    fitted = dataclasses.replace(res, blinding=blinding)
    shown = blinding.apply(res)
    q = "normalize(project(xsec, absy))"
    from_fitted, from_shown = evaluate(ll, fitted, "xsec", q), evaluate(ll, shown, "xsec", q)
    assert from_fitted.blinded == from_shown.blinded == tuple(f"sig{p}" for p in range(NSIG))
    np.testing.assert_allclose(from_fitted.values, from_shown.values, rtol=1e-14)
    np.testing.assert_allclose(from_fitted.covariance, from_shown.covariance, rtol=1e-12)
    yields = _reference_yields(res, templates)
    v, c = _reference_propagation(shown, yields, beta_var, lambda y: y.sum(axis=(0, 2)) / y.sum())
    np.testing.assert_allclose(from_fitted[q].values, v, rtol=1e-12)
    _assert_cov_close(from_fitted[q].covariance, c)
    unblinded = evaluate(ll, res, "xsec")
    assert unblinded.blinded == ()
    assert not np.allclose(from_fitted["xsec"].values, unblinded["xsec"].values, rtol=1e-2)
    assert "BLINDED" in from_fitted.summary() and "BLINDED" not in unblinded.summary()


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    m = build_random_model(seed=8)  # channels ch0, ch1 and the masked xsec (axis gen: one bin per signal)
    path = str(tmp_path_factory.mktemp("cli_derived") / "ws.hdf5")
    write_wfit(m, path)
    return m, path


def test_cli_derived_writes_values_and_joint_covariance(cli_model, tmp_path, capsys):
    m, path = cli_model
    out = tmp_path / "r.hdf5"
    exprs = ["asymmetry(xsec, gen)", "normalize(xsec)", "project(xsec)", "xsec"]
    argv = ["fit", path, "-o", str(out), "-q"]
    for e in exprs:
        argv += ["--derived", e]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "derived quantities" in printed and "asymmetry(xsec, gen)" in printed and "gen=1" in printed
    res = read_result(out)
    with h5py.File(out) as f:  # read as plain datasets, without the package's reader
        g = f["extra"]
        names = [s.decode() for s in g["derived_expressions"][...]]
        values, errors, cov = g["derived_values"][...], g["derived_errors"][...], g["derived_covariance"][...]
        which = g["derived_quantity"][...]
        bins = [s.decode() for s in g["derived_bins"][...]]
    assert names == exprs
    assert list(which) == [0, 1, 1, 2, 3, 3] and bins == ["", "gen=0", "gen=1", "", "gen=0", "gen=1"]
    # the reference: the model's masked yields (the fitter's own model function, not the derived code) with
    # the injected MC statistics, propagated in numpy with finite differences
    ll = Likelihood(read_workspace(path))
    sigs = [p for p in m.signals if ("xsec", p) in m.nominal]
    sumw = sum(m.nominal[("xsec", p)] for p in sigs)
    beta_var = sum(m.sumw2[("xsec", p)] for p in sigs) / sumw**2

    def yields(x, beta):
        return ll.masked_yields(x).sum(axis=1) * beta

    def fn(y):
        return np.concatenate([[(y[0] - y[1]) / y.sum()], y / y.sum(), [y.sum()], y])

    v, c = _reference_propagation(res, yields, beta_var, fn)
    np.testing.assert_allclose(values, v, rtol=1e-10)
    _assert_cov_close(cov, c, tol=1e-5)
    np.testing.assert_allclose(errors, np.sqrt(np.diag(c)), rtol=1e-5)
    assert np.abs(c[0, 1:]).max() > 0  # the cross-covariances are stored, not only the blocks


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("asymmetry(xsec, nosuch)", "--derived 'asymmetry(xsec, nosuch)': asymmetry(xsec, nosuch): xsec has no "
                                    "axis 'nosuch'; its axes are gen (2 bins)"),
        ("normalize(ch0)", "--derived 'normalize(ch0)': channel 'ch0' is not masked"),
        ("normalize(xsec", "--derived 'normalize(xsec': expected ',' or ')'"),
        ("select(xsec, gen=2)", "--derived 'select(xsec, gen=2)': select(xsec, gen=2): bin 2 of axis 'gen' of xsec "
                                "is out of range; it has 2 bins, 0 to 1"),
    ],
    ids=["axis", "unmasked", "syntax", "bin"],
)
def test_cli_bad_derived_expression_fails_before_the_fit(cli_model, tmp_path, capsys, expr, words):
    _, path = cli_model
    out = tmp_path / "r.hdf5"
    assert main(["fit", path, "-o", str(out), "--derived", "normalize(xsec)", "--derived", expr]) == 2
    err = capsys.readouterr().err
    assert f"wfit: error: {words}" in err, err
    assert "fitting on" not in err and "iteration" not in err and "Traceback" not in err  # before the fit
    assert not out.exists()


def test_derived_set_accessors():
    """Bins, blocks and labels of a hand-made set (no fit): the documented flattening order."""
    xsec = channel("xsec")
    from wfit.fitter.quantities import Structure

    sts = (Structure(("a", "b"), (2, 3)), Structure((), ()))
    cov = np.arange(49.0).reshape(7, 7)
    ds = DerivedSet((xsec, xsec.project()), sts, np.arange(7.0), cov)
    assert ds.bins(0) == slice(0, 6) and ds.bins("project(xsec)") == slice(6, 7)
    np.testing.assert_array_equal(ds[0].values, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(ds.block(0, 1), cov[:6, 6:])
    assert ds.labels()[:4] == ["a=0,b=0", "a=0,b=1", "a=0,b=2", "a=1,b=0"] and ds.labels()[6] == ""
    assert ds[-1].name == "project(xsec)" and ds[1].shape == () and len(ds) == 2
    with pytest.raises(IndexError, match="2 quantities were evaluated"):
        ds[2]
