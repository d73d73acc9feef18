"""The stack and reader processes' own message handling, over real ZeroMQ sockets.

The shells are decode -> model call -> send; these tests speak to them as their peers
do (a cpu's batches, a reader's steps, the wire), so a decision taken in a shell instead
of the model (a bypass) shows here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from actors.profiles import get_profile
from actors.runtime.launcher import Launcher
from actors.scenario import FlowConfig, ReaderConfig, Scenario
from cli.drill.pipeline import drill_scenario, drill_topology
from cli.drill.runner import LOCAL_IP
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import (
    Accepted,
    InetAcceptFlow,
    LockSock,
    Rejected,
    SockOp,
    SockOpResult,
    TcpGetInfo,
    TcpInfo,
    decode_result,
    encode_op,
    encode_result,
)
from protocol.wire import decode_ipv4, decode_tcp, encode

LOCAL = LOCAL_IP
REMOTE = "192.0.2.1"
PORT = 5001
TIMEOUT_S = 20.0




class Peer:
    """The launcher as the stack's remote peer (frames to the nic, its answers back)
    and as a task issuing socket operations."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.rid = 0

    def request(self, op: SockOp | dict[str, Any]) -> int:
        self.rid += 1
        body = encode_op(op) if isinstance(op, SockOp) else op
        self.launcher.send("stack", msg.SOCK_OP, {"request_id": self.rid, **body})
        return self.rid

    def answer(self, rid: int, timeout_s: float = TIMEOUT_S) -> SockOpResult:
        env = self.launcher.wait_for(lambda e: e.kind == msg.SOCK_OP_DONE
                                     and e.body["request_id"] == rid, timeout_s)
        assert env is not None, f"no answer to request {rid}"
        return decode_result(env.body["result"])

    def op(self, op: SockOp | dict[str, Any]) -> SockOpResult:
        return self.answer(self.request(op))

    def wire_in(self, seg: Segment) -> None:
        self.launcher.send("nic", msg.WIRE, {"frames": [encode(seg)]})

    def wire_out(self, pred: Any) -> Segment:
        got: list[Segment] = []

        def match(e: Envelope) -> bool:
            if e.kind != msg.WIRE:
                return False
            for frame in e.body["frames"]:
                seg = decode_tcp(decode_ipv4(frame))
                if pred(seg):
                    got.append(seg)
                    return True
            return False
        assert self.launcher.wait_for(match, TIMEOUT_S) is not None, "no such segment"
        return got[0]

    def stack_stats(self) -> dict[str, Any]:
        stats = self.launcher.request_stats(["stack"], timeout_s=TIMEOUT_S)
        return stats["stack"]["role"]


def handshake(peer: Peer, sport: int) -> None:
    syn = Segment(src=REMOTE, sport=sport, dst=LOCAL, dport=PORT, seq=1000,
                  flags=TcpFlags.SYN, window=65535, options=TcpOptions(mss=1460, wscale=7))
    peer.wire_in(syn)
    synack = peer.wire_out(lambda s: s.flags & TcpFlags.SYN and s.dport == sport)
    peer.wire_in(Segment(src=REMOTE, sport=sport, dst=LOCAL, dport=PORT, seq=1001,
                         ack=seq_add(synack.seq, 1), flags=TcpFlags.ACK, window=1000))


def pipeline(run_dir: Path) -> Launcher:
    prof = get_profile("modern")
    sc = drill_scenario(prof, prof.default_sysctls, seed=1)
    # The stack's listener from its scenario, as in a run.
    sc = replace(sc, stack=replace(sc.stack, listen_port=PORT))
    return Launcher(drill_topology(sc), run_dir, ready_timeout_s=30.0)


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_stack_accepts_a_flow_through_the_model_and_grafts_it(run_dir: Path) -> None:
    with pipeline(run_dir) as launcher:
        peer = Peer(launcher)
        # Asked before the handshake: the accept waits in the model for that flow.
        rid = peer.request(InetAcceptFlow(lport=PORT, rports=[40001]))
        handshake(peer, 40002)  # another flow first: not the one asked for
        handshake(peer, 40001)
        res = peer.answer(rid)
        assert isinstance(res, Accepted), res
        info = peer.op(TcpGetInfo(res.sock))
        assert isinstance(info, TcpInfo)
        assert info.info["attached"] is True and info.info["peer"] == f"{REMOTE}:40001"
        # A second reader of the flow shares the socket; the other flow stays queued.
        again = peer.op(InetAcceptFlow(lport=PORT, rports=[40001]))
        assert again == Accepted(sock=res.sock, rport=40001, state=again.state)
        socks = {s["peer"]: s for s in peer.stack_stats()["sockets"]}
        assert socks[f"{REMOTE}:40001"]["attached"] is True
        assert socks[f"{REMOTE}:40002"]["attached"] is False


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_stack_counts_and_answers_malformed_ops_and_frames(run_dir: Path) -> None:
    with pipeline(run_dir) as launcher:
        peer = Peer(launcher)
        bad = [
            {"op": "NoSuchOp", "sock": 1, "args": {}},
            {"op": "SkbCopyDatagramMsg", "sock": 1, "args": {"len": "ten"}},
            encode_op(LockSock(99)),  # no such socket: decodes, cannot be done
        ]
        for body in bad:
            res = peer.op(body)
            assert isinstance(res, Rejected), res
        # A batch from a cpu with a frame that is not TCP/IPv4 in the middle.
        frames = [b"\x45\x00garbage", encode(Segment(src=REMOTE, sport=9, dst=LOCAL,
                                                     dport=9, seq=1, ack=1,
                                                     flags=TcpFlags.ACK, window=1))]
        launcher.send("stack", msg.RCV_BATCH, {"batch": 77, "frames": frames})
        assert launcher.wait_for(lambda e: e.kind == msg.RCV_DONE
                                 and e.body["batch"] == 77, TIMEOUT_S) is not None
        stats = peer.stack_stats()
        assert stats["bad_sock_ops"] == 3
        assert stats["malformed"] == 1
        assert stats["segments"] == 2
        assert stats["mib"]["TcpInSegs"] == 2  # the malformed one counted too
        # Still serving: the listener answers.
        assert not isinstance(peer.op(LockSock(1)), Rejected)
    logs = (run_dir / "logs" / "stack.jsonl").read_text()
    assert '"bad_sock_op"' in logs and '"malformed_segment"' in logs


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_reader_shell_sends_typed_ops_and_counts_a_malformed_result(run_dir: Path) -> None:
    sc = Scenario(flows=(FlowConfig(sport=40007),), readers=(ReaderConfig(),))
    config = {"scenario": sc.to_dict()}
    topology = {
        "actors": {
            "stack": {"role": "stack", "class": "tests.runtime_roles:ScriptedStackActor",
                      "peers": ["r1"], "config": {**config, "answers": [
                          encode_result(Accepted(sock=5)), {"result": "NoSuchResult"}]}},
            "r1": {"role": "reader", "peers": ["stack"], "config": config},
        },
        "runtime": {"heartbeat_ms": 60_000, "trace": False},
    }
    with Launcher(topology, run_dir, ready_timeout_s=30.0) as launcher:
        seen: list[dict[str, Any]] = []
        gave_up: list[Envelope] = []

        # The stack logs each op before answering it, and the reader gives up on the
        # undecodable answer: wait for both, in whichever order they arrive.
        def done(e: Envelope) -> bool:
            if e.kind == msg.LOG_EVENT and e.body["event"] == "stack_saw_op":
                seen.append(e.body["fields"])
            if e.kind == msg.LOG_EVENT and e.body["event"] == "reader_error":
                gave_up.append(e)
            return len(seen) == 2 and bool(gave_up)
        assert launcher.wait_for(done, TIMEOUT_S) is not None, (seen, gave_up)
        # The reader accepts its flow, then starts tcp_recvmsg with lock_sock.
        assert seen[0] == {"op": repr(InetAcceptFlow(lport=5001, rports=[40007]))}
        assert seen[1] == {"op": repr(LockSock(5))}
        stats = launcher.request_stats(["r1"], timeout_s=TIMEOUT_S)["r1"]["role"]
        assert stats["bad_results"] == 1 and stats["errors"] == 1


# --- real runs -------------------------------------------------------------------------

# A modern host with a small default receive buffer (32 KB) and a slow reader: 1 KB
# every 10 ms is far below what one RTT's autotuning step needs (rcvq_space starts at
# 10 * advmss = 14600 bytes, more than a busy host's RTT lets it read), so the in-order
# path never grows the buffer.
SLOW_READER = """\
profile = "modern"
seed = 1
duration = 60.0
description = "ofo rcvbuf growth: {what}"

[sysctl]
tcp_rmem = [4096, 32768, 6291456]

[[flows]]
name = "f1"
bytes = 150_000

[[readers]]
name = "r1"
flow = "f1"
read_size = 1024
think_us = 10000

[impairments]
"""
# Held frames: each waits on the wire until the 3 frames behind it have passed, which
# reach the stack out of order.
HOLDS = "".join(f"""
[[impairments.events]]
index = {i}
action = "hold"
hold_segments = 3
""" for i in (20, 50, 80, 110))


def real_run(tmp: Path, name: str, text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from cli.config import load_scenario
    from cli.run import run_scenario

    cfg = tmp / f"{name}.toml"
    cfg.write_text(text)
    summary = run_scenario(load_scenario(cfg), tmp / name, progress=False)
    assert summary["integrity"], summary.get("errors")
    counters = json.loads((tmp / name / "counters.json").read_text())
    return summary, counters["stack"]["role"]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_real_run_grafts_the_accepted_socket_and_grows_rcvbuf_from_the_ofo_queue(
        run_dir: Path) -> None:
    ofo, ofo_stack = real_run(run_dir, "ofo", SLOW_READER.format(what="reordered") + HOLDS)
    calm, calm_stack = real_run(run_dir, "calm", SLOW_READER.format(what="in order"))
    for stack in (ofo_stack, calm_stack):
        (sk,) = stack["sockets"]
        assert sk["attached"] is True  # accept() went through inet_csk_accept + sock_graft
    (sk,) = ofo_stack["sockets"]
    assert ofo["nstat"].get("TcpExtTCPOFOQueue", 0) > 0
    # In-order autotuning never moved (rcvq_space is where tcp_init_buffer_space put
    # it: 10 x advmss, 1448 with timestamps before tcp_init_buffer_space as in 6.16+),
    # yet the buffer grew: tcp_rcvbuf_grow saw the out-of-order span.
    assert sk["rcv_space"] == 14480
    assert sk["skmem"]["rb"] > 32768
    (calm_sk,) = calm_stack["sockets"]
    assert calm["nstat"].get("TcpExtTCPOFOQueue", 0) == 0
    assert calm_sk["skmem"]["rb"] == 32768  # the same reader in order: no growth
