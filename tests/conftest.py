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


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short run directory (ipc paths are limited to 107 bytes); on teardown, no
    process started for it may still be alive."""
    d = Path(tempfile.mkdtemp(prefix="rxrt", dir="/tmp"))
    yield d
    leftovers = processes_mentioning(str(d))
    for pid in leftovers:
        procutil.signal_group(pid, signal.SIGKILL)
    shutil.rmtree(d, ignore_errors=True)
    assert not leftovers, f"processes left behind: {leftovers}"
