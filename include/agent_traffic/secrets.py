"""Secrets: resolved at run time from the environment or an Airflow Connection, never stored.

`Secret` hides its value from repr/str/format so a key cannot leak through a log line, a summary
or an exception message by accident; `reveal()` is called only where a header is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from agent_traffic.config import Destination
from agent_traffic.errors import SecretMissing
from agent_traffic.redact import register


class Secret:
    """A key; registered for redaction (`redact.scrub`, Airflow's masker) as it is made."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __reduce__(self):  # never pickled into XCom or a process pool by accident
        raise TypeError("a Secret cannot be pickled")


SecretResolver = Callable[[Destination], Secret]


def env_resolver(env: Mapping[str, str] = os.environ) -> SecretResolver:
    """The command line's resolver: the environment variable named in the config."""

    def resolve(dest: Destination) -> Secret:
        name = dest.secret.env
        if not name:
            raise SecretMissing(
                f"destination {dest.name!r}: no `secret.env` in the config, so the command line "
                "cannot find its key; add `secret: {env: NAME}` and export NAME"
            )
        value = env.get(name)
        if not value:
            raise SecretMissing(
                f"destination {dest.name!r}: environment variable {name} is not set; export it "
                "with the destination's API key (or use --dry-run to send nothing)"
            )
        return Secret(value)

    return resolve
