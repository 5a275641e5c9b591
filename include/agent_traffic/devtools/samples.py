"""Realistic sample access logs: the demo's input, and the tests' and benchmarks' fixtures.

Deterministic for a seed. The user agents are the agents' documented strings and common browsers;
a few malformed lines are mixed in so quarantine has something to show.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from pathlib import Path

# (user agent, weight). Documented strings of each agent, where its operator publishes one.
USER_AGENTS: list[tuple[str, int]] = [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36", 300),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15", 150),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", 150),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0", 80),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", 60),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 60),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", 30),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", 20),
    ("curl/8.5.0", 10),
    ("python-requests/2.32.3", 10),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)", 40),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; OAI-SearchBot/1.0; +https://openai.com/searchbot", 15),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; +https://openai.com/bot", 20),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; ClaudeBot/1.0; +claudebot@anthropic.com)", 30),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Claude-User/1.0; +Claude-User@anthropic.com)", 8),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; PerplexityBot/1.0; +https://perplexity.ai/perplexitybot)", 12),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Perplexity-User/1.0; +https://perplexity.ai/perplexity-user)", 6),
    ("Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)", 10),
    ("CCBot/2.0 (https://commoncrawl.org/faq/)", 6),
    ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Amazonbot/0.1; +https://developer.amazon.com/support/amazonbot) Chrome/119.0.6045.214 Safari/537.36", 8),
    ("meta-externalagent/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)", 8),
]

PATHS = ["/", "/pricing", "/docs/getting-started", "/docs/api", "/blog/ai-crawlers-explained",
         "/blog/2026/11/release-notes", "/about", "/robots.txt", "/sitemap.xml", "/llms.txt",
         "/static/app.js", "/static/logo.png", "/search?q=agents", "/products/widget?id=42"]
STATUSES = [(200, 85), (304, 5), (301, 2), (404, 6), (500, 1), (503, 1)]
REFERERS = ["-", "-", "-", "https://www.google.com/", "https://chatgpt.com/", "https://www.perplexity.ai/"]
MALFORMED = [
    'this is not an access log line',
    '10.0.0.9 - - [32/Foo/2026:99:99:99 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/8.5.0"',
    '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03',
]


#: UA token -> the shipped IP-range list of its operator (data/ip_ranges/index.json)
CRAWLER_LISTS = {
    "GPTBot": "openai-gptbot", "OAI-SearchBot": "openai-searchbot", "ChatGPT-User": "openai-chatgpt-user",
    "ClaudeBot": "anthropic-bots", "Claude-User": "anthropic-bots", "PerplexityBot": "perplexity-bot",
    "Perplexity-User": "perplexity-user", "CCBot": "commoncrawl-ccbot", "Googlebot": "google-common-crawlers",
    "bingbot": "microsoft-bingbot",
}
SPOOF_RATE = 0.05  # share of crawler requests sent from an address outside the operator's ranges


@lru_cache(maxsize=1)
def _published_v4() -> dict[str, list[ipaddress.IPv4Network]]:
    """IPv4 networks of the shipped range lists, so sample crawlers come from real addresses."""
    folder = resources.files("agent_traffic").joinpath("data/ip_ranges")
    index = json.loads(folder.joinpath("index.json").read_text("utf-8"))["lists"]
    out = {}
    for list_id, meta in index.items():
        doc = json.loads(folder.joinpath(meta["file"]).read_text("utf-8"))
        out[list_id] = [ipaddress.IPv4Network(p["ipv4Prefix"]) for p in doc.get("prefixes", []) if "ipv4Prefix" in p]
    return out


def _client_ip(rng: random.Random, ua: str) -> str:
    token = next((t for t in CRAWLER_LISTS if t in ua), None)
    nets = _published_v4().get(CRAWLER_LISTS[token], []) if token else []
    if nets and rng.random() >= SPOOF_RATE:
        net = rng.choice(nets)
        return str(net.network_address + rng.randrange(net.num_addresses))
    return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def combined_lines(
    day: date, n: int, *, seed: int = 0, malformed_every: int = 997, tag: str | None = None
) -> Iterator[str]:
    """n combined-format lines spread over the day (UTC), in time order.

    With `tag`, every path carries `seq=<tag>-<i>` in its query, so a test can tell each
    delivered event apart and count missing ones and duplicates.
    """
    rng = random.Random(f"{seed}:{day.isoformat()}")
    uas, uw = zip(*USER_AGENTS, strict=True)
    sts, sw = zip(*STATUSES, strict=True)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    step = 86400 / max(n, 1)
    for i in range(n):
        if malformed_every and i % malformed_every == malformed_every - 1:
            yield MALFORMED[(i // malformed_every) % len(MALFORMED)]
            continue
        ts = start + timedelta(seconds=int(i * step))
        ua = rng.choices(uas, uw)[0]
        ip = _client_ip(rng, ua)
        status = rng.choices(sts, sw)[0]
        size = 0 if status == 304 else rng.randint(200, 90_000)
        path = rng.choice(PATHS)
        if tag is not None:
            path += f"{'&' if '?' in path else '?'}seq={tag}-{i}"
        yield (f'{ip} - - [{ts.strftime("%d/%b/%Y:%H:%M:%S +0000")}] "GET {path} HTTP/1.1" '
               f'{status} {size} "{rng.choice(REFERERS)}" "{ua}"')


def gzip_log(lines: Iterator[str] | list[str]) -> bytes:
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=6, mtime=0)


def write_day(
    root: Path, day: date, *, lines: int = 40_000, files: int = 4, seed: int = 0, tag: str | None = None
) -> list[Path]:
    """Write one day of gzip logs as root/YYYY/MM/DD/access-N.log.gz; returns the paths."""
    folder = root / f"{day:%Y/%m/%d}"
    folder.mkdir(parents=True, exist_ok=True)
    all_lines = list(combined_lines(day, lines, seed=seed, tag=tag))
    per = -(-len(all_lines) // files)
    out = []
    for i in range(files):
        p = folder / f"access-{i}.log.gz"
        p.write_bytes(gzip_log(all_lines[i * per : (i + 1) * per]))
        out.append(p)
    return out
