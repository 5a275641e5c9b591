"""The agent catalog: which user-agent tokens belong to which bot, operator, category and purpose.

The catalog is data (`data/agents.yaml`), not code, so users can add or correct agents without a
release: `load_catalog(extra_paths)` reads the packaged file, then each user file in order. A user
entry whose `name` already exists overrides only the fields it sets; a new name adds an agent;
`disabled: true` removes one. The same files name the operators' published IP-range lists
(`ip_ranges`, used by `verify.py`) and the hostnames of each provider's AI assistants
(`referrers`, used by `enrich.py`). Every file is checked against `data/agents.schema.json` (with the
`jsonschema` package when it is importable, else a small built-in validator for the same schema)
and errors name the file, the agent and the field, e.g.
``my.yaml: agents[0] (GPTBot).purpose: 'trainig' is not one of [...]``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from agent_traffic.errors import AgentTrafficError

__all__ = [
    "APP",
    "BROWSER",
    "CATEGORIES",
    "CLOUDFLARE_CATEGORIES",
    "KNOWN_AGENTS_TYPES",
    "PURPOSES",
    "SCRUNCH_TYPES",
    "TOKEN_BOUNDARY",
    "UNKNOWN_BOT",
    "Agent",
    "Catalog",
    "CatalogError",
    "Provider",
    "RangeList",
    "load_catalog",
    "wrap_pattern",
]

# Known Agents' 16 agent types (knownagents node-sdk `AgentType`), plus our three fallbacks.
KNOWN_AGENTS_TYPES: tuple[str, ...] = (
    "AI Agent",
    "AI Assistant",
    "AI Coding Agent",
    "AI Data Provider",
    "AI Data Scraper",
    "AI Search Crawler",
    "Archiver",
    "Automated Agent",
    "Developer Helper",
    "Fetcher",
    "Intelligence Gatherer",
    "Scraper",
    "SEO Crawler",
    "Search Engine Crawler",
    "Security Scanner",
    "Undocumented AI Agent",
)
BROWSER = "Browser"
UNKNOWN_BOT = "Unknown Bot"
APP = "App"  # an app's own HTTP stack (Dalvik, CFNetwork, okhttp): not a browser, not a crawler
CATEGORIES: tuple[str, ...] = (*KNOWN_AGENTS_TYPES, BROWSER, UNKNOWN_BOT, APP)
PURPOSES: tuple[str, ...] = (
    "training",
    "search_indexing",
    "user_retrieval",
    "agent",
    "other_ai",
    "none",
)
SCRUNCH_TYPES: tuple[str | None, ...] = ("training", "retrieval", "indexer", None)
CLOUDFLARE_CATEGORIES: tuple[str | None, ...] = ("AI Crawler", "AI Search", "AI Assistant", None)

# A token only counts when the characters around it are not one of these (so `Claude-User` is not
# `ClaudeBot` and `NotGPTBot2` is not `GPTBot`).
TOKEN_BOUNDARY = "[A-Za-z0-9_-]"

# Names the classifier uses for its fallbacks; a catalog agent may not take them.
_RESERVED_NAMES = frozenset({"human", "unknown", "app"})
_PACKAGED_LABEL = "agents.yaml"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader is ~8x faster
_MAX_ERRORS = 20


class CatalogError(AgentTrafficError, ValueError):
    """A catalog file is unreadable or invalid; the message names file, agent and field (an
    AgentTrafficError, so the command line prints it, not a traceback)."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        shown = self.errors[:_MAX_ERRORS]
        more = len(self.errors) - len(shown)
        super().__init__("\n".join(shown) + (f"\n... and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class Provider:
    """An operator of agents; `slug` is the `provider` column and a partition value."""

    slug: str
    name: str
    url: str | None = None


@dataclass(frozen=True)
class RangeList:
    """An operator's published IP-range file; `complete` means an IP outside it is a contradiction."""

    id: str
    url: str
    provider: str
    complete: bool = True
    docs: str | None = None


@dataclass(frozen=True)
class Agent:
    """One catalog entry after all files are merged."""

    name: str
    tokens: tuple[str, ...]
    provider: str
    category: str
    purpose: str
    ai: bool
    pattern: str | None = None
    scrunch_type: str | None = None
    cloudflare_category: str | None = None
    robots_only: bool = False
    priority: int = 0
    docs: str | None = None
    ip_ranges: tuple[str, ...] = ()
    source: str = _PACKAGED_LABEL

    @property
    def is_bot(self) -> bool:
        """Everything in the catalog is automated, unless a user lists a browser or an app."""
        return self.category not in (BROWSER, APP)


@dataclass(frozen=True)
class Catalog:
    """The merged, validated catalog, in precedence order (catalog order breaks ties)."""

    agents: tuple[Agent, ...]
    providers: Mapping[str, Provider]
    sources: tuple[str, ...] = ()
    disabled: frozenset[str] = field(default_factory=frozenset)
    ip_ranges: Mapping[str, RangeList] = field(default_factory=dict)
    referrers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.agents)

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents)

    def get(self, name: str) -> Agent | None:
        """The agent with this name (case-insensitive), or None."""
        key = name.casefold()
        return next((a for a in self.agents if a.name.casefold() == key), None)


def wrap_pattern(pattern: str) -> str:
    """A catalog pattern as embedded in the combined regex: case-insensitive unless it says
    `(?-i:...)`. The classifier tries it only at token boundaries, as it does the tokens."""
    return f"(?i:{pattern})"


def load_catalog(extra_paths: Sequence[str | os.PathLike[str]] = ()) -> Catalog:
    """Load the packaged catalog, then apply each user file in order (add, override, disable)."""
    builder = _Builder(_schema())
    builder.add_doc(_PACKAGED_LABEL, _packaged_doc())
    for path in extra_paths:
        label = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError([f"{label}: cannot read: {exc.strerror or exc}"]) from exc
        builder.add_file(label, text)
    return builder.finish()


@lru_cache(maxsize=1)
def _packaged_doc() -> dict[str, Any]:
    """The packaged file, parsed once per process. It is not schema-checked here, in every task:
    the tests check it against the schema with both validators (`tests/test_catalog.py`); user
    files are checked as they load."""
    text = resources.files("agent_traffic").joinpath("data/agents.yaml").read_text("utf-8")
    return _read_yaml(_PACKAGED_LABEL, text)


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = resources.files("agent_traffic").joinpath("data/agents.schema.json").read_text("utf-8")
    return json.loads(text)


# --------------------------------------------------------------------------------------------
# Validation: jsonschema when importable, else a built-in subset of the same keywords.


@dataclass(frozen=True)
class _Issue:
    path: tuple[str | int, ...]
    message: str


_FORCE_BUILTIN_VALIDATOR = False  # tests flip this to exercise the fallback


def _validator(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Callable[[Any], list[_Issue]]:
    """A function returning all violations of `schema` (refs resolved in `root`), sorted."""
    check = _jsonschema_check(schema, root)
    if check is None:
        builtin = _BuiltinValidator(root)

        def check(instance: Any) -> list[_Issue]:
            return list(builtin.iter_errors(instance, schema, ()))

    def validate(instance: Any) -> list[_Issue]:
        issues = check(instance)
        return sorted(issues, key=lambda i: ([(isinstance(p, str), p) for p in i.path], i.message))

    return validate


def _jsonschema_check(
    schema: Mapping[str, Any], root: Mapping[str, Any]
) -> Callable[[Any], list[_Issue]] | None:
    if _FORCE_BUILTIN_VALIDATOR:
        return None
    try:
        from jsonschema import Draft202012Validator
    except ImportError:
        return None
    # Refs are inlined (the schema has no recursion): jsonschema resolves them slowly.
    validator = Draft202012Validator({"$schema": root["$schema"], **_inline_refs(schema, root)})

    def check(instance: Any) -> list[_Issue]:
        out: list[_Issue] = []
        for err in validator.iter_errors(instance):
            path = tuple(err.absolute_path)
            if err.validator == "required":
                missing = [k for k in err.validator_value if k not in err.instance]
                out += [_Issue((*path, k), "required field is missing") for k in missing]
            elif err.validator == "additionalProperties" and isinstance(err.instance, dict):
                allowed = sorted(err.schema.get("properties", {}))
                extra = sorted(k for k in err.instance if k not in allowed)
                out += [_Issue((*path, k), _unknown_field(allowed)) for k in extra]
            else:
                out.append(_Issue(path, err.message))
        return out

    return check


def _inline_refs(node: Any, root: Mapping[str, Any]) -> Any:
    """`node` with every local `$ref` replaced by its target (siblings override the target)."""
    if isinstance(node, list):
        return [_inline_refs(x, root) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _inline_refs(v, root) for k, v in node.items() if k not in ("$ref", "$defs")}
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        out = {**_inline_refs(target, root), **out}
    return out


def _unknown_field(allowed: Sequence[str]) -> str:
    return "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")


class _BuiltinValidator:
    """The JSON Schema keywords agents.schema.json uses, with jsonschema-like messages."""

    _TYPES: Mapping[str, Any] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        node: Any = self.root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def iter_errors(
        self, v: Any, s: Mapping[str, Any], path: tuple[str | int, ...]
    ) -> Iterator[_Issue]:
        if "$ref" in s:
            yield from self.iter_errors(v, self._resolve(s["$ref"]), path)
        if "type" in s:
            types = s["type"] if isinstance(s["type"], list) else [s["type"]]
            if not any(self._TYPES[t](v) for t in types):
                yield _Issue(path, f"{v!r} is not of type {', '.join(map(repr, types))}")
                return
        if "const" in s and not _json_equal(v, s["const"]):
            yield _Issue(path, f"{s['const']!r} was expected")
        if "enum" in s and not any(_json_equal(v, e) for e in s["enum"]):
            yield _Issue(path, f"{v!r} is not one of {s['enum']!r}")
        if isinstance(v, str):
            yield from self._string(v, s, path)
        if isinstance(v, int | float) and not isinstance(v, bool):
            if "minimum" in s and v < s["minimum"]:
                yield _Issue(path, f"{v!r} is less than the minimum of {s['minimum']!r}")
            if "maximum" in s and v > s["maximum"]:
                yield _Issue(path, f"{v!r} is greater than the maximum of {s['maximum']!r}")
        if isinstance(v, list):
            yield from self._array(v, s, path)
        if isinstance(v, dict):
            yield from self._object(v, s, path)

    def _string(self, v: str, s: Mapping[str, Any], path: tuple) -> Iterator[_Issue]:
        if "minLength" in s and len(v) < s["minLength"]:
            yield _Issue(path, f"{v!r} is too short")
        if "pattern" in s and not re.search(s["pattern"], v):
            yield _Issue(path, f"{v!r} does not match {s['pattern']!r}")

    def _array(self, v: list, s: Mapping[str, Any], path: tuple) -> Iterator[_Issue]:
        if "minItems" in s and len(v) < s["minItems"]:
            yield _Issue(path, f"{v!r} should be non-empty")
        if s.get("uniqueItems"):
            seen = [json.dumps(x, sort_keys=True) for x in v]
            if len(set(seen)) != len(seen):
                yield _Issue(path, f"{v!r} has non-unique elements")
        if "items" in s:
            for i, item in enumerate(v):
                yield from self.iter_errors(item, s["items"], (*path, i))

    def _object(self, v: dict, s: Mapping[str, Any], path: tuple) -> Iterator[_Issue]:
        props: Mapping[str, Any] = s.get("properties", {})
        for k in s.get("required", ()):
            if k not in v:
                yield _Issue((*path, k), "required field is missing")
        if "propertyNames" in s:
            for k in v:
                for issue in self.iter_errors(k, s["propertyNames"], path):
                    yield _Issue(path, issue.message)
        extra = s.get("additionalProperties", True)
        for k, item in v.items():
            if k in props:
                yield from self.iter_errors(item, props[k], (*path, k))
            elif extra is False:
                yield _Issue((*path, k), _unknown_field(sorted(props)))
            elif isinstance(extra, dict):
                yield from self.iter_errors(item, extra, (*path, k))


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


# --------------------------------------------------------------------------------------------
# Merging files.


@dataclass
class _Entry:
    data: dict[str, Any]
    label: str  # file that last touched it (errors point there)
    index: int  # its index in that file's agents list
    seq: int  # order of the last change: a token clash is blamed on the newer entry


def _read_yaml(label: str, text: str) -> dict[str, Any]:
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise CatalogError([f"{label}: invalid YAML: {exc}"]) from exc
    if not isinstance(doc, dict):
        raise CatalogError([f"{label}: the top level must be a mapping with `version: 1`"])
    return doc


class _Builder:
    """Accumulates files in order; `finish` checks the merged result as a whole."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        # Every field was checked when its file was read; a merged agent can only lack fields.
        self.required: tuple[str, ...] = tuple(schema["$defs"]["agent"]["required"])
        self.providers: dict[str, Provider] = {}
        self.entries: dict[str, _Entry] = {}  # casefolded name -> entry, in catalog order
        self.disabled: dict[str, str] = {}
        self.ranges: dict[str, tuple[str, dict[str, Any]]] = {}  # id -> (label, merged fields)
        self.disabled_ranges: set[str] = set()
        self.referrers: dict[str, tuple[str, list[str]]] = {}  # provider -> (label, hostnames)
        self.sources: list[str] = []
        self.seq = 0

    @cached_property
    def validate_file(self) -> Callable[[Any], list[_Issue]]:
        """Built on the first user file (importing jsonschema costs a task 0.05 s)."""
        return _validator(self.schema, self.schema)

    def parse(self, label: str, text: str) -> dict[str, Any]:
        """Parse one file and check it against the schema."""
        doc = _read_yaml(label, text)
        issues = self.validate_file(doc)
        if issues:
            raise CatalogError([f"{label}: {_where(doc, i.path)}: {i.message}" for i in issues])
        return doc

    def add_file(self, label: str, text: str) -> None:
        self.add_doc(label, self.parse(label, text))

    def add_doc(self, label: str, doc: Mapping[str, Any]) -> None:
        """Merge one parsed, schema-valid file into the catalog (never mutates `doc`)."""
        self.sources.append(label)
        for slug, p in (doc.get("providers") or {}).items():
            self.providers[slug] = Provider(slug=slug, name=p["name"], url=p.get("url"))
        for rid, fields in (doc.get("ip_ranges") or {}).items():
            if fields.get("disabled"):
                self.ranges.pop(rid, None)
                self.disabled_ranges.add(rid)
                continue
            self.disabled_ranges.discard(rid)
            old = self.ranges.get(rid, ("", {}))[1]
            self.ranges[rid] = (label, {**old, **{k: v for k, v in fields.items() if k != "disabled"}})
        for slug, hosts in (doc.get("referrers") or {}).items():
            self.referrers[slug] = (label, list(hosts))
        errors: list[str] = []
        first_seen: dict[str, int] = {}
        for i, raw in enumerate(doc.get("agents") or []):
            self.seq += 1
            name = raw["name"]
            key = name.casefold()
            if key in first_seen:
                errors.append(
                    f"{label}: agents[{i}] ({name}).name: duplicate of agents[{first_seen[key]}]"
                )
                continue
            first_seen[key] = i
            data = {k: v for k, v in raw.items() if k != "disabled"}
            if raw.get("disabled"):
                if key not in self.entries:
                    errors.append(
                        f"{label}: agents[{i}] ({name}).disabled: no agent named {name!r} to disable"
                    )
                else:
                    del self.entries[key]
                    self.disabled[key] = name
                continue
            self.disabled.pop(key, None)
            if key in self.entries:
                self.entries[key] = _Entry({**self.entries[key].data, **data}, label, i, self.seq)
            else:
                self.entries[key] = _Entry(data, label, i, self.seq)
        if errors:
            raise CatalogError(errors)

    def finish(self) -> Catalog:
        errors: list[str] = []
        agents: list[Agent] = []
        owner: dict[str, _Entry] = {}
        for entry in self.entries.values():
            d = entry.data
            at = f"{entry.label}: agents[{entry.index}] ({d['name']})"
            missing = [k for k in self.required if k not in d]
            if missing:
                errors += [f"{at}.{k}: required field is missing" for k in missing]
                continue
            errors += [f"{at}.{fld}: {msg}" for fld, msg in self._semantic_errors(d)]
            for tok in d["tokens"]:
                prev = owner.setdefault(tok.casefold(), entry)
                if prev is not entry:
                    old, new = sorted((prev, entry), key=lambda e: e.seq)
                    errors.append(
                        f"{new.label}: agents[{new.index}] ({new.data['name']}).tokens: {tok!r} "
                        f"already belongs to {old.data['name']!r} ({old.label}: agents[{old.index}])"
                    )
            agents.append(
                Agent(
                    name=d["name"],
                    tokens=tuple(d["tokens"]),
                    provider=d["provider"],
                    category=d["category"],
                    purpose=d["purpose"],
                    ai=d["ai"],
                    pattern=d.get("pattern"),
                    scrunch_type=d.get("scrunch_type"),
                    cloudflare_category=d.get("cloudflare_category"),
                    robots_only=d.get("robots_only", False),
                    priority=d.get("priority", 0),
                    docs=d.get("docs"),
                    ip_ranges=tuple(r for r in d.get("ip_ranges", ()) if r not in self.disabled_ranges),
                    source=entry.label,
                )
            )
        ranges = self._range_lists(errors)
        referrers = self._referrer_table(errors)
        if errors:
            raise CatalogError(errors)
        return Catalog(
            agents=tuple(agents),
            providers=MappingProxyType(dict(self.providers)),
            sources=tuple(self.sources),
            disabled=frozenset(self.disabled.values()),
            ip_ranges=MappingProxyType(ranges),
            referrers=MappingProxyType(referrers),
        )

    def _range_lists(self, errors: list[str]) -> dict[str, RangeList]:
        out: dict[str, RangeList] = {}
        for rid, (label, f) in self.ranges.items():
            at = f"{label}: ip_ranges.{rid}"
            missing = [k for k in ("url", "provider") if k not in f]
            errors += [f"{at}.{k}: required field is missing" for k in missing]
            if missing:
                continue
            if f["provider"] not in self.providers:
                errors.append(f"{at}.provider: {f['provider']!r} is not a provider slug")
            out[rid] = RangeList(rid, f["url"], f["provider"], f.get("complete", True), f.get("docs"))
        return out

    def _referrer_table(self, errors: list[str]) -> dict[str, tuple[str, ...]]:
        owner: dict[str, str] = {}
        out: dict[str, tuple[str, ...]] = {}
        for slug, (label, hosts) in self.referrers.items():
            if slug not in self.providers:
                errors.append(f"{label}: referrers.{slug}: {slug!r} is not a provider slug")
            for host in hosts:
                prev = owner.setdefault(host, slug)
                if prev != slug:
                    errors.append(f"{label}: referrers.{slug}: {host!r} already belongs to {prev!r}")
            if hosts:
                out[slug] = tuple(hosts)
        return out

    def _semantic_errors(self, d: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Rules the schema cannot express; each yields (field, message)."""
        if d["name"].casefold() in _RESERVED_NAMES:
            yield "name", f"{d['name']!r} is reserved for the classifier's fallbacks"
        if d["provider"] not in self.providers:
            yield "provider", f"{d['provider']!r} is not a provider slug (add it under providers:)"
        if not d["tokens"] and not d.get("pattern"):
            yield "tokens", "list at least one token, or give a pattern"
        if d["ai"] and d["purpose"] == "none":
            yield "purpose", "'none' is only for non-AI agents (ai: false)"
        if not d["ai"] and d["purpose"] != "none":
            yield "purpose", f"{d['purpose']!r} needs ai: true (non-AI agents use 'none')"
        if d.get("pattern"):
            yield from (("pattern", m) for m in _pattern_errors(d["pattern"]))
        for rid in d.get("ip_ranges", ()):
            if rid not in self.ranges and rid not in self.disabled_ranges:
                yield "ip_ranges", f"{rid!r} is not an ip_ranges id (known: {', '.join(sorted(self.ranges))})"
        if d.get("ip_ranges") and d.get("robots_only"):
            yield "ip_ranges", "a robots-only token never sends requests, so it has nothing to verify"


def _pattern_errors(pattern: str) -> Iterator[str]:
    """A pattern must compile where the classifier embeds it, and not clash with other groups."""
    if re.search(r"\(\?P[<=]|\\[1-9]|\\g<", pattern):
        yield f"{pattern!r}: named groups and backreferences are not allowed"
        return
    try:
        re.compile(f"(?<!{TOKEN_BOUNDARY})(?={wrap_pattern(pattern)})", re.ASCII)
    except re.error as exc:
        yield f"{pattern!r} is not a valid regular expression: {exc}"


def _where(doc: Mapping[str, Any], path: Sequence[str | int]) -> str:
    """`agents[12] (GPTBot).purpose` for a path into a whole file."""
    if len(path) >= 2 and path[0] == "agents" and isinstance(path[1], int):
        agents = doc.get("agents") or []
        item = agents[path[1]] if path[1] < len(agents) else None
        name = item.get("name") if isinstance(item, dict) else None
        head = f"agents[{path[1]}]" + (f" ({name})" if isinstance(name, str) else "")
        return head + _dotted(path[2:])
    return _dotted(path).lstrip(".") or "(top level)"


def _dotted(path: Sequence[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
