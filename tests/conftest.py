"""Shared fixtures: seeded generators, model workspaces built with wfit's and rabbit's writers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.builders import build_random_model

DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


@pytest.fixture(scope="session")
def data_dir() -> str:
    return DATA


@pytest.fixture(scope="session")
def small_model():
    """A seeded random model: 3 channels (one masked), 5 processes (2 signals), mixed nuisances."""
    return build_random_model(seed=7)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """The session's one Dask cluster: 2 worker processes, one thread each, bound to 127.0.0.1."""
    from wfit.processors import local_cluster

    with local_cluster(2) as client:
        yield client


@pytest.fixture(scope="session")
def branches_read() -> Any:
    """``read(processor, path, dataset)``: process one file as a single NanoEvents chunk and return the
    branches that NanoEvents read (its access log), the reference for a processor's declared branches."""
    import warnings

    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    def read(processor: Any, path: str, dataset: str) -> set[str]:
        log: list = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NanoAODSchema's notes on cross-references a file lacks
            events = NanoEventsFactory.from_root(
                {path: "Events"}, schemaclass=NanoAODSchema, mode="virtual", access_log=log,
                metadata={"dataset": dataset, "filename": path},
            ).events()
            processor.process(events)
        return {entry.branch for entry in log}

    return read
