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
