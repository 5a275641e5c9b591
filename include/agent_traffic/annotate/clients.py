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

from agent_traffic.annotate.catalog import CatalogError

__all__ = ["ClientKind", "ClientShapes", "Section", "load_client_shapes", "parse_client_shapes"]

_LABEL = "clients.yaml"
_SECTIONS = ("bot_hints", "apps", "browsers")


class ClientKind(Enum):
    """The fallback classes, in the order the sections are tried."""

    BOT = "bot_hints"
    APP = "apps"
    BROWSER = "browsers"


@dataclass(frozen=True)
class Section:
    """One section's rules as two regexes: those anchored with `^` are tried once at the start
    (`match`), the rest anywhere (`search`); Python's engine would otherwise retry every anchored
    rule at every position. A `lowercase` section is matched against the lower-cased string, which
    is several times faster than IGNORECASE."""

    anchored: re.Pattern[str] | None
    anywhere: re.Pattern[str] | None
    lowercase: bool
    rules: tuple[tuple[str, str], ...]

    def hit(self, user_agent: str) -> bool:
        text = user_agent.lower() if self.lowercase else user_agent
        return bool((self.anchored and self.anchored.match(text))
                    or (self.anywhere and self.anywhere.search(text)))

    def rule(self, user_agent: str) -> str | None:
        """The name of the first rule that matches: for debugging, not on the hot path."""
        text = user_agent.lower() if self.lowercase else user_agent
        return next((name for name, pattern in self.rules if re.search(pattern, text)), None)


@dataclass(frozen=True)
class ClientShapes:
    """The three compiled sections, in the order they are tried."""

    bot_hints: Section
    apps: Section
    browsers: Section

    def kind(self, user_agent: str) -> ClientKind:
        """The fallback class of a user agent no catalog agent claimed: a bot hint wins, then an
        app, then a browser shape. (Hints are looked for last, and only when a shape matched: the
        answer is the same and a string of no known shape costs one regex less.)"""
        if self.apps.hit(user_agent):
            shape = ClientKind.APP
        elif self.browsers.hit(user_agent):
            shape = ClientKind.BROWSER
        else:
            return ClientKind.BOT
        return ClientKind.BOT if self.bot_hints.hit(user_agent) else shape

    def rule(self, user_agent: str) -> tuple[ClientKind, str | None]:
        """The deciding section and rule name (None when no rule matched): for debugging."""
        for kind in ClientKind:
            name = getattr(self, kind.value).rule(user_agent)
            if name is not None:
                return kind, name
        return ClientKind.BOT, None


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
    sections: dict[str, Section] = {}
    for section in _SECTIONS:
        body = doc.get(section)
        if not isinstance(body, dict) or not isinstance(body.get("rules"), list) or not body["rules"]:
            errors.append(f"{label}: {section}: expected `rules:`, a non-empty list")
            continue
        lowercase = bool(body.get("lowercase"))
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
            if lowercase and _UPPER_LITERAL.search(pattern):
                errors.append(f"{where}.pattern: the section is matched lower-cased; write the pattern in lower case")
                continue
            kept.append((name, pattern))
        sections[section] = Section(
            anchored=_compile([p for _, p in kept if p.startswith("^")]),
            anywhere=_compile([p for _, p in kept if not p.startswith("^")]),
            lowercase=lowercase, rules=tuple(kept))
    if errors:
        raise CatalogError(errors)
    return ClientShapes(**sections)


# An upper-case letter that is a literal, not part of an escape such as \S, \W, \D or \B.
_UPPER_LITERAL = re.compile(r"(?<!\\)[A-Z]")


def _compile(patterns: list[str]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
