"""Settings that stop start-up say what to fix."""

from __future__ import annotations

import pytest

from worker.recsys_core.errors import ConfigurationError
from worker.settings import load_settings


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_both_table_stores_are_accepted(store: str) -> None:
    assert load_settings(table_store=store).table_store == store


@pytest.mark.parametrize("store", ["rocksdb", "redis://", "rocksdb:///var/lib/x", ""])
def test_another_table_store_is_a_configuration_error(store: str) -> None:
    with pytest.raises(ConfigurationError, match="TABLE_STORE"):
        load_settings(table_store=store)


def test_every_log_level_is_one_faust_accepts() -> None:
    """LOG_LEVEL=WARNING used to reach Faust as ``-l warning``, which its CLI
    refuses ("not one of 'crit', 'error', 'warn', 'info', 'debug'"): the worker
    did not start."""
    from typing import get_args

    from click.testing import CliRunner
    from faust.cli.base import LOGLEVELS

    from worker.cli import faust_loglevel
    from worker.settings import Settings

    levels = get_args(Settings.model_fields["log_level"].annotation)
    assert set(levels) == {"DEBUG", "INFO", "WARNING", "ERROR"}
    for level in levels:
        assert faust_loglevel(level).upper() in LOGLEVELS, level
        assert load_settings(log_level=level).log_level == level
    # and Faust's own option takes each of them
    import click
    from faust.cli import params

    @click.command()
    @click.option("-l", type=params.CaseInsensitiveChoice(LOGLEVELS))
    def cmd(l: str) -> None:  # noqa: E741
        click.echo(l)

    for level in levels:
        result = CliRunner().invoke(cmd, ["-l", faust_loglevel(level)])
        assert result.exit_code == 0, result.output
