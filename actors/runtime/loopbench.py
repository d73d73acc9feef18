"""What the actor runtime costs per message, measured on real actor processes.

Three actors under a :class:`~actors.runtime.launcher.Launcher`, each a trivial role on
the shared runtime (mailbox, envelope codec, schema checks, dispatch, trace writer)::

    loop_source --loop_item--> loop_relay --loop_item--> loop_sink

The source sends ``messages`` items as fast as back-pressure lets it (``batch`` > 1:
``batch`` items per :meth:`Actor.send_many` call, one envelope each); the relay
forwards every item it is handed (one trace record per item when tracing is on, as the
role shells write); the sink counts them and reports ``loop_done``.  Each role measures
its own process CPU time (``time.process_time_ns``) from its first item to its last,
so start-up and idle waiting are left out.

Beside it, in the same run, the raw chain of :mod:`actors.runtime.hopbench` with one
forwarder (the same two links, plain pyzmq + msgpack, no envelope) gives the floor.

CLI: ``python -m actors.runtime.loopbench --messages 50000 --runs 5 [--batch 64]``
prints per-run figures and their medians as JSON; ``--profile DIR`` also records each
actor with py-spy (``DIR/<name>.txt``, raw collapsed stacks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.hopbench import run_hop_benchmark
from actors.runtime.launcher import Launcher
from protocol import messages as msg
from protocol.envelope import Envelope, ListOf, register_kind

LOOP_ITEM = register_kind(
    "loop_item", {"n": int, "frames": ListOf(bytes)}, optional={"ids": ListOf(int)},
    doc="loop benchmark: one item of the source -> relay -> sink stream")

ROLE_CLASSES = {
    "loop_source": "actors.runtime.loopbench:LoopSource",
    "loop_relay": "actors.runtime.loopbench:LoopRelay",
    "loop_sink": "actors.runtime.loopbench:LoopSink",
}
_CHUNK = 256  # items the source sends per loop turn (then it serves its inbox)


class _Measured(Actor):
    """Counts items and the CPU time between the first and the last (``count``); the
    process CPU clock is read only then: it is a system call."""

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.count = int(self.config["count"])
        self.items = 0
        self.cpu_first_ns = 0
        self.cpu_last_ns = 0
        self.t_first_ns = 0
        self.t_last_ns = 0

    def _mark(self, n: int, now: int) -> None:
        if not self.t_first_ns:
            self.cpu_first_ns = time.process_time_ns()
            self.t_first_ns = now
        self.items += n
        if self.items >= self.count:
            self.cpu_last_ns = time.process_time_ns()
            self.t_last_ns = now

    def counters(self) -> dict[str, Any]:
        return {"items": self.items, "cpu_ns": self.cpu_last_ns - self.cpu_first_ns,
                "t_first_ns": self.t_first_ns, "t_last_ns": self.t_last_ns}


class LoopSource(_Measured):
    role = "loop_source"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.target = str(self.config["target"])
        self.batch = max(1, int(self.config.get("batch", 1)))
        self.frame = b"x" * int(self.config.get("frame_bytes", 64))
        self.running = False

    def on_start(self, now: int) -> None:
        self.running = True

    def next_deadline(self) -> int | None:
        return 0 if self.running else None

    def on_timer(self, now: int) -> None:
        if not self.t_first_ns:
            self._mark(0, now)
        frames = [self.frame]
        sent = self.items
        end = min(self.count, sent + _CHUNK)
        while sent < end:
            if self.batch == 1:
                ok = self.send(self.target, LOOP_ITEM, {"n": sent, "frames": frames})
                k = 1
            else:
                k = min(self.batch, end - sent)
                ok = self.send_many(self.target, LOOP_ITEM, [
                    {"n": i, "frames": frames} for i in range(sent, sent + k)])
            if not ok:  # abandoned at the stop deadline
                self.running = False
                return
            sent += k
        self._mark(sent - self.items, self.clock())
        if sent >= self.count:
            self.running = False


class LoopRelay(_Measured):
    role = "loop_relay"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.target = str(self.config["target"])

    @handles(LOOP_ITEM)
    def on_item(self, env: Envelope, now: int) -> None:
        body = env.body
        if self.trace.on:  # as a role shell records a hop: one hand-formatted line
            self.trace.line(f'["X",{now},0,"main","relay",{{"n":{body["n"]}}},null,null]')
        self.send(self.target, LOOP_ITEM, body)
        self._mark(1, now)


class LoopSink(_Measured):
    role = "loop_sink"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.out_of_order = 0

    @handles(LOOP_ITEM)
    def on_item(self, env: Envelope, now: int) -> None:
        if env.body["n"] != self.items:
            self.out_of_order += 1
        if self.trace.on:
            self.trace.line(f'["X",{now},0,"main","sink",{{"n":{env.body["n"]}}},null,null]')
        self._mark(1, now)
        if self.items == self.count:
            self.notify("info", "loop_done", items=self.items)

    def counters(self) -> dict[str, Any]:
        return {**super().counters(), "out_of_order": self.out_of_order}


def loop_topology(messages: int, *, batch: int = 1, trace: bool = True,
                  frame_bytes: int = 64) -> dict[str, Any]:
    return {
        "role_classes": ROLE_CLASSES,
        "runtime": {"trace": trace, "heartbeat_ms": 500},
        "actors": {
            "source": {"role": "loop_source", "peers": ["relay"],
                       "config": {"target": "relay", "count": messages, "batch": batch,
                                  "frame_bytes": frame_bytes}},
            "relay": {"role": "loop_relay", "peers": ["sink"], "config": {"target": "sink",
                                                            "count": messages}},
            "sink": {"role": "loop_sink", "config": {"count": messages}},
        },
    }


def run_loop_benchmark(messages: int, *, batch: int = 1, trace: bool = True,
                       timeout_s: float = 120.0,
                       profile_dir: Path | None = None) -> dict[str, Any]:
    """One run: messages/s end to end and CPU µs per item in each actor process."""
    if messages < 1:
        raise ValueError("messages must be positive")
    run_dir = Path(tempfile.mkdtemp(prefix="rxloop", dir="/tmp"))
    spies: list[subprocess.Popen[bytes]] = []
    try:
        with Launcher(loop_topology(messages, batch=batch, trace=trace), run_dir) as launcher:
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                for name, pid in launcher.pids().items():
                    spies.append(subprocess.Popen(
                        ["py-spy", "record", "--pid", str(pid), "--format", "raw",
                         "--rate", "250", "-o", str(profile_dir / f"{name}.txt")],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL))
            done = launcher.wait_for(
                lambda e: e.kind == msg.LOG_EVENT and e.body["event"] == "loop_done",
                timeout_s)
            if done is None:
                raise TimeoutError(f"loop benchmark: not done in {timeout_s} s")
            stats = launcher.request_stats(timeout_s=10)
    finally:
        for spy in spies:  # py-spy writes its file when the traced process exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(timeout=20)
            if spy.poll() is None:
                spy.kill()
                spy.wait(timeout=5)
        shutil.rmtree(run_dir, ignore_errors=True)
    roles = {name: stats[name]["role"] for name in ("source", "relay", "sink")}
    sink = roles["sink"]
    if sink["items"] != messages or sink["out_of_order"]:
        raise RuntimeError(f"loop benchmark lost or reordered items: {sink}")
    elapsed = sink["t_last_ns"] - roles["source"]["t_first_ns"]
    cpu = {name: r["cpu_ns"] / 1000 / messages for name, r in roles.items()}
    return {
        "messages": messages, "batch": batch, "trace": trace,
        "messages_per_s": messages * 1e9 / max(1, elapsed),
        "cpu_us_per_message": {**{k: round(v, 2) for k, v in cpu.items()},
                               "total": round(sum(cpu.values()), 2)},
        "transport_lost": stats["sink"]["transport"]["transport_lost"]
        + stats["relay"]["transport"]["transport_lost"],
    }


def run_side_by_side(messages: int, runs: int, batch: int = 1,
                     profile_dir: Path | None = None) -> dict[str, Any]:
    """``runs`` rounds of (raw chain, actors with trace on, actors with trace off),
    interleaved so that a busy machine slows all three alike; medians at the end."""
    rows: list[dict[str, Any]] = []
    for i in range(runs):
        raw = run_hop_benchmark(1, messages, 1, rtt_samples=20)
        on = run_loop_benchmark(messages, batch=batch, trace=True,
                                profile_dir=profile_dir / "trace_on" if profile_dir and i == 0
                                else None)
        off = run_loop_benchmark(messages, batch=batch, trace=False)
        rows.append({
            "raw_per_s": round(raw["messages_per_s"]),
            "raw_cpu_us": {"forwarder": raw["hop_cpu_us_per_frame"][0],
                           "source+sink": raw["bench_cpu_us_per_message"]},
            "on_per_s": round(on["messages_per_s"]), "on_cpu_us": on["cpu_us_per_message"],
            "off_per_s": round(off["messages_per_s"]), "off_cpu_us": off["cpu_us_per_message"],
            "ratio_on": round(on["messages_per_s"] / raw["messages_per_s"], 3),
            "ratio_off": round(off["messages_per_s"] / raw["messages_per_s"], 3),
        })

    def med(key: str, sub: str | None = None) -> float:
        vals = [r[key][sub] if sub else r[key] for r in rows if r[key] is not None]
        return round(statistics.median(vals), 3) if vals else float("nan")

    medians: dict[str, Any] = {k: med(k) for k in ("raw_per_s", "on_per_s", "off_per_s",
                                                   "ratio_on", "ratio_off")}
    for side in ("on", "off"):
        medians[f"{side}_cpu_us"] = {n: med(f"{side}_cpu_us", n)
                                     for n in ("source", "relay", "sink", "total")}
    if rows[0]["raw_cpu_us"] is not None:
        medians["raw_cpu_us"] = {n: med("raw_cpu_us", n) for n in rows[0]["raw_cpu_us"]}
    return {"messages": messages, "batch": batch, "runs": rows, "median": medians}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actors.runtime.loopbench",
                                description="Actor runtime cost per message, beside the "
                                            "raw pyzmq + msgpack chain.")
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--profile", type=Path, default=None,
                   help="record each actor of the first trace-on run with py-spy into DIR")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    result = run_side_by_side(args.messages, args.runs, args.batch, args.profile)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
