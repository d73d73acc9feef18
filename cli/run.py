"""``rxpath run``: launch a topology as real processes, watch it, and report."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.launcher import ActorStartError, Launcher
from cli.app import app
from cli.config import Scenario
from cli.options import (
    DurationOption,
    ProfileOption,
    SeedOption,
    SysctlOption,
    load_or_exit,
    make_overrides,
)
from cli.report import print_summary

HEARTBEAT_MS = 250


def build_topology(sc: Scenario) -> dict[str, Any]:
    """Every actor of the scenario, who talks to whom, and the scenario they all read."""
    scenario = sc.to_dict()
    cpus = [f"cpu{i}" for i in range(sc.cpu.count)]
    readers = [r.name for r in sc.readers]
    actors: dict[str, Any] = {
        "peer": {"role": "peer", "instance": 0, "peers": ["nic"]},
        "nic": {"role": "nic", "instance": 0, "peers": ["peer", *cpus]},
        "stack": {"role": "stack", "instance": 0, "peers": ["nic", *cpus, *readers]},
    }
    for i, name in enumerate(cpus):
        actors[name] = {"role": "cpu", "instance": i, "peers": ["nic", "stack"]}
    for i, name in enumerate(readers):
        actors[name] = {"role": "reader", "instance": i, "peers": ["stack"]}
    for entry in actors.values():
        entry["config"] = {"scenario": scenario}
    return {"actors": actors, "runtime": {"heartbeat_ms": HEARTBEAT_MS},
            "log": {"level": sc.log.level}}


@dataclass
class RunState:
    """What the launcher has heard so far."""

    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    eof: dict[str, dict[str, Any]] = field(default_factory=dict)  # reader -> fields
    errors: list[dict[str, Any]] = field(default_factory=list)
    peer_done: dict[str, Any] | None = None


def default_run_dir() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / stamp


def run_scenario(sc: Scenario, run_dir: Path, *, progress: bool = True,
                 ready_timeout_s: float = 60.0) -> dict[str, Any]:
    """Run the scenario's processes until every reader saw EOF (or the duration ends)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "scenario.json").write_text(json.dumps(sc.to_dict(), indent=2, default=str))
    topology = build_topology(sc)
    state = RunState()
    started = time.monotonic()
    reason = "duration"
    with Launcher(topology, run_dir, ready_timeout_s=ready_timeout_s) as launcher:
        traffic_start = time.monotonic()  # every actor is up and started
        deadline = traffic_start + sc.duration
        last_print = 0.0
        readers = {r.name for r in sc.readers}
        while time.monotonic() < deadline:
            for env in launcher.poll(timeout_ms=100):
                _absorb(state, env.sender, env.kind, env.body)
            if readers and readers <= set(state.eof) | {e["actor"] for e in state.errors}:
                reason = "complete"
                break
            gone = launcher.exited()
            if gone:
                reason = "actor_exited: " + ", ".join(f"{n} ({c})" for n, c in gone.items())
                break
            if progress and time.monotonic() - last_print >= 0.5:
                last_print = time.monotonic()
                _progress(sc, launcher.last_counters, time.monotonic() - started)
        transfer_s = time.monotonic() - traffic_start
        final = launcher.request_stats(timeout_s=10)
        state.counters = {**launcher.last_counters, **final}
        launcher.stop()
    if progress:
        _progress(sc, state.counters, time.monotonic() - started, end=True)
    summary = summarize(sc, state, reason, time.monotonic() - started)
    summary["transfer_s"] = round(transfer_s, 3)
    (run_dir / "counters.json").write_text(json.dumps(state.counters, indent=2, default=str))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _absorb(state: RunState, sender: str, kind: str, body: dict[str, Any]) -> None:
    if kind == "log_event":
        event, fields = body["event"], body["fields"]
        if event == "reader_eof":
            state.eof[sender] = fields
        elif event == "peer_done":
            state.peer_done = fields
        elif body["level"] in ("error", "critical"):
            state.errors.append({"actor": sender, "event": event, **fields})


def _progress(sc: Scenario, counters: dict[str, Any], elapsed: float, end: bool = False) -> None:
    total = sum(f.bytes for f in sc.flows)
    got = sum(int(_role(counters, r.name).get("bytes", 0)) for r in sc.readers)
    segs = int(_role(counters, "stack").get("segments", 0))
    width = 30
    frac = min(1.0, got / total) if total else 1.0
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    line = (f"\r[{bar}] {100 * frac:5.1f}%  {got / 1e6:7.2f}/{total / 1e6:.2f} MB  "
            f"{segs:7d} segments  {elapsed:6.1f} s")
    if sys.stderr.isatty():
        sys.stderr.write(line + ("\n" if end else ""))
    else:
        sys.stderr.write(line.lstrip("\r") + "\n")
    sys.stderr.flush()


def _role(counters: dict[str, Any], name: str) -> dict[str, Any]:
    return (counters.get(name) or {}).get("role") or {}


def summarize(sc: Scenario, state: RunState, reason: str, elapsed: float) -> dict[str, Any]:
    """Merge every actor's counters into the figures a user looks at."""
    c = state.counters
    mib: dict[str, int] = {}
    for name in ["stack", *[f"cpu{i}" for i in range(sc.cpu.count)]]:
        for k, v in (_role(c, name).get("mib") or {}).items():
            mib[k] = mib.get(k, 0) + int(v)
    flows = []
    for f in sc.flows:
        readers = [r.name for r in sc.readers_of(f.name)]
        got = sum(int(_role(c, r).get("bytes", 0)) for r in readers)
        bad = sum(int(_role(c, r).get("bad_bytes", 0)) for r in readers)
        eof = all(r in state.eof for r in readers)
        ok = got == f.bytes and bad == 0 and eof
        flows.append({"flow": f.name, "bytes": f.bytes, "received": got, "bad_chunks": bad,
                      "eof": eof, "readers": readers, "intact": ok,
                      "sender": (_role(c, "peer").get("flows") or {}).get(f.name, {})})
    stack = _role(c, "stack")
    return {
        "profile": sc.profile,
        "seed": sc.seed,
        "reason": reason,
        "elapsed_s": round(elapsed, 3),
        "integrity": all(f["intact"] for f in flows),
        "flows": flows,
        "nstat": dict(sorted(mib.items())),
        "drops": stack.get("drops", {}),
        "sockets": stack.get("sockets", []),
        "segments": stack.get("segments", 0),
        "nic": _role(c, "nic").get("ethtool", {}),
        "softnet_stat": {f"cpu{i}": _role(c, f"cpu{i}").get("softnet_stat", [])
                         for i in range(sc.cpu.count)},
        "readers": {r.name: _role(c, r.name) for r in sc.readers},
        "transport": {n: (c.get(n) or {}).get("transport", {}) for n in c},
        "errors": state.errors,
    }


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(
        help="Scenario TOML file (default: the embedded default topology).")] = None,
    profile: ProfileOption = None,
    seed: SeedOption = None,
    duration: DurationOption = None,
    sysctl: SysctlOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="Where to write configs, logs and counters (default runs/<time>).")]
        = None,
    all_counters: Annotated[bool, typer.Option(
        "--all", help="Show zero counters too.")] = False,
) -> None:
    """Run a topology: every actor its own process; exit 0 only if every flow is intact."""
    sc = load_or_exit(config, make_overrides(profile, seed, duration, sysctl))
    rd = run_dir or default_run_dir()
    if not json_out:
        typer.echo(f"rxpath run: {sc.description or sc.source} "
                   f"[profile {sc.profile}, seed {sc.seed}] -> {rd}", err=True)
    try:
        summary = run_scenario(sc, rd, progress=not json_out)
    except ActorStartError as err:
        typer.echo(f"rxpath run: {err}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary, all_counters=all_counters)
    raise typer.Exit(0 if summary["integrity"] else 1)
