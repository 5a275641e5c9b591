"""The one YAML config file: sources, sites, destinations, delivery policy.

Validated on load with pydantic so a mistake names the field and what was expected. Secrets never
sit in the file: a destination names where its secret comes from (an environment variable for the
command line, an Airflow Connection id inside Airflow).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_traffic.errors import ConfigError

VENDOR_BASE_URLS = {
    "scrunch": "https://webhooks.scrunchai.com",
}

Selection = Literal["ai", "automated", "all"]
IpPolicy = Literal["send", "truncate", "omit"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    vendor: Literal["scrunch"]
    site_id: str = Field(min_length=1)
    base_url: str | None = None
    secret: SecretRef
    select: Selection = "ai"
    ip_policy: IpPolicy = "send"
    max_batch_bytes: int = Field(1_000_000, gt=1000, le=1_000_000)
    max_batch_events: int = Field(5000, gt=0, le=100_000)

    @property
    def endpoint_base(self) -> str:
        return (self.base_url or VENDOR_BASE_URLS[self.vendor]).rstrip("/")


class Site(_Model):
    name: str = Field(min_length=1, description="the site's domain, e.g. example.com")
    hostnames: tuple[str, ...] = ()
    scheme: Literal["https", "http"] = "https"
    destinations: tuple[Destination, ...] = ()

    @property
    def domain(self) -> str:
        return self.name

    @property
    def all_hostnames(self) -> tuple[str, ...]:
        return self.hostnames or (self.name, f"www.{self.name}")


class Source(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str = Field(description="object-store URL pattern; {date:%Y-%m-%d} is the logical date")
    format: str = "auto"
    site: str | None = Field(None, description="site for logs that carry no host field")

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


class ObjectStore(_Model):
    """How to reach s3:// URLs (AWS, MinIO or any S3-compatible store)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    airflow_conn_id: str | None = None


class DeliveryPolicy(_Model):
    max_attempts: int = Field(6, ge=1, le=50)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_cap_s: float = Field(30.0, ge=0)
    retry_after_cap_s: float = Field(120.0, ge=0)
    timeout_s: float = Field(30.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight per destination task")
    chunks_per_group: int = Field(20, ge=1, description="chunks per mapped Airflow delivery task")
    max_groups: int = Field(200, ge=1, le=1000, description="cap on mapped delivery tasks per vendor")


class ParsePolicy(_Model):
    max_line_bytes: int = Field(65536, ge=256)
    block_bytes: int = Field(32 * 1024 * 1024, ge=1024)


class QualityPolicy(_Model):
    """Thresholds of the Great Expectations suites (see validate.py)."""

    allowed_lateness_hours: float = Field(36, ge=0, description="event times may stray this far from the date")
    methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
                                "TRACE", "PROPFIND")
    max_failed_row_ratio: float = Field(0.01, ge=0, le=1, description="above this, the partition is held")
    quarantine_ratio_warn: float = Field(0.01, ge=0, le=1)
    quarantine_ratio_fail: float = Field(0.05, ge=0, le=1)


class Config(_Model):
    version: Literal[1] = 1
    staging: str = Field(description="staging root: a local folder or s3://bucket/prefix")
    object_store: ObjectStore = ObjectStore()
    sources: tuple[Source, ...] = Field(min_length=1)
    sites: tuple[Site, ...] = Field(min_length=1)
    delivery: DeliveryPolicy = DeliveryPolicy()
    parse: ParsePolicy = ParsePolicy()
    quality: QualityPolicy = QualityPolicy()
    catalog_files: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _cross_refs(self) -> Config:
        site_names = [s.name for s in self.sites]
        _no_dupes("sites", site_names)
        _no_dupes("sources", [s.name for s in self.sources])
        _no_dupes("destinations", [d.name for s in self.sites for d in s.destinations])
        for i, src in enumerate(self.sources):
            if src.site is not None and src.site not in site_names:
                raise ValueError(f"sources[{i}].site: {src.site!r} is not one of the sites {site_names}")
        return self

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(f"unknown site {name!r}; the config has {[s.name for s in self.sites]}")

    def destinations(self) -> list[tuple[Site, Destination]]:
        return [(s, d) for s in self.sites for d in s.destinations]


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


def _format_error(path: str, err: ValidationError) -> str:
    lines = [f"{path}: the config is not valid ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = ""
        for part in e["loc"]:
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  - {loc or '(top level)'}: {msg}{shown}")
    return "\n".join(lines)


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(data: Any, env: Mapping[str, str] = os.environ, where: str = "") -> Any:
    """Expand ${NAME} and ${NAME:-default} in string values (never used for secrets)."""
    if isinstance(data, dict):
        return {k: interpolate(v, env, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str):
        return data

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: ${{{name}}} is not set in the environment and has no default")

    return _VAR.sub(sub, data)


def parse_config(data: Any, *, base_dir: Path, source: str = "<config>") -> Config:
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
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


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
    try:
        data = interpolate(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return parse_config(data, base_dir=p.resolve().parent, source=str(p))
