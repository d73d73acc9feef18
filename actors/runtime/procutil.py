"""Process hygiene: parent-death signals, liveness checks, exit descriptions, log tails.

Linux only where it matters (``prctl``, ``/proc``, ``pidfd``); elsewhere the helpers
degrade to portable fallbacks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import select
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def settle_heap() -> int:
    """Collect what start-up left behind, then freeze the survivors (modules, classes,
    the role's model): the cyclic GC stops walking them in the run's collections. In a
    bench A/B this cut the CPU per segment by a tenth. Returns the frozen count."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent *thread* exits.

    The launcher therefore spawns actors from its main thread.  Returns False where
    unsupported (non-Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return True


def _proc_stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The comm field (2) is in parentheses and may contain spaces; split after it.
    rest = raw[raw.rfind(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), to tell a
    process from a later one that reuses its pid."""
    fields = _proc_stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) process, and the same one if ``start_time``
    is given."""
    if pid <= 0:
        return False
    fields = _proc_stat_fields(pid)
    if fields is None:
        if os.path.isdir("/proc/self"):
            return False
        try:  # no procfs: fall back to signal 0
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def wait_pids_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Wait until every pid has exited (zombies count as exited); return those still alive.

    Uses pidfds where available (woken by the kernel at exit, no polling).
    """
    deadline = time.monotonic() + timeout_s
    pending = {pid for pid in pids if pid_alive(pid)}
    fds: dict[int, int] = {}
    try:
        if hasattr(os, "pidfd_open"):
            for pid in list(pending):
                try:
                    fds[os.pidfd_open(pid)] = pid
                except ProcessLookupError:
                    pending.discard(pid)
                except OSError:
                    pass  # fall back to polling for this one
        while pending:
            pending = {pid for pid in pending if pid_alive(pid)}
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                break
            watched = [fd for fd, pid in fds.items() if pid in pending]
            # Exits of pids without a pidfd are only noticed by the 50 ms re-check.
            step = remaining if len(watched) == len(pending) else min(remaining, 0.05)
            if watched:
                select.select(watched, [], [], step)
            else:
                time.sleep(step)  # polling fallback (no pidfd): bounded by the deadline
        return sorted(pending)
    finally:
        for fd in fds:
            os.close(fd)


def describe_exit(returncode: int | None) -> str:
    """``exit 0`` / ``exit 3`` / ``killed by SIGKILL`` / ``running``."""
    if returncode is None:
        return "running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


def signal_group(pid: int, sig: int) -> bool:
    """Send ``sig`` to the process group led by ``pid`` (actors run in their own session);
    False if it is already gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False


def tail_text(path: str | Path, max_bytes: int = 4000) -> str:
    """The last ``max_bytes`` of a file as text ('' if missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = "..." + text[text.find("\n") + 1:]
    return text
