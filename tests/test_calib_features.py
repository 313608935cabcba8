"""Model inputs from jets and constituents (wfit.calib.features) against a per-jet reference."""

from __future__ import annotations

import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference_features import real_features, transform_chain
from wfit.calib import FeatureError, FeatureSpec, build_inputs, load_transform, pad_constituents, target
from wfit.calib.features import chunks

DATA = Path(__file__).parent / "data" / "jetcalib"

REAL_FEATURES = real_features(ne_max_count=16)


def _reference_inputs(jets: list[dict], raw: dict, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """A per-jet Python implementation: explicit loops, explicit chains, explicit padding."""

    def chain(name: str, x: float) -> float:
        return transform_chain(x, raw["numerical"][name])

    out = {"jet_numerical": np.array([[chain(n, j[n]) for n in spec.jet_numerical] for j in jets])}
    for c in spec.constituents:
        m = max(1, min(max(len(j[c.numerical[0]]) for j in jets), c.max_count))
        num = np.zeros((len(jets), m, len(c.numerical)))
        mask = np.zeros((len(jets), m))
        cats = {n: np.zeros((len(jets), m), dtype=np.int64) for n in c.categorical}
        for i, j in enumerate(jets):
            for k in range(min(len(j[c.numerical[0]]), m)):
                mask[i, k] = 1.0
                for f, name in enumerate(c.numerical):
                    num[i, k, f] = chain(name, j[name][k])
                for name in c.categorical:
                    values = raw["categorical"][name]
                    v = j[name][k]
                    cats[name][i, k] = values.index(v) if v in values else len(values)
        out[f"{c.name}_numerical"], out[f"{c.name}_mask"] = num, mask
        out.update(cats)
    return out


def test_build_inputs_on_real_shards_matches_per_jet_reference() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    raw = yaml.safe_load((DATA / "transform.yaml").read_text())
    spec = FeatureSpec.from_config(REAL_FEATURES, tr)
    arrays = uproot.concatenate({str(DATA / f"shards/{i}.root"): "Jets" for i in range(1, 6)}, library="ak")
    columns = {f: (ak.to_numpy(arrays[f]) if arrays[f].ndim == 1 else arrays[f]) for f in arrays.fields}
    got = build_inputs(columns, spec)
    ref = _reference_inputs(ak.to_list(arrays), raw, spec)
    assert list(got) == spec.input_names
    assert max(ak.num(arrays["ne_pt"])) > 16  # the cap truncates some jets
    for name in spec.input_names:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-6, atol=2e-6, err_msg=name)
    assert got["ch_numerical"].dtype == np.float32 and got["ch_id"].dtype == np.int32
    pt_gen, pt = (ak.to_numpy(arrays[k]).astype(np.float64) for k in ("pt_gen", "pt"))
    np.testing.assert_allclose(target(columns), np.log(pt_gen / pt), rtol=1e-6, atol=1e-8)


def test_derived_features_and_zero_padding() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    numerical = dict(tr.numerical)
    for name in ("ch_rel_pt", "ch_deta", "ch_dphi"):
        numerical[name] = []  # identity: compare raw values
    tr = type(tr)(categorical=tr.categorical, numerical=numerical)
    spec = FeatureSpec.from_config(
        {
            "jet": {"numerical": ["pt"]},
            "constituents": {"ch": {"numerical": ["ch_rel_pt", "ch_deta", "ch_dphi"], "max_count": 4}},
        },
        tr,
    )
    arrays = {
        "pt": np.array([100.0, 50.0, 20.0]),
        "eta": np.array([-1.0, 0.0, 2.0]),
        "phi": np.array([3.0, 0.0, -3.0]),
        "ch_pt": ak.Array([[60.0, 30.0], [], [5.0, 4.0, 3.0, 2.0, 1.0]]),
        "ch_eta": ak.Array([[-1.1, -0.8], [], [2.1, 1.9, 2.0, 2.0, 2.0]]),
        "ch_phi": ak.Array([[-3.0, 2.9], [], [3.0, -3.1, -3.0, -3.0, -3.0]]),
    }
    x = build_inputs(arrays, spec)
    assert x["ch_numerical"].shape == (3, 4, 3)  # largest count 5 capped at 4
    np.testing.assert_allclose(x["ch_mask"], [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    rel, deta, dphi = (x["ch_numerical"][..., i] for i in range(3))
    np.testing.assert_allclose(rel[0, :2], [0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(deta[0, :2], [0.1, -0.2], atol=1e-6)  # sign-flipped for eta < 0
    np.testing.assert_allclose(deta[2, :2], [0.1, -0.1], atol=1e-6)
    np.testing.assert_allclose(dphi[0, :2], [2 * math.pi - 6.0, -0.1], atol=1e-6)
    np.testing.assert_allclose(dphi[2, :2], [6.0 - 2 * math.pi, -0.1], atol=1e-6)
    assert np.all(x["ch_numerical"][x["ch_mask"] == 0] == 0.0)  # padding is zero, never NaN


def test_all_jets_without_constituents() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    spec = FeatureSpec.from_config(REAL_FEATURES, tr)
    arrays = uproot.concatenate({str(DATA / "shards/1.root"): "Jets"}, library="ak")[:3]
    columns = {f: (ak.to_numpy(arrays[f]) if arrays[f].ndim == 1 else arrays[f]) for f in arrays.fields}
    for f in ("sv_mass", "sv_pt", "sv_distance", "sv_significance", "sv_num_tracks"):
        columns[f] = ak.values_astype(ak.Array([[], [], []]), np.float32)
    x = build_inputs(columns, spec)
    assert x["sv_numerical"].shape == (3, 1, 5)
    assert not x["sv_mask"].any() and not x["sv_numerical"].any()
    assert x["ch_mask"].sum() == ak.sum(ak.num(arrays["ch_pt"]))


def test_option_typed_constituents_are_accepted() -> None:
    """coffea cross-references give option-typed constituents: missing entries are dropped."""
    tr = load_transform(str(DATA / "transform.yaml"))
    spec = FeatureSpec.from_config(
        {"jet": {"numerical": ["pt"]}, "constituents": {"ne": {"numerical": ["ne_pt"], "max_count": 8}}}, tr
    )
    plain = build_inputs({"pt": np.array([10.0, 20.0]), "ne_pt": ak.Array([[1.0, 2.0], [3.0]])}, spec)
    optional = build_inputs(
        {"pt": np.array([10.0, 20.0]), "ne_pt": ak.Array([[1.0, None, 2.0], [3.0]])}, spec
    )
    for name in spec.input_names:
        np.testing.assert_array_equal(plain[name], optional[name])


def test_errors_name_the_branch() -> None:
    tr = load_transform(str(DATA / "transform.yaml"))
    spec = FeatureSpec.from_config(
        {
            "jet": {"numerical": ["pt"]},
            "constituents": {"sv": {"numerical": ["sv_pt", "sv_num_tracks"], "max_count": 8}},
        },
        tr,
    )
    with pytest.raises(FeatureError, match=r"constituent feature 'sv_num_tracks' is missing"):
        build_inputs({"pt": np.array([1.0]), "sv_pt": ak.Array([[1.0]])}, spec)
    with pytest.raises(FeatureError, match=r"'sv_pt' and 'sv_num_tracks' have different counts"):
        build_inputs(
            {"pt": np.array([1.0]), "sv_pt": ak.Array([[1.0]]), "sv_num_tracks": ak.Array([[2, 3]])}, spec
        )
    with pytest.raises(FeatureError, match=r"feature 'sv_num_tracks': 1 value\(s\) are NaN or infinite"):
        build_inputs(
            {"pt": np.array([1.0]), "sv_pt": ak.Array([[1.0]]), "sv_num_tracks": ak.Array([[0]])}, spec
        )


def test_chunks_cover_all_jets() -> None:
    arrays = {"pt": np.arange(25.0), "ch_pt": ak.Array([[float(i)] * (i % 3) for i in range(25)])}
    parts = list(chunks(arrays, 10))
    assert [len(p["pt"]) for p in parts] == [10, 10, 5]
    assert ak.all(ak.concatenate([p["ch_pt"] for p in parts]) == arrays["ch_pt"])


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 9), min_size=1, max_size=12),
    cap=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_pad_constituents_matches_loop(counts: list[int], cap: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts_a = np.array(counts)
    flat = [rng.normal(size=counts_a.sum()), rng.normal(size=counts_a.sum())]
    out, mask = pad_constituents(flat, counts_a, cap)
    m = max(1, min(max(counts), cap))
    ref = np.zeros((len(counts), m, 2))
    ref_mask = np.zeros((len(counts), m))
    start = 0
    for i, n in enumerate(counts):
        for k in range(min(n, m)):
            ref[i, k] = [flat[0][start + k], flat[1][start + k]]
            ref_mask[i, k] = 1.0
        start += n
    np.testing.assert_allclose(out, ref.astype(np.float32))
    np.testing.assert_array_equal(mask, ref_mask)
