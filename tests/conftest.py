"""Fixtures shared by the tests that start real actor processes."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.runtime import procutil
from tests.runtime_roles import processes_mentioning


def _short_run_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    yield d
    leftovers = processes_mentioning(str(d))
    for pid in leftovers:
        procutil.signal_group(pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)
    assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short run directory (ipc paths are limited to 107 bytes); on teardown, no
    process started for it may still be alive."""
    yield from _short_run_dir("rxrt")


@pytest.fixture(scope="module")
def module_run_dir() -> Iterator[Path]:
    """The same, shared by a module's tests (e.g. a capture made once and replayed)."""
    yield from _short_run_dir("rxrm")
