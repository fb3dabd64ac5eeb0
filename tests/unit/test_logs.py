"""Log helpers: user id references, the JSON formatter, secrets never printed."""

from __future__ import annotations

import io
import json
import logging

import pytest

from worker.logs import (
    JsonFormatter,
    RedactSecrets,
    configure_logging,
    faust_logging_config,
    secrets_of,
    user_ref,
)
from worker.settings import load_settings


def test_user_ref_is_short_stable_and_not_the_id() -> None:
    ref = user_ref("alice@example.com")
    assert ref == user_ref("alice@example.com") == user_ref(b"alice@example.com")
    assert ref.startswith("u:") and len(ref) == 14
    assert "alice" not in ref
    assert user_ref("alice@example.com") != user_ref("alice@example.org")
    assert user_ref(None) == "u:-"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("worker.test", logging.WARNING, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_formatter_one_object_per_line_with_extras() -> None:
    line = JsonFormatter().format(_record("lag %d on %s", 3, "t:0", partition=0, obj={1}))
    assert "\n" not in line
    body = json.loads(line)
    assert body["msg"] == "lag 3 on t:0"
    assert body["level"] == "warning" and body["logger"] == "worker.test"
    assert body["partition"] == 0 and body["obj"] == "{1}"  # not JSON-able -> str
    assert body["ts"][:2] == "20"


def test_json_formatter_includes_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("worker.x", logging.ERROR, __file__, 1, "failed", (),
                                sys.exc_info())
    body = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in body["exc"]


def test_redact_masks_secrets_in_message_args_and_exception() -> None:
    f = RedactSecrets(["hunter22", "redis://:hunter22@h:1/0", "", "ab"])
    rec = _record("connecting to %s", "redis://:hunter22@h:1/0")
    f.filter(rec)
    assert rec.getMessage() == "connecting to ***"
    try:
        raise RuntimeError("auth failed for hunter22")
    except RuntimeError:
        import sys

        rec = logging.LogRecord("w", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    f.filter(rec)
    out = logging.Formatter().format(rec)
    assert "hunter22" not in out and "auth failed for ***" in out


@pytest.mark.parametrize("json_logs", [False, True])
def test_configured_worker_logger_never_prints_secrets(json_logs: bool) -> None:
    settings = load_settings(
        redis_url="rediss://recsys:r3dis-secret@redis.internal:6380/0",
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="recsys",
        kafka_sasl_password="k4fka-secret", qdrant_api_url="https://q:6333",
        qdrant_api_key="qdr4nt-key", log_json=json_logs,
    )
    assert set(secrets_of(settings)) >= {"r3dis-secret", "k4fka-secret", "qdr4nt-key"}
    stream = io.StringIO()
    configure_logging(settings, stream)
    try:
        log = logging.getLogger("worker.test")
        log.info("settings: %r", settings)
        log.info("url %s key %s pw %s", settings.redis_url.get_secret_value(),
                 "qdr4nt-key", "k4fka-secret")
        log.warning("redacted url %s", settings.redacted_redis_url())
    finally:
        logging.getLogger("worker").handlers.clear()
    out = stream.getvalue()
    for secret in ("r3dis-secret", "k4fka-secret", "qdr4nt-key"):
        assert secret not in out
    assert "rediss://recsys:***@redis.internal:6380/0" in out
    if json_logs:
        assert all(json.loads(line)["logger"] == "worker.test" for line in out.splitlines())


def test_faust_logging_config_uses_our_formatter() -> None:
    cfg = faust_logging_config(load_settings(log_json=True))
    assert cfg["merge"] is True
    assert cfg["formatters"]["recsys"] == {"()": "worker.logs.JsonFormatter"}
    assert cfg["handlers"]["default"]["filters"] == ["redact"]
    text = faust_logging_config(load_settings(log_json=False))
    assert "format" in text["formatters"]["recsys"]


def test_faust_worker_leaves_the_chosen_log_level_alone() -> None:
    """At WARN and above Faust's worker set the root logger to DEBUG for its
    terminal spinner, so every debug call of aiokafka and Faust built a record."""
    import faust

    from worker.logs import patch_faust_spinner

    def setup(level: int) -> logging.Logger:
        logger = logging.Logger(f"root-{level}")  # stands for the root logger
        logger.addHandler(logging.StreamHandler(io.StringIO()))
        logger.setLevel(level)
        worker = faust.Worker(faust.App(f"spin-{level}"), loglevel="warn")
        worker.on_setup_root_logger(logger, level)
        return logger

    import faust.worker as fw
    original = fw.Worker.on_setup_root_logger
    try:
        unpatched = setup(logging.WARNING)
        assert unpatched.level == logging.DEBUG  # what Faust does by itself
        patch_faust_spinner()
        patch_faust_spinner()  # idempotent
        for level in (logging.WARNING, logging.ERROR, logging.INFO):
            logger = setup(level)
            assert logger.level == level
            assert not logger.isEnabledFor(logging.DEBUG)
            assert len(logger.handlers) == 1  # no spinner handler
    finally:
        fw.Worker.on_setup_root_logger = original
