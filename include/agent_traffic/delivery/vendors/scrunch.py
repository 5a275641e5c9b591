"""Scrunch Agent Traffic API (docs/destinations.md).

POST {base}/v1/sites/{site_id}/platforms/custom/web-traffic with `X-Api-Key`. One event is sent
as `application/json`; a batch as exactly `application/x-ndjson`, one object per line, under
1,000,000 bytes. `timestamp` is Unix seconds (a number: ISO 8601 is a 422), `status_code` an
integer. Scrunch takes historical timestamps, so it is the one destination that backfills.
"""

from __future__ import annotations

from functools import partial

import pyarrow as pa

from agent_traffic.config import Destination, Site
from agent_traffic.delivery.vendors import json_columns as jc
from agent_traffic.delivery.vendors.base import Vendor, ip_values
from agent_traffic.delivery.vendors.json_columns import Field
from agent_traffic.secrets import Secret


def epoch_seconds(ts_us: int) -> int | float:
    """Unix seconds from microseconds: an integer for a whole second, else milliseconds kept."""
    whole, frac = divmod(ts_us, 1_000_000)
    return whole if frac == 0 else round(ts_us / 1e6, 3)


class Scrunch(Vendor):
    success = frozenset({200, 201, 202})
    columns = ("user_agent", "url", "path", "method", "status", "duration_ms", "client_ip")
    dictionary_columns = ("user_agent", "method")

    def fields(self, table: pa.Table, site: Site, dest: Destination) -> list[Field]:
        n, col = table.num_rows, partial(jc.column, table)
        duration = col("duration_ms", pa.float64())
        ip = ip_values(table, dest.ip_policy)
        return [
            ("domain", jc.constant(site.domain, n)),
            ("user_agent", jc.required(jc.text(col("user_agent")))),
            ("url", jc.required(jc.text(col("url")))),
            ("path", jc.required(jc.text(col("path")))),
            ("method", jc.required(jc.text(col("method")))),
            ("status_code", jc.integer(col("status", pa.int64()))),
            ("timestamp", jc.epoch_seconds(col("ts_us", pa.int64()), epoch_seconds)),
            ("response_time", jc.integer(duration)),
            ("ip", jc.text(ip)),
        ]

    def body(self, joined: bytes, events: int) -> tuple[bytes, str]:
        if events == 1:
            return joined[:-1], "application/json"
        return joined, "application/x-ndjson"

    def url(self, dest: Destination) -> str:
        return f"{dest.endpoint_base}/v1/sites/{dest.site_id}/platforms/custom/web-traffic"

    def auth_headers(self, secret: Secret) -> dict[str, str]:
        return {"X-Api-Key": secret.reveal()}
