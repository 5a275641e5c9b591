"""Three vendors, two sites, one config: the setup the delivery tests share.

Sample logs carry a unique `seq=<tag>-<i>` per line, so what the receiver accepted can be matched
to the generator line by line. The expected outcome of every line is worked out here from the
generator and HitKeep's documented token list, independently of the pipeline under test.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_traffic.devtools.samples import combined_lines, write_day
from agent_traffic.devtools.sandbox import PROTOCOLS, Sandbox
from tests.conftest import write_config

DAY = date(2026, 11, 21)
#: Six hours after the day ended: every event of DAY is younger than the default 48 h.
FRESH = datetime(2026, 11, 22, 6, tzinfo=UTC)
SCRUNCH_SITE = "01JDEM0SANDB0X0000000000AA"
HK_SITE = "3f1c2a9e-4b6d-4e8f-9a0b-1c2d3e4f5a6b"
HK_BLOG = "9b2d7c1e-0a4f-4c3b-8e5d-6f7a8b9c0d1e"
MAIN_LINES, BLOG_LINES = 3000, 800

#: destination -> environment variable of its key (each destination has its own key)
KEY_ENVS = {
    "scrunch-example": "SCRUNCH_API_KEY_EXAMPLE",
    "hitkeep-example": "HITKEEP_KEY_EXAMPLE",
    "knownagents-example": "KNOWNAGENTS_KEY_EXAMPLE",
    "hitkeep-blog": "HITKEEP_KEY_BLOG",
    "knownagents-blog": "KNOWNAGENTS_KEY_BLOG",
}
HITKEEP_TOKENS = (  # HitKeep's page (seed 002), copied here so the test does not trust the code
    "chatgpt-user", "gptbot", "claudebot", "claude-web", "perplexitybot", "google-extended", "googleother",
    "google-safety", "applebot-extended", "bytespider", "ccbot", "meta-externalagent", "meta-externalfetcher",
    "amazonbot", "cohere-ai", "youbot", "ai2bot", "diffbot", "timpibot", "imagesiftbot", "deepseekbot", "petalbot",
)
SEQ = re.compile(r"seq=([a-z0-9]+-\d+)")


def keys() -> dict[str, str]:
    """A fresh, distinct key per destination."""
    import secrets

    return {d: f"{d}-{secrets.token_hex(12)}" for d in KEY_ENVS}


def fast_hitkeep(sb: Sandbox, rate: float = 2000.0) -> None:
    """Raise the receiver's HitKeep limit, for tests about something else than the limit."""
    sb.register_protocol(dataclasses.replace(PROTOCOLS["hitkeep"], rate_limit=(rate, int(rate))))


@dataclass(frozen=True)
class Line:
    seq: str
    ts: datetime
    ua: str
    is_ai: bool
    hitkeep_ok: bool


def expected_lines(tag: str, n: int, seed: int = 0) -> list[Line]:
    """The generator's well-formed lines, with what each vendor should do with them."""
    from agent_traffic.annotate.catalog import load_catalog
    from agent_traffic.annotate.classify import Classifier

    clf = Classifier(load_catalog())
    out = []
    for line in combined_lines(DAY, n, seed=seed, tag=tag):
        m = SEQ.search(line)
        if not m:
            continue
        ua = line.rsplit('"', 2)[-2]
        ts = datetime.strptime(line.split("[", 1)[1].split("]", 1)[0], "%d/%b/%Y:%H:%M:%S %z").astimezone(UTC)
        out.append(Line(m.group(1), ts, ua, clf.classify(ua).is_ai, any(t in ua.lower() for t in HITKEEP_TOKENS)))
    return out


def write_logs(root: Path) -> tuple[str, str]:
    """Sample logs for both sites, written once (rewritten, they would be new object versions);
    returns their source URL patterns."""
    if not root.exists():
        write_day(root / "main", DAY, lines=MAIN_LINES, files=2, tag="a")
        write_day(root / "blog", DAY, lines=BLOG_LINES, files=1, seed=1, tag="b")
    pattern = "{date:%Y/%m/%d}/*.log.gz"
    return f"{root / 'main'}/{pattern}", f"{root / 'blog'}/{pattern}"


def three_vendor_config(path: Path, root: Path, base_url: str, *, delivery: dict | None = None,
                        hitkeep: dict | None = None, knownagents: dict | None = None,
                        scrunch: dict | None = None, select: str = "ai") -> Path:
    """example.com -> Scrunch, HitKeep, Known Agents; blog.example.org -> HitKeep, Known Agents."""
    main, blog = write_logs(root / "logs")
    hk = {"rate_limit_per_s": 2000, "rate_limit_burst": 2000, **(hitkeep or {})}  # see fast_hitkeep

    def dest(name: str, vendor: str, extra: dict | None, **kw: Any) -> dict[str, Any]:
        return {"name": name, "vendor": vendor, "base_url": base_url, "select": select,
                "secret": {"env": KEY_ENVS[name], "airflow_conn_id": name.replace("-", "_")}, **kw, **(extra or {})}

    return write_config(
        path, staging=str(root / "staging"), source_url=main, base_url=base_url, fmt="combined", select=select,
        delivery={"concurrency": 3, **(delivery or {})}, extra_dest=scrunch,
        more_destinations=[dest("hitkeep-example", "hitkeep", hk, site_id=HK_SITE),
                           dest("knownagents-example", "knownagents", knownagents)],
        sources=[{"name": "blog", "url": blog, "format": "combined", "site": "blog.example.org"}],
        sites=[{"name": "blog.example.org", "destinations": [
            dest("hitkeep-blog", "hitkeep", hk, site_id=HK_BLOG),
            dest("knownagents-blog", "knownagents", knownagents)]}],
    )


def received(sb: Sandbox) -> dict[str, Counter[str]]:
    """destination -> seq -> times the receiver accepted it (Known Agents has no site in its URL:
    the two sites' tags tell them apart)."""
    ka = Counter(SEQ.search(e["request_path"]).group(1) for e in sb.accepted("known_agents"))
    return {
        "scrunch-example": Counter(SEQ.search(e["url"]).group(1) for e in sb.accepted("scrunch", SCRUNCH_SITE)),
        "hitkeep-example": Counter(SEQ.search(e["path"]).group(1) for e in sb.accepted("hitkeep", HK_SITE)),
        "hitkeep-blog": Counter(SEQ.search(e["path"]).group(1) for e in sb.accepted("hitkeep", HK_BLOG)),
        "knownagents-example": Counter({s: n for s, n in ka.items() if s.startswith("a-")}),
        "knownagents-blog": Counter({s: n for s, n in ka.items() if s.startswith("b-")}),
    }


def received_from_disk(data_dir: Path) -> dict[str, Counter[str]]:
    """The same, from what a receiver in another process appended to its data dir."""
    def load(vendor: str, site: str, field: str) -> Counter[str]:
        return Counter(SEQ.search(e[field]).group(1) for e in Sandbox.load_accepted(data_dir, vendor, site))

    ka = load("known_agents", "default", "request_path")
    return {
        "scrunch-example": load("scrunch", SCRUNCH_SITE, "url"),
        "hitkeep-example": load("hitkeep", HK_SITE, "path"),
        "hitkeep-blog": load("hitkeep", HK_BLOG, "path"),
        "knownagents-example": Counter({s: n for s, n in ka.items() if s.startswith("a-")}),
        "knownagents-blog": Counter({s: n for s, n in ka.items() if s.startswith("b-")}),
    }


def wanted(max_age: timedelta | None = None, now: datetime = FRESH) -> dict[str, set[str]]:
    """destination -> the seqs it must receive (AI agents; HitKeep: its known ones; not too old)."""
    main, blog = expected_lines("a", MAIN_LINES), expected_lines("b", BLOG_LINES, seed=1)
    cutoff = now - max_age if max_age else None

    def fresh(x: Line) -> bool:
        return cutoff is None or x.ts >= cutoff

    return {
        "scrunch-example": {x.seq for x in main if x.is_ai},
        "hitkeep-example": {x.seq for x in main if x.is_ai and x.hitkeep_ok and fresh(x)},
        "knownagents-example": {x.seq for x in main if x.is_ai and fresh(x)},
        "hitkeep-blog": {x.seq for x in blog if x.is_ai and x.hitkeep_ok and fresh(x)},
        "knownagents-blog": {x.seq for x in blog if x.is_ai and fresh(x)},
    }
