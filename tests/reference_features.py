"""Shared pieces of the jet-calibration tests' second implementation: the real shards' feature
configuration and the transform.yaml chain applied to one value with plain Python math."""

from __future__ import annotations

import math
from typing import Any


def real_features(ne_max_count: int = 64) -> dict[str, Any]:
    """ml-jec's test configuration: every feature of transform.yaml, as the shards store them."""
    return {
        "jet": {"numerical": ["pt", "eta", "phi", "mass", "area", "num_pv", "rho"]},
        "constituents": {
            "ch": {
                "numerical": [
                    "ch_pt",
                    "ch_eta",
                    "ch_phi",
                    "ch_dxy",
                    "ch_dxy_significance",
                    "ch_dz",
                    "ch_num_hits",
                    "ch_num_pixel_hits",
                    "ch_lost_hits",
                    "ch_norm_chi2",
                ],
                "categorical": ["ch_id", "ch_pv_ass"],
                "max_count": 64,
            },
            "ne": {
                "numerical": ["ne_pt", "ne_eta", "ne_phi", "ne_hcal_frac"],
                "categorical": ["ne_id"],
                "max_count": ne_max_count,
            },
            "sv": {
                "numerical": ["sv_mass", "sv_pt", "sv_distance", "sv_significance", "sv_num_tracks"],
                "max_count": 8,
            },
        },
    }


def transform_chain(x: float, steps: list[dict[str, Any]]) -> float:
    """One value through a transform.yaml chain (abs, log, arcsinh(x / scale), (x - loc) / scale)."""
    for step in steps:
        p = step.get("params", {})
        if step["type"] == "abs":
            x = abs(x)
        elif step["type"] == "log":
            x = math.log(x)
        elif step["type"] == "arcsinh":
            x = math.asinh(x / p["scale"])
        else:
            x = (x - p["loc"]) / p["scale"]
    return x
