"""A scripted DBSC browser (an ES256 software key, the proofs Chrome sends), shared by the
DBSC tests and the benchmark."""

from __future__ import annotations

from typing import Any

import http_sf
import httpx
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.support import Browser


class DbscClient:
    """What a DBSC browser does, with a software key it holds."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.key = ECKey.generate_key("P-256")
        self.identifier: str | None = None

    def proof(
        self, challenge: str, *, jwk: bool, key: ECKey | None = None, alg: str = "ES256", **claims: Any
    ) -> str:
        header: dict[str, Any] = {"typ": "dbsc+jwt", "alg": alg}
        if jwk:
            header["jwk"] = (key or self.key).as_dict(private=False)
        return jwt.encode(header, {"jti": challenge, **claims}, key or self.key, algorithms=[alg])

    @staticmethod
    def offer(response: httpx.Response) -> tuple[str, str]:
        """(path, challenge) of a Secure-Session-Registration header."""
        ((algs, params),) = http_sf.parse(
            response.headers["secure-session-registration"].encode(), tltype="list"
        )
        assert [str(a[0]) for a in algs] == ["ES256", "RS256"]
        return str(params["path"]), str(params["challenge"])

    async def register(self, response: httpx.Response, proof: str | None = None) -> httpx.Response:
        path, challenge = self.offer(response)
        token = proof or self.proof(challenge, jwk=True)
        r = await self.browser.request("POST", path, headers={"secure-session-response": token})
        if r.status_code == 200:
            self.identifier = r.json()["session_identifier"]
        return r

    async def refresh(self, proof_key: ECKey | None = None, *, with_jwk: bool = False) -> httpx.Response:
        headers = {"sec-secure-session-id": self.identifier or ""}
        first = await self.browser.request("POST", "/bff/dbsc/refresh", headers=headers)
        if first.status_code != 403:
            return first
        ((challenge, params),) = http_sf.parse(
            first.headers["secure-session-challenge"].encode(), tltype="list"
        )
        assert params["id"] == self.identifier
        proof = self.proof(str(challenge), jwk=with_jwk, key=proof_key)
        return await self.browser.request(
            "POST", "/bff/dbsc/refresh", headers={**headers, "secure-session-response": proof}
        )
