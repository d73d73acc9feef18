"""The run's network namespace for ``[[linux_senders]]``: created before the actors,
removed after them, however the run ends.

:func:`run_netns` creates ``rxpath-<shortid>`` and starts its cleanup guard
(:mod:`actors.tunwire.guard`) with the read end of a pipe as stdin, keeping the write
end in this process only. Leaving the ``with`` block closes the write end and waits for
the guard to have removed everything; if this process dies instead (even by SIGKILL),
the kernel closes the write end and the guard does the same on its own. The tunwire
actor creates the TUN device inside the namespace; the device and every process in
the namespace go with it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actors.runtime.launcher import PROJECT_ROOT
from actors.scenario import Scenario
from actors.tunwire.netns import (
    NETNS_DIR,
    NETNS_PREFIX,
    TUN_DEVICE,
    create_netns,
    delete_netns,
)

GUARD_TIMEOUT_S = 15.0


class NetnsError(RuntimeError):
    """The run's namespace could not be made (not root, no iproute2, ...)."""


def new_netns_name() -> str:
    return f"{NETNS_PREFIX}{secrets.token_hex(4)}"


def _guarded_names() -> set[str]:
    """Namespaces some live guard process is watching."""
    names = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"actors.tunwire.guard" in argv and len(argv) >= 2:
            names.add(argv[argv.index(b"actors.tunwire.guard") + 1].decode(errors="replace"))
    return names


def sweep_stale(min_age_s: float = 30.0) -> list[str]:
    """Delete ``rxpath-*`` namespaces no guard watches (left by a guard that was itself
    killed), older than ``min_age_s`` (a concurrent run may be between creating its
    namespace and starting its guard); returns their names."""
    if not NETNS_DIR.is_dir():
        return []
    guarded = _guarded_names()
    cutoff = time.time() - min_age_s
    stale = [p.name for p in NETNS_DIR.glob(f"{NETNS_PREFIX}*")
             if p.name not in guarded and p.stat().st_mtime < cutoff]
    for name in stale:
        delete_netns(name)
    return stale


@contextlib.contextmanager
def run_netns(name: str | None = None) -> Iterator[str]:
    """A fresh network namespace for one run, and its guard; yields the name."""
    name = name or new_netns_name()
    try:
        sweep_stale()
        create_netns(name)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace").strip()
        raise NetnsError(f"cannot create network namespace {name} for [[linux_senders]] "
                         f"(needs root and iproute2): {detail}") from None
    read_end, write_end = os.pipe()  # both non-inheritable; the guard gets read_end as fd 0
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"]
                                             if env.get("PYTHONPATH") else "")
    try:
        guard = subprocess.Popen([sys.executable, "-m", "actors.tunwire.guard", name],
                                 stdin=read_end, stdout=subprocess.PIPE, env=env,
                                 start_new_session=True, close_fds=True)
    except BaseException:
        os.close(write_end)
        delete_netns(name)
        raise
    finally:
        os.close(read_end)
    try:
        assert guard.stdout is not None
        guard.stdout.readline()  # "ready": its signal dispositions are set
        yield name
    finally:
        os.close(write_end)
        try:
            guard.wait(timeout=GUARD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            guard.kill()
            guard.wait()
            delete_netns(name)
        if guard.stdout is not None:
            guard.stdout.close()


def tunwire_config(sc: Scenario, netns: str) -> dict[str, Any]:
    """What the tunwire actor needs: the namespace, the addresses, each flow's sender."""
    ids = {f.name: i + 1 for i, f in enumerate(sc.flows)}
    senders = []
    for s in sc.linux_senders:
        for name in s.flows:
            f = sc.flow(name)
            senders.append({"sender": s.name, "flow": name, "flow_id": ids[name],
                            "sport": f.sport, "dport": sc.stack.listen_port,
                            "bytes": f.bytes, "start_ns": f.start_ns,
                            "command": list(s.command), "file": s.file})
    return {"netns": netns, "device": TUN_DEVICE, "local": sc.peer.address,
            "remote": sc.stack.address, "senders": senders}
