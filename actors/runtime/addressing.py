"""Actor names -> ZeroMQ endpoints, from the topology.

Every actor binds one inbox; peers connect to it.  The topology is a plain dict
(loaded from TOML/JSON by the CLI)::

    {
      "transport": "ipc",            # default; "tcp" across containers or hosts
      "bind_host": "127.0.0.1",      # tcp: interface to bind (loopback unless told)
      "base_port": 5550,             # tcp: ports handed out in order, launcher first
      "launcher": {"port": 5550, "host": "launcher"},   # optional, like an actor entry
      "config": {"scenario": {...}},  # every actor's, under its own entry's config
      "actors": {
        "nic":  {"role": "nic", "config": {...}},
        "cpu1": {"role": "cpu", "instance": 1, "port": 5560, "host": "cpu1"},
      },
    }

- ``ipc``: ``ipc://<run_dir>/sock/<name>`` for bind and connect alike; the directory of
  an ipc socket is made private (mode 0700, :func:`ensure_private_dir`): connecting to a
  unix socket needs search permission on its directory, so no other user can reach it.
- ``tcp``: bind ``tcp://<bind_host>:<port>``, connect ``tcp://<host>:<port>`` where an
  entry's ``host`` defaults to the bind host (or 127.0.0.1 when binding 0.0.0.0).
  A per-entry ``transport``, ``bind_host`` or ``port`` overrides the topology default.
  tcp endpoints use CurveZMQ with the keys the topology's ``curve`` section names
  (:mod:`actors.runtime.curve`).

The launcher is addressed like an actor under the reserved name :data:`LAUNCHER`.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAUNCHER = "launcher"
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
IPC_PATH_MAX = 107
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Endpoint:
    """Where an actor binds its inbox, and where others connect to reach it."""

    bind: str
    connect: str

    def to_dict(self) -> dict[str, str]:
        return {"bind": self.bind, "connect": self.connect}

    @classmethod
    def from_obj(cls, obj: Endpoint | str | Mapping[str, str]) -> Endpoint:
        if isinstance(obj, Endpoint):
            return obj
        if isinstance(obj, str):
            return cls(obj, obj)
        return cls(obj["bind"], obj["connect"])


def validate_name(name: str) -> str:
    """Actor names are routing ids and file names: lowercase, digits, '_' and '-'."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid actor name {name!r}: use [a-z][a-z0-9_-]*, at most 64 characters")
    return name


def ipc_endpoint(run_dir: str | Path, name: str) -> str:
    path = Path(run_dir).resolve() / "sock" / name
    if len(str(path).encode()) > IPC_PATH_MAX:
        raise ValueError(
            f"ipc socket path {path} is longer than {IPC_PATH_MAX} bytes; "
            "use a shorter run directory")
    return f"ipc://{path}"


def ensure_private_dir(path: str | Path) -> Path:
    """Create ``path`` (mode 0700) or make an existing one ours alone; refuse a directory
    owned by another user, since its owner could reach (or replace) the sockets in it."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"ipc socket directory {path} is not a directory")
    if st.st_uid != os.getuid():
        raise ValueError(f"ipc socket directory {path} belongs to uid {st.st_uid}, "
                         f"not to this user ({os.getuid()}): choose a run directory of your own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def ipc_path(endpoint: str) -> Path | None:
    """The file of an ``ipc://`` endpoint, None for any other transport."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def tcp_endpoint(bind_host: str, connect_host: str, port: int) -> Endpoint:
    if not 0 < int(port) < 65536:
        raise ValueError(f"tcp port {port} out of range")
    return Endpoint(f"tcp://{bind_host}:{port}", f"tcp://{connect_host}:{port}")


def free_tcp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS considers free right now (racy, fine for tests and local runs)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def actor_names(topology: Mapping[str, Any]) -> list[str]:
    actors = topology.get("actors") or {}
    names = [validate_name(n) for n in actors]
    if LAUNCHER in names:
        raise ValueError(f"{LAUNCHER!r} is a reserved name")
    return names


def endpoints_from_topology(topology: Mapping[str, Any],
                            run_dir: str | Path) -> dict[str, Endpoint]:
    """Every actor's endpoint, and the launcher's under :data:`LAUNCHER`."""
    default_transport = topology.get("transport", "ipc")
    default_bind = topology.get("bind_host", "127.0.0.1")
    next_port = topology.get("base_port")
    actors: Mapping[str, Mapping[str, Any]] = topology.get("actors") or {}
    entries = [(LAUNCHER, topology.get("launcher") or {})]
    entries += [(name, actors[name]) for name in actor_names(topology)]
    out: dict[str, Endpoint] = {}
    for name, entry in entries:
        if "endpoint" in entry:  # fully explicit
            out[name] = Endpoint.from_obj(entry["endpoint"])
            continue
        transport = entry.get("transport", default_transport)
        if transport == "ipc":
            out[name] = Endpoint(ipc_endpoint(run_dir, name), ipc_endpoint(run_dir, name))
        elif transport == "tcp":
            port = entry.get("port")
            if port is None:
                if next_port is None:
                    raise ValueError(f"{name}: tcp transport needs a port or a base_port")
                port = next_port
                next_port += 1
            bind_host = entry.get("bind_host", default_bind)
            default_connect = "127.0.0.1" if bind_host in ("0.0.0.0", "*") else bind_host
            out[name] = tcp_endpoint(bind_host, entry.get("host", default_connect), port)
        else:
            raise ValueError(f"{name}: unknown transport {transport!r} (ipc or tcp)")
    return out
