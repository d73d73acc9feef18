"""Hostile input: every actor fed garbage keeps running, counts what it rejected, and the
transfer it is part of still completes intact."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
import zmq

from actors.runtime.launcher import Launcher
from cli.config import load_scenario
from cli.run import build_topology

ROLES = ["peer", "nic", "cpu0", "cpu1", "stack", "r1", "r2"]


def hostile_frames() -> list[bytes]:
    good = msgpack.packb([1, "wire", "intruder", 0, 0, {"frames": [b"x"]}])
    return [
        os.urandom(64),                                                    # random bytes
        good[: len(good) // 2],                                            # truncated
        msgpack.packb([1, "wire", "intruder", 1, 0, {"frames": "not a list"}]),  # wrong type
        msgpack.packb([1, "no_such_kind", "intruder", 2, 0, {}]),          # unknown kind
        msgpack.packb([1, "wire", "intruder", 3, 0, {"frames": [b"y"], "extra": 1}]),
        msgpack.packb([1, "wire", "somebody_else", 4, 0, {"frames": []}]),  # forged sender
        b"\x00" * (9 * 1024 * 1024),                                       # oversized
    ]


def rejected(counters: dict) -> int:
    return sum((counters.get("transport") or {}).get("rejected_messages", {}).values())


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(120)
def test_every_role_survives_garbage_and_counts_it(tmp_path: Path) -> None:
    sc = load_scenario(None)
    sc = replace(sc, flows=tuple(replace(f, bytes=1_500_000) for f in sc.flows))
    frames = hostile_frames()
    ctx = zmq.Context.instance()
    with Launcher(build_topology(sc), tmp_path / "run", ready_timeout_s=60) as launcher:
        endpoints = launcher.endpoints  # name -> Endpoint (bind, connect)
        socks = []
        for name in ROLES:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, b"intruder")
            s.setsockopt(zmq.LINGER, 1000)
            s.connect(endpoints[name].connect)
            for f in frames:
                s.send(f)
            socks.append(s)
        eof: set[str] = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and eof != {"r1", "r2"}:
            for env in launcher.poll(timeout_ms=200):
                if env.kind == "log_event" and env.body["event"] == "reader_eof":
                    eof.add(env.sender)
            assert not launcher.exited(), f"an actor died: {launcher.exited()}"
        stats = launcher.request_stats(ROLES, timeout_s=10)
        for s in socks:
            s.close()
        assert eof == {"r1", "r2"}, "the transfer did not complete"
        for name in ROLES:
            assert name in stats, f"{name} did not answer"
            assert rejected(stats[name]) >= len(frames) - 1, (name, stats[name]["transport"])
        assert all(stats[r]["role"]["bytes"] == 1_500_000 for r in ("r1", "r2"))
        assert all(stats[r]["role"]["bad_bytes"] == 0 for r in ("r1", "r2"))
