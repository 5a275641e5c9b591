"""Known Agents (formerly Dark Visitors) visits API (seed 003; vendor-contracts.md).

POST {base}/visits with `Authorization: Bearer <project access token>`, `Content-Type:
application/json`, body a JSON array of visits (one object is allowed too; we always send an
array). A visit is the request as the site saw it: `request_path` (with the query),
`request_method`, `request_headers` (user-agent, referer, and the client IP as
`x-forwarded-for` where the destination's IP policy allows), `response_status_code`,
`response_duration_in_milliseconds`. Known Agents stamps the time it receives a visit.

VERIFY items are settings with safe defaults: no batch limit is published, so batches stay
modest (`max_batch_events` 100, `max_batch_bytes` 512,000); their SDK also sends `created` and
`response_headers` that the REST page does not show, sent only with `send_sdk_fields: true`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agent_traffic.config import Destination, Site
from agent_traffic.secrets import Secret
from agent_traffic.vendors.base import Vendor, apply_ip_policy, path_with_query

IP_HEADER = "x-forwarded-for"


class KnownAgents(Vendor):
    name = "knownagents"
    title = "Known Agents"
    success = frozenset({200, 201, 202})
    group_scale = 5  # a hundred visits per request
    columns = ("path", "query", "method", "user_agent", "referer", "client_ip", "status", "duration_ms",
               "content_type")

    def event(self, row: Mapping[str, Any], site: Site, dest: Destination) -> dict[str, Any]:
        headers: dict[str, str] = {"user-agent": row["user_agent"]}
        if row.get("referer"):
            headers["referer"] = row["referer"]
        ip = apply_ip_policy(row.get("client_ip"), dest.ip_policy)
        if ip:
            headers[IP_HEADER] = ip
        out: dict[str, Any] = {
            "request_path": path_with_query(row),
            "request_method": row["method"],
            "request_headers": headers,
            "response_status_code": int(row["status"]),
        }
        if row.get("duration_ms") is not None:
            out["response_duration_in_milliseconds"] = int(round(row["duration_ms"]))
        if dest.send_sdk_fields:
            if row.get("content_type"):
                out["response_headers"] = {"content-type": row["content_type"]}
            created = datetime.fromtimestamp(row["ts_us"] / 1e6, UTC)
            out["created"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return out

    def body(self, lines: Sequence[bytes]) -> tuple[bytes, str]:
        return b"[" + b",".join(lines) + b"]", "application/json"

    def url(self, dest: Destination) -> str:
        return f"{dest.endpoint_base}/visits"

    def auth_headers(self, secret: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret.reveal()}"}

    def limits(self, dest: Destination) -> tuple[int, int]:
        return dest.max_batch_bytes - 1, dest.max_batch_events  # the brackets: one byte more than n separators
