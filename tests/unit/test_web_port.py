"""WEB_PORT=0 turns the worker's web server off (README: "0 disables it").

It used to stop the worker at start-up: the app passed ``web_port=0`` to Faust,
whose setting refuses it ("Value 0 is out of range for Port"), and Faust's
``worker`` command turns the web server on unless told ``--without-web``,
whatever the app's ``web_enabled``. The end-to-end check (a worker process with
WEB_PORT=0) is ``tests/e2e/test_operations.py``.
"""

from __future__ import annotations

import pytest

from tests.factories import memory_app
from worker.cli import faust_worker_args
from worker.settings import load_settings


def test_web_port_0_builds_an_app_without_the_web_server() -> None:
    app = memory_app("web-off", web_port=0)
    assert app.conf.web_enabled is False  # Faust validated its settings on the way


def test_faust_does_not_read_our_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust takes WEB_PORT, TOPIC_PARTITIONS, ... from the environment over what
    the app passes: WEB_PORT=0 (a valid value of ours) reached it that way. Its
    own variables still apply (the fault tests shorten its session timeout)."""
    monkeypatch.setenv("WEB_PORT", "0")
    monkeypatch.setenv("TOPIC_PARTITIONS", "3")
    monkeypatch.setenv("STREAM_BUFFER_MAXSIZE", "7")  # Faust's own
    app = memory_app("web-env", web_port=0, topic_partitions=5)
    assert app.conf.web_enabled is False
    assert app.conf.topic_partitions == 5
    assert app.conf.stream_buffer_maxsize == 7


def test_faust_environment_leaves_out_every_setting_of_ours() -> None:
    from worker.app import faust_environment
    from worker.settings import Settings

    env = {name.upper(): "x" for name in Settings.model_fields}
    env |= {"web_port": "0", "BROKER_SESSION_TIMEOUT": "10", "PATH": "/bin"}
    assert faust_environment(env) == {"BROKER_SESSION_TIMEOUT": "10", "PATH": "/bin"}


def test_a_web_port_is_passed_to_faust() -> None:
    app = memory_app("web-on", web_port=16123)
    assert app.conf.web_enabled is True
    assert app.conf.web_port == 16123


def test_faust_is_told_without_web_for_port_0() -> None:
    off = load_settings(web_port=0)
    assert faust_worker_args(off, []) == ["-l", "info", "--without-web"]
    assert faust_worker_args(load_settings(web_port=6066), []) == ["-l", "info"]
    # what the caller passes wins
    assert "--without-web" not in faust_worker_args(off, ["--with-web"])
    assert faust_worker_args(off, ["--without-web"]).count("--without-web") == 1
    assert faust_worker_args(off, ["-l", "debug"]) == ["-l", "debug", "--without-web"]
