"""Logging: JSON lines (or text), a redaction filter on every handler, the audit logger.

The BFF never logs a token on purpose; the filter is the second line of defence for
what libraries log (URLs with ``code=``, headers, exception texts). ``bff.audit``
carries security events (login, logout, session ended and why, refresh failures).
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections import deque
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*")  # JWTs and JWEs
_PARAM = re.compile(  # OAuth parameters in URLs, forms and JSON
    r"(?i)\b(code|state|nonce|code_verifier|refresh_token|access_token|id_token|id_token_hint|"
    r"client_secret|client_assertion|logout_token|token|request_uri|sid)"
    r"(=|\"\s*:\s*\"|'\s*:\s*')([^&\s\"',;]+)"
)
_AUTH = re.compile(r"(?i)\b(bearer|basic|dpop)\s+[A-Za-z0-9._~+/=-]+")
_COOKIE = re.compile(r"(?i)((?:__Host-(?:Http-)?)?bff_(?:session|login|logout|bound))=[^;\s,\"']+")


def redact(text: str) -> str:
    """Each pattern runs only when a cheap substring test says it could match (hot path)."""
    if "eyJ" in text:
        text = _JWT.sub("[redacted-jwt]", text)
    if "=" in text or ":" in text:
        text = _PARAM.sub(r"\1\2[redacted]", text)
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered or "dpop" in lowered:
        text = _AUTH.sub(r"\1 [redacted]", text)
    if "bff_" in lowered:
        text = _COOKIE.sub(r"\1=[redacted]", text)
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RedactionFilter(logging.Filter):
    """Rewrites each record so that no token, code or cookie value leaves the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        record.msg = redact(str(record.msg))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = _clean(value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class _HandOver(logging.handlers.QueueHandler):
    """Hands each record to the writer thread untouched: formatting, redaction and the
    write to the stream happen there, off the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _AccessLines:
    """Access lines collect in a buffer that a thread writes out every 50 ms: waking a
    writer for each line would cost the event loop a GIL hand-over per request."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.lines: deque[str] = deque()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bff-access-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.05):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            if not self.lines:
                return
            batch = []
            while self.lines:
                batch.append(self.lines.popleft())
            self.stream.write("".join(batch))
            self.stream.flush()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.flush()


_listener: logging.handlers.QueueListener | None = None
_access: _AccessLines | None = None
_access_json = True


_PLAIN = re.compile(r"[\x20-\x7e]*")  # printable ASCII: JSON-safe but for quote and backslash
_stamp: tuple[int, str] = (0, "")


def _json_str(value: str) -> str:
    """A JSON string literal; json.dumps only when the value needs escaping (rarely)."""
    if '"' not in value and "\\" not in value and _PLAIN.fullmatch(value):
        return f'"{value}"'
    return json.dumps(value)


def _timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""
    global _stamp
    second = int(now)
    if _stamp[0] != second:
        _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_stamp[1]}.{int(now % 1 * 1000):03d}Z"


def access(method: str, path: str, status: int, ms: float, request_id: str, client: str) -> None:
    """One line per request (logger name ``bff.access``), built here without the logging
    machinery, which would cost the hot path far more than the line itself."""
    sink = _access
    if sink is None:
        return
    path = redact(path)
    ts = _timestamp(time.time())
    if _access_json:
        line = (
            f'{{"ts":"{ts}","level":"info","logger":"bff.access","msg":"request","method":'
            f'{_json_str(method)},"path":{_json_str(path)},"status":{status},"ms":{ms},'
            f'"request_id":{_json_str(request_id)},"client":{_json_str(client)}}}\n'
        )
    else:
        line = (
            f"{ts} INFO    bff.access: request [method={method} path={path} status={status} ms={ms} "
            f"request_id={request_id} client={client}]\n"
        )
    sink.lines.append(line)


def flush() -> None:
    """Write out everything logged so far."""
    if _listener is not None:
        _listener.queue.join()  # type: ignore[attr-defined]
    if _access is not None:
        _access.flush()


def _stop() -> None:
    global _listener, _access
    if _access is not None:
        _access.stop()
        _access = None
    if _listener is not None:
        _listener.queue.join()  # type: ignore[attr-defined]
        _listener.stop()
        _listener = None


def setup_logging(fmt: str = "json", level: str = "INFO", stream: Any = None) -> None:
    """Configure the root logger: records go through a queue to one writer thread, whose
    handler carries the redaction filter; libraries are quieted."""
    global _listener, _access, _access_json
    _stop()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactionFilter())
    records: queue.Queue[Any] = queue.Queue()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_HandOver(records))
    root.setLevel(level)
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    _access_json = fmt == "json"
    if logging.getLogger("bff.access").isEnabledFor(logging.INFO):
        _access = _AccessLines(handler.stream)
    # httpx logs every request URL at INFO; uvicorn's access log duplicates ours.
    for name in ("httpx", "httpcore", "uvicorn.access", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True


atexit.register(_stop)
