"""Known Agents (formerly Dark Visitors) visits API (docs/destinations.md).

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

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from agent_traffic.arrow_values import strings
from agent_traffic.config import Destination, Site
from agent_traffic.delivery.vendors import json_columns as jc
from agent_traffic.delivery.vendors.base import Vendor, ip_values, path_with_query
from agent_traffic.delivery.vendors.json_columns import Field
from agent_traffic.secrets import Secret

IP_HEADER = "x-forwarded-for"


class KnownAgents(Vendor):
    success = frozenset({200, 201, 202})
    group_scale = 5  # a hundred visits per request
    chunks_per_lease = 10
    columns = ("path", "query", "method", "user_agent", "referer", "client_ip", "status", "duration_ms",
               "content_type")

    separator = b","

    def fields(self, table: pa.Table, site: Site, dest: Destination) -> list[Field]:
        n, col = table.num_rows, partial(jc.column, table)
        referer, ctype = col("referer"), col("content_type")
        headers = jc.obj([
            ("user-agent", jc.required(jc.text(col("user_agent")))),
            ("referer", jc.text(jc.only_where(jc.present(referer), referer))),
            (IP_HEADER, jc.text(ip_values(table, dest.ip_policy))),
        ], n)
        out: list[Field] = [
            ("request_path", jc.required(jc.text(path_with_query(table)))),
            ("request_method", jc.required(jc.text(col("method")))),
            ("request_headers", headers),
            ("response_status_code", jc.integer(col("status", pa.int64()))),
            ("response_duration_in_milliseconds", jc.integer(col("duration_ms", pa.float64()))),
        ]
        if dest.send_sdk_fields:
            content = jc.obj([("content-type", jc.text(ctype))], n)
            created = pc.strftime(pc.cast(col("ts_us", pa.timestamp("us", "UTC")), pa.timestamp("ms", "UTC"), safe=False),
                                  format="%Y-%m-%dT%H:%M:%S") if n else strings([])
            out += [("response_headers", jc.only_where(jc.present(ctype), content)),
                    ("created", jc.text(jc.join(created, "Z")))]
        return out

    def body(self, joined: bytes, events: int) -> tuple[bytes, str]:
        return b"[" + joined[:-1] + b"]", "application/json"

    def url(self, dest: Destination) -> str:
        return f"{dest.endpoint_base}/visits"

    def auth_headers(self, secret: Secret) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret.reveal()}"}

    def limits(self, dest: Destination) -> tuple[int, int]:
        return dest.max_batch_bytes - 1, dest.max_batch_events  # the brackets: one byte more than n separators
