"""Write the small bundled example workspace (seeded): two signal strengths, three backgrounds.

python examples/make_example_workspace.py examples/example_workspace.hdf5
"""

from __future__ import annotations

import sys

import hist
import numpy as np

from wfit.workspace import WorkspaceWriter


def main(path: str, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    eta = hist.axis.Regular(12, -2.4, 2.4, name="eta", label=r"$\eta^\mu$")
    pt = hist.axis.Regular(10, 26, 56, name="pt", label=r"$p_T^\mu$ [GeV]")
    x, y = np.meshgrid(eta.centers, pt.centers, indexing="ij")
    shapes = {
        "Wplus": 900 * np.exp(-0.5 * ((y - 40) / 6) ** 2) * (1 + 0.1 * x),
        "Wminus": 700 * np.exp(-0.5 * ((y - 40) / 6) ** 2) * (1 - 0.1 * x),
        "Zmumu": 150 * np.exp(-(y - 26) / 15) + 0 * x,
        "top": 40 * np.ones_like(x),
        "fakes": 300 * np.exp(-(y - 26) / 6) + 0 * x,
    }
    w = WorkspaceWriter()
    w.add_channel("mu", [eta, pt])
    for name, vals in shapes.items():
        w.add_process(name, "mu", vals, signal=name.startswith("W"), variances=vals * 0.05)
        w.add_shape_systematic(
            "muonScale",
            name,
            "mu",
            vals * np.exp(0.01 * (y - 40) / 10),
            vals * np.exp(-0.012 * (y - 40) / 10),
        )
    w.add_norm_systematic("lumi", list(shapes), "mu", 1.017, groups=["luminosity"])
    w.add_norm_systematic("fakeNorm", "fakes", "mu", 1.3)
    w.add_norm_systematic("ZNorm", "Zmumu", "mu", (1.05, 0.97))
    total = sum(shapes.values())
    w.add_data("mu", rng.poisson(total * np.exp(0.02 * x)).astype(float))
    w.write(path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/example_workspace.hdf5")
