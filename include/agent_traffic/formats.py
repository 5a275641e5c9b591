"""Log-format definitions (loaded from data files) and `format: auto` detection."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from agent_traffic.errors import ConfigError

RAW_FIELDS = (
    "client_ip", "time", "request", "method", "target", "url", "status", "bytes", "referer",
    "user_agent", "host", "duration", "content_type",
)  # fmt: skip
TIME_UNITS = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}


@dataclass(frozen=True)
class TimeSpec:
    field: str
    format: str | None = None  # strptime format
    unit: str | None = None  # epoch unit


@dataclass(frozen=True)
class LogFormat:
    id: str
    kind: Literal["regex", "csv"]
    description: str = ""
    regex: str | None = None
    header: tuple[str, ...] = ()
    columns: Mapping[str, str] = field(default_factory=dict)
    timestamp: TimeSpec = TimeSpec("time")
    duration_unit: str | None = None
    detect: str | None = None
    priority: int = 0

    @property
    def fields(self) -> tuple[str, ...]:
        """Raw fields this format yields, in regex-group order for regex formats."""
        if self.kind == "regex":
            return tuple(re.compile(self.regex or "").groupindex)
        return tuple(self.columns.values())

    def matches(self, line: str) -> bool:
        # RE2 (DuckDB) and Python agree on the subset definitions use: (?P<name>...), \S, \d
        return bool(self.detect and re.search(self.detect, line))


def _build(d: Mapping[str, Any], where: str) -> LogFormat:
    try:
        kind = d["kind"]
        if kind not in ("regex", "csv"):
            raise ValueError(f"kind must be 'regex' or 'csv', got {kind!r}")
        ts = d.get("timestamp") or {"field": "time"}
        if ts.get("unit") and ts["unit"] not in TIME_UNITS:
            raise ValueError(f"timestamp.unit must be one of {list(TIME_UNITS)}")
        dur = d.get("duration") or {}
        fmt = LogFormat(
            id=str(d["id"]),
            kind=kind,
            description=str(d.get("description", "")),
            regex=d.get("regex"),
            header=tuple(d.get("header", ())),
            columns=dict(d.get("columns", {})),
            timestamp=TimeSpec(ts["field"], ts.get("format"), ts.get("unit")),
            duration_unit=dur.get("unit"),
            detect=d.get("detect"),
            priority=int(d.get("priority", 0)),
        )
        if kind == "regex":
            if not fmt.regex:
                raise ValueError("a regex format needs `regex`")
            unknown = set(fmt.fields) - set(RAW_FIELDS)
            if unknown:
                raise ValueError(f"unknown group names {sorted(unknown)}; known: {list(RAW_FIELDS)}")
        elif not fmt.columns:
            raise ValueError("a csv format needs `columns`")
        if fmt.detect:
            re.compile(fmt.detect)
        return fmt
    except (KeyError, ValueError, TypeError, re.error) as exc:
        raise ConfigError(f"{where}: format {d.get('id', '?')!r}: {exc}") from None


def load_formats(extra: Sequence[Mapping[str, Any]] = ()) -> dict[str, LogFormat]:
    """The packaged formats, then the user's (a user format with the same id replaces ours)."""
    text = resources.files("agent_traffic").joinpath("data/formats.yaml").read_text("utf-8")
    out = {f["id"]: _build(f, "formats.yaml") for f in yaml.safe_load(text)["formats"]}
    for f in extra:
        fmt = _build(f, "config formats")
        out[fmt.id] = fmt
    return out


def detect_format(lines: Sequence[str], formats: Mapping[str, LogFormat]) -> tuple[LogFormat, str]:
    """Pick the format most of the sample lines match; returns it and a one-line reason."""
    sample = [ln for ln in lines if ln.strip()][:50]
    if not sample:
        raise ConfigError("cannot detect the format: the object has no non-blank line")
    scores = []
    for fmt in formats.values():
        if fmt.detect:
            hits = sum(1 for ln in sample if fmt.matches(ln))
            if fmt.kind == "csv":  # the header line alone identifies a CSV layout
                hits = len(sample) if fmt.matches(sample[0]) else 0
            scores.append((hits, fmt.priority, fmt.id))
    scores.sort(reverse=True)
    if not scores or scores[0][0] == 0:
        raise ConfigError(
            "cannot detect the format: no known format matches the first lines; set `format:` "
            "on the source or add a format definition in the config"
        )
    hits, _, fid = scores[0]
    return formats[fid], f"{hits} of the first {len(sample)} lines match {fid!r}"
