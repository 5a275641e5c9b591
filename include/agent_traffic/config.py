"""The one YAML config file: sources, sites, destinations, delivery policy.

Validated on load with pydantic so a mistake names the field and what was expected. Secrets never
sit in the file: a destination names where its secret comes from (an environment variable for the
command line, an Airflow Connection id inside Airflow).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_traffic import layout
from agent_traffic.errors import ConfigError
from agent_traffic.redact import redact_url, scrub
from agent_traffic.vendor_specs import SPECS, VendorSpec, choices, spec

#: ai: AI agents; ai_and_referred: plus human visits referred by an AI assistant (`referred_by`);
#: automated: every bot; all: every request.
Selection = Literal["ai", "ai_and_referred", "automated", "all"]
IpPolicy = Literal["send", "truncate", "omit"]


class _Model(BaseModel):
    # numbers are finite: `.inf` or `.nan` is a mistake wherever a number is set
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SecretRef(_Model):
    """Where a destination's API key comes from; never the key itself."""

    env: str | None = Field(None, description="environment variable read by the command line")
    airflow_conn_id: str | None = Field(None, description="Airflow Connection whose password is the key")

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if not self.env and not self.airflow_conn_id:
            raise ValueError("give `env` (command line) and/or `airflow_conn_id` (Airflow)")
        return self


class Destination(_Model):
    """One vendor account for one site. What the vendor allows, requires and defaults to is its
    `VendorSpec` (vendor_specs.py): a setting that does not apply to the vendor is refused."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    vendor: str = Field(description="one of the vendor table's names (vendor_specs.py)")
    site_id: str | None = Field(None, min_length=1, description="the vendor's site id (Scrunch: a ULID; HitKeep: a UUID)")
    base_url: str | None = None
    secret: SecretRef
    select: Selection = "ai"
    ip_policy: IpPolicy = "send"  # the vendor's default when not set (VendorSpec.defaults)
    max_batch_bytes: int = Field(1_000_000, gt=1000, le=1_000_000)
    max_batch_events: int = Field(5000, gt=0, le=100_000)
    max_age_hours: float = Field(48.0, gt=0, le=24 * 3660, description="receive-time vendors: older events are not sent")
    send_older_events: bool = Field(False, description="send events older than max_age_hours anyway")
    rate_limit_per_s: float = Field(10.0, gt=0, le=10_000, description="rate-limited vendors: requests/s per instance")
    rate_limit_burst: int = Field(20, ge=1, le=10_000, description="rate-limited vendors: burst per instance")
    eligible_user_agents: tuple[str, ...] | None = Field(
        None, description="HitKeep: lowercase substrings its classifier accepts (default: HitKeep 2.8.1's)"
    )
    send_sdk_fields: bool = Field(
        False, description="Known Agents: also send `created` and `response_headers` (VERIFY)"
    )

    @field_validator("vendor")
    @classmethod
    def _known_vendor(cls, v: str) -> str:
        if v not in SPECS:
            raise ValueError(f"Input should be {choices()}{did_you_mean(v, SPECS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _vendor_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("vendor") not in SPECS:
            return data
        vendor = SPECS[data["vendor"]]
        for key in data:
            why = vendor.refuses(key)
            if why:
                raise ValueError(f"`{key}` does not apply to {vendor.name} ({why}); remove it")
        return {**vendor.destination_defaults(), **data}

    @model_validator(mode="after")
    def _vendor_rules(self) -> Destination:
        vendor = self.spec
        if vendor.site_id is None and self.site_id is not None:
            raise ValueError(f"{vendor.title} has no site id ({vendor.no_site_id}); remove `site_id`")
        if vendor.site_id is not None and self.site_id is None:
            raise ValueError(f"`site_id` is required: the {vendor.name} {vendor.site_id}")
        if vendor.base_url is None and not self.base_url:
            raise ValueError(f"{vendor.title} is self-hosted: set `base_url` to your instance, "
                             f"e.g. https://{vendor.name}.example.com")
        if vendor.max_request is not None:
            _within_request(vendor.title, vendor.max_request, self.max_batch_bytes, self.max_batch_events)
        return self

    @property
    def spec(self) -> VendorSpec:
        """The vendor's facts: defaults, limits, receive-time stamping, client rate limit."""
        return spec(self.vendor)

    @property
    def endpoint_base(self) -> str:
        return (self.base_url or self.spec.base_url or "").rstrip("/")


def _within_request(title: str, most: tuple[int, int], max_bytes: int, max_events: int) -> None:
    """A destination's batches fit in one of the vendor's requests, `most` (bytes, events)."""
    most_bytes, most_events = most
    if max_events > most_events or max_bytes > most_bytes:
        events = "one event" if most_events == 1 else f"at most {most_events:,} events"
        must = "be 1" if most_events == 1 else f"be at most {most_events}"
        raise ValueError(f"{title} takes {events} per request of at most {most_bytes:,} bytes: "
                         f"max_batch_events must {must} and max_batch_bytes at most {most_bytes}")


class Site(_Model):
    name: str = Field(min_length=1, description="the site's domain, e.g. example.com")
    hostnames: tuple[str, ...] = ()
    scheme: Literal["https", "http"] = "https"
    destinations: tuple[Destination, ...] = ()

    @field_validator("name")
    @classmethod
    def _hostname(cls, v: str) -> str:
        """The name becomes a folder (`site=<name>`) and a partition value: only a hostname will do."""
        return valid_site_name(v)

    @property
    def domain(self) -> str:
        return self.name

    @property
    def all_hostnames(self) -> tuple[str, ...]:
        return self.hostnames or (self.name, f"www.{self.name}")


class OtherHostSite(_Model):
    """`other_hosts: {site: NAME}`: lines whose host no site lists belong to that site."""

    site: str = Field(min_length=1)


class Source(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str = Field(description="object-store URL pattern; {date:%Y-%m-%d} is the logical date")
    format: str = "auto"
    site: str | None = Field(None, description="site for logs that carry no host field")
    lookback_days: int = Field(1, ge=0, le=31, description="also list the N days before each date for "
                               "late objects (CloudFront files arrive up to 24 h late)")
    columns: dict[str, str] | None = Field(None, description="this source's own field mapping for a json, "
                                           "csv or w3c format: column or JSON path -> raw field (Fastly)")
    trusted_proxies: tuple[str, ...] = Field((), description="networks (CIDR) of your own proxies and load "
                                             "balancers: the client is the last X-Forwarded-For address outside them")
    other_hosts: Literal["skip", "quarantine"] | OtherHostSite = Field(
        "skip", description="a line whose host no site lists: skip (counted as 'other host', the default), "
        "quarantine it, or {site: NAME} to stage it under that site")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network; write a CIDR such as 10.0.0.0/8 or one address") from None
        return v

    @field_validator("url")
    @classmethod
    def _listable(cls, v: str) -> str:
        if re.match(r"(?i)^https?://", v):
            raise ValueError("http(s) sources are not supported: HTTP has no listing to find a day's objects "
                             "in. Copy the logs to a bucket or folder (rclone, aws s3 sync) and point the url there")
        return v

    @field_validator("url")
    @classmethod
    def _has_date(cls, v: str) -> str:
        if "{date" not in v:
            raise ValueError("must contain a {date:...} placeholder, e.g. logs/{date:%Y/%m/%d}/*.gz")
        try:
            v.format(date=date(2026, 1, 2))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad placeholder ({exc}); only {{date:<strftime>}} is known") from exc
        return v

    def url_for(self, day: date) -> str:
        return self.url.format(date=day)


class GcsStore(_Model):
    """How to reach gs:// URLs. Credentials: Application Default Credentials on the command line
    (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the metadata server), or an Airflow Connection of
    type google_cloud_platform."""

    project: str | None = None
    endpoint_url: str | None = Field(None, description="an emulator; else STORAGE_EMULATOR_HOST or Google's")
    anonymous: bool = Field(False, description="no credentials: public buckets and emulators")
    airflow_conn_id: str | None = None


class AzureStore(_Model):
    """How to reach az:// and abfs:// URLs. Credentials on the command line: the AZURE_STORAGE_*
    variables (CONNECTION_STRING, or ACCOUNT_NAME with ACCOUNT_KEY or SAS_TOKEN, or a service
    principal's CLIENT_ID, CLIENT_SECRET and TENANT_ID), else Azure's default credential chain;
    inside Airflow, a Connection of type wasb or adls."""

    account_name: str | None = None
    airflow_conn_id: str | None = None


class ObjectStore(_Model):
    """How to reach s3:// URLs (AWS, MinIO, R2 or any S3-compatible store), gs:// and az://."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    airflow_conn_id: str | None = None
    gcs: GcsStore = GcsStore()
    azure: AzureStore = AzureStore()

    @property
    def airflow_conn_ids(self) -> tuple[str, ...]:
        """The Airflow Connections that hold credentials for these stores (S3, GCS, Azure)."""
        return tuple(c for c in (self.airflow_conn_id, self.gcs.airflow_conn_id, self.azure.airflow_conn_id) if c)


class DeliveryPolicy(_Model):
    max_attempts: int = Field(6, ge=1, le=50)
    backoff_base_s: float = Field(0.5, ge=0, le=3600)
    backoff_cap_s: float = Field(30.0, ge=0, le=3600)
    retry_after_cap_s: float = Field(120.0, ge=0, le=3600)
    timeout_s: float = Field(30.0, gt=0, le=3600)
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight per destination task")
    chunks_per_group: int = Field(20, ge=1, le=100_000, description="chunks per mapped Airflow delivery task")
    max_groups: int = Field(200, ge=1, le=1000, description="cap on mapped delivery tasks per vendor")
    lease_seconds: float | None = Field(
        None, gt=0, le=7 * 86400, description="how long a worker owns a chunk it is sending (default: the longest a send "
        "may take, see longest_send_s, plus a minute)")

    @property
    def longest_send_s(self) -> float:
        """Every attempt timing out and every wait at its cap: a send takes no longer (rate-limit waits aside)."""
        return self.max_attempts * (self.timeout_s + max(self.backoff_cap_s, self.retry_after_cap_s))

    @property
    def lease_s(self) -> float:
        """A lease must outlive the send it covers, or a second worker could take the chunk over
        while the first still sends it."""
        return self.lease_seconds if self.lease_seconds is not None else self.longest_send_s + 60

    @model_validator(mode="after")
    def _lease_outlives_send(self) -> DeliveryPolicy:
        if self.lease_seconds is not None and self.lease_seconds <= self.longest_send_s:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds:g}) must exceed the longest a send may take, "
                f"max_attempts x (timeout_s + max(backoff_cap_s, retry_after_cap_s)) = {self.longest_send_s:g} s; "
                "leave it unset to derive it")
        return self


class ParsePolicy(_Model):
    max_line_bytes: int = Field(65536, ge=256, le=64 << 20)
    block_bytes: int = Field(6 * 1024 * 1024, ge=1024, le=512 << 20)
    block_lines: int = Field(262_144, ge=1024, le=16_777_216, description="lines per parse block at most: "
                             "memory is bounded by lines too, so blank-line and short-line floods parse in little")


class QualityPolicy(_Model):
    """Thresholds of the Great Expectations suites (see validate.py)."""

    allowed_lateness_hours: float = Field(36, ge=0, le=24 * 366,
                                          description="event times may stray this far from the date")
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
                                "TRACE", "PROPFIND")
    max_failed_row_ratio: float = Field(0.01, ge=0, le=1, description="above this share of a source's rows "
                                        "failing row expectations, its objects of the day are held")
    quarantine_ratio_warn: float = Field(0.01, ge=0, le=1)
    quarantine_ratio_fail: float = Field(0.05, ge=0, le=1)


class RangePolicy(_Model):
    """IP verification: where the operators' range lists come from and when they are fresh enough.

    The catalog names each list and its URL (`ip_ranges` in agents.yaml); `urls` points a list
    id at another URL (a mirror) or, with null, stops fetching it.
    """

    urls: dict[str, str | None] = Field(default_factory=dict, description="list id -> URL, or null: do not fetch")
    store: str | None = Field(None, description=f"snapshot folder or object-store prefix (default: <staging>/{layout.RANGES})")
    max_age_days: int = Field(30, ge=1, le=3650, description="a list older than this (vs. the request's day) "
                              "never makes a request `spoofed`, only `unverifiable`")
    timeout_s: float = Field(30.0, gt=0, le=600, description="per range-file download")
    keep: int = Field(90, ge=1, le=10_000, description="dated snapshots kept per list")

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, v: dict[str, str | None]) -> dict[str, str | None]:
        for list_id, url in v.items():
            if url is not None and not re.match(r"^https?://\S+$", url):
                raise ValueError(f"{list_id}: {url!r} is not an http(s) URL (use null to stop fetching it)")
        return v


class Config(_Model):
    version: Literal[1] = 1
    staging: str = Field(description="staging root: a local folder, s3://, gs:// or az://container/prefix")
    object_store: ObjectStore = ObjectStore()
    sources: tuple[Source, ...] = Field(min_length=1)
    sites: tuple[Site, ...] = Field(min_length=1)
    delivery: DeliveryPolicy = DeliveryPolicy()
    parse: ParsePolicy = ParsePolicy()
    quality: QualityPolicy = QualityPolicy()
    catalog_files: tuple[str, ...] = ()
    ip_ranges: RangePolicy = RangePolicy()
    formats: tuple[dict[str, Any], ...] = Field((), description="your log formats, same fields as formats.yaml")

    @field_validator("staging")
    @classmethod
    def _no_glob(cls, v: str) -> str:
        return staging_without_globs(v)

    @field_validator("formats")
    @classmethod
    def _valid_formats(cls, v: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        from agent_traffic.formats import validate_definitions

        validate_definitions(v)
        return v

    @model_validator(mode="after")
    def _known_formats(self) -> Config:
        from agent_traffic.formats import load_formats

        if all(s.format == "auto" and s.columns is None for s in self.sources):
            return self
        try:
            known = load_formats(self.formats)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        for i, src in enumerate(self.sources):
            if src.format != "auto" and src.format not in known:
                raise ValueError(f"sources[{i}].format: {src.format!r} is not a known format"
                                 f"{did_you_mean(src.format, known)}; use auto or one of {sorted(known)}, "
                                 "or define it under `formats:`")
            if src.trusted_proxies and src.format != "auto" and "forwarded_for" not in known[src.format].fields:
                raise ValueError(f"sources[{i}].trusted_proxies: format {src.format!r} has no X-Forwarded-For "
                                 "field (`forwarded_for`); use nginx_main, or a format of your own that yields it")
            if src.columns is not None:
                if src.format == "auto":
                    raise ValueError(f"sources[{i}].columns: set `format:` to the format these columns map "
                                     "(e.g. fastly_json); auto cannot know your field names")
                try:
                    known[src.format].with_columns(src.columns, f"sources[{i}].columns")
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        site_names = [s.name for s in self.sites]
        _no_dupes("sites", site_names)
        _no_dupes("sources", [s.name for s in self.sources])
        _no_dupes("destinations", [d.name for s in self.sites for d in s.destinations])
        urls = [s.url for s in self.sources]
        for i, url in enumerate(urls):
            if url in urls[:i]:
                raise ValueError(f"sources[{i}].url: the same as sources[{urls.index(url)}].url, so each object "
                                 "there would be parsed twice; list the location once")
        for i, src in enumerate(self.sources):
            if src.site is not None and src.site not in site_names:
                raise ValueError(f"sources[{i}].site: {src.site!r} is not one of the sites {site_names}"
                                 f"{did_you_mean(src.site, site_names)}")
            other = src.other_hosts
            if isinstance(other, OtherHostSite) and other.site not in site_names:
                raise ValueError(f"sources[{i}].other_hosts.site: {other.site!r} is not one of the sites "
                                 f"{site_names}{did_you_mean(other.site, site_names)}")
        return self

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(f"unknown site {name!r}; the config has {[s.name for s in self.sites]}")

    def destinations(self) -> list[tuple[Site, Destination]]:
        return [(s, d) for s in self.sites for d in s.destinations]

    def destination(self, name: str) -> Destination:
        for _, d in self.destinations():
            if d.name == name:
                return d
        raise ConfigError(f"unknown destination {name!r}; the config has {[d.name for _, d in self.destinations()]}")


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
GLOB_CHARS = "*?[]{}"


def valid_site_name(name: str) -> str:
    """A site name that is a hostname (labels of letters, digits, `-`, `_`; 253 characters at most)."""
    if len(name) > 253 or not HOSTNAME.fullmatch(name):
        raise ValueError("must be the site's hostname, e.g. example.com: letters, digits, '-' and '.' only "
                         "(no '/', spaces or '..'), labels of at most 63 and 253 characters in all")
    return name


def staging_without_globs(url: str) -> str:
    """Staging is read back through glob patterns (DuckDB's read_parquet): a path holding glob
    characters would match nothing, and every query and report would show 0 events."""
    bad = sorted({c for c in url if c in GLOB_CHARS})
    if bad:
        raise ValueError(f"the staging path holds glob characters {''.join(bad)!r}, which queries and reports "
                         "would read as patterns and find nothing; choose a folder name without them")
    return url


def _no_dupes(what: str, names: list[str]) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ValueError(f"{what}: names must be unique; repeated: {sorted(seen)}")


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _resolve_local(url: str, base: Path) -> str:
    """Relative local paths are relative to the config file, so a config travels with its data."""
    if _SCHEME.match(url):
        if url.startswith("file://"):
            p = Path(url[len("file://") :])
            return "file://" + str(p if p.is_absolute() else (base / p).resolve())
        return url
    p = Path(url).expanduser()
    return "file://" + str(p if p.is_absolute() else (base / p).resolve())


def _format_error(path: str, err: ValidationError, hide: Iterable[str] = ()) -> str:
    errors = err.errors()
    # a list whose items all failed is also "too short": said once, by its items' own errors
    errors = [e for e in errors if not (e["type"] == "too_short" and any(
        len(o["loc"]) > len(e["loc"]) and o["loc"][: len(e["loc"])] == e["loc"] for o in errors))]
    lines = [f"{path}: the config is not valid ({len(errors)} problem(s)):"]
    for e in errors:
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {_shown(got)!r})"
        lines.append(f"  - {loc}: {msg}{shown}" if loc else f"  - {msg}")  # checks across fields name theirs
    return _unechoed("\n".join(lines), hide)


def _shown(value: Any) -> Any:
    """A value as an error may quote it: a URL without its credentials."""
    return redact_url(value) if isinstance(value, str) else value


def _unechoed(text: str, hide: Iterable[str]) -> str:
    """An error never quotes a value that came from the environment (`secret: ${KEY}` puts a key
    where a mapping belongs): such values are blanked, in every encoding."""
    return scrub(text, hide) if hide else text


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss among `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: Values a config may expand to, aliases counted each time they are used: thousands of sites fit
MAX_CONFIG_VALUES = 1_000_000


def _expanded_size(data: Any, limit: int) -> int:
    """Values in `data` with every alias expanded, counted up to just past `limit` (then it stops:
    a billion-laughs file is never walked to its end)."""
    n, todo = 0, [data]
    while todo and n <= limit:
        x = todo.pop()
        n += 1
        if isinstance(x, dict):
            todo.extend(x.values())
            n += len(x)
        elif isinstance(x, list):
            todo.extend(x)
    return n


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str] = os.environ, where: str = "",
                used: set[str] | None = None) -> Any:
    """Expand ${NAME} and ${NAME:-default} in string values (never used for secrets); the values
    taken from `env` are added to `used`, so errors can leave them out."""
    if isinstance(data, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k), used) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, f"{where}[{i}]", used) for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            if used is not None:
                used.add(env[name])
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: ${{{name}}} is not set in the environment and has no default")

    return _VAR.sub(sub, data)


def parse_config(data: Any, *, base_dir: Path, source: str = "<config>", hide: Iterable[str] = ()) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    data = dict(data)
    try:
        if isinstance(data.get("staging"), str):
            data["staging"] = _resolve_local(data["staging"], base_dir)
        if isinstance(data.get("sources"), list):
            data["sources"] = [
                {**s, "url": _resolve_local(s["url"], base_dir)}
                if isinstance(s, dict) and isinstance(s.get("url"), str)
                else s
                for s in data["sources"]
            ]
        if isinstance(data.get("catalog_files"), list):
            data["catalog_files"] = [
                str((base_dir / f).resolve()) if isinstance(f, str) else f
                for f in data["catalog_files"]
            ]
        ranges = data.get("ip_ranges")
        if isinstance(ranges, dict) and isinstance(ranges.get("store"), str):
            data["ip_ranges"] = {**ranges, "store": _resolve_local(ranges["store"], base_dir)}
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err, hide)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load and validate a config file; raises ConfigError naming the field on any mistake."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {p}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if _expanded_size(data, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{p}: the config expands to more than {MAX_CONFIG_VALUES:,} values: YAML aliases (*name) "
                          "that refer to anchors full of aliases multiply (a 'billion laughs'); write the values out")
    from_env: set[str] = set()
    try:
        data = interpolate(data, used=from_env)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return parse_config(data, base_dir=p.resolve().parent, source=str(p), hide=from_env)
