"""The redaction filter keeps tokens, codes, cookies and secrets out of log lines."""

from __future__ import annotations

import io
import json
import logging

from bff.log import access, flush, redact, setup_logging

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_patterns_are_redacted():
    samples = [
        f"token {JWT}",
        "GET /bff/callback?code=abc123&state=xyz",
        "refresh_token=r3fr3sh&x=1",
        '{"access_token": "opaque-at"}',
        "Authorization: Bearer opaque-at",
        "Authorization: Basic Ym9iOnNlY3JldA==",
        "Cookie: bff_session=sess.sig; other=1",
        "__Host-bff_session=abc.def",
        "__Host-Http-bff_session=abc.def; __Host-Http-bff_bound=abc.def",
        "Cookie: __Host-Http-bff_logout=abc.def; __Host-bff_bound=abc.def; bff_login=abc.def",
        "client_secret=hunter2",
        "id_token_hint=" + JWT,
    ]
    for sample in samples:
        out = redact(sample)
        for secret in (
            "abc123",
            "xyz",
            "r3fr3sh",
            "opaque-at",
            "Ym9iOnNlY3JldA==",
            "sess.sig",
            "abc.def",
            "hunter2",
            JWT,
        ):
            assert secret not in out, (sample, out)


def test_json_log_lines_are_redacted_including_extras_and_exceptions():
    stream = io.StringIO()
    setup_logging("json", "INFO", stream)
    log = logging.getLogger("bff.test")
    log.info("callback %s", "code=abc123", extra={"url": f"http://x/?id_token_hint={JWT}"})
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        log.exception("failed")
    flush()
    text = stream.getvalue()
    assert "abc123" not in text and JWT not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["logger"] == "bff.test" and "[redacted]" in lines[0]["msg"]
    assert "exc" in lines[1]
    setup_logging("text", "INFO", io.StringIO())


def test_access_lines_are_json_whatever_the_request_carries():
    """The access line is built by hand (hot path): it must stay one valid JSON object per
    line for any method, path, request id or client address, and keep tokens out."""
    stream = io.StringIO()
    setup_logging("json", "INFO", stream)
    odd = ['a"b', "back\\slash", "new\nline", "tab\t", "ünïcödé", "\x00\x1f", "</script>", ""]
    cases = [("GET", "/api/items/1", "req-1.a_b", "10.0.0.1"), ("GET", "/x", "r", "2001:db8::1")]
    cases += [(o, f"/api/{o}", o, o) for o in odd]
    cases.append(("GET", f"/bff/callback?code=abc123&x={JWT}", "r2", "::1"))
    for method, path, rid, client in cases:
        access(method, path, 200, 1.25, rid, client)
    flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(cases)
    for line, (method, path, rid, client) in zip(lines, cases, strict=True):
        record = json.loads(line)
        assert (record["method"], record["request_id"], record["client"]) == (method, rid, client)
        assert record["path"] == redact(path) and record["status"] == 200 and record["ms"] == 1.25
        assert record["ts"].endswith("Z") and len(record["ts"]) == 24
    assert "abc123" not in stream.getvalue() and JWT not in stream.getvalue()
    setup_logging("text", "INFO", io.StringIO())
