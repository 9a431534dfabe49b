"""Several BFF processes on one Redis: one refresh per session, one view of sessions."""

from __future__ import annotations

import httpx
import pytest

from tests.scenarios import fifty_calls_on_a_due_token_share_one_refresh
from tests.support import Browser, bff_processes


@pytest.fixture
def two_bffs(idp, redis_url, upstream, tmp_path):
    with bff_processes(
        idp, redis_url, upstream, tmp_path, BFF_TOKEN_REFRESH_SKEW="60", BFF_MAX_SESSIONS_PER_USER="3"
    ) as procs:
        yield procs


async def test_two_processes_share_one_refresh_for_fifty_concurrent_calls(idp, two_bffs):
    await fifty_calls_on_a_due_token_share_one_refresh(idp, two_bffs)


async def test_sessions_are_listed_and_ended_across_processes(two_bffs):
    a, b = two_bffs
    async with httpx.AsyncClient(timeout=60) as ca, httpx.AsyncClient(timeout=60) as cb:
        on_a, on_b = Browser(ca, a.url), Browser(cb, a.url)
        await on_a.login("alice")
        await on_b.login("alice")
        on_b.public_url = b.url  # this browser now talks to the other process
        listed = (await on_b.get("/bff/sessions", csrf=True)).json()["sessions"]
        assert len(listed) == 2
        other = next(s for s in listed if not s["current"])
        assert (await on_b.request("DELETE", f"/bff/sessions/{other['id']}", csrf=True)).status_code == 204
        assert (await on_a.get("/bff/user", csrf=True)).status_code == 401
        assert (await on_b.get("/bff/user", csrf=True)).status_code == 200
        # The limit (3) holds across processes too.
        extra = [Browser(ca, a.url if i % 2 else b.url) for i in range(3)]
        for br in extra:
            br.public_url = a.url
            await br.login("alice")
        assert (await on_b.get("/bff/user", csrf=True)).status_code == 401
        assert len((await extra[0].get("/bff/sessions", csrf=True)).json()["sessions"]) == 3
        for br in [on_a, on_b, *extra]:
            await br.aclose()
