"""HTML pages that load nothing from elsewhere: our page shell in the report's style, and
third-party HTML made self-contained (no script, nothing fetched from the network).

GX's data docs load scripts, styles and a logo from public CDNs (several without integrity
hashes, some on floating tags) and break offline. What we publish loads nothing from elsewhere:
every script goes (the page's tables are plain HTML), and any tag or style that would fetch
from another host loses that address.
"""

from __future__ import annotations

import re
from html import escape

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


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;color:#1d2733;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 4px}header p{color:#5b6b7b;margin:0 0 8px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px}
.tile{border:1px solid #e1e6eb;border-radius:6px;padding:8px 10px}.tile b{display:block;font-size:20px}.tile span{color:#5b6b7b}
.problems li{color:#a4161a}.ok{color:#2e8540}.cols{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure.chart{margin:22px 0;border-top:1px solid #e1e6eb}.note,.empty{color:#5b6b7b;margin:2px 0 6px}
.plot svg{display:block;max-width:100%;height:auto;font-size:11px}.plot text{fill:#1d2733}
table.numbers{border-collapse:collapse;font-size:12px;margin:6px 0}table.numbers th,table.numbers td{padding:2px 8px;border-bottom:1px solid #eef1f4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}summary{cursor:pointer;color:#5b6b7b}
@media (max-width:700px){.cols{grid-template-columns:1fr}}
"""


def page(title: str, body: str, nav: str = "") -> str:
    """A plain HTML page in the report's style, with no script and no outside resource."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>{escape(title, quote=True)}</title><style>{CSS}</style></head>
<body><header>{nav}<h1>{escape(title, quote=True)}</h1></header>{body}</body></html>
"""
