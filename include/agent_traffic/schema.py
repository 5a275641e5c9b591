"""Arrow schemas of the staged data: the contract between stages and with the data team."""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

#: Canonical event, as parsed (before classification).
PARSED_FIELDS: list[pa.Field] = [
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("ts", TS, nullable=False),
    pa.field("site", pa.string(), nullable=False),
    pa.field("host", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("query", pa.string()),
    pa.field("url", pa.string(), nullable=False),
    pa.field("status", pa.int32(), nullable=False),
    pa.field("bytes", pa.int64()),
    pa.field("duration_ms", pa.float64()),
    pa.field("client_ip", pa.string()),
    pa.field("user_agent", pa.string(), nullable=False),
    pa.field("referer", pa.string()),
    pa.field("content_type", pa.string()),
    pa.field("source_object", pa.string(), nullable=False),
    pa.field("line_number", pa.int64(), nullable=False),
]

#: Columns the classifier adds.
CLASS_FIELDS: list[pa.Field] = [
    pa.field("agent", pa.string(), nullable=False),
    pa.field("provider", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("purpose", pa.string(), nullable=False),
    pa.field("scrunch_type", pa.string()),
    pa.field("is_ai", pa.bool_(), nullable=False),
    pa.field("is_bot", pa.bool_(), nullable=False),
    pa.field("cloudflare_category", pa.string()),
    # verified | spoofed | unverifiable by the operator's published IP ranges; null for events
    # that claim no catalog agent (human browsers, unknown bots). See verify.py.
    pa.field("verification", pa.string()),
    # html | document | image | other, from content_type, else the path's extension (enrich.py).
    pa.field("resource_type", pa.string(), nullable=False),
    # provider slug of the AI assistant whose answer sent this human visit (Referer or
    # utm_source on its hostnames); null for bots and other visits (enrich.py).
    pa.field("referred_by", pa.string()),
]

#: A staged Parquet file: partition columns (site, provider, date) live in the path, but `site`
#: and `provider` are also kept in the file so a single file is self-describing.
EVENT_SCHEMA = pa.schema(PARSED_FIELDS + CLASS_FIELDS)

#: EVENT_SCHEMA as the stage writes it: the classifier's text columns dictionary-encoded (the
#: annotator makes them so for free, and Parquet then need not hash them again). Files are written
#: without the Arrow schema, so every reader sees EVENT_SCHEMA's plain strings.
STAGED_SCHEMA = pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string())) if f in CLASS_FIELDS
                           and f.type == pa.string() else f for f in EVENT_SCHEMA])

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("object_id", pa.string(), nullable=False),
        pa.field("source_object", pa.string(), nullable=False),
        pa.field("line_number", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.binary(), nullable=False),
    ]
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast columns to the contract's schema (fails loudly on a missing column)."""
    cols = [c if (c := table[f.name]).type == f.type else c.cast(f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)
