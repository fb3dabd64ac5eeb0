"""Logging: readable by default, JSON lines when LOG_JSON=true; never secrets.

* The ``worker`` loggers get their own handler on stdout at ``LOG_LEVEL``.
* Faust's and mode's logs keep their root handler on stdout and Faust's ``-l``
  level, with the same format as ours (:func:`faust_logging_config`, passed to
  the app as ``logging_config``): with ``LOG_JSON=true`` every log line of the
  process is JSON. (Faust's start-up banner is not a log line.)
* Every handler we install masks the configured secrets (:class:`RedactSecrets`),
  and user ids are logged only as :func:`user_ref` (a short keyed hash).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterable
from typing import Any

import orjson

from worker.settings import Settings

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def user_ref(user_id: str | bytes | None) -> str:
    """A short, stable, non-reversible reference to a user id, for logs."""
    if user_id is None:
        return "u:-"
    raw = user_id if isinstance(user_id, bytes) else str(user_id).encode("utf-8", "replace")
    return "u:" + hashlib.blake2b(raw, digest_size=6, person=b"recsys-log").hexdigest()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in body:
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(body, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Masks the given secret strings in a record's message and arguments."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the formatter
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            clean_exc = self.redact(text)
            if clean_exc != text:
                record.exc_info, record.exc_text = None, clean_exc
        return True


def secrets_of(settings: Settings) -> list[str]:
    """The secret values a log line must never contain."""
    from urllib.parse import urlsplit

    out: list[str] = []
    if settings.kafka_sasl_password is not None:
        out.append(settings.kafka_sasl_password.get_secret_value())
    if settings.qdrant_api_key is not None:
        out.append(settings.qdrant_api_key.get_secret_value())
    if settings.redis_url is not None:
        url = settings.redis_url.get_secret_value()
        password = urlsplit(url).password
        if password:
            out.append(password)
            out.append(url)
    return out


def make_formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_json else logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """The ``worker`` loggers: one handler (stdout, like Faust's), LOG_LEVEL,
    secrets masked."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(make_formatter(settings))
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    root = logging.getLogger("worker")
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    root.propagate = False
    return handler


class _SettingsRedactor(RedactSecrets):
    """``RedactSecrets`` built from the environment (for ``logging.config``)."""

    def __init__(self) -> None:
        from worker.settings import load_settings

        try:
            secrets = secrets_of(load_settings())
        except Exception:
            secrets = []
        super().__init__(secrets)


def faust_logging_config(settings: Settings) -> dict[str, Any]:
    """Faust's ``logging_config`` (merged into mode's): our format (text or JSON)
    and the secret filter for Faust's own root handler on stdout."""
    formatter: dict[str, Any] = (
        {"()": "worker.logs.JsonFormatter"} if settings.log_json else {"format": TEXT_FORMAT}
    )
    return {
        "merge": True,
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "worker.logs._SettingsRedactor"}},
        "formatters": {"recsys": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "recsys",
                "filters": ["redact"],
                "stream": "ext://sys.stdout",
            }
        },
    }


_NO_SPINNER_MARK = "_recsys_no_spinner"


def patch_faust_spinner() -> None:
    """No terminal spinner, so the root logger keeps the chosen level.

    At a log level of WARN or above (LOG_LEVEL=WARNING or ERROR), Faust's worker
    shows a progress spinner that turns on every log record: it sets the root
    logger to DEBUG and adds a handler at DEBUG for it. Every ``log.debug`` of
    aiokafka, Faust and mode (several per fetch, per request sent) then builds
    a LogRecord and runs the handlers: 36 of ~220 main-thread samples (~16 %)
    of an idle worker at 10 requests/s (py-spy, LOG_LEVEL=WARNING). The worker is a service, so it
    gets no spinner, at any level.
    """
    from faust.worker import Worker

    original = Worker.on_setup_root_logger
    if getattr(original, _NO_SPINNER_MARK, False):
        return

    def on_setup_root_logger(self: Any, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        original(self, logger, level)

    setattr(on_setup_root_logger, _NO_SPINNER_MARK, True)
    Worker.on_setup_root_logger = on_setup_root_logger  # type: ignore[method-assign]
