"""``rxpath run``: launch a topology as real processes, watch it, and report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.launcher import ActorStartError, Launcher
from actors.runtime.supervisor import RestartPolicy, Supervisor, SupervisorGaveUp
from actors.scenario import Scenario
from cli.app import app, paint
from cli.checker import EXIT_STATUS, Verdict, check_run, format_verdict
from cli.formats import plain_counters
from cli.options import (
    DurationOption,
    ProfileOption,
    SeedOption,
    SetOption,
    SysctlOption,
    load_or_exit,
    make_overrides,
    mark_latest,
    new_run_dir,
)
from cli.report import print_summary

HEARTBEAT_MS = 250


TUNWIRE = "tunwire"
TUNWIRE_CLASS = "actors.tunwire.actor:TunWireActor"
REPLAY = "replay"
REPLAY_CLASS = "actors.replay.actor:ReplayActor"


def wire_source(sc: Scenario) -> str:
    """The actor on the far end of the NIC's wire: the emulated peer, the TUN device
    of real Linux senders, or the replay of a capture."""
    if sc.replay:
        return REPLAY
    return TUNWIRE if sc.real_senders else "peer"


def build_topology(sc: Scenario, netns: str | None = None) -> dict[str, Any]:
    """Every actor of the scenario, who talks to whom, and the scenario they all read.
    With ``[[linux_senders]]`` the tunwire actor (in namespace ``netns``) replaces the
    peer as the NIC's ``wire_peer``; with ``[wire] source = "pcap:FILE"`` the replay actor."""
    scenario = sc.to_dict()
    cpus = [f"cpu{i}" for i in range(sc.cpu.count)]
    readers = [r.name for r in sc.readers]
    wire = wire_source(sc)
    actors: dict[str, Any] = {
        wire: {"role": wire, "instance": 0, "peers": ["nic"]},
        "nic": {"role": "nic", "instance": 0, "peers": [wire, *cpus]},
        "stack": {"role": "stack", "instance": 0, "peers": ["nic", *cpus, *readers]},
    }
    for i, name in enumerate(cpus):
        actors[name] = {"role": "cpu", "instance": i, "peers": ["nic", "stack"]}
    for i, name in enumerate(readers):
        actors[name] = {"role": "reader", "instance": i, "peers": ["stack"]}
    if sc.real_senders:
        from cli.linux_sender import tunwire_config

        assert netns is not None, "real senders need the run's network namespace"
        actors[TUNWIRE]["class"] = TUNWIRE_CLASS
        actors[TUNWIRE]["config"] = {"tunwire": tunwire_config(sc, netns)}
        actors["nic"]["config"] = {"wire_peer": TUNWIRE}
    if sc.replay:
        actors[REPLAY]["class"] = REPLAY_CLASS
        actors["nic"]["config"] = {"wire_peer": REPLAY}
    # The scenario once, under every actor's own config: at 1,000 flows a copy per actor
    # made every process parse 23 copies (about 11 MB of peak RSS each).
    return {"actors": actors, "config": {"scenario": scenario},
            "runtime": {"heartbeat_ms": HEARTBEAT_MS}, "log": {"level": sc.log.level}}


@dataclass
class RunState:
    """What the launcher has heard so far."""

    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    eof: dict[str, dict[str, Any]] = field(default_factory=dict)  # reader -> fields
    errors: list[dict[str, Any]] = field(default_factory=list)
    peer_done: dict[str, Any] | None = None
    resets: set[str] = field(default_factory=set)                 # flows reset
    supervision: dict[str, Any] = field(default_factory=dict)
    # The receive path was still moving when the final counters were taken (the settle
    # time ran out): the checker then counts what is between two boxes as in flight.
    path_busy: bool = False

# Called every turn of the run loop with the launcher, the supervisor and the seconds
# since traffic started (how `rxpath chaos` injects its faults).
ChaosHook = Callable[[Launcher, Supervisor, float], None]


def default_run_dir() -> Path:
    return new_run_dir()  # runs/<time>; runs/latest follows it (cli.options)


RUN_OUTPUTS = ("deliveries", "logs", "trace", "sock", "senders", "stack-inputs")
RUN_FILES = ("scenario.json", "topology.json", "counters.json", "summary.json", "trace.json",
             "report.html", "bench.json", "ss-sender.txt", "netns.txt")


def clear_run_dir(run_dir: Path) -> None:
    """Forget an earlier run in the same directory: its records would mix with this one's."""
    for name in RUN_OUTPUTS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
    for path in [*(run_dir / n for n in RUN_FILES), *run_dir.glob("wire*.pcap")]:
        path.unlink(missing_ok=True)


def run_scenario(sc: Scenario, run_dir: Path, *, progress: bool = True,
                 ready_timeout_s: float = 60.0, chaos: ChaosHook | None = None,
                 policy: RestartPolicy | None = None) -> dict[str, Any]:
    """Run the scenario's processes until every reader saw EOF (or the duration ends),
    supervised (see :mod:`actors.runtime.supervisor`); the summary ends with the
    checker's verdict."""
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_run_dir(run_dir)
    mark_latest(run_dir)
    (run_dir / "scenario.json").write_text(json.dumps(sc.to_dict(), indent=2, default=str))
    netns: str | None = None
    with contextlib.ExitStack() as namespace:
        if sc.real_senders:
            from cli.linux_sender import run_netns

            netns = namespace.enter_context(run_netns())
            (run_dir / "netns.txt").write_text(netns + "\n")
        state, reason, started, transfer_s, traffic_start = _launch(
            sc, run_dir, build_topology(sc, netns), ready_timeout_s, chaos, policy, progress)
    if progress:
        _progress(sc, state.counters, transfer_s, end=True)
    summary = summarize(sc, state, reason, time.monotonic() - started)
    if netns is not None:
        summary["netns"] = netns
    summary["transfer_s"] = round(transfer_s, 3)
    summary["startup_s"] = round(traffic_start - started, 3)  # spawn until every actor ready
    summary["supervision"] = state.supervision
    if sc.replay:
        summary["replay"] = _role(state.counters, REPLAY)
    judge_run(sc, run_dir, state, summary)
    (run_dir / "counters.json").write_text(json.dumps(state.counters, indent=2, default=str))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from cli.trace import write_trace_after_run  # the merged trace: RUN_DIR/trace.json
    write_trace_after_run(run_dir)
    return summary


def _launch(sc: Scenario, run_dir: Path, topology: dict[str, Any], ready_timeout_s: float,
            chaos: ChaosHook | None, policy: RestartPolicy | None, progress: bool
            ) -> tuple[RunState, str, float, float, float]:
    """Start the actors, supervise them until done, collect the final counters."""
    state = RunState()
    started = time.monotonic()
    reason = "duration"
    with Launcher(topology, run_dir, ready_timeout_s=ready_timeout_s) as launcher:
        traffic_start = time.monotonic()  # every actor is up and started
        deadline = traffic_start + sc.duration
        readers = {r.name for r in sc.readers}
        supervisor = Supervisor(launcher, policy)
        try:
            reason = _supervised_loop(sc, launcher, supervisor, state, chaos, readers,
                                      deadline, traffic_start, progress, started)
        except SupervisorGaveUp as err:
            reason = f"supervisor gave up: {err}"
        supervisor.resume_all()
        state.supervision = supervisor.summary()
        transfer_s = time.monotonic() - traffic_start
        # Upstream first, so a frame moving down between two snapshots is not counted
        # twice (the checker's conservation equations); downstream first when the run
        # was cut off mid-transfer, so what is in flight shows as such, never negative.
        final, state.path_busy = _final_stats(launcher, sc, readers,
                                              downstream_first=reason != "complete")
        state.counters = {**launcher.last_counters, **final}
        # What each killed process had reported by its last heartbeat (cli.checker).
        for name, dead in launcher.incarnation_history().items():
            state.counters.setdefault(name, {})["incarnations"] = dead
        launcher.stop()
    return state, reason, started, transfer_s, traffic_start


def _tx_count(counters: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(segments the stack sent, frames the NIC put on the wire) in one set of stats."""
    stack = _role(counters, "stack")
    nic = _role(counters, "nic")
    return (int((stack.get("mib") or {}).get("TcpOutSegs", 0)),
            int((nic.get("ethtool") or {}).get("tx_packets", 0)))


def _final_stats(launcher: Launcher, sc: Scenario, readers: set[str],
                 settle_s: float = 3.0, downstream_first: bool = False
                 ) -> tuple[dict[str, dict[str, Any]], bool]:
    """Every actor's counters once the transmit path is quiet, and whether it was still
    busy when ``settle_s`` ran out. Upstream first, so a frame moving down between two
    snapshots is not counted twice (the checker's conservation equations); and again
    until two rounds agree and the NIC has sent all the stack did, because a reader's
    close() can still send a FIN just after the last byte arrived. A path still busy at
    the deadline (a peer retransmitting into a restarted stack on a loaded machine) is
    taken once more downstream first, so what is in flight shows as such."""
    deadline = time.monotonic() + settle_s
    last: tuple[tuple[int, int], tuple[int, int]] | None = None

    def snapshot(downstream: bool) -> dict[str, dict[str, Any]]:
        final: dict[str, dict[str, Any]] = {}
        groups = [[wire_source(sc), "nic"], [f"cpu{i}" for i in range(sc.cpu.count)],
                  ["stack", *sorted(readers)]]
        for group in reversed(groups) if downstream else groups:
            final.update(launcher.request_stats(group, timeout_s=5))
        return final

    while True:
        final = snapshot(downstream_first)
        tx = _tx_count(final)
        # The receive path must be quiet too: after a stack was killed the peer may still
        # be sending when the readers have seen their resets.
        nic = (_role(final, "nic").get("ethtool") or {})
        moved = (tx, (int(nic.get("rx_packets", 0)), int(_role(final, "stack").get("segments", 0))))
        if moved == last and tx[0] == tx[1]:
            return final, False
        if time.monotonic() >= deadline:
            return (final, True) if downstream_first else (snapshot(True), True)
        last = moved


def run_checker(sc: Scenario, run_dir: Path, state: RunState,
                summary: dict[str, Any]) -> Verdict:
    """The checker's verdict on this run (see :mod:`cli.checker`)."""
    flows = [(f.name, i + 1, f.bytes) for i, f in enumerate(sc.flows)]
    deaths = state.supervision.get("deaths", [])
    reader_deaths: dict[str, int] = {}
    for d in deaths:
        if d["role"] == "reader":
            for flow in sc.reader(d["actor"]).served_flows:
                reader_deaths[flow] = reader_deaths.get(flow, 0) + 1
    references = None
    if sc.replay:
        # The readers got a capture's bytes, not the emulated peer's payload.
        from actors.replay import scenario_plan

        references = {fp.target.name: fp.stream for fp in scenario_plan(sc).flows}
    files = {f.name: path for f in sc.flows if (path := sc.sender_file(f.name))}
    if files:
        references = {name: Path(path).read_bytes() for name, path in files.items()}
    return check_run(run_dir, flows, counters=state.counters, references=references,
                     reference_kind="file" if files else "capture",
                     cpus=[f"cpu{i}" for i in range(sc.cpu.count)], resets=state.resets,
                     reader_deaths=reader_deaths,
                     restarted_roles={d["role"] for d in deaths},
                     complete_expected=summary["reason"] == "complete",
                     path_quiet=not state.path_busy)


def judge_run(sc: Scenario, run_dir: Path, state: RunState,
              summary: dict[str, Any]) -> Verdict:
    """The run's one verdict, computed once (the checker's), written into ``summary``:
    ``verdict`` {state, why}, ``integrity`` (the verdict is PASS), each flow's ``intact``
    and ``verdict``, and ``received`` from the delivery records of every incarnation of
    its readers. `rxpath run`, `chaos`, `report`, `coordinate` and the printed summary
    read these, never a judgement of their own."""
    verdict = run_checker(sc, run_dir, state, summary)
    apply_verdict(summary, verdict)
    return verdict


def apply_verdict(summary: dict[str, Any], verdict: Verdict) -> None:
    """Write ``verdict`` into ``summary`` (see :func:`judge_run`)."""
    summary["verdict"] = verdict.headline()
    summary["integrity"] = verdict.state == "PASS"
    summary["checker"] = verdict.to_dict()
    summary["checker_text"] = format_verdict(verdict)
    by_flow = {f.flow: f for f in verdict.flows}
    for f in summary["flows"]:
        v = by_flow.get(f["flow"])
        if v is None:
            continue
        f["verdict"] = v.state
        # Every byte it delivered right, and it ended (whole, reset, or sender dead).
        f["intact"] = v.ok and v.state != "incomplete"
        f["received"] = v.delivered
        f["delivered_then_lost"] = v.delivered_then_lost


def exit_status(summary: dict[str, Any]) -> int:
    """The exit status of a run from its verdict (:data:`cli.checker.EXIT_STATUS`)."""
    return EXIT_STATUS[summary["verdict"]["state"]]


def _supervised_loop(sc: Scenario, launcher: Launcher, supervisor: Supervisor,
                     state: RunState, chaos: ChaosHook | None, readers: set[str],
                     deadline: float, traffic_start: float, progress: bool,
                     started: float) -> str:
    last_print = 0.0
    while time.monotonic() < deadline:
        for env in launcher.poll(timeout_ms=50):
            supervisor.observe(env)
            _absorb(state, env.sender, env.kind, env.body, replay=bool(sc.replay))
        if readers and readers <= set(state.eof) | {e["actor"] for e in state.errors}:
            return "complete"
        if chaos is not None:
            chaos(launcher, supervisor, time.monotonic() - traffic_start)
        supervisor.tick()
        if progress and time.monotonic() - last_print >= 0.5:
            last_print = time.monotonic()
            # time since the traffic started, as the trace, the pcap and the plots count it
            _progress(sc, launcher.last_counters, time.monotonic() - traffic_start)
    return "duration"


def _absorb(state: RunState, sender: str, kind: str, body: dict[str, Any], *,
            replay: bool = False) -> None:
    if kind == "log_event":
        event, fields = body["event"], body["fields"]
        if replay and event == "bad_bytes":
            return  # the reader compares with the peer's payload; the checker with the capture
        if event == "reader_eof":
            state.eof[sender] = fields
        elif event == "peer_done":
            state.peer_done = fields
        elif body["level"] in ("error", "critical"):
            state.errors.append({"actor": sender, "event": event, **fields})
            if event == "reader_error" and fields.get("reset"):
                state.resets.add(str(fields.get("flow")))
        if event == "peer_done":
            for flow, outcome in (fields.get("flows") or {}).items():
                if "reset" in str(outcome).lower():
                    state.resets.add(str(flow))


def _progress(sc: Scenario, counters: dict[str, Any], elapsed: float, end: bool = False) -> None:
    """One status line: bytes per flow, the stack's queues, time (a terminal only). It is
    cut to the terminal's width, so it never wraps (a wrapped line would not be redrawn
    in place by the next "\\r")."""
    total = sum(f.bytes for f in sc.flows)
    per_flow = []
    got = 0
    for f in sc.flows:
        n = sum(int(_of_flow(counters, r.name, f.name).get("bytes", 0))
                for r in sc.readers_of(f.name))
        got += n
        per_flow.append(f"{f.name} {100 * n / f.bytes:3.0f}%")
    stack = _role(counters, "stack")
    socks = stack.get("sockets") or []
    queues = (f"backlog {sum(s.get('backlog_segs', 0) for s in socks)} "
              f"rcvq {sum(s.get('receive_queue_segs', 0) for s in socks)} "
              f"ofo {sum(s.get('ofo_segs', 0) for s in socks)}")
    if any(s.get("prequeue_segs") for s in socks):
        queues += f" prequeue {sum(s.get('prequeue_segs', 0) for s in socks)}"
    bar_width = 20
    frac = min(1.0, got / total) if total else 1.0
    bar = "#" * int(frac * bar_width) + "-" * (bar_width - int(frac * bar_width))
    columns = shutil.get_terminal_size((80, 24)).columns
    line = progress_line([f"[{bar}] {got / 1e6:6.2f}/{total / 1e6:.2f} MB",
                          " ".join(per_flow), queues,
                          f"{int(stack.get('segments', 0))} segs"],
                         f"{elapsed:5.1f} s", columns)
    sys.stderr.write("\r" + line + ("\n" if end else ""))
    sys.stderr.flush()


def progress_line(pieces: list[str], last: str, columns: int) -> str:
    """``pieces`` (most important first) and ``last``, two spaces apart, in fewer than
    ``columns`` characters (the last column would make some terminals wrap): pieces that
    do not fit are left out, and the line is padded to erase the previous one."""
    width = max(1, columns - 1)
    kept: list[str] = []
    for i, piece in enumerate(pieces):
        if i == 0 or (piece and len("  ".join([*kept, piece, last])) <= width):
            kept.append(piece)  # the first (the bar) always: cut short if it must be
    return "  ".join([*kept, last])[:width].ljust(width)


def _role(counters: dict[str, Any], name: str) -> dict[str, Any]:
    return (counters.get(name) or {}).get("role") or {}


def _of_flow(counters: dict[str, Any], reader: str, flow: str) -> dict[str, Any]:
    """A reader's counters for one flow (an epoll server keeps them per flow)."""
    role = _role(counters, reader)
    return (role.get("flows") or {}).get(flow) or role


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
        got = sum(int(_of_flow(c, r, f.name).get("bytes", 0)) for r in readers)
        bad = sum(int(_of_flow(c, r, f.name).get("bad_bytes", 0)) for r in readers)
        if sc.replay:
            bad = 0  # not the peer's payload: the checker compares with the capture instead
        eof = all(r in state.eof for r in readers)
        # "received" counts the living readers; judge_run replaces it with what every
        # incarnation delivered, and adds the verdict ("intact", "verdict").
        flows.append({"flow": f.name, "bytes": f.bytes, "received": got, "bad_chunks": bad,
                      "eof": eof, "readers": readers,
                      "sender": (_role(c, wire_source(sc)).get("flows") or {}).get(f.name, {})})
    stack = _role(c, "stack")
    return {
        "profile": sc.profile,
        "seed": sc.seed,
        "reason": reason,
        "elapsed_s": round(elapsed, 3),
        "flows": flows,
        "nstat": dict(sorted(mib.items())),
        "drops": stack.get("drops", {}),
        "sockets": stack.get("sockets", []),
        "segments": stack.get("segments", 0),
        "stack": plain_counters(stack),  # backlog_enqueued, lock_waits, ...: no MIB name
        "nic": _role(c, "nic").get("ethtool", {}),
        "softnet_stat": {f"cpu{i}": _role(c, f"cpu{i}").get("softnet_stat", [])
                         for i in range(sc.cpu.count)},
        "gro_merged": {f"cpu{i}": int(_role(c, f"cpu{i}").get("gro_merged", 0))
                       for i in range(sc.cpu.count)} if sc.nic.gro else {},
        "readers": {r.name: _role(c, r.name) for r in sc.readers},
        "transport": {n: (c.get(n) or {}).get("transport", {}) for n in c},
        "errors": state.errors,
    }


def replay_line(c: dict[str, Any]) -> str:
    """What the replay did with the capture's frames, in one line."""
    return (f"replay: {c.get('frames', 0)} frames in the capture, {c.get('sent', 0)} sent "
            f"({c.get('rewritten', 0)} rewritten, {c.get('held', 0)} held for the SYN-ACK, "
            f"{c.get('ack_clamped', 0)} ACKs clamped, {c.get('bad_checksum', 0)} with the "
            f"capture's bad checksum); ignored: {c.get('outbound', 0)} "
            f"outbound, {c.get('other_tuple', 0)} other 4-tuples, {c.get('not_tcp', 0)} "
            f"not TCP, {c.get('not_ipv4', 0)} not IPv4, {c.get('truncated', 0)} truncated")


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(
        help="Scenario TOML file (default: the embedded default topology).")] = None,
    profile: ProfileOption = None,
    seed: SeedOption = None,
    duration: DurationOption = None,
    sysctl: SysctlOption = None,
    sets: SetOption = None,
    wire: Annotated[str | None, typer.Option(
        "--wire", help="Where the inbound frames come from: pcap:FILE replays a capture's "
        "inbound direction at its recorded times ([wire] source).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="Where to write configs, logs and counters (default runs/<time>).")]
        = None,
    zeros: Annotated[bool, typer.Option(
        "-z", "--zeros", help="Show zero counters too (nstat -z).")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No live progress line.")] = False,
) -> None:
    """Run a topology: every actor its own process; exit 0 only if every flow is intact.

    The checker's verdict is the run's one verdict (summary.json "verdict"). Exit status:
    0 PASS; 1 FAIL (a byte or a frame went wrong); 4 INCOMPLETE (stopped, e.g. by
    --duration, before every flow ended, with nothing wrong so far); 2 a bad config."""
    overrides = dataclasses.replace(make_overrides(profile, seed, duration, sysctl, sets),
                                    wire=wire)
    sc = load_or_exit(config, overrides)
    rd = run_dir or default_run_dir()
    if not json_out:
        typer.echo(f"rxpath run: {sc.description or sc.source} "
                   f"[profile {sc.profile}, seed {sc.seed}] -> {rd}", err=True)
    try:
        # Live progress only on a terminal: logs and pipes stay clean.
        summary = run_scenario(sc, rd, progress=not (json_out or quiet)
                               and sys.stderr.isatty())
    except ActorStartError as err:
        typer.echo(f"rxpath run: {err}", err=True)
        raise typer.Exit(1) from None
    except RuntimeError as err:
        from cli.linux_sender import NetnsError

        if not isinstance(err, NetnsError):
            raise
        typer.echo(f"rxpath run: {err}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        typer.echo(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary, zeros=zeros)
        if sc.replay:
            typer.echo(replay_line(summary["replay"]))
        typer.echo(paint(summary["checker_text"]))
    raise typer.Exit(exit_status(summary))
