"""``rxpath coordinate --config TOPOLOGY``: drive a topology whose actors run elsewhere.

The coordinator of a docker-compose run: a :class:`Launcher` for which every actor is
external. It waits for every ``ready``, starts the traffic, follows the run like
``rxpath run`` does, writes ``summary.json`` and ``counters.json`` to the run directory,
prints the summary as JSON and exits with the checker's verdict, the run's one verdict
(as ``rxpath run``: 0 PASS, 1 FAIL, 4 INCOMPLETE; 3 if the actors never came up).

An actor whose container was restarted says ``ready`` again: the coordinator starts its
link to it afresh and sends it ``start``, so it rejoins the running transfer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.addressing import LAUNCHER, endpoints_from_topology
from actors.runtime.curve import keys_for
from actors.runtime.launcher import ActorStartError, Launcher
from actors.runtime.supervisor import tell_neighbours
from actors.scenario import Scenario
from cli.app import CONFIG_ERROR_EXIT, app
from cli.config import ConfigError, scenario_from_data
from cli.run import RunState, _absorb, _final_stats, exit_status, judge_run, summarize
from protocol import messages as msg
from protocol.envelope import Envelope

# An exit code of its own for "the actors never came up", apart from a failed verdict.
NOT_READY_EXIT = 3


class ExternalLauncher(Launcher):
    """A launcher that lets a restarted external actor rejoin the run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rejoined: dict[str, int] = {}

    def _absorb(self, env: Envelope) -> bool:
        proc = self._procs.get(env.sender)
        again = (env.kind == msg.READY and proc is not None and proc.external
                 and proc.ready and self.t0_ns is not None and not self._stopping)
        if again and self._mailbox is not None:
            # A new incarnation: what we queued for the old one is gone, numbering restarts.
            self._mailbox.reset_link(env.sender)
        keep = super()._absorb(env)
        if again and proc is not None and self._mailbox is not None:
            self.rejoined[env.sender] = self.rejoined.get(env.sender, 0) + 1
            self.log.warning("actor_rejoined", actor=env.sender, pid=env.body["pid"],
                             times=self.rejoined[env.sender])
            self._mailbox.send(env.sender, msg.START, {"t0_ns": self.t0_ns})
            # Its neighbours drop what they kept for the old process (credits, batches).
            tell_neighbours(self, env.sender, proc.role, "restarted",
                            self.rejoined[env.sender])
        return keep


def scenario_of(topology: dict[str, Any]) -> Scenario:
    """The scenario every actor of the topology reads: the shared config's, or else the
    first actor's that carries one."""
    entries = (topology.get("actors") or {}).values()
    for config in (topology.get("config"), *(entry.get("config") for entry in entries)):
        scenario = (config or {}).get("scenario")
        if scenario is not None:
            return scenario_from_data(scenario, source="topology")
    raise ConfigError("topology", None,
                      "neither its config nor any actor's carries a scenario")


def coordinate_run(topology: dict[str, Any], run_dir: Path, *,
                   ready_timeout_s: float = 120.0) -> dict[str, Any]:
    """Run a topology of external actors to completion; returns the summary."""
    sc = scenario_of(topology)
    topology = {**topology, "actors": {n: {**e, "external": True}
                                       for n, e in topology["actors"].items()}}
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState()
    started = time.monotonic()
    reason = "duration"
    launcher = ExternalLauncher(topology, run_dir, ready_timeout_s=ready_timeout_s)
    with launcher:
        traffic_start = time.monotonic()
        deadline = traffic_start + sc.duration
        readers = {r.name for r in sc.readers}
        owners = {n for n, e in topology["actors"].items() if e["role"] in ("peer", "stack")}
        while time.monotonic() < deadline:
            for env in launcher.poll(timeout_ms=100):
                _absorb(state, env.sender, env.kind, env.body)
            if readers and readers <= set(state.eof) | {e["actor"] for e in state.errors}:
                reason = "complete"
                break
            # The peer and the stack own the connections: no restart brings them back.
            lost = sorted({e["actor"] for e in state.errors
                           if e["event"] == "actor_crashed" and e["actor"] in owners})
            if lost:
                reason = "actor_crashed: " + ", ".join(lost)
                break
        transfer_s = time.monotonic() - traffic_start
        # As `rxpath run` takes them: upstream first, downstream first if cut off.
        final, state.path_busy = _final_stats(launcher, sc, readers,
                                              downstream_first=reason != "complete")
        state.counters = {**launcher.last_counters, **final}
        rejoined = dict(launcher.rejoined)
        launcher.stop()
    summary = summarize(sc, state, reason, time.monotonic() - started)
    summary["transfer_s"] = round(transfer_s, 3)
    summary["rejoined"] = rejoined
    # The checker, from what the readers recorded on the shared volume; a restarted
    # container counts as a death of its previous incarnation.
    roles = {n: e["role"] for n, e in topology["actors"].items()}
    state.supervision = {"deaths": [{"actor": n, "role": roles[n]}
                                    for n, times in rejoined.items() for _ in range(times)]}
    judge_run(sc, run_dir, state, summary)
    (run_dir / "counters.json").write_text(json.dumps(state.counters, indent=2, default=str))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


@app.command("coordinate")
def coordinate(
    config: Annotated[Path, typer.Option(
        "--config", help="Topology JSON (as `rxpath compose` writes it).")],
    run_dir: Annotated[Path, typer.Option(
        "--run-dir", help="Where summary.json and counters.json go.")] = Path("."),
    ready_timeout: Annotated[float, typer.Option(
        "--ready-timeout", help="Seconds to wait for every actor's ready.")] = 120.0,
) -> None:
    """Coordinate actors started elsewhere (containers); exit 0 only if every flow is
    intact (PASS), 1 FAIL, 4 INCOMPLETE (stopped before every flow ended, nothing wrong
    so far), 3 if the actors never all came up, 2 a bad config."""
    try:
        topology = json.loads(config.read_text())
        scenario_of(topology)
        # Missing or bad keys are a config error, named, before any wait.
        endpoints = endpoints_from_topology(topology, run_dir)
        keys_for(topology, LAUNCHER, endpoints, endpoints)
    except (OSError, ValueError, ConfigError) as exc:
        typer.echo(f"rxpath coordinate: {exc}", err=True)
        raise typer.Exit(CONFIG_ERROR_EXIT) from None
    try:
        summary = coordinate_run(topology, run_dir, ready_timeout_s=ready_timeout)
    except ActorStartError as err:
        typer.echo(f"rxpath coordinate: {err}", err=True)
        raise typer.Exit(NOT_READY_EXIT) from None
    typer.echo(summary["checker_text"], err=True)
    typer.echo(json.dumps({k: summary[k] for k in
                           ("verdict", "integrity", "reason", "transfer_s", "rejoined",
                            "flows")},
                          default=str))
    raise typer.Exit(exit_status(summary))
