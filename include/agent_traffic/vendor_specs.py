"""The vendor table: every fact about a vendor that config validation, delivery and the DAG rely on.

One `VendorSpec` per vendor (the contracts behind each value: docs/destinations.md). Config
validation reads the names, defaults, own settings and limits; delivery reads the client rate
limit and, through `vendors.vendor()`, the protocol class; the DAG reads the names and how many
delivery tasks of a vendor may run at once. Adding a vendor is one spec here (or `register` from
elsewhere), one protocol class, and one handler in the local receiver (`sandbox.PROTOCOLS`).

This module imports nothing of the package: the config and the DAG read it without loading the
protocols (pyarrow), which are imported by name on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The destination settings that only apply to vendors that stamp receive time, and to vendors
#: the client rate-limits itself for.
RECEIVE_TIME_SETTINGS = ("max_age_hours", "send_older_events")
RATE_LIMIT_SETTINGS = ("rate_limit_per_s", "rate_limit_burst")


@dataclass(frozen=True, eq=False)
class VendorSpec:
    """One vendor: what a destination of it may set, what it defaults to, how it is delivered."""

    name: str  # the config's `vendor:` value
    title: str  # the vendor's own name, as messages and the summary show it
    protocol: str  # "module:Class" of the `vendors.base.Vendor` subclass that speaks its API
    base_url: str | None  # None: self-hosted, each destination sets `base_url`
    site_id: str | None  # what a destination's `site_id` is (required); None: the vendor has none
    no_site_id: str = ""  # why there is no site id (shown when one is given anyway)
    #: destination settings the vendor sets when the destination does not (ip_policy, batch sizes, select)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: the most one request carries: (bytes, events); larger batch settings are refused
    max_request: tuple[int, int] | None = None
    #: settings only some vendors take -> the reason, shown when a destination of another vendor sets it
    settings: Mapping[str, str] = field(default_factory=dict)
    #: the vendor records when it received a row, not when the request happened (no event time):
    #: old events would show as today's traffic, so `max_age_hours` / `send_older_events` apply
    stamps_receive_time: bool = False
    #: (requests per second, burst) the vendor allows a client, which its 429 does not tell: the
    #: client limits itself to it (`rate_limit_per_s`, `rate_limit_burst`); None: no limit to keep
    rate_limit: tuple[float, int] | None = None
    #: mapped delivery tasks of this vendor running at once per DAG run (1 where the limit above
    #: lives in the task's process and two tasks would double it)
    parallel_deliveries: int = 4

    def destination_defaults(self) -> dict[str, Any]:
        """What a destination of this vendor gets for the settings it leaves out."""
        limit = dict(zip(RATE_LIMIT_SETTINGS, self.rate_limit, strict=True)) if self.rate_limit else {}
        return {**limit, **self.defaults}

    def refuses(self, setting: str) -> str | None:
        """Why a destination of this vendor may not set `setting` (None: it may)."""
        if setting in RECEIVE_TIME_SETTINGS and not self.stamps_receive_time:
            return f"{self.title} keeps each event's own timestamp"
        if setting in RATE_LIMIT_SETTINGS and self.rate_limit is None:
            return f"{self.title} does not rate-limit its clients"
        if setting in self.settings:
            return None
        owners = [s for s in SPECS.values() if setting in s.settings]
        return owners[0].settings[setting] if owners else None


#: The built-in vendors, in the order error messages list them.
SPECS: dict[str, VendorSpec] = {
    s.name: s
    for s in (
        VendorSpec(
            name="scrunch",
            title="Scrunch",
            protocol="agent_traffic.delivery.vendors.scrunch:Scrunch",
            base_url="https://webhooks.scrunchai.com",
            site_id="Site ID (a ULID)",
            # the client IP lets Scrunch verify agents; 1 MB NDJSON batches
            defaults={"ip_policy": "send", "max_batch_bytes": 1_000_000, "max_batch_events": 5000},
        ),
        VendorSpec(
            name="hitkeep",
            title="HitKeep",
            protocol="agent_traffic.delivery.vendors.hitkeep:HitKeep",
            base_url=None,
            site_id="site UUID",
            # no IP field (never sent, whatever ip_policy says); one object per request under 64 KiB
            defaults={"ip_policy": "omit", "max_batch_bytes": 65_535, "max_batch_events": 1},
            max_request=(65_535, 1),
            settings={"eligible_user_agents": "only HitKeep refuses agents it does not know"},
            stamps_receive_time=True,
            rate_limit=(10.0, 20),  # per client IP; its 429 carries no Retry-After
            parallel_deliveries=1,
        ),
        VendorSpec(
            name="knownagents",
            title="Known Agents",
            protocol="agent_traffic.delivery.vendors.knownagents:KnownAgents",
            base_url="https://api.knownagents.com",
            site_id=None,
            no_site_id="the access token names the project",
            # the client IP lets Known Agents verify agents; no batch limit is published (VERIFY)
            defaults={"ip_policy": "send", "max_batch_bytes": 512_000, "max_batch_events": 100},
            settings={"send_sdk_fields": "only Known Agents has SDK-only fields"},
            stamps_receive_time=True,
        ),
    )
}


def register(new: VendorSpec) -> VendorSpec:
    """Add a vendor (or replace one of the same name): config, delivery and the DAG then know it."""
    SPECS[new.name] = new
    return new


def spec(name: str) -> VendorSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown vendor {name!r}; known: {sorted(SPECS)}") from None


def choices() -> str:
    """The vendor names as a sentence: 'a', 'b' or 'c' (pydantic's wording for a literal)."""
    quoted = [repr(n) for n in SPECS]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
