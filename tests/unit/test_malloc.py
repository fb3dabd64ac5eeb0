"""worker/malloc.py: the arena cap (glibc's mallopt, unless MALLOC_ARENA_MAX says
otherwise) and giving free heap memory back (malloc_trim)."""

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


@glibc
def test_freed_memory_goes_back_to_the_system() -> None:
    # 200 MB of 1 kB objects (malloc's, not pymalloc's), all but the last freed:
    # what stays resident until malloc_trim hands the pages back.
    code = ("import gc\n"
            "from worker.malloc import release_free_memory\n"
            "def rss():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmRSS'):\n"
            "            return int(line.split()[1]) // 1024\n"
            "x = [bytes(1000) for _ in range(200_000)]\n"
            "keep = x[-1]\n"
            "del x\n"
            "gc.collect()\n"
            "before = rss()\n"
            "print(release_free_memory(), before, rss())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True)
    released, before, after = out.stdout.split()
    assert released == "True"
    assert int(before) - int(after) >= 100, out.stdout  # MB given back


def test_without_glibc_nothing_is_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.malloc as m

    monkeypatch.setattr(m, "_glibc", lambda: None)
    assert m.release_free_memory() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert m.cap_malloc_arenas() is None
