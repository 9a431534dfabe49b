"""Fixtures for the tests against real Redis Sentinel and Redis Cluster set-ups.

One Sentinel set-up and one Cluster are started per test session, on first use, and
stopped at the end; every test gets them flushed. Tests that break a set-up (failover, a
node stopped) or need other settings (passwords) start their own with ``sentinel_factory``
and ``cluster_factory``. Every module here sets ``pytestmark = pytest.mark.cluster``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.cluster.redis_ha import ClusterSetup, SentinelSetup

S = TypeVar("S", SentinelSetup, ClusterSetup)


def _running(setup: Any) -> Iterator[Any]:
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def sentinel_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    yield from _running(SentinelSetup(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture(scope="session")
def cluster_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    yield from _running(ClusterSetup(tmp_path_factory.mktemp("cluster")))


@pytest.fixture
def sentinel_url(sentinel_setup: SentinelSetup) -> str:
    sentinel_setup.flush()
    return sentinel_setup.url


@pytest.fixture
def cluster_url(cluster_setup: ClusterSetup) -> str:
    cluster_setup.flush()
    return cluster_setup.url


@pytest.fixture(params=["sentinel", "cluster"])
def ha_url(request: pytest.FixtureRequest) -> str:
    """A flushed Sentinel or Cluster set-up's BFF_REDIS_URL (the test runs once with each)."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def _own_setups(cls: Callable[..., S], base: Path, defaults: dict[str, Any]) -> Iterator[Callable[..., S]]:
    """A factory of fresh set-ups (started on call, each in its own directory), stopped after the test."""
    made: list[S] = []

    def factory(**options: Any) -> S:
        setup = cls(base / f"{cls.__name__.lower()}-{len(made)}", **{**defaults, **options})
        made.append(setup)
        setup.start()
        return setup

    yield factory
    for setup in made:
        setup.stop()


@pytest.fixture
def sentinel_factory(tmp_path: Path) -> Iterator[Callable[..., SentinelSetup]]:
    """A fresh Sentinel set-up of the test's own (``password``, ``sentinel_password``), for
    tests that fail it over or need other settings. The master is declared down after 1 s
    without an answer: a quick failover."""
    yield from _own_setups(SentinelSetup, tmp_path, {"down_after_ms": 1000})


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., ClusterSetup]]:
    """A fresh Cluster of the test's own (``node_timeout_ms``, ``persist``), for tests that stop nodes."""
    yield from _own_setups(ClusterSetup, tmp_path, {})
