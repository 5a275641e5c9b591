"""What we print or store never carries a key, a URL's credentials or a terminal escape.

Every key the process resolves is registered here (`Secret` does it), and `scrub` blanks it in
every common encoding a vendor might echo it back in: as is, URL-encoded (once or twice),
JSON-escaped (`\\/` too), HTML-escaped, hex, in any letter case, and inside base64 (of the key
alone or of `user:key`, as a Basic header carries it). Text is scrubbed before it is cut, so a
key that straddles the cut cannot leak its first characters.
`redact_url` is the one way a URL is shown or stored; `printable` escapes control characters a
log line may carry before they reach a terminal.
Airflow registers its secret masker with `on_register`: this package never imports Airflow.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_KEY = 6  # shorter values are not treated as keys (they would blank ordinary words)
_B64 = "A-Za-z0-9+/_-"

_RUN = re.compile(rf"[{_B64}]{{{MIN_KEY},}}=*")  # a base64-looking run: searched for a key's cores

_lock = threading.Lock()
_keys: set[str] = set()
_hooks: list[Callable[[str], None]] = []
_patterns: _Patterns | None = None


@dataclass(frozen=True)
class _Patterns:
    """The text forms (any case) and the base64 cores of a set of keys, each one alternation:
    linear in the text (a run is found first, then searched), however long a run is."""

    text: re.Pattern[str]
    cores: re.Pattern[str] | None

    def apply(self, text: str) -> str:
        text = self.text.sub(MASK, text)
        if self.cores is None:
            return text
        cores = self.cores
        return _RUN.sub(lambda m: MASK if cores.search(m.group()) else m.group(), text)


def register(key: str) -> None:
    """Remember a key so `scrub` blanks it, and pass it to the hooks (Airflow's masker)."""
    key = key.strip()
    if len(key) < MIN_KEY:
        return
    global _patterns
    with _lock:
        if key in _keys:
            return
        _keys.add(key)
        _patterns = None
        hooks = list(_hooks)
    for hook in hooks:
        hook(key)


def on_register(hook: Callable[[str], None]) -> None:
    """Call `hook` with every key registered so far and from now on (once, however often it is added)."""
    with _lock:
        if hook in _hooks:
            return
        _hooks.append(hook)
        known = list(_keys)
    for key in known:
        hook(key)


def _b64_cores(raw: bytes) -> list[str]:
    """The part of base64 that encodes `raw` whatever precedes it (0, 1 or 2 bytes mod 3), in
    both alphabets: found inside a longer base64 run (`user:key`), it gives the key away."""
    out = []
    for off in range(3):
        enc = base64.b64encode(b"\0" * off + raw).decode()
        core = enc[-(-8 * off // 6):(8 * (off + len(raw))) // 6]
        out += [core, core.translate(str.maketrans("+/", "-_"))]
    return out


def _forms(key: str) -> tuple[list[str], list[str]]:
    """(text forms, matched in any case; base64 cores, matched exactly)."""
    dumped = json.dumps(key)[1:-1]
    text = {key, quote(key, safe=""), quote(key), quote_plus(key), quote(quote(key, safe=""), safe=""),
            dumped, dumped.replace("/", "\\/"), json.dumps(key, ensure_ascii=False)[1:-1],
            html.escape(key), key.encode().hex()}
    return sorted(text, key=len, reverse=True), _b64_cores(key.encode())


def _compile(keys: Iterable[str]) -> _Patterns | None:
    text: set[str] = set()
    cores: set[str] = set()
    for k in keys:
        t, c = _forms(k)
        text.update(t)
        cores.update(x for x in c if len(x) >= MIN_KEY)
    if not text:
        return None
    alternation = "|".join(re.escape(t) for t in sorted(text, key=len, reverse=True))
    core_alternation = "|".join(re.escape(c) for c in sorted(cores, key=len, reverse=True))
    return _Patterns(re.compile(alternation, re.IGNORECASE), re.compile(core_alternation) if cores else None)


def scrub(text: str, keys: Iterable[str] | None = None) -> str:
    """`text` with every registered key (or the `keys` given) blanked in every encoding."""
    global _patterns
    if keys is not None:
        patterns = _compile(k.strip() for k in keys if len(k.strip()) >= MIN_KEY)
    else:
        with _lock:
            if _patterns is None and _keys:
                _patterns = _compile(_keys)
            patterns = _patterns
    return patterns.apply(text) if patterns is not None and text else text


def scrub_tree(obj: Any) -> Any:
    """`scrub` over every string of a JSON-like record (a run summary)."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {k: scrub_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_tree(v) for v in obj]
    return obj


def redact_url(url: str) -> str:
    """The URL without `user:password@` before its host (a glob's `?` is kept: it is no query)."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if sep else url


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (ESC, BEL, CR, OSC, bidi overrides) shown
    as escapes, so a logged host cannot move the cursor, retitle the window or hide a line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
