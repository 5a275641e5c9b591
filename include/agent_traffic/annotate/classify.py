"""Classify user-agent strings with the agent catalog.

The pipeline classifies each *distinct* user agent once per run (`classify_many`) and joins the
result back onto the events in DuckDB (`to_arrow_table`), so the per-string cost matters less
than being exact and deterministic.

Matching rules:

- A catalog token matches as a whole token, case-insensitively: the characters before and after
  it must not be a letter, digit, `-` or `_`. So `Claude-User` is not `ClaudeBot`,
  `OAI-SearchBot` is not `GPTBot`, `Amzn-SearchBot` is not `Amazonbot` and `NotGPTBot2` matches
  nothing. An agent with a `pattern` is matched by that regex instead of its tokens.
- Robots-only agents (Google-Extended, Applebot-Extended) never match traffic.
- When several agents match one string, precedence decides: higher `priority`, then the longer
  matched text, then the earlier catalog entry.
- No match: the client shapes of `data/clients.yaml` decide (`clients.py`): a bot marker (a URL,
  an e-mail, `compatible;` with a non-browser name, a bot word) makes an `Unknown Bot`; an app's
  HTTP stack (Dalvik, CFNetwork) an `App` (not a bot, not AI); a browser shape, including
  in-app, proxy, feature-phone and text browsers, a human `Browser`; anything else, including
  empty and `-`, an `Unknown Bot`. A catalog agent of category `App` or `Browser` (okhttp) is
  not a bot either.

All tokens and patterns are compiled into ONE regex. Tokens form a character trie (fast in
Python's engine, which has no trie optimisation of its own); the regex is a zero-width lookahead
tried at every token boundary, so overlapping candidates are all seen, and each hit position
reports the longest token there plus every pattern that matches there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from agent_traffic.annotate.catalog import (
    APP,
    BROWSER,
    TOKEN_BOUNDARY,
    UNKNOWN_BOT,
    Agent,
    Catalog,
    load_catalog,
    wrap_pattern,
)
from agent_traffic.annotate.clients import ClientKind, load_client_shapes

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "APP_CLIENT",
    "COLUMNS",
    "HUMAN",
    "MAX_UA_CHARS",
    "UNKNOWN",
    "Classification",
    "Classifier",
    "arrow_schema",
    "looks_like_browser",
    "to_arrow_table",
]


@dataclass(frozen=True)
class Classification:
    """What one user-agent string is; the columns the stage adds to every event."""

    agent: str
    provider: str
    category: str
    purpose: str
    scrunch_type: str | None
    cloudflare_category: str | None
    is_ai: bool
    is_bot: bool


HUMAN = Classification("human", "none", BROWSER, "none", None, None, False, False)
UNKNOWN = Classification("unknown", "unknown", UNKNOWN_BOT, "none", None, None, False, True)
APP_CLIENT = Classification("app", "none", APP, "none", None, None, False, False)
_BY_KIND = {ClientKind.BROWSER: HUMAN, ClientKind.APP: APP_CLIENT, ClientKind.BOT: UNKNOWN}

COLUMNS: tuple[str, ...] = (
    "user_agent",
    "agent",
    "provider",
    "category",
    "purpose",
    "scrunch_type",
    "cloudflare_category",
    "is_ai",
    "is_bot",
)

# Only the first 2 KiB of a user agent is matched: bounds the cost of hostile, huge headers.
MAX_UA_CHARS = 2048


def looks_like_browser(user_agent: str) -> bool:
    """True for a human browser's shape (`data/clients.yaml`): used only when no catalog agent
    matched."""
    return load_client_shapes().kind(user_agent) is ClientKind.BROWSER


class Classifier:
    """Classifies user-agent strings with one compiled regex built from a catalog."""

    def __init__(self, catalog: Catalog | None = None, *, cache_size: int = 100_000) -> None:
        self.catalog = catalog if catalog is not None else load_catalog()
        self._agents: list[Agent] = [a for a in self.catalog.agents if not a.robots_only]
        self._results = [_classification(a) for a in self._agents]
        # Precedence key parts per agent index: (-priority, catalog order).
        self._rank = [(-a.priority, i) for i, a in enumerate(self._agents)]
        self._token_owner: dict[str, int] = {}
        self._patterns: list[tuple[str, int]] = []  # (group name, agent index)
        for i, agent in enumerate(self._agents):
            if agent.pattern:
                self._patterns.append((f"p{len(self._patterns)}", i))
            else:
                for tok in agent.tokens:
                    self._token_owner.setdefault(tok.lower(), i)
        self._prefixes = _boundary_prefixes(self._token_owner)
        self._regex = self._compile()
        self._shapes = load_client_shapes()
        self._cached = lru_cache(maxsize=cache_size)(self._classify_uncached)

    def _compile(self) -> re.Pattern[str] | None:
        b = TOKEN_BOUNDARY
        branches: list[str] = []
        captures: list[str] = []
        if self._token_owner:
            lit = f"{_trie_regex(self._token_owner)}(?!{b})"
            branches.append(lit)
            captures.append(f"(?:(?=(?P<t>{lit})))?")
        for group, i in self._patterns:
            pat = wrap_pattern(self._agents[i].pattern or "")
            branches.append(pat)
            captures.append(f"(?:(?=(?P<{group}>{pat})))?")
        if not branches:
            return None
        return re.compile(f"(?<!{b})(?={'|'.join(branches)}){''.join(captures)}", re.ASCII)

    # -- public API -----------------------------------------------------------------------------

    def classify(self, user_agent: str | None) -> Classification:
        """Classify one user-agent string (results are cached per distinct string)."""
        return self._cached(user_agent or "")

    def classify_many(self, user_agents: Iterable[str]) -> dict[str, Classification]:
        """Classify each distinct string once, keyed by the string exactly as given (so the
        caller can join on it); a None is classified like "" (Unknown Bot)."""
        out: dict[str, Classification] = {}
        for ua in user_agents:
            if ua not in out:
                out[ua] = self._cached(ua or "")
        return out

    def matches(self, user_agent: str) -> list[tuple[Agent, str]]:
        """Every matching agent with its matched text, best first: for debugging precedence."""
        best: dict[int, tuple[tuple[int, int, int], str]] = {}
        for idx, text in self._candidates(_prepare(user_agent)):
            key = self._key(idx, text)
            if idx not in best or key < best[idx][0]:
                best[idx] = (key, text)
        ranked = sorted(best.items(), key=lambda kv: kv[1][0])
        return [(self._agents[idx], text) for idx, (_, text) in ranked]

    def cache_info(self) -> Any:
        """The lru_cache statistics of `classify`."""
        return self._cached.cache_info()

    # -- internals ------------------------------------------------------------------------------

    def _key(self, idx: int, text: str) -> tuple[int, int, int]:
        neg_priority, order = self._rank[idx]
        return (neg_priority, -len(text), order)

    def _candidates(self, text: str) -> Iterable[tuple[int, str]]:
        if self._regex is None or not text:
            return
        for m in self._regex.finditer(text):
            tok = m.group("t") if self._token_owner else None
            if tok:
                low = tok.lower()
                yield self._token_owner[low], tok
                for prefix in self._prefixes.get(low, ()):
                    yield self._token_owner[prefix], tok[: len(prefix)]
            for group, idx in self._patterns:
                hit = m.group(group)
                if hit is not None:
                    yield idx, hit

    def _classify_uncached(self, user_agent: str) -> Classification:
        text = _prepare(user_agent)
        if not text or text == "-":
            return UNKNOWN
        best: tuple[tuple[int, int, int], int] | None = None
        for idx, hit in self._candidates(text):
            key = self._key(idx, hit)
            if best is None or key < best[0]:
                best = (key, idx)
        if best is not None:
            return self._results[best[1]]
        return _BY_KIND[self._shapes.kind(text)]


def _prepare(user_agent: str) -> str:
    return user_agent.strip()[:MAX_UA_CHARS]


def _classification(agent: Agent) -> Classification:
    return Classification(
        agent=agent.name,
        provider=agent.provider,
        category=agent.category,
        purpose=agent.purpose,
        scrunch_type=agent.scrunch_type,
        cloudflare_category=agent.cloudflare_category,
        is_ai=agent.ai,
        is_bot=agent.is_bot,
    )


def _trie_regex(tokens: Iterable[str]) -> str:
    """A regex matching any of the (lower-case) tokens, as a character trie.

    ASCII letters become `[Xx]` classes rather than relying on IGNORECASE: Python's engine only
    skips a failing alternative quickly when it starts with a literal or a class. Optional tails
    are greedy, so the longest token is tried first and shorter ones on backtracking.
    """
    trie: dict[str, Any] = {}
    for tok in tokens:
        node = trie
        for ch in tok:
            node = node.setdefault(ch, {})
        node[""] = {}

    def char(ch: str) -> str:
        if "a" <= ch <= "z":
            return f"[{ch.upper()}{ch}]"
        return re.escape(ch)

    def emit(node: dict[str, Any]) -> str:
        # Each alternative is a plain sequence (no top-level `|`), so concatenation is safe.
        alts = [char(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        optional = "" in node
        if len(alts) == 1 and not optional:
            return alts[0]
        return f"(?:{'|'.join(alts)})" + ("?" if optional else "")

    return emit(trie)


def _boundary_prefixes(tokens: Mapping[str, int]) -> dict[str, tuple[str, ...]]:
    """For each token, the shorter tokens that also match where it matches.

    The trie reports only the longest token at a position; a shorter token that is a prefix of it
    and is followed there by a boundary character (e.g. `foo` inside `foo bar`) is a match too.
    """
    boundary = re.compile(TOKEN_BOUNDARY)
    order = {tok: i for i, tok in enumerate(tokens)}  # prefixes listed in the tokens' order
    out: dict[str, tuple[str, ...]] = {}
    for long in tokens:
        found = sorted((long[:k] for k in range(1, len(long))
                        if long[:k] in order and not boundary.fullmatch(long[k])), key=order.__getitem__)
        if found:
            out[long] = tuple(found)
    return out


def arrow_schema() -> pa.Schema:
    """The Arrow schema of `to_arrow_table`: one row per distinct user agent."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("user_agent", pa.string(), nullable=False),
            pa.field("agent", pa.string(), nullable=False),
            pa.field("provider", pa.string(), nullable=False),
            pa.field("category", pa.string(), nullable=False),
            pa.field("purpose", pa.string(), nullable=False),
            pa.field("scrunch_type", pa.string()),
            pa.field("cloudflare_category", pa.string()),
            pa.field("is_ai", pa.bool_(), nullable=False),
            pa.field("is_bot", pa.bool_(), nullable=False),
        ]
    )


def to_arrow_table(mapping: Mapping[str, Classification]) -> pa.Table:
    """`classify_many`'s result as a pyarrow Table, ready to join on `user_agent` in DuckDB."""
    import pyarrow as pa

    items = list(mapping.items())
    columns: dict[str, list[Any]] = {"user_agent": [ua for ua, _ in items]}
    for name in COLUMNS[1:]:
        columns[name] = [getattr(c, name) for _, c in items]
    return pa.table(columns, schema=arrow_schema())
