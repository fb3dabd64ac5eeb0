"""The project's own error types; adapters translate driver errors into these."""


class RecsysError(Exception):
    """Base class of every error the worker raises on purpose."""


class TransientStoreError(RecsysError):
    """A store (Redis, Qdrant, Kafka) is unreachable or timed out: retry, never skip."""


class StoreError(RecsysError):
    """A store answered with something that retrying will not fix."""


class ConfigurationError(RecsysError):
    """A setting is missing or invalid; the message says what to fix."""
