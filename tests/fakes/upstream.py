"""A small upstream API for the tests and benchmarks, as plain ASGI under uvicorn.

    /echo...            JSON: what arrived (method, raw path, query, headers, body size)
    /stream?size=&chunk=  a download of ``size`` bytes produced chunk by chunk
    /upload             counts and hashes a streamed request body
    /sse?n=&gap=        server-sent events, ``gap`` seconds apart
    /slow?delay=        answers after ``delay`` seconds
    /status/<code>      answers with that status (204 and 304 without a body)
    /bench              a tiny fixed JSON answer (the benchmark baseline)
    /set-cookie         tries to set a cookie on the BFF's origin
    /refuse-token       POST a bearer token: from then on .../strict/... refuses it with
                        401 ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750)
    /strict/...         like /echo, for tokens not refused; counts its calls (/strict-calls)
    (any path)          a request with ``Authorization: DPoP`` has its proof checked (RFC 9449:
                        signature, htm, htu, iat, jti replay, ath, cnf.jkt): refused with 401
                        ``WWW-Authenticate: DPoP error="invalid_dpop_proof"``, else its result
                        is in the echo's "dpop"; under .../dpop-nonce/... the proof must carry
                        this upstream's nonce (401 use_dpop_nonce + DPoP-Nonce otherwise), and
                        under .../dpop-rotate/... every answer brings a new nonce
    /dpop-seen          the jti of every proof this upstream accepted
    WebSockets (ws://):
    .../ws/echo         first sends a JSON "hello" (the handshake's headers, subprotocol, DPoP
                        check), then echoes text and binary; a text "close:<code>:<reason>"
                        makes it close so; it prefers the subprotocol chat.v2
    .../ws/flood?n=&size=   sends n binary messages of size bytes as fast as it may, then 1000
    .../ws/sink         reads one message every 0.2 s (a slow upstream)
    /ws-stats           JSON: handshakes seen, the close codes browsers' sides sent

Run: ``python -m tests.fakes.upstream --port 9500``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from demo.dpop_verify import ProofError, ProofVerifier, thumbprint_of

Scope = dict[str, Any]


async def _read_body(receive: Any) -> tuple[int, str]:
    size = 0
    digest = hashlib.sha256()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        digest.update(chunk)
        if not message.get("more_body"):
            break
    return size, digest.hexdigest()


async def _send(
    send: Any,
    status: int,
    body: bytes,
    ctype: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


BENCH_BODY = json.dumps({"ok": True, "items": list(range(10))}).encode()
REFUSED: set[str] = set()
STRICT_CALLS = [0]
DPOP = ProofVerifier()
DPOP_SEEN: list[str] = []
WS_STATS: dict[str, Any] = {"handshakes": 0, "closes": []}


async def websocket(scope: Scope, receive: Any, send: Any) -> None:
    """The WebSocket endpoints (see the module docstring)."""
    path: str = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if (await receive())["type"] != "websocket.connect":
        return
    WS_STATS["handshakes"] += 1
    status, _, dpop = _check_dpop({**scope, "method": "GET"}, path, "ws")
    if status:
        await send({"type": "websocket.close", "code": 1008})
        return
    offered = scope.get("subprotocols") or []
    chosen = "chat.v2" if "chat.v2" in offered else (offered[0] if offered else None)
    await send({"type": "websocket.accept", "subprotocol": chosen})
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name == "flood":
        block = b"x" * int(query.get("size", "65536"))
        for _ in range(int(query.get("n", "100"))):
            await send({"type": "websocket.send", "bytes": block})
        await send({"type": "websocket.close", "code": 1000})
        return
    if name == "echo":
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1"), []).append(v.decode("latin-1"))
        hello = {"hello": True, "headers": headers, "subprotocol": chosen, "dpop": dpop, "path": path}
        await send({"type": "websocket.send", "text": json.dumps(hello)})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            WS_STATS["closes"].append(message.get("code"))
            return
        text = message.get("text")
        if name == "sink":
            await asyncio.sleep(0.2)
            continue
        if text is not None and text.startswith("close:"):
            _, code, reason = text.split(":", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            return
        await send(
            {"type": "websocket.send", "text": text}
            if text is not None
            else {"type": "websocket.send", "bytes": message.get("bytes")}
        )


def _check_dpop(
    scope: Scope, path: str, scheme: str = "http"
) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any] | None]:
    """(401 or 0, headers to add, the accepted proof's facts) for a DPoP-scheme request."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    auth_scheme, _, token = headers.get("authorization", "").partition(" ")
    if auth_scheme != "DPoP":
        return 0, [], None
    DPOP.require_nonce = "/dpop-nonce/" in path or "/dpop-rotate/" in path
    url = f"{scheme}://{headers.get('host', '')}{path}"
    nonce = [(b"dpop-nonce", DPOP.nonce.encode())] if DPOP.require_nonce else []
    try:
        claims = DPOP.verify(
            headers.get("dpop"), scope["method"], url, access_token=token, jkt=thumbprint_of(token)
        )
    except ProofError as exc:
        challenge = f'DPoP error="{exc.error}", error_description="{exc.message}"'.encode()
        return 401, [(b"www-authenticate", challenge), *nonce], None
    DPOP_SEEN.append(claims["jti"])
    if "/dpop-rotate/" in path:
        nonce = [(b"dpop-nonce", DPOP.rotate_nonce().encode())]
    return 0, nonce, {"jkt": claims["_jkt"], "jti": claims["jti"], "nonce": claims.get("nonce")}


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await websocket(scope, receive, send)
        return
    path: str = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    if path == "/ws-stats":
        await _send(send, 200, json.dumps(WS_STATS).encode())
        return
    # Match on the last segments so routes work with or without a stripped prefix.
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name == "bench":
        await _send(send, 200, BENCH_BODY)
        return
    if name == "stream":
        size, chunk = int(query.get("size", "1048576")), int(query.get("chunk", "65536"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(size).encode()),
                ],
            }
        )
        block = b"x" * chunk
        sent = 0
        while sent < size:
            part = block[: min(chunk, size - sent)]
            sent += len(part)
            await send({"type": "http.response.body", "body": part, "more_body": sent < size})
        return
    if name == "upload":
        size, digest = await _read_body(receive)
        await _send(send, 200, json.dumps({"size": size, "sha256": digest}).encode())
        return
    if name == "sse":
        n, gap = int(query.get("n", "3")), float(query.get("gap", "0.5"))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        for i in range(n):
            await send(
                {"type": "http.response.body", "body": f"data: event {i}\n\n".encode(), "more_body": True}
            )
            await asyncio.sleep(gap)
        await send({"type": "http.response.body", "body": b""})
        return
    if name == "slow":
        await asyncio.sleep(float(query.get("delay", "5")))
        await _send(send, 200, b'{"slow":true}')
        return
    if path.rsplit("/", 2)[-2:-1] == ["status"]:
        if int(name) in (204, 304):  # no body, and (304) the headers of the stored answer
            extra = [(b"etag", b'"v1"')] if int(name) == 304 else []
            await send({"type": "http.response.start", "status": int(name), "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send(send, int(name), json.dumps({"status": int(name)}).encode())
        return
    if name == "refuse-token":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        REFUSED.add(body.decode())
        await _send(send, 200, b"{}")
        return
    if name == "strict-calls":
        await _send(send, 200, json.dumps({"calls": STRICT_CALLS[0]}).encode())
        return
    if "/strict/" in path:
        STRICT_CALLS[0] += 1
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if auth.partition(" ")[2] in REFUSED:
            await _read_body(receive)
            challenge = b'Bearer error="invalid_token", error_description="revoked"'
            await _send(send, 401, b'{"error":"invalid_token"}', extra=[(b"www-authenticate", challenge)])
            return
    if name == "set-cookie":
        await _send(send, 200, b"{}", extra=[(b"set-cookie", b"bff_session=evil; Path=/")])
        return
    if name == "dpop-seen":
        await _send(send, 200, json.dumps({"jti": DPOP_SEEN}).encode())
        return
    status, dpop_headers, dpop = _check_dpop(scope, path)
    if status:
        await _read_body(receive)
        await _send(send, status, b'{"error":"dpop"}', extra=dpop_headers)
        return
    size, digest = await _read_body(receive)
    headers: dict[str, list[str]] = {}
    for k, v in scope["headers"]:
        headers.setdefault(k.decode("latin-1"), []).append(v.decode("latin-1"))
    echo = {
        "method": scope["method"],
        "path": path,
        "raw_path": (scope.get("raw_path") or path.encode()).decode("latin-1"),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": headers,
        "body_size": size,
        "body_sha256": digest,
        "dpop": dpop,
    }
    await _send(send, 200, json.dumps(echo).encode(), extra=dpop_headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "tests.fakes.upstream:app",
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        workers=args.workers,
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    main()
