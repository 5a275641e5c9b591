"""What was fetched (resource type) and which AI assistant sent a human visit (referral).

Resource type follows HitKeep's server-side rules for `content_type`, so our column agrees with
what HitKeep shows: empty, `text/html`, `application/xhtml+xml` -> html; `image/*` -> image;
PDF, Office documents, `text/plain`, `text/markdown` -> document; anything else -> other. When the
log has no content type, the path's extension decides (no extension -> html, as a page).

Referral: a visit that is not a bot, whose Referer host (or `utm_source`, which ChatGPT adds to
links) is one of a provider's AI-assistant hostnames in the catalog, or a subdomain of one, is
`referred_by` that provider.

Both work on the few distinct keys (content type + path extension, referrer host, utm_source) and
are spread back to the rows by index (annotator.py); the extension regex runs the same in Arrow
(RE2) and Python (`re`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

__all__ = [
    "EXTENSION_RE",
    "HOST_RE",
    "RESOURCE_TYPES",
    "UTM_SOURCE_RE",
    "ReferrerTable",
    "extension",
    "referrer_host",
    "resource_type",
    "resource_type_of",
    "utm_source",
]

RESOURCE_TYPES = ("html", "document", "image", "other")

#: The last path segment's extension (the query is a separate column).
EXTENSION_RE = r"\.([A-Za-z0-9]{1,10})$"
#: The host of an absolute URL (also `android-app://<app id>/`), without userinfo and port.
HOST_RE = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?([^/?#:]+)"
#: The utm_source parameter of a query string (without the leading `?`).
UTM_SOURCE_RE = r"(?:^|&)utm_source=([^&#]*)"

_HTML_TYPES = frozenset({"", "text/html", "application/xhtml+xml"})
_DOCUMENT_TYPES = frozenset({
    "application/pdf", "text/plain", "text/markdown", "text/x-markdown", "application/msword",
    "application/rtf", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
})
_DOCUMENT_PREFIXES = ("application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument.")

_HTML_EXT = frozenset({"html", "htm", "xhtml", "shtml", "php", "asp", "aspx", "jsp", "cfm"})
_IMAGE_EXT = frozenset({"png", "jpg", "jpeg", "gif", "webp", "avif", "svg", "ico", "bmp", "tif", "tiff", "heic"})
_DOCUMENT_EXT = frozenset({"pdf", "txt", "md", "markdown", "doc", "docx", "xls", "xlsx", "ppt", "pptx",
                           "odt", "ods", "odp", "rtf"})

_EXTENSION = re.compile(EXTENSION_RE)
_HOST = re.compile(HOST_RE)
_UTM = re.compile(UTM_SOURCE_RE)


def extension(path: str | None) -> str:
    """The path's extension, lower case, or "" when it has none."""
    m = _EXTENSION.search(path or "")
    return m.group(1).lower() if m else ""


@lru_cache(maxsize=4096)
def resource_type_of(content_type: str | None, ext: str | None) -> str:
    """Resource type from a raw content type and a path extension (either may be empty)."""
    if content_type and content_type.strip():
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime in _HTML_TYPES:
            return "html"
        if mime.startswith("image/"):
            return "image"
        if mime in _DOCUMENT_TYPES or mime.startswith(_DOCUMENT_PREFIXES):
            return "document"
        return "other"
    ext = (ext or "").lower()
    if not ext or ext in _HTML_EXT:
        return "html"
    if ext in _IMAGE_EXT:
        return "image"
    if ext in _DOCUMENT_EXT:
        return "document"
    return "other"


def resource_type(content_type: str | None, path: str | None) -> str:
    """Resource type of one request (content type first, else the path's extension)."""
    return resource_type_of(content_type, extension(path))


def referrer_host(referer: str | None) -> str:
    """The lower-case host of a Referer URL, or "" when it is not an absolute URL."""
    m = _HOST.search(referer or "")
    return m.group(1).lower().rstrip(".") if m else ""


def utm_source(query: str | None) -> str:
    """The utm_source value of a query string, lower case, or ""."""
    m = _UTM.search(query or "")
    return m.group(1).lower() if m else ""


class ReferrerTable:
    """Hostname -> provider, from the catalog's `referrers`; matches a host and its subdomains."""

    def __init__(self, referrers: Mapping[str, tuple[str, ...]]) -> None:
        self._owner = {host.lower(): slug for slug, hosts in referrers.items() for host in hosts}
        self.provider = lru_cache(maxsize=65536)(self._provider)

    def _provider(self, host: str | None) -> str | None:
        """The provider whose AI assistant lives at `host` (or a parent domain of it), or None."""
        if not host:
            return None
        labels = host.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            slug = self._owner.get(".".join(labels[i:]))
            if slug is not None:
                return slug
        return None

    def referred_by(self, referer: str | None, query: str | None = None) -> str | None:
        """The provider that referred one visit: by Referer host, else by utm_source."""
        return self.provider(referrer_host(referer)) or self.provider(utm_source(query))
