"""Settings from environment variables, validated once at start-up.

Every setting is documented in the README's configuration reference. Secrets are
``SecretStr`` so they never show up in a repr or a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.recsys_core.errors import ConfigurationError


class Settings(BaseSettings):
    """The worker's configuration. Environment variable = upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # --- Kafka -------------------------------------------------------------
    kafka_broker: str = Field(
        "kafka://127.0.0.1:19092",
        description="Comma-separated bootstrap servers, kafka://host:port[;host:port].",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    app_id: str = Field("recsys-worker", description="Faust app id = consumer group id.")
    events_topic: str = "rudderstack-events"
    dead_letter_topic: str = "rudderstack-events-dlq"
    requests_topic: str = "recsys-requests"
    topic_partitions: int = Field(8, ge=1, le=1024)
    topic_replication: int = Field(1, ge=1, le=16)
    worker_instance_id: str | None = Field(
        None, description="Static group membership id (avoids rebalance storms on restart)."
    )
    web_port: int = Field(6066, ge=0, le=65535)
    table_store: Literal["rocksdb://", "memory://"] = Field(
        "rocksdb://",
        description="Faust table store: rocksdb:// (the table on disk under DATA_DIR, "
        "with the changelog offset it holds: a restart reads back only what it missed) "
        "or memory:// (in the worker's memory, the whole changelog re-read at start).",
    )
    data_dir: Path = Path(".stack/worker-data")

    # --- Redis ---------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None, description="redis:// or rediss:// URL (user:password@ for ACL auth)."
    )
    window_days: float = Field(30.0, gt=0, le=3650)
    popularity_half_life_days: float = Field(
        7.0, ge=1, le=36_500, description="Half-life of the popularity counts (event time)."
    )
    co_partners: int = Field(
        30, ge=0, le=10_000,
        description="A new item is paired with this many of the user's most recent items.",
    )
    co_keep: int = Field(300, ge=1, le=100_000, description="Partners kept per item.")
    item_stats_cache_ms: int = Field(
        5000, ge=0, le=600_000,
        description="Serving reuses the popular list, items' co-interaction rows and "
        "items' interaction counts read from Redis for this long (0: read them for every "
        "request).",
    )
    signals_ttl_seconds: int = Field(7 * 86_400, ge=60)
    key_prefix: str = Field("rw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")

    # --- Qdrant and embeddings -------------------------------------------------
    qdrant_api_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_collection: str = Field("content", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    qdrant_path: Path = Path(".stack/qdrant")
    model_dir: Path | None = Field(None, description="Local FastEmbed model directory.")
    embedding: Literal["fastembed", "hash"] = "fastembed"

    # --- Behaviour --------------------------------------------------------------
    batch_size: int = Field(500, ge=1, le=10_000)
    batch_within_ms: int = Field(
        0, ge=0, le=5_000,
        description="Once every fetched raw record is in the ingest batch, wait this long "
        "for more (0: go at once).")
    apply_within_ms: int = Field(
        0, ge=0, le=5_000, description="The same wait for the apply agent's batches.")
    apply_max_interactions: int = Field(
        5_000, ge=1, le=1_000_000,
        description="The apply agent works on at most this many interactions at a time "
        "(whole messages, in order): bounds its memory and the length of one Redis script.")
    direct_apply: bool = Field(
        True,
        description="When the events topic has TOPIC_PARTITIONS partitions, the ingest agent "
        "applies the interactions of users whose partition their raw record is on (records "
        "keyed by user id) itself, without the repartition topic.")
    apply_max_users: int = Field(
        256, ge=1, le=100_000,
        description="The apply agent appends, reads back the windows of and saves at most "
        "this many users at a time (bounds the memory of one apply).")
    fetch_min_bytes: int = Field(1, ge=1, le=50 * 1024 * 1024)
    fetch_max_wait_ms: int = Field(1500, ge=0, le=30_000)
    consumer_thread: bool = Field(
        False,
        description="Run Faust's Kafka consumer in a thread of its own, with its own "
        "event loop (Faust's way). Off: on the worker's loop, which measured faster "
        "(no hand-over between threads, no second thread holding the GIL).")
    producer_linger_ms: int = Field(0, ge=0, le=1_000)
    request_timeout_s: float = Field(10.0, gt=0, le=300)
    max_k: int = Field(100, ge=1, le=1000)
    request_concurrency: int = Field(4, ge=1, le=64)
    max_request_bytes: int = Field(64 * 1024, ge=256)
    request_deadline_ms: int = Field(
        10_000, ge=0, le=3_600_000,
        description="Requests older than this (record timestamp vs now) get an "
        "'overloaded' reply instead of an answer; 0 = never shed.",
    )
    retry_max_backoff_s: float = Field(5.0, gt=0, le=300)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    # --- Operations -------------------------------------------------------------
    reply_topic_wait_s: float = Field(
        3.0, gt=0, le=60,
        description="How long a request waits for its reply topic to appear in the "
        "broker's metadata; a request whose reply topic does not exist gets no reply.",
    )
    stall_reseek_s: float = Field(
        5.0, ge=0, le=3600,
        description="Re-read a partition from its committed offset after this long "
        "with lag and no progress (0 disables).",
    )
    ready_stall_s: float = Field(
        60.0, gt=0, le=3600,
        description="/readyz: not ready if there is lag and nothing progressed for this long.",
    )
    ready_ping_timeout_s: float = Field(2.0, gt=0, le=60)
    shutdown_drain_s: float = Field(
        15.0, ge=0, le=600, description="SIGTERM: how long to let in-flight events finish."
    )
    malloc_trim_interval_s: float = Field(
        30.0, ge=0, le=3600,
        description="Give the heap's free memory back to the system this often "
        "(glibc malloc_trim; 0 disables).",
    )

    @field_validator("kafka_broker")
    @classmethod
    def _broker_url(cls, v: str) -> str:
        parts = [p.strip() for p in v.replace(",", ";").split(";") if p.strip()]
        if not parts:
            raise ValueError("KAFKA_BROKER is empty; set it to host:port")
        out = []
        for p in parts:
            hostport = p.split("://", 1)[-1]
            host, _, port = hostport.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"KAFKA_BROKER entry {p!r} is not host:port")
            out.append(hostport)
        return "kafka://" + ";".join(out)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and urlsplit(v.get_secret_value()).scheme not in (
            "redis", "rediss", "unix"
        ):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return v

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "KAFKA_SECURITY_PROTOCOL is SASL_*: set KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        if self.kafka_ssl_cafile is not None and not self.kafka_ssl_cafile.is_file():
            raise ValueError(f"KAFKA_SSL_CAFILE {self.kafka_ssl_cafile} is not a readable file")
        return self

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port list for plain aiokafka clients."""
        return self.kafka_broker.split("://", 1)[1].split(";")

    def redacted_redis_url(self) -> str | None:
        """The Redis URL with any password masked, for logs."""
        if self.redis_url is None:
            return None
        return redact_url(self.redis_url.get_secret_value())


def redact_url(url: str) -> str:
    """Mask the password of a URL (``redis://user:***@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; raise ``ConfigurationError`` saying what to fix."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]).upper() or "settings"
            lines.append(f"  {field}: {err['msg']}")
        raise ConfigurationError("invalid configuration:\n" + "\n".join(lines)) from None
