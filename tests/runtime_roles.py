"""Tiny roles and helpers for the runtime tests (they run in real actor processes).

``python -m tests.runtime_roles RUN_DIR`` runs a launcher with two echo actors, prints
one JSON line with the pids once everything is started, then serves until it is
signalled, and prints a second JSON line with the exit codes if it stops cleanly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from actors.runtime.actor import Actor, ActorSettings, RejectMessage, handles
from actors.runtime.launcher import Launcher
from protocol import messages as msg
from protocol.envelope import Envelope, register_kind
from protocol.sockops import MalformedOp, decode_op

TEST_PING = register_kind(
    "test_ping", {"request_id": int}, optional={"payload": bytes},
    doc="tests: ask an echo actor for a test_pong")
TEST_PONG = register_kind(
    "test_pong", {"request_id": int, "responder": str}, optional={"payload": bytes},
    doc="tests: an echo actor's answer")
TEST_TICK = register_kind(
    "test_tick", {"n": int, "pad": bytes},
    doc="tests: one numbered message of a source -> sink stream")

ROLE_CLASSES = {
    "echo": "tests.runtime_roles:EchoActor",
    "source": "tests.runtime_roles:SourceActor",
    "sink": "tests.runtime_roles:SinkActor",
    "timers": "tests.runtime_roles:TimerActor",
    "slow_start": "tests.runtime_roles:SlowStartActor",
}


def make_topology(actors: dict[str, dict[str, Any]], **runtime: Any) -> dict[str, Any]:
    """A topology using the test roles; ``runtime`` keys go to its runtime section."""
    return {"role_classes": ROLE_CLASSES, "runtime": runtime, "actors": actors}


class EchoActor(Actor):
    """Answers test_ping with test_pong.  Payload b"crash" raises (a role bug);
    an odd request_id is refused when config ``reject_odd`` is set."""

    role = "echo"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.pings = 0
        self.reject_odd = bool(self.config.get("reject_odd", False))

    @handles(TEST_PING)
    def on_ping(self, env: Envelope, now: int) -> None:
        payload = env.body.get("payload", b"")
        if payload == b"crash":
            raise RuntimeError("asked to crash")
        if self.reject_odd and env.body["request_id"] % 2:
            raise RejectMessage("odd request ids are refused")
        self.pings += 1
        self.send(env.sender, TEST_PONG, {"request_id": env.body["request_id"],
                                          "responder": self.name, "payload": payload})

    def counters(self) -> dict[str, Any]:
        return {"pings": self.pings}


class SourceActor(Actor):
    """Sends ``count`` numbered test_ticks to ``target`` as fast as the link takes them,
    ``chunk`` per loop turn, then reports ``source_done`` to the launcher."""

    role = "source"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.target = str(self.config["target"])
        self.count = int(self.config["count"])
        self.chunk = int(self.config.get("chunk", 100))
        self.pad = b"x" * int(self.config.get("pad_bytes", 0))
        self.sent = 0
        self.unsent = 0
        self.running = False

    def on_start(self, now: int) -> None:
        self.running = True

    def next_deadline(self) -> int | None:
        return 0 if self.running else None

    def on_timer(self, now: int) -> None:
        for _ in range(min(self.chunk, self.count - self.sent)):
            if self.send(self.target, TEST_TICK, {"n": self.sent, "pad": self.pad}):
                self.sent += 1
            else:
                self.unsent += 1
                break
        if self.sent >= self.count or self.unsent:
            self.running = False
            self.notify("info", "source_done", sent=self.sent)

    def counters(self) -> dict[str, Any]:
        return {"sent": self.sent, "unsent": self.unsent}


class SinkActor(Actor):
    """Counts test_ticks, checks their numbering per sender, and spends ``work_us`` of
    CPU on each (a slow receiver)."""

    role = "sink"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.work_ns = int(self.config.get("work_us", 0)) * 1000
        self.received = 0
        self.out_of_order = 0
        self.expected: dict[str, int] = {}

    @handles(TEST_TICK)
    def on_tick(self, env: Envelope, now: int) -> None:
        n = env.body["n"]
        if n != self.expected.get(env.sender, 0):
            self.out_of_order += 1
        self.expected[env.sender] = n + 1
        self.received += 1
        if self.work_ns:
            end = time.monotonic_ns() + self.work_ns
            while time.monotonic_ns() < end:  # busy: the cost of handling it
                pass

    def counters(self) -> dict[str, Any]:
        return {"received": self.received, "out_of_order": self.out_of_order}


class TimerActor(Actor):
    """At start, arms one timer per ``fire_ms`` entry and cancels those listed in
    ``cancel_ms``; reports the delays that fired, in firing order."""

    role = "timers"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.fired: list[int] = []

    def on_start(self, now: int) -> None:
        handles_by_ms = {}
        for ms in self.config.get("fire_ms", []):
            handles_by_ms[ms] = self.call_at(now + ms * 1_000_000, self._fire(ms))
        for ms in self.config.get("cancel_ms", []):
            handles_by_ms[ms].cancel()

    def _fire(self, ms: int) -> Any:
        def fire(now: int) -> None:
            self.fired.append(ms)
            self.notify("info", "timer_fired", ms=ms)
        return fire

    def counters(self) -> dict[str, Any]:
        return {"fired": list(self.fired)}


class SlowStartActor(Actor):
    """Takes ``delay_s`` to construct: an actor that is late to become ready."""

    role = "slow_start"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        time.sleep(float(settings.config.get("delay_s", 60)))  # emulated slow start-up
        super().__init__(settings, **kw)


class ScriptedStackActor(Actor):
    """Plays the stack for a reader under test: reports each operation it decodes
    (``stack_saw_op``) and answers with the next of config ``answers``, sent as they
    are (so a test can send a result the reader must refuse)."""

    role = "stack"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.answers = list(self.config.get("answers", []))

    @handles(msg.SOCK_OP)
    def on_sock_op(self, env: Envelope, now: int) -> None:
        body = env.body
        try:
            op = repr(decode_op(body["op"], body["sock"], body["args"]))
        except MalformedOp as err:
            op = f"malformed: {err}"
        self.notify("info", "stack_saw_op", op=op)
        if self.answers:
            self.send(env.sender, msg.SOCK_OP_DONE,
                      {"request_id": body["request_id"], "result": self.answers.pop(0)})


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (a /proc scan)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _serve(run_dir: str) -> None:
    topology = make_topology({"echo1": {"role": "echo"}, "echo2": {"role": "echo"}},
                             heartbeat_ms=200)
    launcher = Launcher(topology, run_dir)
    try:
        with launcher:
            print(json.dumps({"launcher_pid": os.getpid(), "pids": launcher.pids()}),
                  flush=True)
            while True:  # ends only by an exception (SystemExit on SIGTERM)
                launcher.poll(1000)
    finally:
        print(json.dumps({"exit_codes": launcher.exit_codes(),
                          "final_stats": sorted(launcher.final_stats)}), flush=True)


def main(argv: list[str]) -> int:
    _serve(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
