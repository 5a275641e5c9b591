"""Client shapes: what a user agent that no catalog agent claims is (browser, app or unknown bot).

The rules are data (`data/clients.yaml`): three ordered sections of regexes, each compiled into
one regex. `ClientShapes.kind` answers with the first section that matches: a bot hint makes an
Unknown Bot, an app HTTP stack an App, a browser shape a Browser; anything else is an Unknown Bot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from agent_traffic.catalog import CatalogError

__all__ = ["ClientKind", "ClientShapes", "load_client_shapes"]

_LABEL = "clients.yaml"
_SECTIONS = ("bot_hints", "apps", "browsers")


class ClientKind(Enum):
    """The fallback classes, in the order the sections are tried."""

    BOT = "bot_hints"
    APP = "apps"
    BROWSER = "browsers"


@dataclass(frozen=True)
class ClientShapes:
    """The three compiled sections; `rules` keeps each section's (name, pattern) for docs/debugging."""

    bot_hints: re.Pattern[str]
    apps: re.Pattern[str]
    browsers: re.Pattern[str]
    rules: dict[str, tuple[tuple[str, str], ...]]

    def kind(self, user_agent: str) -> ClientKind:
        """The fallback class of a user agent no catalog agent claimed."""
        if self.bot_hints.search(user_agent):
            return ClientKind.BOT
        if self.apps.search(user_agent):
            return ClientKind.APP
        if self.browsers.search(user_agent):
            return ClientKind.BROWSER
        return ClientKind.BOT

    def rule(self, user_agent: str) -> tuple[ClientKind, str | None]:
        """The deciding section and rule name (None when no rule matched): for debugging."""
        for kind in ClientKind:
            for name, pattern in self.rules[kind.value]:
                if _compile([pattern], self._flags(kind)).search(user_agent):
                    return kind, name
        return ClientKind.BOT, None

    def _flags(self, kind: ClientKind) -> int:
        return getattr(self, kind.value).flags & re.IGNORECASE


@lru_cache(maxsize=1)
def load_client_shapes() -> ClientShapes:
    """The packaged rules, parsed, checked and compiled once per process."""
    text = resources.files("agent_traffic").joinpath(f"data/{_LABEL}").read_text("utf-8")
    return parse_client_shapes(yaml.safe_load(text), _LABEL)


def parse_client_shapes(doc: Any, label: str) -> ClientShapes:
    """Check a parsed clients file and compile it; errors name the file, section and rule."""
    errors: list[str] = []
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise CatalogError([f"{label}: expected a mapping with `version: 1`"])
    compiled: dict[str, re.Pattern[str]] = {}
    rules: dict[str, tuple[tuple[str, str], ...]] = {}
    for section in _SECTIONS:
        body = doc.get(section)
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list) or not body["rules"]:
            errors.append(f"{label}: {section}: expected `rules:`, a non-empty list")
            continue
        flags = re.IGNORECASE if body.get("ignore_case") else 0
        kept: list[tuple[str, str]] = []
        for i, rule in enumerate(body["rules"]):
            name = rule.get("name") if isinstance(rule, dict) else None
            pattern = rule.get("pattern") if isinstance(rule, dict) else None
            where = f"{label}: {section}.rules[{i}] ({name or '?'})"
            if not isinstance(name, str) or not isinstance(pattern, str):
                errors.append(f"{where}: needs a `name` and a `pattern`, both strings")
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                errors.append(f"{where}.pattern: not a valid regex: {exc}")
                continue
            kept.append((name, pattern))
        compiled[section] = _compile([p for _, p in kept], flags)
        rules[section] = tuple(kept)
    if errors:
        raise CatalogError(errors)
    return ClientShapes(rules=rules, **compiled)


def _compile(patterns: list[str], flags: int) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), flags)
