"""Entry point of one actor process.

    python -m actors.runtime.main --role nic --instance 0 --name nic \\
        --topology RUN_DIR/topology.json --run-dir RUN_DIR

The role's class is found, first match wins, in the topology entry's ``class``, the
topology's ``role_classes`` map, or :data:`ROLE_CLASSES`; each is ``"module:Class"``.

Exit codes: 0 after a graceful stop, 2 for a bad command line or topology,
70 (``EX_SOFTWARE``) when the role crashed, 75 when the parent was already gone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# An actor never draws on a terminal: keep structlog from loading rich (typer's
# dependency, installed anyway) and pygments through it, about 6 MB of RSS and 50 ms of
# start-up in every process. Nor does it speak TLS: asyncio (which structlog and
# zmq.utils.monitor import) takes ssl only if it is there, and leaving it out saves
# another 2.7 MB per process. Run as a script only (``-m``), never when imported.
if __name__ == "__main__":
    for _unused in ("rich", "ssl"):
        sys.modules.setdefault(_unused, None)  # type: ignore[arg-type]

from actors.runtime import procutil
from actors.runtime.actor import Actor, ActorSettings
from actors.runtime.logging import configure_process_logging
from protocol.envelope import KINDS

EX_USAGE = 2
EX_TEMPFAIL = 75

# role -> "module:Class"; each role package adds its shell here as it lands
# (peer, nic, cpu, stack, reader).
ROLE_CLASSES: dict[str, str] = {
    "peer": "actors.peer.actor:PeerActor",
    "nic": "actors.nic.actor:NicActor",
    "cpu": "actors.cpu.actor:CpuActor",
    "stack": "actors.stack.actor:StackActor",
    "reader": "actors.reader.actor:ReaderActor",
}


def load_class(spec: str) -> type[Actor]:
    """Import ``"package.module:ClassName"`` and check it is an :class:`Actor`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"role class {spec!r} is not of the form 'module:Class'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Actor)):
        raise TypeError(f"{spec} is not an Actor subclass")
    return obj


def role_class_spec(role: str, topology: Mapping[str, Any],
                    entry: Mapping[str, Any] | None = None) -> str:
    if entry and entry.get("class"):
        return str(entry["class"])
    extra = topology.get("role_classes") or {}
    spec = extra.get(role) or ROLE_CLASSES.get(role)
    if not spec:
        known = sorted({*ROLE_CLASSES, *extra})
        raise ValueError(f"unknown role {role!r} (known: {', '.join(known) or 'none'})")
    return str(spec)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m actors.runtime.main",
                                description="Run one rxpath actor process.")
    p.add_argument("--role", required=True)
    p.add_argument("--instance", type=int, default=0)
    p.add_argument("--name", required=True)
    p.add_argument("--topology", required=True, type=Path, help="topology JSON file")
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--incarnation", type=int, default=0,
                   help="0 for the first start, n after the n-th restart")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit at once if this process is no longer our parent")
    p.add_argument("--no-parent-death-signal", action="store_true",
                   help="keep running when the parent dies (containers)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # First thing: if the launcher dies, so do we.  Checking the parent afterwards
    # closes the race where it died before prctl took effect.
    if not args.no_parent_death_signal:
        procutil.set_parent_death_signal(signal.SIGKILL)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        print(f"parent {args.parent_pid} is gone; not starting", file=sys.stderr)
        return EX_TEMPFAIL
    try:
        topology = json.loads(args.topology.read_text())
        entry = (topology.get("actors") or {}).get(args.name)
        if entry is None:
            raise ValueError(f"actor {args.name!r} is not in {args.topology}")
        for key, given in (("role", args.role), ("instance", args.instance)):
            if key in entry and entry[key] != given:
                raise ValueError(f"{args.name}: --{key} {given!r} but the topology "
                                 f"says {entry[key]!r}")
        entry = {**entry, "role": args.role, "instance": args.instance}
        topology = {**topology, "actors": {**topology["actors"], args.name: entry}}
        settings = ActorSettings.from_topology(topology, args.name, args.run_dir,
                                               incarnation=args.incarnation)
        cls = load_class(role_class_spec(args.role, topology, entry))
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as exc:
        print(f"{args.name}: {exc}", file=sys.stderr)
        return EX_USAGE
    # Every kind this process will ever accept is declared by now: close the set.
    KINDS.freeze()
    log = configure_process_logging(settings.name, role=settings.role,
                                    instance=settings.instance, run_dir=settings.run_dir,
                                    settings=settings.log)
    actor = cls(settings, log=log)
    profile_dir = os.environ.get("RXPATH_CPROFILE_DIR")
    if profile_dir:
        return _run_profiled(actor, Path(profile_dir))
    return actor.run()


def _run_profiled(actor: Actor, out_dir: Path) -> int:
    """Run under cProfile and write ``<out_dir>/<name>.pstats`` (``RXPATH_CPROFILE_DIR``):
    deterministic call counts per function, beside py-spy's sampling. It times this
    thread's CPU, not the wall clock: on a machine with more actors than cores, time spent
    waiting to be scheduled is not the function's."""
    import cProfile

    out_dir.mkdir(parents=True, exist_ok=True)
    profiler = cProfile.Profile(time.thread_time)
    try:
        return profiler.runcall(actor.run)
    finally:
        profiler.dump_stats(out_dir / f"{actor.name}.pstats")


if __name__ == "__main__":
    sys.exit(main())
