"""Realistic access-log lines for every packaged format, rendered from one list of requests.

Each renderer follows its vendor's field map (the notes in ../shared/notes/log-formats.md and the
vendors' docs): CloudFront's tab-separated W3C with URL-encoded (sometimes twice) user agents, ALB's
`ip:port` clients and three processing times, Cloudflare's three timestamp encodings, Vercel's
user-agent array and non-request lines, and so on. Each line comes with the outcome the parser
must produce, computed from the request by the format's documented transformation (precision,
encoding), never written by hand, so a test compares every field of every event.

Used by tests/test_formats*.py and by benchmarks/bench_parse.py (large generated objects).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from urllib.parse import quote

from agent_traffic.devtools.samples import USER_AGENTS

DAY = date(2026, 11, 21)
KNOWN_HOSTS = ["example.com", "www.example.com", "docs.example.com", "blog.example.org"]
UNKNOWN_HOST = "shop.example.net"
#: hostname (or *.suffix) -> site, as `pipeline._site_context` builds it from the sites' hostnames
HOST_SITES = {"example.com": "example.com", "www.example.com": "example.com", "*.example.com": "example.com",
              "blog.example.org": "blog.example.org"}
PATHS = ["/", "/pricing", "/docs/getting-started", "/blog/ai-crawlers-explained", "/robots.txt",
         "/llms.txt", "/static/app.js", "/caf%C3%A9/menu", "/search", "/products/widget"]
QUERIES = [None, None, None, "q=agents", "id=42&ref=chatgpt", "utm_source=perplexity"]
REFERERS = [None, None, "https://www.google.com/", "https://chatgpt.com/", "https://www.perplexity.ai/search?q=a+b"]
CONTENT_TYPES = ["text/html; charset=utf-8", "application/json", "text/plain", "image/png"]
EXTRA_AGENTS = ["Mozilla/5.0 (compatible; Bücherwurm/2.0; +https://example.org/bot)"]
OFFSETS = [0, 0, 60, -300, 330, -480]  # minutes east of UTC that servers log local time with


@dataclass(frozen=True)
class Request:
    ts: datetime  # UTC, microsecond precision
    offset_min: int  # the server's UTC offset, for formats that log local time
    host: str
    scheme: str
    method: str
    path: str
    query: str | None
    status: int
    bytes: int
    duration_ms: int
    client_ip: str
    user_agent: str
    referer: str | None
    content_type: str

    @property
    def target(self) -> str:
        return self.path + (f"?{self.query}" if self.query else "")

    @property
    def epoch_us(self) -> int:
        return int((self.ts - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))

    def local(self) -> datetime:
        return self.ts.astimezone(timezone(timedelta(minutes=self.offset_min)))


def requests(n: int, *, seed: int = 0, day: date = DAY, unknown_every: int = 0) -> list[Request]:
    """n requests over the day (UTC), in time order; every `unknown_every`-th has an unknown host."""
    return list(iter_requests(n, seed=seed, day=day, unknown_every=unknown_every))


def iter_requests(n: int, *, seed: int = 0, day: date = DAY, unknown_every: int = 0) -> Iterator[Request]:
    rng = random.Random(seed)
    uas = [u for u, _ in USER_AGENTS] + EXTRA_AGENTS
    weights = [w for _, w in USER_AGENTS] + [5]
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    step = 86_400_000_000 // max(n, 1)
    for i in range(n):
        status = rng.choices([200, 304, 301, 404, 500], [85, 5, 2, 6, 2])[0]
        yield Request(
            ts=start + timedelta(microseconds=i * step + rng.randrange(step or 1)),
            offset_min=rng.choice(OFFSETS),
            host=UNKNOWN_HOST if unknown_every and i % unknown_every == unknown_every - 1 else rng.choice(KNOWN_HOSTS),
            scheme=rng.choice(["https", "https", "http"]),
            method=rng.choice(["GET", "GET", "GET", "HEAD", "POST"]),
            path=rng.choice(PATHS),
            query=rng.choice(QUERIES),
            status=status,
            bytes=0 if status == 304 else rng.randint(100, 90_000),
            duration_ms=rng.randint(0, 2500),
            client_ip=rng.choice([f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                                  f"2001:db8:{rng.randint(0, 65535):x}::{rng.randint(1, 65535):x}"]),
            user_agent=rng.choices(uas, weights)[0],
            referer=rng.choice(REFERERS),
            content_type=rng.choice(CONTENT_TYPES),
        )


def expected(r: Request, **changes: object) -> dict[str, object]:
    """The canonical fields a parsed event must have; `changes` are the format's known losses."""
    out: dict[str, object] = {
        "ts": r.ts, "host": r.host, "method": r.method, "path": r.path, "query": r.query,
        "status": r.status, "bytes": r.bytes, "duration_ms": float(r.duration_ms), "client_ip": r.client_ip,
        "user_agent": r.user_agent, "referer": r.referer, "content_type": r.content_type,
        "url": f"{r.scheme}://{r.host}{r.target}",
    }
    out.update(changes)
    return out


def _sec(r: Request) -> datetime:
    return r.ts.replace(microsecond=0)


def _ms(r: Request) -> datetime:
    return r.ts.replace(microsecond=r.ts.microsecond // 1000 * 1000)


def _clf_time(r: Request) -> str:
    loc = r.local()
    off = r.offset_min
    return loc.strftime("%d/%b/%Y:%H:%M:%S ") + f"{'+' if off >= 0 else '-'}{abs(off) // 60:02d}{abs(off) % 60:02d}"


def _iso_local(r: Request, *, colon: bool = True) -> str:
    s = r.local().replace(microsecond=0).isoformat()
    return s if colon else s[:-3] + s[-2:]


def _escape(s: str, quote: str) -> str:
    """nginx (quote `\\x22`) and Apache (quote `\\"`) escape a quote, a backslash and every byte
    outside printable ASCII; a UTF-8 user agent arrives as `\\xC3\\xBC`."""
    out = []
    for b in s.encode("utf-8"):
        c = chr(b)
        if c == '"':
            out.append(quote)
        elif c == "\\":
            out.append("\\x5C" if quote == "\\x22" else "\\\\")
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\x{b:02X}")
    return "".join(out)


NGINX_QUOTE, APACHE_QUOTE = "\\x22", '\\"'
Line = tuple[str, object]  # (line text, expected outcome: an event dict, or a skip/quarantine reason)


# --- nginx / Apache ---------------------------------------------------------------------------


def combined(reqs: list[Request], *, site: str = "example.com") -> list[Line]:
    """nginx `combined`: local time with its offset, \\x22 escapes, no host (the source's site)."""
    return [(f'{r.client_ip} - - [{_clf_time(r)}] "{r.method} {r.target} HTTP/1.1" {r.status} {r.bytes} '
             f'"{_escape(r.referer or "-", NGINX_QUOTE)}" "{_escape(r.user_agent, NGINX_QUOTE)}"',
             expected(r, ts=_sec(r), host=site, duration_ms=None, content_type=None, url=f"https://{site}{r.target}"))
            for r in reqs]


def nginx_main(reqs: list[Request], *, site: str = "example.com") -> list[Line]:
    """nginx `main`: combined plus `"$http_x_forwarded_for"` (`-` when the request had none). The
    header is not trusted unless the source names its proxies: the client stays `$remote_addr`."""
    forwarded = ["-", "198.51.100.23", "203.0.113.9, 10.1.2.3", "2001:db8::7, [2001:db8::8]:443"]
    return [(f'{text} "{forwarded[i % len(forwarded)]}"', want)
            for i, (text, want) in enumerate(combined(reqs, site=site))]


def common(reqs: list[Request], *, site: str = "example.com") -> list[Line]:
    return [(f'{r.client_ip} - frank [{_clf_time(r)}] "{r.method} {r.target} HTTP/1.0" {r.status} '
             f'{r.bytes or "-"}',
             expected(r, ts=_sec(r), host=site, duration_ms=None, content_type=None, user_agent="", referer=None,
                      url=f"https://{site}{r.target}"))
            for r in reqs]


def vhost_combined(reqs: list[Request], *, site: str = "example.com") -> list[Line]:
    """Apache `%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"`, \\" escapes."""
    port = {"https": 443, "http": 80}
    return [(f'{r.host}:{port[r.scheme]} {r.client_ip} - - [{_clf_time(r)}] "{r.method} {r.target} HTTP/1.1" '
             f'{r.status} {r.bytes} "{_escape(r.referer or "-", APACHE_QUOTE)}" "{_escape(r.user_agent, APACHE_QUOTE)}"',
             expected(r, ts=_sec(r), duration_ms=None, content_type=None, url=f"https://{r.host}{r.target}"))
            for r in reqs]


def nginx_json(reqs: list[Request]) -> list[Line]:
    """`log_format json escape=json '{"time_iso8601":"$time_iso8601",...}'`: every value a string."""
    return [(json.dumps({
        "time_iso8601": _iso_local(r), "remote_addr": r.client_ip, "remote_user": "",
        "request": f"{r.method} {r.target} HTTP/1.1", "status": str(r.status), "body_bytes_sent": str(r.bytes),
        "request_time": f"{r.duration_ms / 1000:.3f}", "http_referer": r.referer or "",
        "http_user_agent": r.user_agent, "host": r.host, "scheme": r.scheme,
        "sent_http_content_type": r.content_type,
    }, ensure_ascii=False, separators=(",", ":")), expected(r, ts=_sec(r))) for r in reqs]


# --- Caddy --------------------------------------------------------------------------------------


def caddy_json(reqs: list[Request]) -> list[Line]:
    out = []
    for r in reqs:
        headers = {"User-Agent": [r.user_agent], "Accept": ["*/*"]}
        if r.referer:
            headers["Referer"] = [r.referer]
        rec = {
            "level": "info", "ts": r.epoch_us / 1e6, "logger": "http.log.access.log0", "msg": "handled request",
            "request": {"remote_ip": r.client_ip, "remote_port": "51234", "client_ip": r.client_ip,
                        "proto": "HTTP/2.0", "method": r.method, "host": r.host, "uri": r.target,
                        "headers": headers},
            "bytes_read": 0, "user_id": "", "duration": r.duration_ms / 1000, "size": r.bytes,
            "status": r.status, "resp_headers": {"Server": ["Caddy"], "Content-Type": [r.content_type]},
        }
        out.append((json.dumps(rec, ensure_ascii=False), expected(r, url=f"https://{r.host}{r.target}")))
    return out


# --- AWS ----------------------------------------------------------------------------------------

CLOUDFRONT_FIELDS = ["date", "time", "x-edge-location", "sc-bytes", "c-ip", "cs-method", "cs(Host)", "cs-uri-stem", "sc-status", "cs(Referer)", "cs(User-Agent)", "cs-uri-query", "cs(Cookie)", "x-edge-result-type", "x-edge-request-id", "x-host-header", "cs-protocol", "cs-bytes", "time-taken", "x-forwarded-for", "ssl-protocol", "ssl-cipher", "x-edge-response-result-type", "cs-protocol-version", "fle-status", "fle-encrypted-fields", "c-port", "time-to-first-byte", "x-edge-detailed-result-type", "sc-content-type", "sc-content-len", "sc-range-start", "sc-range-end"]


def _cf_encode(s: str, twice: bool) -> str:
    once = quote(s, safe="/;:(),.+-_*~=&?@!'")
    return once.replace("%", "%25") if twice else once


def cloudfront(reqs: list[Request], *, header: bool = True) -> list[Line]:
    """Standard logs: `#Version`/`#Fields` header, tab-separated, UTC; user agents URL-encoded,
    every third one twice (`%2520`), as CloudFront does."""
    out: list[Line] = []
    if header:
        out += [("#Version: 1.0", "header"), ("#Fields: " + " ".join(CLOUDFRONT_FIELDS), "header")]
    for i, r in enumerate(reqs):
        v = {
            "date": r.ts.strftime("%Y-%m-%d"), "time": r.ts.strftime("%H:%M:%S"), "x-edge-location": "IAD89-C1",
            "sc-bytes": str(r.bytes), "c-ip": r.client_ip, "cs-method": r.method,
            "cs(Host)": "d111111abcdef8.cloudfront.net", "cs-uri-stem": r.path, "sc-status": str(r.status),
            "cs(Referer)": _cf_encode(r.referer, False) if r.referer else "-",
            "cs(User-Agent)": _cf_encode(r.user_agent, i % 3 == 0), "cs-uri-query": r.query or "-",
            "cs(Cookie)": "-", "x-edge-result-type": "Hit", "x-edge-request-id": f"{i:08d}Zg2bB6F1_vrWw==",
            "x-host-header": r.host, "cs-protocol": r.scheme, "cs-bytes": "412", "time-taken": f"{r.duration_ms / 1000:.3f}",
            "x-forwarded-for": "-", "ssl-protocol": "TLSv1.3", "ssl-cipher": "TLS_AES_128_GCM_SHA256",
            "x-edge-response-result-type": "Hit", "cs-protocol-version": "HTTP/2.0", "fle-status": "-",
            "fle-encrypted-fields": "-", "c-port": "51234", "time-to-first-byte": "0.001",
            "x-edge-detailed-result-type": "Hit", "sc-content-type": r.content_type, "sc-content-len": str(r.bytes),
            "sc-range-start": "-", "sc-range-end": "-",
        }
        out.append(("\t".join(v[f] for f in CLOUDFRONT_FIELDS), expected(r, ts=_sec(r))))
    return out


def alb(reqs: list[Request]) -> list[Line]:
    """Application Load Balancer: `ip:port` clients, absolute request URLs, `domain_name` only for
    TLS, the duration as three processing times."""
    out = []
    for i, r in enumerate(reqs):
        port = 443 if r.scheme == "https" else 80
        kind = "h2" if r.scheme == "https" and i % 2 else r.scheme
        client = f"{r.client_ip}:51234" if "." in r.client_ip else f"[{r.client_ip}]:51234"
        t1, t3 = min(r.duration_ms, 1), 0
        t2 = r.duration_ms - t1
        ts = r.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out.append((
            f'{kind} {ts} app/my-loadbalancer/50dc6c495c0c9188 {client} 10.0.0.1:80 {t1 / 1000:.3f} '
            f'{t2 / 1000:.3f} {t3 / 1000:.3f} {r.status} {r.status} 34 {r.bytes} '
            f'"{r.method} {r.scheme}://{r.host}:{port}{r.target} HTTP/1.1" "{r.user_agent}" '
            f'{"ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2" if r.scheme == "https" else "- -"} '
            f'arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067 '
            f'"Root=1-58337262-36d228ad5d99923122bbe354" "{r.host if r.scheme == "https" else "-"}" '
            f'"arn:aws:acm:us-east-2:123456789012:certificate/12345678-1234-1234-1234-123456789012" 0 {ts} '
            f'"forward" "-" "-" "10.0.0.1:80" "{r.status}" "-" "-" TID_1234abcd',
            expected(r, referer=None, content_type=None)))
    return out


# --- CDNs ---------------------------------------------------------------------------------------


def cloudflare(reqs: list[Request]) -> list[Line]:
    """Logpush `http_requests`: EdgeStartTimestamp as Unix nanoseconds, RFC 3339 or Unix seconds
    (the job's `timestamp_format`), rotating per line."""
    out = []
    for i, r in enumerate(reqs):
        kind = i % 3
        start: object = (r.epoch_us * 1000 + 123 if kind == 0 else
                         r.ts.strftime("%Y-%m-%dT%H:%M:%SZ") if kind == 1 else r.epoch_us // 1_000_000)
        rec = {
            "ClientIP": r.client_ip, "ClientRequestHost": r.host, "ClientRequestMethod": r.method,
            "ClientRequestURI": r.target, "ClientRequestPath": r.path, "ClientRequestScheme": r.scheme,
            "ClientRequestProtocol": "HTTP/2", "ClientRequestUserAgent": r.user_agent,
            "ClientRequestReferer": r.referer or "", "EdgeStartTimestamp": start,
            "EdgeEndTimestamp": start, "EdgeResponseStatus": r.status, "EdgeResponseBytes": r.bytes,
            "EdgeResponseContentType": r.content_type, "EdgeTimeToFirstByteMs": r.duration_ms,
            "OriginResponseDurationMs": max(r.duration_ms - 5, 0), "RayID": f"7c0a1b2c3d{i:06x}",
            "CacheCacheStatus": "hit", "ClientCountry": "us", "ClientASN": 7922, "BotScore": 1,
            "VerifiedBotCategory": "", "SecurityAction": "unknown",
        }
        out.append((json.dumps(rec, ensure_ascii=False, separators=(",", ":")),
                    expected(r, ts=r.ts if kind == 0 else _sec(r))))
    return out


FASTLY_NAMES = {  # the default-ish names of Fastly's JSON logging endpoints (New Relic, BetterStack)
    "time": "timestamp", "client_ip": "client_ip", "host": "host", "target": "url", "method": "request_method",
    "status": "response_status", "user_agent": "request_user_agent", "referer": "request_referer",
    "bytes": "response_body_size", "content_type": "response_content_type", "duration": "time_elapsed",
}


def fastly_json(reqs: list[Request], names: dict[str, str] | None = None) -> list[Line]:
    """Fastly's JSON logging: the customer chooses the field names (`names`: raw field -> key)."""
    k = names or FASTLY_NAMES
    out = []
    for r in reqs:
        rec = {k["time"]: _iso_local(r, colon=False), k["client_ip"]: r.client_ip, "geo_country": "united states",
               k["host"]: r.host, k["target"]: r.target, k["method"]: r.method, "request_protocol": "HTTP/2",
               k["referer"]: r.referer or "", k["user_agent"]: r.user_agent, "response_state": "HIT",
               k["status"]: r.status, "response_reason": "OK", k["bytes"]: r.bytes,
               k["content_type"]: r.content_type, k["duration"]: r.duration_ms * 1000, "is_ipv6": ":" in r.client_ip}
        out.append((json.dumps(rec, ensure_ascii=False), expected(r, ts=_sec(r), url=f"https://{r.host}{r.target}")))
    return out


def vercel(reqs: list[Request]) -> list[Line]:
    """Log drain NDJSON: request lines carry `proxy` (user agent as an array); every tenth line
    is a function's console output, which is not a request."""
    out: list[Line] = []
    for i, r in enumerate(reqs):
        ms = r.epoch_us // 1000
        if i % 10 == 9:
            out.append((json.dumps({"id": f"1573817187330377061717300000{i}", "deploymentId": "dpl_233NRGRjVZX1caZrXWtz5g1TAksD",
                                    "source": "lambda", "host": "my-app-abc123.vercel.app", "timestamp": ms,
                                    "projectId": "prj_X", "level": "info", "message": "cache revalidated",
                                    "type": "stdout"}), "not a request record"))
        proxy = {"timestamp": ms, "method": r.method, "scheme": r.scheme, "host": r.host, "path": r.target,
                 "userAgent": [r.user_agent], "statusCode": r.status, "clientIp": r.client_ip, "region": "iad1",
                 "responseByteSize": r.bytes, "cacheId": "pdx1::v8g4b-1700000000000-aaaa", "vercelCache": "HIT"}
        if r.referer:
            proxy["referer"] = r.referer
        rec = {"id": f"1573817187330377061717300001{i}", "deploymentId": "dpl_233NRGRjVZX1caZrXWtz5g1TAksD",
               "source": "edge", "host": "my-app-abc123.vercel.app", "timestamp": ms, "projectId": "prj_X",
               "level": "info", "proxy": proxy}
        out.append((json.dumps(rec, ensure_ascii=False), expected(r, ts=_ms(r), duration_ms=None, content_type=None)))
    return out


# --- Clouds -------------------------------------------------------------------------------------


def gcp_lb(reqs: list[Request]) -> list[Line]:
    """Cloud Logging LogEntry of an external HTTP(S) load balancer: RFC 3339 with nanoseconds,
    `httpRequest.latency` as "0.123s", `responseSize` as a string (int64 in JSON)."""
    out = []
    for i, r in enumerate(reqs):
        http = {"requestMethod": r.method, "requestUrl": f"{r.scheme}://{r.host}{r.target}", "requestSize": "412",
                "status": r.status, "responseSize": str(r.bytes), "userAgent": r.user_agent,
                "remoteIp": r.client_ip, "serverIp": "10.128.0.2", "latency": f"{r.duration_ms / 1000}s",
                "protocol": "HTTP/1.1"}
        if r.referer:
            http["referer"] = r.referer
        rec = {"insertId": f"1o9ijkf{i}", "jsonPayload": {"@type": "type.googleapis.com/google.cloud.loadbalancing.type.LoadBalancerLogEntry",
                                                          "statusDetails": "response_sent_by_backend"},
               "httpRequest": http, "resource": {"type": "http_load_balancer", "labels": {"project_id": "acme"}},
               "timestamp": r.ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z", "severity": "INFO",
               "logName": "projects/acme/logs/requests", "receiveTimestamp": r.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        out.append((json.dumps(rec, ensure_ascii=False), expected(r, content_type=None)))
    return out


def azure_front_door(reqs: list[Request]) -> list[Line]:
    """FrontDoorAccessLog records (one JSON object per line, as exported to storage): string
    numbers, an absolute `requestUri` with the port, seven fractional digits in `time`."""
    out = []
    for r in reqs:
        port = 443 if r.scheme == "https" else 80
        props = {"trackingReference": "08Q1NZQAAAAD", "httpMethod": r.method, "httpVersion": "1.1.0.0",
                 "requestUri": f"{r.scheme}://{r.host}:{port}{r.target}", "hostName": r.host, "requestBytes": "412",
                 "responseBytes": str(r.bytes), "userAgent": r.user_agent, "clientIp": r.client_ip,
                 "clientPort": "51234", "socketIp": r.client_ip, "timeToFirstByte": "0.01",
                 "timeTaken": f"{r.duration_ms / 1000}", "requestProtocol": r.scheme.upper(),
                 "securityProtocol": "TLS 1.3", "httpStatusCode": str(r.status), "httpStatusDetails": str(r.status),
                 "pop": "AMS", "cacheStatus": "HIT", "errorInfo": "NoError", "referer": r.referer or ""}
        rec = {"time": r.ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "7Z",
               "resourceId": "/SUBSCRIPTIONS/X/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CDN/PROFILES/ACME",
               "category": "FrontDoorAccessLog", "operationName": "Microsoft.Cdn/Profiles/AccessLog/Write",
               "properties": props}
        out.append((json.dumps(rec, ensure_ascii=False), expected(r, content_type=None)))
    return out


IIS_FIELDS = ["date", "time", "s-ip", "cs-method", "cs-uri-stem", "cs-uri-query", "s-port", "cs-username", "c-ip", "cs(User-Agent)", "cs(Referer)", "cs-host", "sc-status", "sc-substatus", "sc-win32-status", "sc-bytes", "time-taken"]
IIS_FIELDS_AFTER_RESTART = ["date", "time", "s-sitename", "s-ip", "cs-method", "cs-uri-stem", "cs-uri-query", "s-port", "c-ip", "cs-version", "cs(User-Agent)", "cs(Referer)", "cs-host", "sc-status", "sc-bytes", "time-taken"]


def iis(reqs: list[Request]) -> list[Line]:
    """IIS W3C: space-separated, `+` for spaces, UTC; the server restarts halfway and writes a new
    header with other fields, as IIS does."""
    out: list[Line] = []
    half = len(reqs) // 2
    for i, r in enumerate(reqs):
        if i in (0, half):
            fields = IIS_FIELDS if i == 0 else IIS_FIELDS_AFTER_RESTART
            out += [("#Software: Microsoft Internet Information Services 10.0", "header"), ("#Version: 1.0", "header"),
                    (f"#Date: {r.ts:%Y-%m-%d %H:%M:%S}", "header"), ("#Fields: " + " ".join(fields), "header")]
        ua = r.user_agent.replace(" ", "+")
        v = {"date": f"{r.ts:%Y-%m-%d}", "time": f"{r.ts:%H:%M:%S}", "s-sitename": "W3SVC1", "s-ip": "10.0.0.4",
             "cs-method": r.method, "cs-uri-stem": r.path, "cs-uri-query": r.query or "-", "s-port": "443",
             "cs-username": "-", "c-ip": r.client_ip, "cs-version": "HTTP/1.1", "cs(User-Agent)": ua,
             "cs(Referer)": r.referer or "-", "cs-host": r.host, "sc-status": str(r.status), "sc-substatus": "0",
             "sc-win32-status": "0", "sc-bytes": str(r.bytes), "time-taken": str(r.duration_ms)}
        out.append((" ".join(v[f] for f in fields), expected(r, ts=_sec(r), content_type=None,
                                                             user_agent=ua.replace("+", " "),
                                                             url=f"https://{r.host}{r.target}")))
    return out


def scrunch_csv(reqs: list[Request]) -> list[Line]:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["timestamp", "domain", "user_agent", "url", "path", "method", "status_code",
                "response_time_ms", "ip_address"])
    out: list[Line] = [(buf.getvalue().rstrip("\n"), "header")]
    for r in reqs:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([r.epoch_us // 1_000_000, r.host, r.user_agent, f"{r.scheme}://{r.host}{r.target}", r.target,
                    r.method, r.status, r.duration_ms, r.client_ip])
        out.append((buf.getvalue().rstrip("\n"), expected(r, ts=_sec(r), bytes=None, referer=None, content_type=None)))
    return out


RENDERERS: dict[str, Callable[[list[Request]], list[Line]]] = {
    "combined": combined, "nginx_main": nginx_main, "common": common, "vhost_combined": vhost_combined, "nginx_json": nginx_json,
    "caddy_json": caddy_json, "cloudfront": cloudfront, "alb": alb, "cloudflare": cloudflare,
    "fastly_json": fastly_json, "vercel": vercel, "gcp_lb": gcp_lb, "azure_front_door": azure_front_door,
    "iis": iis, "scrunch_csv": scrunch_csv,
}
#: Formats whose lines carry the request's host (the others belong to the source's site).
MULTI_HOST = {"vhost_combined", "nginx_json", "caddy_json", "cloudfront", "alb", "cloudflare", "fastly_json",
              "vercel", "gcp_lb", "azure_front_door", "iis", "scrunch_csv"}
#: Timestamps carried as binary floating point (Caddy's `ts`): compared to the microsecond +- 2.
FLOAT_TIME = {"caddy_json"}


def render(fmt: str, reqs: list[Request]) -> tuple[bytes, list[object]]:
    """The object's bytes and, per line, the expected outcome."""
    lines = RENDERERS[fmt](reqs)
    return ("\n".join(t for t, _ in lines) + "\n").encode("utf-8"), [e for _, e in lines]


def big_lines(fmt: str, n: int, *, seed: int = 0, batch: int = 20_000) -> Iterator[bytes]:
    """A large object's bytes, in pieces, for benchmarks (realistic, not a repeated line): one
    header at the top (IIS writes a new one at each restart, here every `batch` lines)."""
    for start in range(0, n, batch):
        lines = RENDERERS[fmt](requests(min(batch, n - start), seed=seed + start))
        if start and fmt in ("cloudfront", "scrunch_csv"):
            lines = [ln for ln in lines if ln[1] != "header"]
        yield ("\n".join(t for t, _ in lines) + "\n").encode("utf-8")
