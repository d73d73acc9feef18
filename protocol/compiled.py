"""The optional compiled build of the pure modules (``rxpath compile``), and its guard.

``rxpath compile`` turns the sans-I/O modules below into C extensions with mypyc, in
place: Python then imports ``tcp_input.cpython-*.so`` instead of ``tcp_input.py``. The
pure-Python sources stay the reference and run whenever nothing is compiled.

An extension built from an older source would silently run old rules, so the build
writes a manifest of its sources' hashes and :func:`check_fresh` (called when
:mod:`protocol` is first imported, before any compiled module can be) removes the
build, with a warning, when a source changed since: the sources then run as they are.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "protocol" / "compiled.json"

# Hot, pure, fully typed: the kernel model and what every segment goes through.
MODULES = (
    "actors/stack/tcp_input.py", "actors/stack/tcp_output.py", "actors/stack/sock.py",
    "actors/stack/skb.py", "actors/stack/net.py", "actors/stack/tcp.py",
    "actors/stack/tcp_ipv4.py", "actors/stack/tcp_minisocks.py", "actors/stack/tcp_timer.py",
    "actors/reader/tcp_recvmsg.py", "actors/peer/sender.py", "actors/cpu/napi.py",
    "actors/cpu/ip_rcv.py", "actors/cpu/gro.py", "actors/nic/model.py",
    "protocol/segment.py", "protocol/wire.py", "protocol/tcp_options.py", "protocol/seq.py",
)
# The runtime library mypyc shares between them (a module of actors.stack).
GROUP = "actors.stack.model"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extensions(root: Path = ROOT) -> list[Path]:
    """The compiled files of this build present under ``root``."""
    found: list[Path] = []
    for rel in (*MODULES, GROUP.replace(".", "/") + "__mypyc.py"):
        src = root / rel
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            ext = src.with_name(src.stem + suffix)
            if ext.exists():
                found.append(ext)
    return found


def stale_sources(root: Path = ROOT) -> list[str]:
    """Sources changed since the build recorded in the manifest (none without one)."""
    manifest = root / MANIFEST.relative_to(ROOT)
    if not manifest.exists():
        return []
    recorded: dict[str, str] = json.loads(manifest.read_text())["sources"]
    stale = []
    for rel, digest in recorded.items():
        src = root / rel
        if not src.exists() or source_hash(src) != digest:
            stale.append(rel)
    return stale


def remove_build(root: Path = ROOT) -> list[Path]:
    """Remove the compiled files: today's list, and what the manifest says was built
    (a module dropped from the list since must not keep shadowing its source)."""
    removed = extensions(root)
    manifest = root / MANIFEST.relative_to(ROOT)
    if manifest.exists():
        built = json.loads(manifest.read_text()).get("extensions", [])
        removed += [p for p in (root / rel for rel in built) if p.exists() and p not in removed]
    for path in removed:
        path.unlink(missing_ok=True)  # another process may be removing it too
    manifest.unlink(missing_ok=True)
    return removed


def check_fresh() -> None:
    stale = stale_sources()
    if stale:
        remove_build()
        print(f"rxpath: {', '.join(stale)} changed since `rxpath compile`: removed the "
              "compiled modules, running the pure-Python sources (compile again for "
              "speed)", file=sys.stderr)


def is_compiled() -> bool:
    """Does the kernel model run compiled in this process?"""
    import actors.stack.tcp_input as tcp_input

    return not str(getattr(tcp_input, "__file__", "")).endswith(".py")
