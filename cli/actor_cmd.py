"""``rxpath actor ROLE --config TOPOLOGY``: run one role in the foreground (containers).

The topology is a JSON file as ``rxpath compose`` writes it (tcp endpoints by service
name). The actor logs JSON lines to stdout, ignores the death of its parent (a container
has none worth following) and exits with the runtime's code (see
:mod:`actors.runtime.main`), so a restart policy can tell a crash from a clean stop.

A container restarted by its engine keeps its own filesystem, so ``--state-dir`` (a
directory inside the container) counts incarnations across restarts: a restarted actor
announces itself as such and joins the links its peers kept open mid-stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime import main as runtime_main
from cli.app import CONFIG_ERROR_EXIT, app


def resolve_actor(topology: dict[str, Any], role: str, name: str | None,
                  instance: int | None) -> tuple[str, int]:
    """The actor entry that ``role`` (and ``name``/``instance``, when given) selects."""
    actors: dict[str, Any] = topology.get("actors") or {}
    if name is not None:
        entry = actors.get(name)
        if entry is None:
            raise ValueError(f"no actor named {name!r} in the topology "
                             f"(known: {', '.join(sorted(actors))})")
        if entry.get("role", role) != role:
            raise ValueError(f"actor {name!r} has role {entry['role']!r}, not {role!r}")
        return name, int(instance if instance is not None else entry.get("instance", 0))
    matches = [(n, int(e.get("instance", 0))) for n, e in actors.items()
               if e.get("role") == role
               and (instance is None or int(e.get("instance", 0)) == instance)]
    if len(matches) != 1:
        which = ", ".join(n for n, _ in matches) or "none"
        raise ValueError(f"role {role!r} selects {len(matches)} actors ({which}): "
                         "give --name")
    return matches[0]


def next_incarnation(state_dir: Path, name: str) -> int:
    """0 on the first start in this container, n after its n-th restart."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / f"{name}.incarnation"
    try:
        n = int(path.read_text().strip()) + 1
    except (FileNotFoundError, ValueError):
        n = 0
    path.write_text(f"{n}\n")
    return n


def with_stdout_logs(topology: dict[str, Any]) -> dict[str, Any]:
    log = {**(topology.get("log") or {}), "stdout": True}
    return {**topology, "log": log}


@app.command("actor")
def actor(
    role: Annotated[str, typer.Argument(help="peer, nic, cpu, stack or reader.")],
    config: Annotated[Path, typer.Option(
        "--config", help="Topology JSON (as `rxpath compose` writes it).")],
    name: Annotated[str | None, typer.Option(
        "--name", help="Actor name in the topology (default: the only one of ROLE).")]
        = None,
    instance: Annotated[int | None, typer.Option(
        "--instance", help="Instance number (default: the topology's).")] = None,
    run_dir: Annotated[Path, typer.Option(
        "--run-dir", help="Where the actor writes its files (pcap, ...).")] = Path("."),
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Directory that survives a restart of this actor only "
        "(inside its container); counts incarnations.")] = None,
) -> None:
    """Run one actor of a topology in the foreground, logging JSON to stdout."""
    try:
        topology = json.loads(config.read_text())
        actor_name, actor_instance = resolve_actor(topology, role, name, instance)
        incarnation = next_incarnation(state_dir, actor_name) if state_dir else 0
        run_dir.mkdir(parents=True, exist_ok=True)
        # The runtime reads a file: give it one with stdout logging switched on.
        effective = run_dir / f".topology.{actor_name}.json"
        effective.write_text(json.dumps(with_stdout_logs(topology)))
    except (OSError, ValueError) as exc:
        typer.echo(f"rxpath actor: {exc}", err=True)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None
    code = runtime_main.main([
        "--role", role, "--instance", str(actor_instance), "--name", actor_name,
        "--topology", str(effective), "--run-dir", str(run_dir),
        "--incarnation", str(incarnation), "--no-parent-death-signal"])
    raise typer.Exit(code)
