"""HitKeep AI fetch ingest (behaviour read from HitKeep 2.8.1; docs/destinations.md).

POST {instance}/api/sites/{site_uuid}/ingest/ai-fetch with `Authorization: Bearer`. One JSON
object per request (an array is a 400), body at most 64 KiB, 202 Accepted on success. There is no
timestamp field (HitKeep stamps the time it receives the row) and no IP field: an IP is never
sent, whatever the destination's `ip_policy`. HitKeep answers 400 to any user agent its own
classifier does not know, so only those agents are eligible: the others are counted "not
eligible for HitKeep" at planning time and never sent. Its 429 carries no Retry-After, so the
client limits its own rate (see `ratelimit.py`) and backs off with jitter on a 429.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.arrow_values import distinct, scalar, strings
from agent_traffic.config import Destination, Site
from agent_traffic.delivery.vendors import json_columns as jc
from agent_traffic.delivery.vendors.base import Vendor, path_with_query
from agent_traffic.delivery.vendors.json_columns import Field
from agent_traffic.secrets import Secret

#: HitKeep 2.8.1's AI classifier: lowercased substrings of the user agent (first match wins).
#: A destination's `eligible_user_agents` replaces it, for an instance that knows more agents.
HITKEEP_AI_TOKENS: tuple[str, ...] = (
    "chatgpt-user", "gptbot", "claudebot", "claude-web", "perplexitybot", "google-extended",
    "googleother", "google-safety", "applebot-extended", "bytespider", "ccbot",
    "meta-externalagent", "meta-externalfetcher", "amazonbot", "cohere-ai", "youbot", "ai2bot",
    "diffbot", "timpibot", "imagesiftbot", "deepseekbot", "petalbot",
)  # fmt: skip


def _positive_int(values: pa.Array) -> pa.Array:
    """HitKeep stores response_ms and bytes_served only when > 0: omit anything else."""
    rounded = pc.round(values, 0, round_mode="half_to_even")
    return jc.integer(jc.only_where(pc.greater(rounded, scalar(0, rounded.type)), rounded))


def accepts(user_agent: str, tokens: Sequence[str] = HITKEEP_AI_TOKENS) -> bool:
    """Whether HitKeep's classifier knows this user agent (lowercased substring match)."""
    lowered = user_agent.lower()
    return any(t in lowered for t in tokens)


class HitKeep(Vendor):
    success = frozenset({202})  # anything else, a 200 from a proxy's page included, is not stored
    group_scale = 25  # one event per request
    chunks_per_lease = 20
    columns = ("path", "query", "host", "status", "content_type", "duration_ms", "bytes", "user_agent")
    reads = ("agent",)

    def fields(self, table: pa.Table, site: Site, dest: Destination) -> list[Field]:
        n, col = table.num_rows, partial(jc.column, table)
        host, ctype = col("host"), col("content_type")
        return [
            ("path", jc.required(jc.text(path_with_query(table)))),
            ("hostname", pc.if_else(jc.present(host), jc.string(host), jc.constant(site.domain, n))),
            ("status_code", jc.integer(col("status", pa.int64()))),
            ("content_type", jc.text(jc.only_where(jc.present(ctype), ctype))),
            ("response_ms", _positive_int(col("duration_ms", pa.float64()))),
            ("bytes_served", _positive_int(col("bytes", pa.float64()))),
            ("user_agent", jc.required(jc.text(col("user_agent")))),
        ]

    def body(self, joined: bytes, events: int) -> tuple[bytes, str]:
        if events != 1:
            raise ValueError(f"HitKeep takes one event per request, not {events}")
        return joined[:-1], "application/json"

    def url(self, dest: Destination) -> str:
        return f"{dest.endpoint_base}/api/sites/{dest.site_id}/ingest/ai-fetch"

    def auth_headers(self, secret: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret.reveal()}"}

    def limits(self, dest: Destination) -> tuple[int, int]:
        return dest.max_batch_bytes + 1, 1  # the spec's max_request caps it; +1: the planner counts a separator

    def ineligible(self, table: pa.Table, dest: Destination) -> pa.Array:
        """`not eligible for HitKeep (<agent>)` for agents its classifier would refuse with a 400."""
        tokens = tuple(t.lower() for t in (dest.eligible_user_agents or HITKEEP_AI_TOKENS))
        refused = {ua: f"not eligible for HitKeep ({agent or 'unknown agent'})"
                   for ua, agent in distinct(table["user_agent"], table["agent"]) if not accepts(ua or "", tokens)}
        if not refused:
            return pa.nulls(table.num_rows, pa.string())
        idx = pc.index_in(table["user_agent"], value_set=strings(list(refused)))
        return pc.take(strings(list(refused.values())), idx)
