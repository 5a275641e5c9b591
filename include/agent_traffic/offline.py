"""Third-party HTML made self-contained: no script, nothing fetched from the network.

GX's data docs load scripts, styles and a logo from public CDNs (several without integrity
hashes, some on floating tags) and break offline. What we publish loads nothing from elsewhere:
every script goes (the page's tables are plain HTML), and any tag or style that would fetch
from another host loses that address.
"""

from __future__ import annotations

import re

_SCRIPT = re.compile(rb"<script\b.*?</script\s*>|<script\b[^>]*/>|<noscript\b.*?</noscript\s*>", re.S | re.I)
_EXTERNAL_TAG = re.compile(rb"<(?:link|img|iframe|frame|embed|object|source|video|audio|track|base|meta)\b"
                           rb"[^>]*?\b(?:href|src|srcset|data|content)\s*=\s*[\"']?\s*(?:[a-z]+:)?//[^>]*>", re.I)
_EXTERNAL_ATTR = re.compile(rb"\b(href|src|action|formaction|poster|background)\s*=\s*([\"']?)\s*(?:[a-z]+:)?//[^\"'\s>]*\2",
                            re.I)
_CSS_URL = re.compile(rb"(@import\s+)?url\(\s*[\"']?\s*(?:[a-z]+:)?//[^)]*\)\s*;?|@import\s+[\"'](?:[a-z]+:)?//[^\"']*[\"']\s*;?",
                      re.I)
_EVENT_ATTR = re.compile(rb"\s\bon[a-z]+\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>]+)", re.I)
_JS_URL = re.compile(rb"\b(href|src|action)\s*=\s*([\"']?)\s*javascript:[^\"'>]*\2", re.I)


def offline_html(data: bytes) -> bytes:
    """HTML or CSS without scripts, event handlers or any address on another host."""
    data = _SCRIPT.sub(b"", data)
    data = _EXTERNAL_TAG.sub(b"", data)
    data = _EXTERNAL_ATTR.sub(rb'\1="#"', data)
    data = _JS_URL.sub(rb'\1="#"', data)
    data = _EVENT_ATTR.sub(b"", data)
    return _CSS_URL.sub(b"", data)
