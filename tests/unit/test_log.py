"""The redaction filter keeps tokens, codes, cookies and secrets out of log lines."""

from __future__ import annotations

import io
import json
import logging

from bff.log import flush, redact, setup_logging

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
