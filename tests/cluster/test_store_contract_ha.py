"""The store contract suite (tests/contract) against Redis Sentinel and Redis Cluster.

Every ``test_*`` of the suite is collected here again, with ``store_url`` overridden to
give a flushed Sentinel or Cluster set-up instead of the memory store and the single
server; a test added to the suite runs here too.
"""

from __future__ import annotations

import pytest

from tests.contract import test_store_contract as suite
from tests.contract.test_store_contract import store_and_clock  # noqa: F401 - the suite's fixture

pytestmark = pytest.mark.cluster

globals().update({name: obj for name, obj in vars(suite).items() if name.startswith("test_")})


@pytest.fixture(params=["sentinel", "cluster"])
def store_url(request) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def test_the_whole_suite_is_collected_here():
    mine = {name for name in globals() if name.startswith("test_")}
    theirs = {name for name in vars(suite) if name.startswith("test_")}
    assert theirs <= mine and len(theirs) >= 11
