"""The actor runtime: timers, handler registration and dispatch in-process; then real
actor processes under a Launcher (handshake, heartbeats, rejects, signals, crashes,
back-pressure, restarts, leaving no process behind) and the raw hop benchmark."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest
import zmq

from actors.runtime import main as runtime_main
from actors.runtime import procutil
from actors.runtime.actor import (
    EX_SOFTWARE,
    LATE_TIMERS_KEPT,
    Actor,
    ActorSettings,
    TimerQueue,
    handles,
)
from actors.runtime.addressing import LAUNCHER, free_tcp_ports
from actors.runtime.curve import generate_keys
from actors.runtime.hopbench import run_hop_benchmark
from actors.runtime.launcher import PROJECT_ROOT, ActorStartError, Launcher
from actors.runtime.loopbench import run_loop_benchmark
from protocol import messages as msg
from protocol.envelope import Envelope, EnvelopeCodec
from tests.runtime_roles import (
    ROLE_CLASSES,
    TEST_PING,
    TEST_PONG,
    TEST_TICK,
    EchoActor,
    SinkActor,
    make_topology,
    processes_mentioning,
)


def kinds(envs: list[Envelope]) -> list[str]:
    return [e.kind for e in envs]


# --- timers (in-process) --------------------------------------------------------------------


def test_timers_fire_in_deadline_order_and_once() -> None:
    q = TimerQueue()
    fired: list[tuple[str, int]] = []
    q.call_at(30, lambda now: fired.append(("c", now)))
    q.call_at(10, lambda now: fired.append(("a", now)))
    q.call_at(20, lambda now: fired.append(("b", now)))
    assert (q.next_deadline(), len(q)) == (10, 3)
    assert q.run_due(9) == 0
    assert q.run_due(25) == 2
    assert fired == [("a", 25), ("b", 25)]
    assert q.run_due(100) == 1 and q.run_due(200) == 0
    assert (q.next_deadline(), len(q), q.fired) == (None, 0, 3)


def test_cancelled_timers_do_not_fire() -> None:
    q = TimerQueue()
    fired: list[int] = []
    first = q.call_at(10, fired.append)
    q.call_at(20, fired.append)
    assert first.cancel() is True
    assert first.cancel() is False and not first.active
    assert (q.next_deadline(), len(q)) == (20, 1)
    q.run_due(50)
    assert fired == [50]


def test_cancel_after_firing_is_harmless() -> None:
    q = TimerQueue()
    h = q.call_at(1, lambda now: None)
    q.run_due(1)
    assert h.cancel() is False and len(q) == 0


def test_a_timer_rearming_itself_for_now_runs_on_the_next_round() -> None:
    q = TimerQueue()
    runs: list[int] = []

    def again(now: int) -> None:
        runs.append(now)
        q.call_at(now, again)

    q.call_at(5, again)
    assert q.run_due(5) == 1
    assert q.run_due(5) == 1
    assert runs == [5, 5] and len(q) == 1


def test_timers_can_be_cancelled_from_a_callback() -> None:
    q = TimerQueue()
    fired: list[str] = []
    later = q.call_at(2, lambda now: fired.append("later"))
    q.call_at(1, lambda now: later.cancel())
    q.run_due(10)
    assert fired == [] and len(q) == 0


# --- settings, handlers and dispatch (in-process) ---------------------------------------------


def settings_for(run_dir: Path, name: str, entry: dict[str, Any],
                 **runtime: Any) -> ActorSettings:
    return ActorSettings.from_topology(make_topology({name: entry}, **runtime), name, run_dir)


def test_settings_merge_topology_and_entry_sections(run_dir: Path) -> None:
    topology = make_topology(
        {"a": {"role": "echo", "instance": 3, "config": {"x": 1}, "peers": ["b"],
               "runtime": {"heartbeat_ms": 50}, "log": {"level": "debug"}},
         "b": {"role": "echo"}},
        heartbeat_ms=500, hwm=7)
    s = ActorSettings.from_topology(topology, "a", run_dir, incarnation=2)
    assert (s.role, s.instance, s.config, s.peers) == ("echo", 3, {"x": 1}, ("b",))
    assert (s.heartbeat_ms, s.hwm, s.log.level, s.incarnation) == (50, 7, "debug", 2)
    assert set(s.endpoints) == {LAUNCHER, "a", "b"}
    assert s.endpoints["a"].bind == f"ipc://{run_dir.resolve()}/sock/a"


@pytest.mark.parametrize("actors, name, match", [
    ({"a": {"role": "echo"}}, "zz", "not in the topology"),
    ({"a": {}}, "a", "no role"),
    ({"a": {"role": "echo", "peers": ["ghost"]}}, "a", "peer 'ghost'"),
    ({"a": {"role": "echo", "runtime": {"heartbeat_ms": 0}}}, "a", "heartbeat_ms"),
])
def test_settings_errors(run_dir: Path, actors: dict[str, Any], name: str,
                         match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ActorSettings.from_topology(make_topology(actors), name, run_dir)


def test_handles_collects_handlers_through_inheritance() -> None:
    class Louder(EchoActor):
        @handles(TEST_TICK)
        def on_tick(self, env: Envelope, now: int) -> None:
            pass

    assert EchoActor._handler_names == {TEST_PING: "on_ping"}
    assert Louder._handler_names == {TEST_PING: "on_ping", TEST_TICK: "on_tick"}


def test_handlers_can_be_listed_in_a_dict(run_dir: Path) -> None:
    class DictSink(Actor):
        HANDLERS: ClassVar[Mapping[str, str]] = {TEST_TICK: "tick"}

        def __init__(self, settings: ActorSettings) -> None:
            super().__init__(settings)
            self.ticks: list[int] = []

        def tick(self, env: Envelope, now: int) -> None:
            self.ticks.append(env.body["n"])

    sink = DictSink(settings_for(run_dir, "d", {"role": "x"}))
    try:
        sink.dispatch(Envelope(msg.START, LAUNCHER, 0, 0, {"t0_ns": 0}), 0)
        sink.dispatch(Envelope(TEST_TICK, "p", 0, 0, {"n": 7, "pad": b""}), 0)
        assert sink.ticks == [7] and sink.runtime_counters.messages_handled == 1
    finally:
        sink.mailbox.close()
    with pytest.raises(TypeError, match="not a method"):
        type("Broken", (Actor,), {"HANDLERS": {TEST_TICK: "missing"}})


def test_handlers_for_unknown_or_runtime_kinds_are_refused(run_dir: Path) -> None:
    class Bad(Actor):
        @handles("no_such_kind")
        def on_x(self, env: Envelope, now: int) -> None:
            pass

    class Greedy(Actor):
        @handles(msg.STOP)
        def on_stop_msg(self, env: Envelope, now: int) -> None:
            pass

    for cls, match in ((Bad, "unknown message kind"), (Greedy, "served by the runtime")):
        with pytest.raises(ValueError, match=match):
            cls(settings_for(run_dir, "a", {"role": "x"}))


def test_dispatch_holds_data_until_start_then_replays_in_order(run_dir: Path) -> None:
    sink = SinkActor(settings_for(run_dir, "s", {"role": "sink"}))
    try:
        for n in range(3):
            sink.dispatch(Envelope(TEST_TICK, "p", n, 0, {"n": n, "pad": b""}), 0)
        assert sink.received == 0 and sink.runtime_counters.held_before_start == 3
        # Held messages go back to the front of the queue, ahead of later arrivals.
        sink.mailbox.inbound.append(Envelope(TEST_TICK, "p", 3, 0, {"n": 3, "pad": b""}))
        sink.dispatch(Envelope(msg.START, LAUNCHER, 0, 0, {"t0_ns": 123}), 1000)
        assert sink.started and sink.t0_ns == 123
        assert [e.body["n"] for e in sink.mailbox.inbound] == [0, 1, 2, 3]
        sink._dispatch_some(10)
        assert (sink.received, sink.out_of_order) == (4, 0)
        # The heartbeat is armed for start + heartbeat_ms.
        assert sink.timers.next_deadline() == 1000 + 1000 * 1_000_000
    finally:
        sink.mailbox.close()


def test_timers_that_fire_late_are_kept_for_the_snapshot(run_dir: Path) -> None:
    sink = SinkActor(settings_for(run_dir, "s", {"role": "sink"}))
    try:
        ms = 1_000_000
        sink.timer_fired(10 * ms, 10 * ms + ms)       # within the poll's 1 ms rounding
        sink.timer_fired(20 * ms, 35 * ms)            # 15 ms late
        sink.timer_fired(20 * ms, 35 * ms)            # the same timer, reported twice
        assert sink.snapshot(40 * ms)["runtime"]["late_timers"] == [[20 * ms, 35 * ms]]
        for i in range(100):
            sink.timer_fired(i * 10 * ms, i * 10 * ms + 5 * ms)
        assert len(sink.snapshot()["runtime"]["late_timers"]) == LATE_TIMERS_KEPT
    finally:
        sink.mailbox.close()


def _connected_at_start(topology: dict[str, Any], run_dir: Path) -> None:
    """Actor a, whose peer b binds after a's connect step, links to b at `start`, and
    its first message goes straight through."""
    a = SinkActor(ActorSettings.from_topology(topology, "a", run_dir))
    b = SinkActor(ActorSettings.from_topology(topology, "b", run_dir))
    try:
        a._bind_and_connect()
        assert "b" not in a.mailbox.outboxes and a._deferred_peers == ["b"]
        b._bind_and_connect()
        a.dispatch(Envelope(msg.START, LAUNCHER, 0, 0, {"t0_ns": 1}), 0)
        assert "b" in a.mailbox.outboxes and a._deferred_peers == []
        a.send("b", TEST_TICK, {"n": 0, "pad": b""})
        assert b.mailbox.poll(10_000), "the first message after start did not arrive"
        assert [e.kind for e in b.mailbox.inbound] == [TEST_TICK]
    finally:
        for actor in (a, b):
            actor.mailbox.close()
            if actor._curve_ctx is not None:
                actor._curve_ctx.close()


def test_a_peer_not_bound_yet_is_connected_at_start(run_dir: Path) -> None:
    """A connect to an ipc inbox that does not exist yet would fail and be retried only
    after libzmq's reconnect interval: the link is made at `start`, when every actor is
    bound."""
    _connected_at_start(make_topology({"a": {"role": "sink", "peers": ["b"]},
                                       "b": {"role": "sink"}}), run_dir)
    # A peer already bound is connected at once, before `ready`.
    b = SinkActor(ActorSettings.from_topology(
        make_topology({"b": {"role": "sink"}}), "b", run_dir))
    c = SinkActor(ActorSettings.from_topology(
        make_topology({"c": {"role": "sink", "peers": ["b"]}, "b": {"role": "sink"}}),
        "c", run_dir))
    try:
        b._bind_and_connect()
        c._bind_and_connect()
        assert "b" in c.mailbox.outboxes and c._deferred_peers == []
    finally:
        c.mailbox.close()
        b.mailbox.close()


def test_a_tcp_peer_is_connected_at_start(run_dir: Path) -> None:
    """Whether a tcp peer listens yet cannot be told, so its link waits for `start`:
    a connect before its bind would sit out libzmq's reconnect interval."""
    ports = free_tcp_ports(3)
    topology = make_topology({"a": {"role": "sink", "peers": ["b"], "port": ports[0]},
                              "b": {"role": "sink", "port": ports[1]}})
    keys = run_dir / "keys"
    generate_keys(keys, ["a", "b", LAUNCHER])
    topology.update(transport="tcp", launcher={"port": ports[2]},
                    curve={"keys_dir": str(keys)})
    _connected_at_start(topology, run_dir)


def test_dispatch_counts_unhandled_refused_and_misdirected_messages(run_dir: Path) -> None:
    echo = EchoActor(settings_for(run_dir, "e", {"role": "echo",
                                                 "config": {"reject_odd": True}}))
    try:
        echo.dispatch(Envelope(msg.START, "intruder", 0, 0, {"t0_ns": 1}), 0)
        assert not echo.started
        echo.dispatch(Envelope(msg.START, LAUNCHER, 0, 0, {"t0_ns": 1}), 0)
        echo.dispatch(Envelope(TEST_TICK, "p", 0, 0, {"n": 0, "pad": b""}), 0)
        echo.dispatch(Envelope(TEST_PING, "p", 1, 0, {"request_id": 1}), 0)
        echo.dispatch(Envelope(msg.STOP, "p", 2, 0, {"reason": "not yours"}), 0)
        assert echo.mailbox.counters.rejected_messages == {
            "rejected_by_handler": 3, "unhandled_kind": 1}
        assert echo.stop_reason is None and echo.pings == 0
        assert echo.runtime_counters.messages_handled == 0
        echo.dispatch(Envelope(msg.STOP, LAUNCHER, 1, 0, {"reason": "done"}), 0)
        assert echo.stop_reason == "stop: done"
    finally:
        echo.mailbox.close()


def test_snapshot_has_role_transport_and_runtime_sections(run_dir: Path) -> None:
    echo = EchoActor(settings_for(run_dir, "e", {"role": "echo"}))
    try:
        snap = echo.snapshot()
        assert snap["role"] == {"pings": 0}
        assert snap["transport"]["transport_lost"] == 0
        assert snap["runtime"]["incarnation"] == 0
        assert len(snap["runtime"]["gc_collections"]) == 3
        # It must travel in a heartbeat.
        EnvelopeCodec().encode(msg.HEARTBEAT, "e", 0, 0, {"counters": snap})
    finally:
        echo.mailbox.close()


# --- the entry point (in-process) ----------------------------------------------------------


def test_settle_heap_frees_startup_garbage_and_freezes_the_rest() -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the cyclic GC can free
    gone = weakref.ref(a)
    del a, b
    kept = Node()
    try:
        frozen = procutil.settle_heap()
        assert gone() is None
        assert frozen == gc.get_freeze_count() > 0
        # Frozen: no generation holds it, so no collection walks it any more.
        assert not any(o is kept for o in gc.get_objects())
    finally:
        gc.unfreeze()


def test_role_class_lookup_order() -> None:
    topology = {"role_classes": {"echo": "tests.runtime_roles:EchoActor"}}
    assert runtime_main.role_class_spec("echo", topology) == ROLE_CLASSES["echo"]
    assert runtime_main.role_class_spec("echo", topology, {"class": "m:C"}) == "m:C"
    with pytest.raises(ValueError, match="unknown role 'nope'"):
        runtime_main.role_class_spec("nope", topology)
    assert runtime_main.load_class(ROLE_CLASSES["sink"]) is SinkActor
    with pytest.raises(ValueError):
        runtime_main.load_class("no_colon")
    with pytest.raises(TypeError):
        runtime_main.load_class("pathlib:Path")


def test_main_rejects_a_bad_topology(run_dir: Path) -> None:
    topo = run_dir / "t.json"
    topo.write_text(json.dumps(make_topology({"a": {"role": "echo"}})))
    common = ["--no-parent-death-signal", "--run-dir", str(run_dir), "--topology"]
    assert runtime_main.main(["--role", "echo", "--name", "a", *common,
                              str(run_dir / "missing.json")]) == runtime_main.EX_USAGE
    assert runtime_main.main(["--role", "echo", "--name", "b", *common, str(topo)]) == \
        runtime_main.EX_USAGE
    assert runtime_main.main(["--role", "sink", "--name", "a", *common, str(topo)]) == \
        runtime_main.EX_USAGE


# --- real processes ----------------------------------------------------------------------------


def echo_topology(n: int = 2, **runtime: Any) -> dict[str, Any]:
    return make_topology({f"echo{i}": {"role": "echo"} for i in range(1, n + 1)}, **runtime)


def ping(launcher: Launcher, name: str, request_id: int, timeout_s: float = 10.0,
         payload: bytes = b"") -> Envelope:
    launcher.send(name, TEST_PING, {"request_id": request_id, "payload": payload})
    env = launcher.wait_for(
        lambda e: e.kind == TEST_PONG and e.body["request_id"] == request_id, timeout_s)
    assert env is not None, f"no pong from {name}"
    return env


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ready_start_serve_stop_handshake(run_dir: Path) -> None:
    with Launcher(echo_topology(2), run_dir) as launcher:
        pids = launcher.pids()
        assert set(pids) == {"echo1", "echo2"}
        assert all(launcher.process(n).ready for n in pids)
        assert all(procutil.pid_alive(p) for p in pids.values())
        assert ping(launcher, "echo1", 1).body["responder"] == "echo1"
        assert ping(launcher, "echo2", 2).body["responder"] == "echo2"
        assert json.loads((run_dir / "topology.json").read_text())["actors"]["echo1"][
            "endpoint"]["bind"].startswith("ipc://")
    assert launcher.exit_codes() == {"echo1": 0, "echo2": 0}
    assert set(launcher.final_stats) == {"echo1", "echo2"}
    assert launcher.final_stats["echo1"]["role"] == {"pings": 1}
    # Start-up's survivors were frozen out of the cyclic GC before `ready`.
    assert launcher.final_stats["echo1"]["runtime"]["gc_frozen"] > 1000
    assert procutil.wait_pids_gone(pids.values(), 5) == []
    # Structured logs carry role, instance and pid on every line.
    lines = [json.loads(x) for x in
             (run_dir / "logs" / "echo1.jsonl").read_text().splitlines()]
    assert {"ready", "start", "stopping", "exit"} <= {x["event"] for x in lines}
    assert all(x["role"] == "echo" and x["instance"] == 0 and x["pid"] == pids["echo1"]
               for x in lines)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_heartbeats_arrive_with_a_counters_snapshot(run_dir: Path) -> None:
    with Launcher(echo_topology(2, heartbeat_ms=100), run_dir) as launcher:
        seen: dict[str, Envelope] = {}

        def beat(env: Envelope) -> bool:
            if env.kind == msg.HEARTBEAT:
                seen[env.sender] = env
            return len(seen) == 2

        assert launcher.wait_for(beat, 10) is not None
        for name, env in seen.items():
            counters = env.body["counters"]
            assert counters["role"] == {"pings": 0}
            assert counters["transport"]["transport_lost"] == 0
            assert counters["runtime"]["uptime_ns"] > 0
            assert launcher.last_counters[name] == counters


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_malformed_and_unknown_messages_are_counted_while_the_actor_serves(
        run_dir: Path) -> None:
    topology = make_topology({"echo1": {"role": "echo", "config": {"reject_odd": True}}})
    with Launcher(topology, run_dir) as launcher:
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        try:
            raw.setsockopt(zmq.ROUTING_ID, b"intruder")
            raw.connect(launcher.endpoints["echo1"].connect)
            codec = EnvelopeCodec()
            raw.send(b"\xc1garbage")                                        # not_msgpack
            raw.send(codec.encode(TEST_PING, "intruder", 0, 0, {"request_id": 2})[:-3])
            raw.send(msgpack.packb([1, "no_such_kind", "intruder", 0, 0, {}]))
            raw.send_multipart([b"a", b"b"])                                # bad_frames
            raw.send(codec.encode(TEST_PING, "echo1", 0, 0, {"request_id": 4}))  # mismatch
            launcher.send("echo1", TEST_TICK, {"n": 0, "pad": b""})        # unhandled
            launcher.send("echo1", TEST_PING, {"request_id": 3})           # refused
            assert ping(launcher, "echo1", 10).body["responder"] == "echo1"
            expected = {"not_msgpack": 1, "truncated": 1, "unknown_kind": 1,
                        "bad_frames": 1, "sender_mismatch": 1, "unhandled_kind": 1,
                        "rejected_by_handler": 1}
            # The intruder's frames travel on their own connection (which must stay open
            # until they are through): wait for all of them.
            deadline = time.monotonic() + 10
            while True:
                stats = launcher.request_stats(["echo1"])["echo1"]
                if stats["transport"]["rejected_messages"] == expected:
                    break
                assert time.monotonic() < deadline, stats["transport"]["rejected_messages"]
        finally:
            raw.close(linger=0)
            ctx.term()
        assert stats["role"] == {"pings": 1}
        assert ping(launcher, "echo1", 12).body["responder"] == "echo1"
        assert not launcher.exited()
    assert launcher.exit_codes() == {"echo1": 0}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_sigterm_stops_gracefully_with_final_stats(run_dir: Path) -> None:
    with Launcher(echo_topology(2), run_dir) as launcher:
        ping(launcher, "echo1", 1)
        os.kill(launcher.pid("echo1"), signal.SIGTERM)
        final = launcher.wait_for(
            lambda e: e.kind == msg.STATS and e.sender == "echo1" and e.body["final"], 10)
        assert final is not None and final.body["counters"]["role"] == {"pings": 1}
        assert launcher.wait_exited(["echo1"], 10) == {"echo1": 0}
        assert launcher.exited() == {"echo1": 0}
        assert launcher.process("echo1").ended  # its end-of-stream was acknowledged
        assert ping(launcher, "echo2", 2).body["responder"] == "echo2"
        log = (run_dir / "logs" / "echo1.jsonl").read_text()
        assert '"reason":"SIGTERM"' in log


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_crashing_handler_is_reported_and_exits_ex_software(run_dir: Path) -> None:
    with Launcher(echo_topology(1), run_dir) as launcher:
        launcher.send("echo1", TEST_PING, {"request_id": 1, "payload": b"crash"})
        event = launcher.wait_for(lambda e: e.kind == msg.LOG_EVENT, 10)
        assert event is not None and event.body["event"] == "actor_crashed"
        assert "asked to crash" in event.body["fields"]["traceback"]
        assert launcher.wait_exited(["echo1"], 10) == {"echo1": EX_SOFTWARE}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_an_actor_that_exits_at_start_is_named_with_its_output(run_dir: Path) -> None:
    topology = echo_topology(1)
    topology["actors"]["broken"] = {"role": "no_such_role"}
    launcher = Launcher(topology, run_dir)
    with pytest.raises(ActorStartError) as info:
        launcher.start()
    assert info.value.name == "broken"
    assert "exited before it was ready: exit 2" in str(info.value)
    assert "unknown role 'no_such_role'" in str(info.value)
    assert all(code is not None for code in launcher.exit_codes().values())


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_an_actor_that_is_not_ready_in_time_is_named(run_dir: Path) -> None:
    topology = echo_topology(1)
    topology["actors"]["late"] = {"role": "slow_start", "config": {"delay_s": 60}}
    launcher = Launcher(topology, run_dir, ready_timeout_s=2.0)
    with pytest.raises(ActorStartError, match=r"'late' .* did not become ready within 2 s"):
        launcher.start()
    pids = launcher.pids()
    assert procutil.wait_pids_gone(pids.values(), 5) == []
    assert launcher.exit_codes()["late"] == -signal.SIGKILL


def read_json_line(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "no line from the launcher process in time"
    line = proc.stdout.readline()
    assert line, "launcher process ended without a line"
    return json.loads(line)


def start_launcher_process(run_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "tests.runtime_roles", str(run_dir)],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=PROJECT_ROOT, env=env)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_killing_the_launcher_process_leaves_no_actor_behind(run_dir: Path) -> None:
    proc = start_launcher_process(run_dir)
    try:
        info = read_json_line(proc, 30)
        pids = list(info["pids"].values())
        assert len(pids) == 2 and all(procutil.pid_alive(p) for p in pids)
        proc.kill()
        proc.wait(timeout=10)
        assert procutil.wait_pids_gone(pids, 10) == []
        assert processes_mentioning(str(run_dir)) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_sigterm_to_the_launcher_process_stops_actors_gracefully(run_dir: Path) -> None:
    proc = start_launcher_process(run_dir)
    try:
        info = read_json_line(proc, 30)
        proc.terminate()
        result = read_json_line(proc, 30)
        assert result == {"exit_codes": {"echo1": 0, "echo2": 0},
                          "final_stats": ["echo1", "echo2"]}
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert procutil.wait_pids_gone(info["pids"].values(), 10) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_slow_receiver_blocks_the_sender_and_nothing_is_lost(run_dir: Path) -> None:
    count = 1500
    topology = make_topology({
        "source": {"role": "source", "peers": ["sink"],
                   "config": {"target": "sink", "count": count, "pad_bytes": 2048}},
        "sink": {"role": "sink", "config": {"work_us": 300}},
    }, hwm=4, heartbeat_ms=200)
    with Launcher(topology, run_dir) as launcher:
        done = launcher.wait_for(
            lambda e: e.kind == msg.LOG_EVENT and e.body["event"] == "source_done", 60)
        assert done is not None and done.body["fields"] == {"sent": count}
        deadline = time.monotonic() + 30
        while True:
            stats = launcher.request_stats()
            if stats["sink"]["role"]["received"] == count:
                break
            assert time.monotonic() < deadline, stats["sink"]["role"]
        source, sink = stats["source"], stats["sink"]
        assert source["role"] == {"sent": count, "unsent": 0}
        assert source["transport"]["send_blocked"] > 0
        assert source["transport"]["send_blocked_ns"] > 0
        assert sink["role"] == {"received": count, "out_of_order": 0}
        assert sink["transport"]["transport_lost"] == 0
    assert launcher.exit_codes() == {"source": 0, "sink": 0}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_stop_while_a_send_is_blocked_still_ends_gracefully(run_dir: Path) -> None:
    topology = make_topology({
        # One on_timer call sends everything, so the source only reads its inbox (and
        # sees the stop) inside a blocked send.
        "source": {"role": "source", "peers": ["sink"],
                   "config": {"target": "sink", "count": 10**6, "chunk": 10**6,
                              "pad_bytes": 2048}},
        "sink": {"role": "sink", "config": {"work_us": 2000}},
    }, hwm=4, heartbeat_ms=100, stop_drain_ms=500)
    with Launcher(topology, run_dir) as launcher:
        # Once the slow sink has handled a few, the source has long filled the link.
        busy = launcher.wait_for(
            lambda e: e.kind == msg.HEARTBEAT and e.sender == "sink"
            and e.body["counters"]["role"]["received"] >= 10, 20)
        assert busy is not None
    assert launcher.exit_codes() == {"source": 0, "sink": 0}
    source = launcher.final_stats["source"]
    # The send that was blocked when the stop came gave up at the drain deadline.
    assert source["role"]["unsent"] == 1 and source["transport"]["unsent"] == 1
    assert source["transport"]["send_blocked"] > 0
    assert 0 < launcher.final_stats["sink"]["role"]["received"] <= source["role"]["sent"]
    assert launcher.final_stats["sink"]["role"]["out_of_order"] == 0
    # Both stopped on `stop`: no escalation to signals was needed.
    assert '"escalate"' not in (run_dir / "logs" / "launcher.jsonl").read_text()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_actors_over_tcp(run_dir: Path) -> None:
    ports = free_tcp_ports(3)
    topology = make_topology({"echo1": {"role": "echo", "port": ports[1]},
                              "echo2": {"role": "echo", "port": ports[2]}})
    topology.update(transport="tcp", launcher={"port": ports[0]})
    with Launcher(topology, run_dir) as launcher:
        assert launcher.endpoints["echo1"].bind == f"tcp://127.0.0.1:{ports[1]}"
        assert ping(launcher, "echo1", 1).body["responder"] == "echo1"
        assert ping(launcher, "echo2", 2).body["responder"] == "echo2"
    assert launcher.exit_codes() == {"echo1": 0, "echo2": 0}


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_kill_and_restart_an_actor(run_dir: Path) -> None:
    with Launcher(echo_topology(2), run_dir) as launcher:
        ping(launcher, "echo1", 1)
        old = launcher.pid("echo1")
        assert launcher.kill("echo1") == -signal.SIGKILL
        assert launcher.exited() == {"echo1": -signal.SIGKILL}
        assert not procutil.pid_alive(old)
        new = launcher.restart("echo1")
        assert new != old and procutil.pid_alive(new)
        assert launcher.exited() == {}
        assert ping(launcher, "echo1", 2).body["responder"] == "echo1"
        stats = launcher.request_stats(["echo1"])["echo1"]
        assert stats["runtime"]["incarnation"] == 1
        assert stats["role"] == {"pings": 1}  # a new process: the old count died with it
        assert stats["transport"]["transport_lost"] == 0
        assert ping(launcher, "echo2", 3).body["responder"] == "echo2"
    assert launcher.exit_codes() == {"echo1": 0, "echo2": 0}


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_timers_fire_in_a_real_actor_and_cancelled_ones_do_not(run_dir: Path) -> None:
    topology = make_topology({"t": {"role": "timers",
                                    "config": {"fire_ms": [30, 10, 50, 20],
                                               "cancel_ms": [20]}}})
    with Launcher(topology, run_dir) as launcher:
        fired: list[int] = []

        def all_fired(env: Envelope) -> bool:
            if env.kind == msg.LOG_EVENT and env.body["event"] == "timer_fired":
                fired.append(env.body["fields"]["ms"])
            return len(fired) == 3

        assert launcher.wait_for(all_fired, 10) is not None
        assert fired == [10, 30, 50]
        stats = launcher.request_stats()["t"]
        assert stats["role"]["fired"] == [10, 30, 50]
        assert stats["runtime"]["timers_fired"] == 3


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("batch", [1, 64])
def test_hop_benchmark_reports_positive_figures(batch: int) -> None:
    result = run_hop_benchmark(hops=2, messages=64 * 40, batch=batch, rtt_samples=20)
    assert result["frames"] == 64 * 40 // batch
    for key in ("elapsed_s", "messages_per_s", "frames_per_s", "rtt_us_median",
                "rtt_us_p90", "rtt_us_min", "per_hop_us"):
        assert result[key] > 0, key
    assert result["rtt_us_min"] <= result["rtt_us_median"] <= result["rtt_us_p90"]
    assert len(result["hop_cpu_us_per_frame"]) == 2
    assert all(c > 0 for c in result["hop_cpu_us_per_frame"])
    assert result["bench_cpu_us_per_message"] > 0
    # Every forwarder this process started is gone.
    assert processes_mentioning(f"--parent-pid {os.getpid()}") == []


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("batch", "trace"), [(1, True), (16, False)])
def test_loop_benchmark_streams_everything_in_order(batch: int, trace: bool) -> None:
    # The bench raises if the sink saw fewer items than sent, or any out of order.
    result = run_loop_benchmark(1000, batch=batch, trace=trace, timeout_s=60)
    assert (result["messages"], result["batch"], result["trace"]) == (1000, batch, trace)
    assert result["messages_per_s"] > 0 and result["transport_lost"] == 0
    cpu = result["cpu_us_per_message"]
    assert all(cpu[n] > 0 for n in ("source", "relay", "sink"))
    assert cpu["total"] == pytest.approx(cpu["source"] + cpu["relay"] + cpu["sink"], abs=0.05)
