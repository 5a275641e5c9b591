"""A local receiver that answers like the AI-traffic vendors, so delivery can run over real HTTP.

The demo and the tests point the uploader at this server instead of Scrunch, HitKeep or Known
Agents. It checks requests the way the vendors do (docs/destinations.md), stores
what it accepts, and can be scripted to fail: a status code, a dropped connection, a slow answer,
or the worst case for at-least-once delivery, a body that is stored but never acknowledged.

Where a vendor's behaviour is not documented, the sandbox is the stricter of the plausible
readings, so a client that passes here should pass at the vendor too. The standard library and
orjson (strict JSON, and fast enough that the receiver is not what a benchmark measures).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hmac
import logging
import math
import os
import random
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = [
    "FAULT_NAMES",
    "PROTOCOLS",
    "Protocol",
    "Sandbox",
    "register_cli",
    "run_sandbox_cli",
]

log = logging.getLogger(__name__)

KEYS_ENV = "AGENT_TRAFFIC_SANDBOX_KEYS"

#: Faults that `inject` and `set_fault_rates` understand (plus "slow:<seconds>").
FAULT_NAMES = ("429", "500", "503", "401", "422", "reset", "reset_after_body")
_STATUS_FAULTS = {"429": 429, "500": 500, "503": 503, "401": 401, "422": 422}

#: Oversized bodies up to this size are read and thrown away before the 413, so the client sees
#: the answer instead of a connection reset; anything larger gets the 413 and a closed socket.
_DRAIN_CAP = 32 * 1024 * 1024
_MAX_ERRORS = 50  # validation errors listed in one 422/400 body

_ULID_RE = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.IGNORECASE)
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")

#: HitKeep 2.8.1's AI classifier: lowercased substring, first match wins.
HITKEEP_AI_TOKENS = (
    "chatgpt-user", "gptbot", "claudebot", "claude-web", "perplexitybot", "google-extended",
    "googleother", "google-safety", "applebot-extended", "bytespider", "ccbot",
    "meta-externalagent", "meta-externalfetcher", "amazonbot", "cohere-ai", "youbot", "ai2bot",
    "diffbot", "timpibot", "imagesiftbot", "deepseekbot", "petalbot",
)  # fmt: skip


# --------------------------------------------------------------------------- protocol registry


@dataclass(frozen=True)
class Outcome:
    """What a protocol handler decided: a status, the body to send, and the events to store."""

    status: int
    body: dict[str, Any]
    events: tuple[dict[str, Any], ...] = ()
    ndjson: str | None = None  # the events' lines as received, one object per line, when there are such


@dataclass(frozen=True)
class Protocol:
    """One vendor's ingest endpoint: route, auth scheme, limits and body handling.

    `handle(content_type, body)` runs after routing, auth and the size check, so each vendor
    only describes what is specific to it.
    """

    name: str
    route: re.Pattern[str]  # matched against the URL path; may capture a `site_id` group
    auth: Literal["x-api-key", "bearer"]
    max_body: int
    handle: Callable[[str, bytes], Outcome]
    error: Callable[[str], dict[str, Any]]  # message -> error body in the vendor's style
    site_ok: Callable[[str], bool] = lambda _site: True
    sends_retry_after: bool = True
    rate_limit: tuple[float, int] | None = None  # (requests per second, burst) per client IP
    default_site: str = "default"  # storage key when the route has no site id


def _json_type(value: Any) -> str:
    """Name a JSON value's type for an error message without echoing the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _loads(text: str | bytes) -> Any:
    """Strict JSON (NaN and Infinity refused, which Python's own parser allows), at a fifth of
    `json.loads`' CPU: the receiver parses every event a benchmark or a demo sends."""
    return orjson.loads(text)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# --- Scrunch ----------------------------------------------------------------------------------

SCRUNCH_MAX_BODY = 1_000_000
_SCRUNCH_STR_FIELDS = ("domain", "user_agent", "url", "path", "method")


def _scrunch_error(message: str) -> dict[str, Any]:
    return {"detail": message}


def _scrunch_event_errors(event: Any) -> list[tuple[str | None, str]]:
    """Check one event against Scrunch's documented schema; return (field, problem) pairs."""
    if not isinstance(event, dict):
        return [(None, f"each event must be a JSON object, got {_json_type(event)}")]
    errors: list[tuple[str | None, str]] = []
    for field in _SCRUNCH_STR_FIELDS:
        if field not in event:
            errors.append((field, "field required"))
        elif not isinstance(event[field], str):
            errors.append((field, f"must be a string, got {_json_type(event[field])}"))
    path = event.get("path")
    if isinstance(path, str) and not path.startswith("/"):
        errors.append(("path", "must start with '/'"))
    if "status_code" not in event:
        errors.append(("status_code", "field required"))
    elif not _is_int(event["status_code"]):
        got = _json_type(event["status_code"])
        errors.append(("status_code", f"must be an integer, got {got}"))
    if "timestamp" not in event:
        errors.append(("timestamp", "field required"))
    elif not _is_number(event["timestamp"]):
        got = _json_type(event["timestamp"])
        errors.append(("timestamp", f"must be Unix epoch seconds (integer or number), got {got}"))
    rt = event.get("response_time")
    if rt is not None and not _is_int(rt):
        errors.append(("response_time", f"must be an integer (ms), got {_json_type(rt)}"))
    ip = event.get("ip")
    if ip is not None and not isinstance(ip, str):
        errors.append(("ip", f"must be a string, got {_json_type(ip)}"))
    return errors


def _scrunch_handle(content_type: str, body: bytes) -> Outcome:
    """One JSON object for application/json, one object per line for exactly x-ndjson."""
    media = _media_type(content_type)
    if media == "application/json":
        ndjson = False
    elif content_type.strip().lower() == "application/x-ndjson":
        ndjson = True
    else:
        msg = (
            "Content-Type must be application/json (one event) or exactly "
            "application/x-ndjson (a batch)"
        )
        return Outcome(415, _scrunch_error(msg))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _scrunch_invalid([(1, None, "body is not valid UTF-8")])

    events: list[dict[str, Any]] = []
    problems: list[tuple[int, str | None, str]] = []
    lines: list[str] = []
    if ndjson:
        lines = text.split("\n")
        while lines and not lines[-1].strip():
            lines.pop()  # a trailing newline (or several) is fine
        if not lines:
            return _scrunch_invalid([(1, None, "empty batch")])
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                problems.append((number, None, "blank line inside the batch"))
                continue
            try:
                event = _loads(line)
            except ValueError as exc:
                problems.append((number, None, f"invalid JSON: {_short(exc)}"))
                continue
            problems.extend((number, f, m) for f, m in _scrunch_event_errors(event))
            events.append(event)
    else:
        if not text.strip():
            return _scrunch_invalid([(1, None, "empty body")])
        try:
            event = _loads(text)
        except ValueError as exc:
            hint = " (for a batch use Content-Type: application/x-ndjson)"
            return _scrunch_invalid([(1, None, f"invalid JSON: {_short(exc)}{hint}")])
        if isinstance(event, list):
            msg = "application/json takes one JSON object; send batches as application/x-ndjson"
            return _scrunch_invalid([(1, None, msg)])
        problems.extend((1, f, m) for f, m in _scrunch_event_errors(event))
        events.append(event)
    if problems:
        return _scrunch_invalid(problems)
    received = "".join(line.strip() + "\n" for line in lines) if ndjson else None
    return Outcome(200, {"status": "ok"}, tuple(events), received)


def _short(exc: ValueError) -> str:
    """JSON errors carry positions, never the document: safe to return."""
    return str(exc).split("\n", 1)[0][:200]


def _scrunch_invalid(problems: list[tuple[int, str | None, str]]) -> Outcome:
    errors = [{"line": n, "field": f, "error": m} for n, f, m in problems[:_MAX_ERRORS]]
    body = {
        "detail": "validation failed; nothing was accepted",
        "error_count": len(problems),
        "errors": errors,
    }
    return Outcome(422, body)


# --- HitKeep ----------------------------------------------------------------------------------

HITKEEP_MAX_BODY = 64 * 1024


def _hitkeep_error(message: str) -> dict[str, Any]:
    return {"error": message}


def _hitkeep_handle(content_type: str, body: bytes) -> Outcome:
    """One JSON object per request; unknown fields ignored; only known AI agents accepted."""
    if _media_type(content_type) != "application/json":
        return Outcome(415, _hitkeep_error("Content-Type must be application/json"))
    try:
        event = _loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Outcome(400, _hitkeep_error("invalid JSON body"))
    if not isinstance(event, dict):
        return Outcome(400, _hitkeep_error("body must be one JSON object"))
    path = event.get("path")
    if not isinstance(path, str) or not path:
        return Outcome(400, _hitkeep_error("path is required"))
    status = event.get("status_code")
    if not _is_int(status) or not 100 <= status <= 599:
        return Outcome(400, _hitkeep_error("status_code must be between 100 and 599"))
    ua = event.get("user_agent")
    if not isinstance(ua, str) or not ua:
        return Outcome(400, _hitkeep_error("user_agent is required"))
    for field in ("hostname", "content_type"):
        if event.get(field) is not None and not isinstance(event[field], str):
            return Outcome(400, _hitkeep_error(f"{field} must be a string"))
    for field in ("response_ms", "bytes_served"):
        if event.get(field) is not None and not _is_int(event[field]):
            return Outcome(400, _hitkeep_error(f"{field} must be an integer"))
    lowered = ua.lower()
    if not any(token in lowered for token in HITKEEP_AI_TOKENS):
        return Outcome(400, _hitkeep_error("user_agent must match a known AI bot"))
    return Outcome(202, {"status": "accepted"}, (event,))


# --- Known Agents -----------------------------------------------------------------------------

KNOWN_AGENTS_MAX_BODY = 1_000_000  # no published limit (VERIFY); keep batches modest


def _known_agents_error(message: str) -> dict[str, Any]:
    return {"error": message}


def _known_agents_visit_errors(visit: Any) -> list[tuple[str | None, str]]:
    if not isinstance(visit, dict):
        return [(None, f"each visit must be a JSON object, got {_json_type(visit)}")]
    errors: list[tuple[str | None, str]] = []
    path = visit.get("request_path")
    if not isinstance(path, str) or not path.startswith("/"):
        errors.append(("request_path", "required string starting with '/'"))
    method = visit.get("request_method")
    if not isinstance(method, str) or not method:
        errors.append(("request_method", "required non-empty string"))
    headers = visit.get("request_headers")
    if not isinstance(headers, dict):
        errors.append(("request_headers", "required object of header name -> string"))
    elif not all(isinstance(v, str) for v in headers.values()):
        errors.append(("request_headers", "header values must be strings"))
    code = visit.get("response_status_code")
    if code is not None and not _is_int(code):
        errors.append(("response_status_code", f"must be an integer, got {_json_type(code)}"))
    duration = visit.get("response_duration_in_milliseconds")
    if duration is not None and not _is_number(duration):
        got = _json_type(duration)
        errors.append(("response_duration_in_milliseconds", f"must be a number, got {got}"))
    created = visit.get("created")
    if created is not None:
        try:
            datetime.fromisoformat(created)
        except (TypeError, ValueError):
            errors.append(("created", "must be an ISO 8601 timestamp string"))
    return errors


def _known_agents_handle(content_type: str, body: bytes) -> Outcome:
    """One visit object or a non-empty array of them; one bad visit rejects the request."""
    if _media_type(content_type) != "application/json":
        return Outcome(415, _known_agents_error("Content-Type must be application/json"))
    try:
        payload = _loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Outcome(400, _known_agents_error("invalid JSON body"))
    visits = payload if isinstance(payload, list) else [payload]
    if not visits:
        return Outcome(400, _known_agents_error("empty batch"))
    problems = [
        {"index": i, "field": f, "error": m}
        for i, visit in enumerate(visits)
        for f, m in _known_agents_visit_errors(visit)
    ]
    if problems:
        body_out = _known_agents_error("invalid visit; nothing was accepted")
        body_out["errors"] = problems[:_MAX_ERRORS]
        return Outcome(400, body_out)
    return Outcome(200, {"status": "ok"}, tuple(visits))


#: The built-in vendors. `Sandbox.register_protocol` adds more (or replaces one) per instance.
PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="scrunch",
            route=re.compile(r"^/v1/sites/(?P<site_id>[^/]+)/platforms/custom/web-traffic$"),
            auth="x-api-key",
            max_body=SCRUNCH_MAX_BODY,
            handle=_scrunch_handle,
            error=_scrunch_error,
            site_ok=lambda site: bool(_ULID_RE.match(site)),
        ),
        Protocol(
            name="hitkeep",
            route=re.compile(r"^/api/sites/(?P<site_id>[^/]+)/ingest/ai-fetch$"),
            auth="bearer",
            max_body=HITKEEP_MAX_BODY,
            handle=_hitkeep_handle,
            error=_hitkeep_error,
            site_ok=lambda site: bool(_UUID_RE.match(site)),
            sends_retry_after=False,
            rate_limit=(10.0, 20),
        ),
        Protocol(
            name="known_agents",
            route=re.compile(r"^/visits$"),
            auth="bearer",
            max_body=KNOWN_AGENTS_MAX_BODY,
            handle=_known_agents_handle,
            error=_known_agents_error,
            sends_retry_after=False,  # not documented: the client must cope without it
        ),
    )
}


# --------------------------------------------------------------------------- the fast path

#: For `Sandbox(fast=True)`: the content types each built-in vendor takes and its success status.
_FAST_RULES: dict[str, tuple[tuple[str, ...], int]] = {
    "scrunch": (("application/json", "application/x-ndjson"), 200),
    "hitkeep": (("application/json",), 202),
    "known_agents": (("application/json",), 200),
}


def _fast_handle(protocol: Protocol, content_type: str, body: bytes) -> tuple[Outcome, int]:
    """Accept on content type alone and count the events without parsing them (a throughput tool).

    Events: lines for NDJSON, one for a JSON object, `},{` separators plus one for a JSON array
    (exact unless a string holds `},{`; the count is informational, nothing is validated).
    """
    types, ok = _FAST_RULES[protocol.name]
    media = "application/x-ndjson" if content_type.strip().lower() == "application/x-ndjson" else (
        _media_type(content_type))
    if media not in types or not body.strip():
        return Outcome(415 if media not in types else 400, protocol.error("unsupported or empty body")), 0
    if media == "application/x-ndjson":
        events = body.count(b"\n") + (not body.endswith(b"\n"))
    elif body.lstrip().startswith(b"["):
        events = body.count(b"},{") + 1
    else:
        events = 1
    return Outcome(ok, {"status": "ok"}), events


# --------------------------------------------------------------------------- faults and limits


def _check_fault(name: str) -> str:
    """Validate a fault name early, so a typo fails the test that wrote it, not a later one."""
    if name in FAULT_NAMES:
        return name
    if name.startswith("slow:"):
        try:
            seconds = float(name[5:])
        except ValueError:
            seconds = -1.0
        if seconds >= 0 and math.isfinite(seconds):
            return name
    raise ValueError(f"unknown fault {name!r}; expected one of {FAULT_NAMES} or 'slow:<seconds>'")


class _TokenBucket:
    """Requests per second with a burst, per client address, like HitKeep's default limiter."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._state[client] = (tokens - 1.0 if allowed else tokens, now)
            return allowed


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    """Tracks open connections so `stop()` can close them and `reset` can send a real RST."""

    daemon_threads = True
    sandbox: Sandbox

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, ipv6: bool) -> None:
        self.address_family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._rst: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse DNS lookup of the bind address: it can stall for seconds."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def mark_rst(self, request: socket.socket) -> None:
        with self._conn_lock:
            self._rst.add(request)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._open.discard(request)
            rst = request in self._rst
            self._rst.discard(request)
        if rst:
            # SO_LINGER 0 turns close() into a TCP reset, as a crashed proxy would do.
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.close()
            return
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _BadRequest(Exception):
    """The request framing is broken: answer 400 and close the connection."""


class _Handler(BaseHTTPRequestHandler):
    """Routes to a vendor protocol or the control API; never logs or echoes request headers."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real endpoints
    server_version = "agent-traffic-sandbox"
    sys_version = ""
    timeout = 60  # idle keep-alive connections do not pin a thread forever
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _Server
    _responded = False

    # -- plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        log.debug("%s %s", self.client_address[0], format % args)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, orjson.dumps(obj), headers=headers)

    def _read_body(self, limit: int) -> bytes | None:
        """Read the whole body; None when it exceeds `limit` (it is drained, not kept)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            raise _BadRequest("invalid Content-Length")
        if length > limit:
            if length > _DRAIN_CAP:
                self.close_connection = True
            else:
                remaining = length
                while remaining > 0:
                    got = self.rfile.read(min(65536, remaining))
                    if not got:
                        raise _BadRequest("body shorter than Content-Length")
                    remaining -= len(got)
            return None
        data = self.rfile.read(length)
        if len(data) < length:
            raise _BadRequest("body shorter than Content-Length")
        return data

    def _read_chunked(self, limit: int) -> bytes | None:
        buf = bytearray()
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("invalid chunk size") from None
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            total += size
            if total > _DRAIN_CAP:
                raise _BadRequest("body too large")
            data = self.rfile.read(size)
            self.rfile.readline(8)
            if len(data) < size:
                raise _BadRequest("truncated chunk")
            if total <= limit:
                buf += data
        return bytes(buf) if total <= limit else None

    def _abort(self, rst: bool) -> None:
        """Close the connection without an answer: the client sees a connection error."""
        self.close_connection = True
        if rst:
            self.server.mark_rst(self.connection)

    # -- HTTP verbs

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        url = urlsplit(self.path)
        if url.path.startswith("/_sandbox/"):
            self._control_get(url.path, parse_qs(url.query))
        elif self.server.sandbox._route(url.path) is not None:
            self._send_json(405, {"error": "method not allowed"}, {"Allow": "POST"})
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
        sandbox = self.server.sandbox
        path = urlsplit(self.path).path
        self._responded = False  # one handler serves every request of a keep-alive connection
        try:
            if path.startswith("/_sandbox/"):
                self._control_post(path)
                return
            routed = sandbox._route(path)
            if routed is None:
                self._read_body(_DRAIN_CAP)
                sandbox._count("unrouted", "404")
                self._send_json(404, {"error": "not found"})
                return
            protocol, site_id = routed
            if site_id is not None and not protocol.site_ok(site_id):
                self._read_body(_DRAIN_CAP)
                sandbox._count(protocol.name, "404")
                self._send_json(404, protocol.error("site not found"))
                return
            self._vendor_request(protocol, site_id or protocol.default_site)
        except _BadRequest as exc:
            self.close_connection = True
            self._send_json(400, {"error": str(exc)})
        except Exception:
            # A sandbox bug must not look like a scripted connection reset: answer 500.
            log.exception("sandbox failed on %s", path)
            self.close_connection = True
            if not self._responded:
                self._send_json(500, {"error": "sandbox internal error"})

    def _vendor_request(self, protocol: Protocol, site_id: str) -> None:
        sandbox = self.server.sandbox
        fault = sandbox._next_fault()
        if fault == "reset":
            sandbox._count(protocol.name, "reset")
            self._abort(rst=True)
            return
        body = self._read_body(protocol.max_body)
        if fault is not None and fault.startswith("slow:"):
            # The work still happens after the delay, even if the client gave up: a timeout on
            # the client side does not mean "not stored".
            sandbox._stopping.wait(float(fault[5:]))
        if fault in _STATUS_FAULTS:
            self._answer_fault(protocol, _STATUS_FAULTS[fault])
            return
        if protocol.rate_limit is not None and not sandbox._rate_ok(
            protocol, self.client_address[0]
        ):
            self._answer_fault(protocol, 429)
            return

        if sandbox.fast and protocol.name in _FAST_RULES:
            outcome, events = self._evaluate(protocol, body, fast=True)
            if 200 <= outcome.status < 300 and body is not None:
                sandbox._store_raw(protocol.name, site_id, body, events)
        else:
            outcome, _ = self._evaluate(protocol, body)
            if 200 <= outcome.status < 300:
                sandbox._store(protocol.name, site_id, outcome.events, outcome.ndjson)
        if fault == "reset_after_body":
            sandbox._count(protocol.name, "reset_after_body")
            self._abort(rst=False)
            return
        sandbox._count(protocol.name, str(outcome.status))
        self._send_json(outcome.status, outcome.body)

    def _evaluate(self, protocol: Protocol, body: bytes | None, fast: bool = False) -> tuple[Outcome, int]:
        """Auth, then size, then the vendor's own parsing: a bad key learns nothing else.

        With `fast`, no parsing: the outcome and the number of events counted in the raw body.
        """
        if not self.server.sandbox._key_ok(self._presented_key(protocol)):
            return Outcome(401, protocol.error("invalid or missing API key")), 0
        if body is None:
            limit = protocol.max_body
            return Outcome(413, protocol.error(f"request body larger than {limit} bytes")), 0
        content_type = self.headers.get("Content-Type", "")
        if fast:
            return _fast_handle(protocol, content_type, body)
        outcome = protocol.handle(content_type, body)
        return outcome, len(outcome.events)

    def _presented_key(self, protocol: Protocol) -> str:
        if protocol.auth == "x-api-key":
            return self.headers.get("X-Api-Key", "").strip()
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    def _answer_fault(self, protocol: Protocol, status: int) -> None:
        sandbox = self.server.sandbox
        headers: dict[str, str] = {}
        if status == 429 and protocol.sends_retry_after:
            value = sandbox._retry_after_header()
            if value is not None:
                headers["Retry-After"] = value
        messages = {
            401: "invalid or missing API key",
            422: "validation failed (injected fault)",
            429: "rate limited",
            500: "internal server error",
            503: "service unavailable",
        }
        sandbox._count(protocol.name, str(status))
        self._send_json(status, protocol.error(messages.get(status, "error")), headers)

    # -- control API (for a sandbox running in another process)

    def _control_key_ok(self) -> bool:
        """The control routes (what was accepted, scripted faults) need one of the sandbox's keys,
        as `Authorization: Bearer <key>` or `X-Api-Key`: a receiver reachable from other hosts
        must not hand out the events it holds or take orders from anyone. Health needs none."""
        scheme, _, token = self.headers.get("Authorization", "").strip().partition(" ")
        given = token.strip() if scheme.lower() == "bearer" else self.headers.get("X-Api-Key", "").strip()
        return self.server.sandbox._key_ok(given)

    def _control_get(self, path: str, query: dict[str, list[str]]) -> None:
        sandbox = self.server.sandbox
        if path == "/_sandbox/health":
            self._send_json(200, {"status": "ok"})
        elif not self._control_key_ok():
            self._send_json(401, {"error": "the control routes need the sandbox's key (Authorization: Bearer)"})
        elif path == "/_sandbox/stats":
            self._send_json(200, sandbox.stats())
        elif path == "/_sandbox/accepted":
            vendor = query.get("vendor", ["scrunch"])[0]
            site = query.get("site_id", [None])[0]
            if vendor not in sandbox.protocols:
                self._send_json(400, {"error": "unknown vendor"})
                return
            lines = [_dump_line(e) + "\n" for e in sandbox.accepted(vendor, site)]
            self._send(200, "".join(lines).encode("utf-8"), "application/x-ndjson")
        else:
            self._send_json(404, {"error": "not found"})

    def _control_post(self, path: str) -> None:
        sandbox = self.server.sandbox
        body = self._read_body(1_000_000)
        if not self._control_key_ok():
            self._send_json(401, {"error": "the control routes need the sandbox's key (Authorization: Bearer)"})
            return
        if path != "/_sandbox/faults":
            self._send_json(404, {"error": "not found"})
            return
        try:
            if body is None:
                raise ValueError("body too large")
            config = _loads(body.decode("utf-8") or "{}")
            if not isinstance(config, dict):
                raise ValueError("body must be a JSON object")
            sandbox.configure(config)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            self._send_json(400, {"error": str(exc)})
            return
        self._send_json(200, sandbox.fault_state())


def _dump_line(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


# --------------------------------------------------------------------------- the sandbox


class Sandbox:
    """A loopback server speaking the vendors' ingest protocols, with scripted failures.

    Use as a context manager in tests, or `start()`/`stop()`. `url` replaces each vendor's base
    URL: all built-in routes live on one port without clashing.

    `fast=True` is a throughput tool for benchmarks, never for correctness tests: a request is
    accepted after the checks of auth, size and content type, its events are counted without
    being parsed or validated, and the body is kept raw (`accepted_raw`, not `accepted`). It
    shows what a client can send when the receiver's own JSON parsing is not the bottleneck.
    Faults, scripts and rate limits work as usual.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
        api_keys: Iterable[str] = (),
        seed: int | None = None,
        fast: bool = False,
    ) -> None:
        self.host = host
        self.fast = fast
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._keys = tuple(k for k in api_keys if k)
        self.protocols: dict[str, Protocol] = dict(PROTOCOLS)
        #: Seconds the 429 asks the client to wait; None sends no Retry-After header at all.
        self.retry_after: int | None = 1
        #: "seconds" sends `Retry-After: 1`; "http-date" sends the moment as an HTTP-date.
        self.retry_after_format: Literal["seconds", "http-date"] = "seconds"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._script: deque[str] = deque()
        self._rates: dict[str, float] = {}
        self._buckets: dict[str, _TokenBucket] = {}
        self._accepted: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._raw: dict[str, list[tuple[str, bytes, int]]] = {}  # fast mode: (site, body, events)
        self._counts: dict[str, dict[str, int]] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> Sandbox:
        """Bind and serve in a daemon thread; with port 0 the OS picks a free port."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self, ipv6=":" in self.host)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name=f"agent-traffic-sandbox:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; accepted events stay readable."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        # shutdown() waits for serve_forever's next poll; a throwaway connection wakes it now.
        waiter = threading.Thread(target=server.shutdown, daemon=True)
        waiter.start()
        while waiter.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(self._connect_address(), timeout=0.5).close()
            waiter.join(0.05)
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connect_address(self) -> tuple[str, int]:
        """Where a client reaches this server (a wildcard bind is reached on loopback)."""
        wildcard = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
        return wildcard.get(self.host, self.host), self.port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8900 (use it in place of the vendor's base)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _route(self, path: str) -> tuple[Protocol, str | None] | None:
        """First protocol whose route matches, and the site id it captured (if any)."""
        for protocol in self.protocols.values():
            match = protocol.route.match(path)
            if match is not None:
                return protocol, match.groupdict().get("site_id")
        return None

    def register_protocol(self, protocol: Protocol) -> None:
        """Add or replace a vendor on this instance (the module registry is left alone)."""
        self.protocols[protocol.name] = protocol

    # -- faults

    def inject(self, *faults: str) -> None:
        """Queue faults; each vendor request consumes the next one, in order."""
        checked = [_check_fault(f) for f in faults]
        with self._lock:
            self._script.extend(checked)

    def set_fault_rates(self, rates: dict[str, float]) -> None:
        """Random faults for requests the script does not cover; replaces earlier rates."""
        checked = {_check_fault(name): float(p) for name, p in rates.items()}
        if any(not 0.0 <= p <= 1.0 for p in checked.values()):
            raise ValueError("fault rates must be between 0 and 1")
        if sum(checked.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates must add up to at most 1")
        with self._lock:
            self._rates = checked

    def configure(self, config: dict[str, Any]) -> None:
        """Apply a control-API document: script, rates, retry_after, retry_after_format, clear."""
        unknown = set(config) - {"script", "rates", "retry_after", "retry_after_format", "clear"}
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        script = config.get("script", [])
        rates = config.get("rates")
        if not isinstance(script, list) or not all(isinstance(s, str) for s in script):
            raise ValueError("script must be a list of fault names")
        if rates is not None and not isinstance(rates, dict):
            raise ValueError("rates must be an object of fault name -> probability")
        if "retry_after" in config:
            value = config["retry_after"]
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError("retry_after must be a non-negative integer or null")
        fmt = config.get("retry_after_format", self.retry_after_format)
        if fmt not in ("seconds", "http-date"):
            raise ValueError("retry_after_format must be 'seconds' or 'http-date'")
        checked = [_check_fault(f) for f in script]
        if rates is not None:
            self.set_fault_rates(rates)
        with self._lock:
            if config.get("clear"):
                self._script.clear()
            self._script.extend(checked)
        if "retry_after" in config:
            self.retry_after = config["retry_after"]
        self.retry_after_format = fmt

    def fault_state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pending": list(self._script),
                "rates": dict(self._rates),
                "retry_after": self.retry_after,
                "retry_after_format": self.retry_after_format,
            }

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._script:
                return self._script.popleft()
            if not self._rates:
                return None
            roll = self._rng.random()
            for name in sorted(self._rates):
                roll -= self._rates[name]
                if roll < 0:
                    return name
            return None

    def _retry_after_header(self) -> str | None:
        if self.retry_after is None:
            return None
        if self.retry_after_format == "http-date":
            return formatdate(time.time() + self.retry_after, usegmt=True)
        return str(int(self.retry_after))

    def _rate_ok(self, protocol: Protocol, client: str) -> bool:
        assert protocol.rate_limit is not None
        with self._lock:
            bucket = self._buckets.get(protocol.name)
            if bucket is None:
                bucket = self._buckets[protocol.name] = _TokenBucket(*protocol.rate_limit)
        return bucket.take(client)

    # -- auth

    def _key_ok(self, presented: str) -> bool:
        """Constant-time compare against every configured key; any non-empty key if none."""
        if not presented:
            return False
        if not self._keys:
            return True
        # http.server decodes header values as latin-1: encoding back gives the bytes sent.
        given = presented.encode("latin-1", "replace")
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key.encode("utf-8"))
        return ok

    # -- storage and counters

    def _store(self, vendor: str, site_id: str, events: Iterable[dict[str, Any]], ndjson: str | None = None) -> None:
        """Keep accepted events; with a data dir, append them to its file (`ndjson`: their lines as
        received, written as they are rather than serialized again)."""
        events = list(events)
        with self._lock:
            self._accepted.setdefault(vendor, []).extend((site_id, e) for e in events)
            if self.data_dir is not None and events:
                target = self._file_for(self.data_dir, vendor, site_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                text = ndjson if ndjson is not None else "".join(_dump_line(e) + "\n" for e in events)
                with target.open("a", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()

    def _store_raw(self, vendor: str, site_id: str, body: bytes, events: int) -> None:
        """Fast mode: keep the body as received (appended to `<vendor>/<site>.raw` with a data dir)."""
        with self._lock:
            self._raw.setdefault(vendor, []).append((site_id, body, events))
            if self.data_dir is not None:
                target = self._file_for(self.data_dir, vendor, site_id).with_suffix(".raw")
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("ab") as fh:
                    fh.write(body + b"\n")

    def accepted_raw(self, vendor: str = "scrunch", site_id: str | None = None) -> list[bytes]:
        """Fast mode: the bodies accepted so far, as received, in arrival order."""
        with self._lock:
            rows = list(self._raw.get(vendor, ()))
        return [b for s, b, _ in rows if site_id is None or s == site_id]

    @staticmethod
    def _file_for(data_dir: Path, vendor: str, site_id: str) -> Path:
        for part in (vendor, site_id):
            if not _SAFE_NAME_RE.match(part) or part in (".", ".."):
                raise ValueError(f"unsafe name for a file path: {part!r}")
        return Path(data_dir) / vendor / f"{site_id}.ndjson"

    def _count(self, vendor: str, status: str) -> None:
        with self._lock:
            per_vendor = self._counts.setdefault(vendor, {})
            per_vendor[status] = per_vendor.get(status, 0) + 1

    def accepted(self, vendor: str = "scrunch", site_id: str | None = None) -> list[dict[str, Any]]:
        """Events accepted so far, in arrival order (copies: callers may modify them)."""
        with self._lock:
            rows = list(self._accepted.get(vendor, ()))
        return [copy.deepcopy(e) for s, e in rows if site_id is None or s == site_id]

    @property
    def requests_seen(self) -> dict[str, dict[str, int]]:
        """Vendor -> outcome -> count; outcomes are status codes or 'reset'/'reset_after_body'."""
        with self._lock:
            return {vendor: dict(counts) for vendor, counts in self._counts.items()}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            accepted: dict[str, dict[str, int]] = {}
            for vendor, rows in self._accepted.items():
                per_site = accepted.setdefault(vendor, {})
                for site, _event in rows:
                    per_site[site] = per_site.get(site, 0) + 1
            for vendor, raw in self._raw.items():  # fast mode: events counted, not parsed
                per_site = accepted.setdefault(vendor, {})
                for site, _body, events in raw:
                    per_site[site] = per_site.get(site, 0) + events
        return {"requests": self.requests_seen, "accepted": accepted, **self.fault_state()}

    @staticmethod
    def load_accepted(data_dir: Path, vendor: str, site_id: str) -> list[dict[str, Any]]:
        """Read back what a (possibly separate, possibly killed) sandbox stored on disk.

        A last line without its newline is a write cut short by a kill and is skipped.
        """
        target = Sandbox._file_for(Path(data_dir), vendor, site_id)
        if not target.exists():
            return []
        text = target.read_text(encoding="utf-8")
        lines = text.split("\n")
        complete = lines[:-1]  # the piece after the last newline is "" or a torn write
        return [orjson.loads(line) for line in complete if line]


# --------------------------------------------------------------------------- command line


def _parse_rate(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=P, got {text!r}")
    try:
        return _check_fault(name.strip()), float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register_cli(subparsers: Any) -> None:
    """Add the `sandbox` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local receiver that answers like the vendors",
        description=(
            "Serve the Scrunch, HitKeep and Known Agents ingest endpoints on loopback, with "
            f"optional random faults. Keys: --api-key or {KEYS_ENV} (comma-separated; "
            "preferred, since command lines show in ps). With no keys any non-empty key works."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8900, help="port, 0 for any (default 8900)")
    parser.add_argument("--data-dir", type=Path, help="append accepted events here as NDJSON")
    parser.add_argument(
        "--api-key", action="append", default=[], metavar="KEY", help="a valid key (repeatable)"
    )
    parser.add_argument(
        "--fault-rate",
        action="append",
        default=[],
        type=_parse_rate,
        metavar="NAME=P",
        help=f"random fault probability, NAME in {', '.join(FAULT_NAMES)} (repeatable)",
    )
    parser.add_argument(
        "--retry-after", type=int, default=1, metavar="N", help="Retry-After seconds on 429"
    )
    parser.add_argument(
        "--retry-after-format",
        choices=("seconds", "http-date"),
        default="seconds",
        help="send Retry-After as delta seconds or as an HTTP-date",
    )
    parser.add_argument("--seed", type=int, help="seed for the random faults")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="benchmarks only: accept after auth, size and content type, count events without "
        "parsing them, keep bodies raw (never for correctness tests)",
    )
    parser.set_defaults(func=run_sandbox_cli)


def _keys_from_env() -> list[str]:
    return [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]


def run_sandbox_cli(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; print one line with the URL once listening."""
    keys = [*args.api_key, *_keys_from_env()]
    if args.api_key:
        print(f"warning: keys on the command line show in ps; prefer {KEYS_ENV}", file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding to {args.host}, not loopback", file=sys.stderr)
    if args.retry_after < 0:
        print("error: --retry-after must be >= 0", file=sys.stderr)
        return 2
    sandbox = Sandbox(args.host, args.port, args.data_dir, keys, args.seed, fast=args.fast)
    sandbox.retry_after = args.retry_after
    sandbox.retry_after_format = args.retry_after_format
    try:
        sandbox.set_fault_rates(dict(args.fault_rate))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sandbox.start()
        print(f"sandbox listening on {sandbox.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
