"""Scrunch Agent Traffic API (seeds 000/001; ../shared/notes/vendor-contracts.md).

POST {base}/v1/sites/{site_id}/platforms/custom/web-traffic with `X-Api-Key`. One event is sent
as `application/json`; a batch as exactly `application/x-ndjson`, one object per line, under
1,000,000 bytes. `timestamp` is Unix seconds (a number: ISO 8601 is a 422), `status_code` an
integer. Scrunch takes historical timestamps, so it is the one destination that backfills.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent_traffic.config import Destination, Site
from agent_traffic.secrets import Secret
from agent_traffic.vendors.base import Vendor, apply_ip_policy


def epoch_seconds(ts_us: int) -> int | float:
    """Unix seconds from microseconds: an integer for a whole second, else milliseconds kept."""
    whole, frac = divmod(ts_us, 1_000_000)
    return whole if frac == 0 else round(ts_us / 1e6, 3)


class Scrunch(Vendor):
    name = "scrunch"
    title = "Scrunch"
    success = frozenset({200, 201, 202})
    columns = ("user_agent", "url", "path", "method", "status", "duration_ms", "client_ip")

    def event(self, row: Mapping[str, Any], site: Site, dest: Destination) -> dict[str, Any]:
        out: dict[str, Any] = {
            "domain": site.domain,
            "user_agent": row["user_agent"],
            "url": row["url"],
            "path": row["path"],
            "method": row["method"],
            "status_code": int(row["status"]),
            "timestamp": epoch_seconds(row["ts_us"]),
        }
        if row.get("duration_ms") is not None:
            out["response_time"] = int(round(row["duration_ms"]))
        ip = apply_ip_policy(row.get("client_ip"), dest.ip_policy)
        if ip:
            out["ip"] = ip
        return out

    def body(self, lines: Sequence[bytes]) -> tuple[bytes, str]:
        if len(lines) == 1:
            return lines[0], "application/json"
        return b"\n".join(lines) + b"\n", "application/x-ndjson"

    def url(self, dest: Destination) -> str:
        return f"{dest.endpoint_base}/v1/sites/{dest.site_id}/platforms/custom/web-traffic"

    def auth_headers(self, secret: Secret) -> dict[str, str]:
        return {"X-Api-Key": secret.reveal()}
