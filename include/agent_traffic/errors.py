"""Exceptions that carry a message a user can act on."""


class AgentTrafficError(Exception):
    """Base class: the message says what went wrong and what to do."""


class ConfigError(AgentTrafficError):
    """The config file is missing, unreadable or invalid."""


class SecretMissing(AgentTrafficError):
    """A destination's secret could not be found where the config says it lives."""


class ObjectReadError(AgentTrafficError):
    """A source object could not be read or decompressed (truncated, corrupt, unknown format)."""


class StoreUnavailable(AgentTrafficError):
    """An object store's bucket does not exist or cannot be seen with the credentials given."""
