"""The HTTP client delivery sends with: one urllib3 connection pool per task.

urllib3 directly, not `requests`: a request through `requests.Session` costs about three times
the CPU of the same request through urllib3 (its session, adapter and hook layers run per
call), and for vendors with small requests (Known Agents' batches of 100, HitKeep's single
events) that was most of the sending time (`benchmarks/bench_deliver.py`). What `requests` gave
for free is kept: proxies from `HTTP(S)_PROXY` / `NO_PROXY`, and certificates from
`REQUESTS_CA_BUNDLE` or `SSL_CERT_FILE`, else certifi's bundle.
"""

from __future__ import annotations

import os
import urllib.request
from urllib.parse import urlsplit

import certifi
import urllib3

#: Sent with every request (`deliver.py` builds each request's headers whole).
USER_AGENT = "agent-traffic/0.1 (+https://github.com/agent-traffic)"


def _ca_bundle() -> str:
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where()


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for `url` (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), if any."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def http_pool(url: str, concurrency: int) -> urllib3.PoolManager:
    """A pool holding up to `concurrency` connections to the destination of `url` (through the
    environment's proxy when one is set). No retries and no redirects here: `retry.send` decides."""
    kw = {"num_pools": 2, "maxsize": concurrency, "retries": False, "ca_certs": _ca_bundle()}
    proxy = proxy_for(url)
    if proxy:
        return urllib3.ProxyManager(proxy, **kw)
    return urllib3.PoolManager(**kw)
