"""cap_malloc_arenas: glibc's mallopt, unless MALLOC_ARENA_MAX says otherwise."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.servers import REPO
from worker.malloc import cap_malloc_arenas

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc")


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cap_malloc_arenas() is None


@glibc
def test_glibc_takes_the_cap() -> None:
    # In a child: mallopt changes the process it runs in.
    code = ("import os; os.environ.pop('MALLOC_ARENA_MAX', None);"
            "from worker.malloc import cap_malloc_arenas; print(cap_malloc_arenas(3))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    assert out.stdout.strip() == "3"
