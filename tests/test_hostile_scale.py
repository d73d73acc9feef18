"""Hostile input at scale: each role, running as its own process over real ZeroMQ, takes
10,000 generated hostile messages (seeded, so a failure replays exactly) and counts every
one, without crashing, and then still answers; and the wire decoder, under hypothesis,
raises nothing but MalformedPacket whatever bytes it is given.

Most of the messages come from an ``intruder`` socket outside the topology (random bytes,
truncated or mutated msgpack, wrong types, unknown kinds, forged senders, extra frames,
oversized frames, well-formed messages from a sender nobody can answer).  The rest come
from the launcher, so that they get past the transport to the role's handlers: valid
envelopes whose fields are out of range (queues, counts, batch and request ids, socket
ids, trace-id and GSO lists of the wrong length, unknown actors and modes), frames that do
not decode or belong to no flow.  Each message is meant to be counted exactly once: in
``transport.rejected_messages`` or in the one role counter that takes such input.

The tunwire actor (a real Linux sender's wire: a TUN device in a network namespace of the
test's own) takes its 10,000 on its inbox like the others, and 10,000 more hostile frames
on the TUN device itself, injected from inside the namespace; its frame checks, under
hypothesis, never raise and never refuse a frame the stack builds. Those tests skip, saying
why, where namespaces or TUN devices cannot be made.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.runtime.addressing import LAUNCHER
from actors.runtime.launcher import Launcher
from actors.runtime.supervisor import PEER_EVENT
from actors.scenario import FlowConfig, LinuxSenderConfig, ReaderConfig, Scenario
from actors.tunwire.frames import frame_for_nic, frame_problem
from actors.tunwire.netns import TUN_DEVICE, TUN_MTU
from cli.linux_sender import run_netns
from cli.run import TUNWIRE, build_topology
from protocol import messages as msg
from protocol.envelope import BUNDLE, DEFAULT_MAX_MESSAGE_BYTES, KINDS
from protocol.pcap import LINKTYPES, PcapError, link_ipv4, read_capture
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.tcp_options import parse_options
from protocol.wire import MalformedPacket, decode, decode_ipv4, decode_tcp, encode
from tests.shell_roles import RELAY_CLASS
from tests.test_wire import default_options, explicit_options, segments

MESSAGES = 10_000        # per endpoint
OVERSIZED = 3            # of them just over the codec's limit (each 8 MiB on the socket)
FROM_LAUNCHER = 0.3      # share that reaches the role's handlers
WAIT_S = 30.0            # for every count to show up, on a busy 2-core host
INTRUDER = "intruder"
I64 = (1 << 63) - 1

# role -> the actor that plays it (its neighbours are relays that take anything).
ROLES = {"peer": "peer", "nic": "nic", "cpu": "cpu0", "stack": "stack", "reader": "r1",
         "tunwire": TUNWIRE}
# Role counters that count, one per message, what a handler takes but cannot use.
ROLE_COUNTERS: dict[str, list[tuple[str, ...]]] = {
    "peer": [("peer", "bad_frames"), ("peer", "unknown_flow")],
    "nic": [("stale_refills",)],
    "cpu": [("stale_rcv_done",)],
    "stack": [("bad_sock_ops",), ("malformed",)],
    "reader": [],
    # Per frame (each such message has one): not an IPv4 packet, or written to the device.
    "tunwire": [("bad_frames",), ("frames_out",), ("tun_write_errors",)],
}


def scenario() -> Scenario:
    return Scenario(flows=(FlowConfig(name="f1", bytes=100_000, sport=40001),
                           FlowConfig(name="f2", bytes=100_000, sport=40002, reader="r2")),
                    readers=(ReaderConfig(name="r1", flow="f1"),
                             ReaderConfig(name="r2", flow="f2")))


def topology(sc: Scenario, real: str, netns: str | None = None) -> dict[str, Any]:
    """Only ``real`` runs its role; every actor it talks to is a relay that relays
    nothing (so what ``real`` sends is absorbed, and counted there, not here). The
    tunwire plays a real sender's wire in ``netns``, with no sender: its device carries
    only what the test puts on it."""
    if real == TUNWIRE:
        sc = replace(sc, linux_senders=(LinuxSenderConfig(flows=("f1", "f2")),))
    topo = build_topology(sc, netns)
    if real == TUNWIRE:
        topo["actors"][TUNWIRE]["config"]["tunwire"]["senders"] = []
    entry = topo["actors"][real]
    actors = {real: entry}
    for peer in entry.get("peers", []):
        actors[peer] = {"role": "relay", "class": RELAY_CLASS, "config": {"kinds": []}}
    return {**topo, "actors": actors}


# --- generation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One hostile message: ``raw`` frames sent by the intruder socket, or a ``kind`` and
    ``body`` the launcher sends (a valid envelope whose content is wrong)."""

    what: str
    raw: tuple[bytes, ...] = ()
    kind: str = ""
    body: dict[str, Any] | None = None


def _envelope(kind: str, body: Any, sender: str = INTRUDER, seq: int = 0) -> list[Any]:
    return [1, kind, sender, seq, 0, body]


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _good_body(rng: random.Random, kind: str) -> dict[str, Any]:
    """A body that fits ``kind``'s schema (so only the sender is wrong)."""
    bodies: dict[str, dict[str, Any]] = {
        msg.STATS_REQUEST: {"request_id": rng.randrange(1 << 32)},
        msg.END_OF_STREAM: {"request_id": rng.randrange(1 << 32)},
        msg.STOP: {"reason": "hostile"},
        msg.START: {"t0_ns": rng.randrange(1 << 62)},
        msg.WIRE: {"frames": [rng.randbytes(rng.randrange(60))]},
        msg.DMA: {"queue": 0, "frames": [rng.randbytes(40)]},
        msg.IRQ: {"queue": 0},
        msg.REFILL: {"queue": 0, "n": 1},
        msg.RCV_DONE: {"batch": rng.randrange(1 << 32)},
        msg.SOCK_OP: {"request_id": 1, "op": "lock_sock", "sock": 0, "args": {}},
        msg.SOCK_OP_DONE: {"request_id": 1, "result": {}},
        msg.LINK_FAULT: {"dest": "nic", "mode": "cut", "delay_ns": 0},
    }
    return bodies[kind]


def _wrong_body(rng: random.Random, kind: str) -> Any:
    """A body that does not fit ``kind``'s schema."""
    spec = KINDS[kind]
    body = dict(_good_body(rng, kind))
    choice = rng.randrange(4)
    if choice == 0 and spec.required:
        del body[rng.choice(sorted(spec.required))]                  # missing field
    elif choice == 1 and spec.required:
        # A wrong type, mostly (a value of the right one still comes from the intruder).
        body[rng.choice(sorted(spec.required))] = rng.choice(
            [True, None, 1.5, "x", b"x", [1], {"a": 1}, -(1 << 63)])
    elif choice == 2:
        body[f"extra_{rng.randrange(100)}"] = 1                      # undeclared field
    else:
        return rng.choice([[body], "body", 7, None])                  # not a map
    return body


_ENVELOPE_KINDS = [msg.STATS_REQUEST, msg.END_OF_STREAM, msg.STOP, msg.START, msg.WIRE,
                   msg.DMA, msg.IRQ, msg.REFILL, msg.RCV_DONE, msg.SOCK_OP,
                   msg.SOCK_OP_DONE, msg.LINK_FAULT]


def _raw(rng: random.Random, forged: list[str]) -> Hostile:
    kind = rng.choice(_ENVELOPE_KINDS)
    valid = _pack(_envelope(kind, _good_body(rng, kind)))
    pick = rng.randrange(14)
    if pick == 0:
        return Hostile("random_bytes", (rng.randbytes(rng.randrange(300)),))
    if pick == 1:
        return Hostile("truncated", (valid[:rng.randrange(len(valid))],))
    if pick == 2:
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return Hostile("mutated", (bytes(mutated),))
    if pick == 3:  # the envelope's own fields wrong
        header = rng.choice([
            [2, kind, INTRUDER, 0, 0], [True, kind, INTRUDER, 0, 0], [1, 7, INTRUDER, 0, 0],
            [1, kind, "", 0, 0], [1, kind, 5, 0, 0], [1, kind, INTRUDER, -1, 0],
            [1, kind, INTRUDER, "0", 0], [1, kind, INTRUDER, 0, -(1 << 63)],
            [1, kind, INTRUDER, 0, 1.5], [1, kind, INTRUDER, True, 0]])
        return Hostile("bad_header", (_pack([*header, _good_body(rng, kind)]),))
    if pick == 4:
        return Hostile("wrong_types", (_pack(_envelope(kind, _wrong_body(rng, kind))),))
    if pick == 5:
        name = rng.choice(["no_such_kind", "", "WIRE", "wire ", "bundle2",
                           "k" * rng.randrange(1, 200)])
        return Hostile("unknown_kind", (_pack(_envelope(name, {})),))
    if pick == 6:
        shape = rng.choice([[], [1], _envelope(kind, {})[:5], [*_envelope(kind, {}), 0],
                            {"kind": kind}, 42, "envelope", None])
        return Hostile("bad_shape", (_pack(shape),))
    if pick == 7:
        extra = rng.choice([b"\xc0", rng.randbytes(rng.randrange(1, 20)), valid])
        return Hostile("trailing_data", (valid + extra,))
    if pick == 8:
        ext = rng.choice([msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(9))),
                          msgpack.Timestamp(rng.randrange(1 << 32))])  # the ext type -1
        return Hostile("ext_type", (_pack(_envelope(kind, {"x": ext})),))
    if pick == 9:  # lengths claimed far beyond the frame, nesting too deep, int keys
        claim = rng.choice([
            b"\xc6" + struct.pack("!I", rng.randrange(1 << 20, 1 << 32)) + b"ab",
            b"\xdd" + struct.pack("!I", rng.randrange(1 << 20, 1 << 32)) + b"\x01",
            b"\xdf" + struct.pack("!I", rng.randrange(1 << 20, 1 << 32)),
            b"\x91" * rng.randrange(1000, 5000) + b"\xc0",
            _pack(_envelope(kind, {1: 2})), _pack({b"k": 1})])
        return Hostile("length_claims", (claim,))
    if pick == 10:
        sender = rng.choice(forged)
        return Hostile("forged_sender", (_pack(_envelope(kind, _good_body(rng, kind),
                                                         sender=sender)),))
    if pick == 11:  # well formed, but from outside the topology: nobody could answer it
        return Hostile("unknown_sender", (valid,))
    if pick == 12:
        bundle = {"kind": kind, "bodies": [_good_body(rng, kind)] * rng.randrange(2, 5)}
        return Hostile("bundle", (_pack(_envelope(BUNDLE, bundle)),))
    parts = tuple(rng.choice([b"", valid, rng.randbytes(10)]) for _ in range(rng.randrange(2, 5)))
    return Hostile("extra_frames", parts)


def _frame(sc: Scenario, flow: str, **changes: Any) -> bytes:
    src, sport, dst, dport = sc.four_tuple(flow)
    seg = Segment(src, sport, dst, dport, seq=1, flags=TcpFlags.ACK, payload=b"x")
    return encode(replace(seg, **changes))


def _ids(rng: random.Random, frames: int) -> list[int]:
    """A trace-id list of the wrong length for ``frames`` frames."""
    n = rng.choice([k for k in (0, 1, 2, 3, frames + 1, frames + 7) if k != frames])
    return [rng.randrange(-I64, I64) for _ in range(n)]


def _bad_int(rng: random.Random, good: range) -> int:
    """An int outside ``good``: negative, just past it, or huge."""
    return rng.choice([-1, -rng.randrange(1, I64), good.stop, good.stop + rng.randrange(100),
                       rng.randrange(1 << 40, I64)])


def _common(rng: random.Random, real: str) -> Hostile:
    """Control messages from the launcher that name what does not exist."""
    pick = rng.randrange(4)
    if pick == 0:
        who = rng.choice(["cpu99", "cpuX", "nobody", "", real + "x", "stack "])
        return Hostile("peer_event", kind=PEER_EVENT, body={
            "actor": who, "role": rng.choice(["cpu", "stack", "reader", "nic"]),
            "event": rng.choice(["exited", "restarted"]),
            "incarnation": rng.randrange(-I64, I64)})
    if pick == 1:
        dest, mode = rng.choice([("nobody", "cut"), ("nic", "sever"), ("stack", ""),
                                 ("", "heal"), (real + "x", "delay")])
        return Hostile("link_fault", kind=msg.LINK_FAULT, body={
            "dest": dest, "mode": mode, "delay_ns": rng.randrange(-I64, I64)})
    if pick == 2:
        return Hostile("eos_ack", kind=msg.END_OF_STREAM_ACK,
                       body={"request_id": rng.randrange(-I64, I64)})
    return Hostile("start_again", kind=msg.START, body={"t0_ns": rng.randrange(I64)})


def _for_role(rng: random.Random, role: str, sc: Scenario) -> Hostile:
    """Valid envelopes with out-of-range content, for ``role``'s own handlers."""
    queues = range(sc.nic.queues)
    pick = rng.randrange(4)
    if role == "nic":
        if pick == 0:
            return Hostile("bad_queue", kind=msg.REFILL,
                           body={"queue": _bad_int(rng, queues), "n": 1})
        if pick == 1:
            n = rng.choice([-rng.randrange(1, I64), rng.randrange(1 << 20, I64)])
            return Hostile("bad_refill_n", kind=msg.REFILL, body={"queue": 0, "n": n})
        if pick == 2:
            return Hostile("bad_queue", kind=msg.UNMASK, body={"queue": _bad_int(rng, queues)})
        frames = [_frame(sc, "f1")] * rng.randrange(1, 4)
        if rng.random() < 0.5:
            return Hostile("bad_ids", kind=rng.choice([msg.WIRE, msg.TX]),
                           body={"frames": frames, "ids": _ids(rng, len(frames))})
        gso = rng.choice([[1] * (len(frames) + 1), [-1] * len(frames)])
        return Hostile("bad_gso", kind=msg.WIRE, body={"frames": frames, "gso": gso})
    if role == "cpu":
        mine = [q for q, c in enumerate(sc.queue_to_cpu) if c == 0]
        if pick == 0:
            queue = rng.choice([_bad_int(rng, queues),
                                *[q for q in queues if q not in mine]])
            return Hostile("bad_queue", kind=msg.DMA, body={"queue": queue, "frames": [b"x"]})
        if pick == 1:
            return Hostile("bad_queue", kind=msg.IRQ, body={"queue": _bad_int(rng, queues)})
        if pick == 2:
            frames = [rng.randbytes(30)] * rng.randrange(1, 4)
            if rng.random() < 0.5:
                return Hostile("bad_ids", kind=msg.DMA, body={
                    "queue": mine[0], "frames": frames, "ids": _ids(rng, len(frames))})
            return Hostile("bad_gso", kind=msg.DMA, body={
                "queue": mine[0], "frames": frames, "gso": [-5] * len(frames)})
        # No batch is in flight: any rcv_done is stale.
        return Hostile("stale_batch", kind=msg.RCV_DONE, body={"batch": rng.randrange(-I64, I64)})
    if role == "stack":
        if pick <= 1:
            op = rng.choice(["lock_sock", "recv_copy", "sk_wait_data", "no_such_op", "",
                             "accept", "epoll_wait"])
            args = rng.choice([{}, {"sock": -1}, {"len": -5}, {"x": [1, 2]},
                               {"timeout_ns": "soon"}])
            return Hostile("bad_sock_op", kind=msg.SOCK_OP, body={
                "request_id": rng.randrange(1 << 32), "op": op,
                "sock": _bad_int(rng, range(1 << 16)), "args": args})
        if pick == 2:  # a frame too short to be IPv4: counted as a malformed segment
            return Hostile("bad_frame", kind=msg.RCV_BATCH, body={
                "batch": rng.randrange(I64), "frames": [rng.randbytes(rng.randrange(20))]})
        r = rng.random()
        if r < 0.4:
            return Hostile("bad_ids", kind=msg.RCV_BATCH, body={
                "batch": rng.randrange(I64), "frames": [], "ids": _ids(rng, 0)})
        if r < 0.7:  # wire-frame counts that do not fit the frames or their GSO sizes
            return Hostile("bad_segs", kind=msg.RCV_BATCH, body={
                "batch": rng.randrange(I64), "frames": [], "gso": [],
                "segs": rng.choice([[0], [2, 3], [-1]])})
        return Hostile("bad_gso", kind=msg.RCV_BATCH, body={
            "batch": rng.randrange(I64), "frames": [], "gso": [1] * rng.randrange(1, 4)})
    if role == "tunwire":
        return _for_tunwire(rng, pick, sc)
    if role == "reader":
        # Request ids the reader never used (it numbers from 0 up).
        return Hostile("unknown_request", kind=msg.SOCK_OP_DONE, body={
            "request_id": -rng.randrange(1, I64),
            "result": rng.choice([{}, {"kind": "recv"}, {"error": "EBADF"}])})
    # peer
    if pick == 0:
        return Hostile("bad_frame", kind=msg.WIRE, body={"frames": [rng.randbytes(
            rng.randrange(60))]})
    if pick == 1:  # a sound segment of a flow the peer does not have
        frame = _frame(sc, "f1", dport=rng.randrange(1, 40000), src="10.9.9.9")
        return Hostile("unknown_flow", kind=msg.WIRE, body={"frames": [frame]})
    frames = [rng.randbytes(10)] * rng.randrange(1, 4)
    return Hostile("bad_ids", kind=msg.WIRE, body={"frames": frames,
                                                    "ids": _ids(rng, len(frames))})


def _to_sender(sc: Scenario, **changes: Any) -> bytes:
    """A sound segment as the stack sends it, to the real sender's address."""
    src, sport, dst, dport = sc.four_tuple("f1")
    seg = Segment(dst, dport, src, sport, seq=1, ack=1, flags=TcpFlags.ACK, payload=b"y")
    return encode(replace(seg, **changes))


def _unfit_for_tun(rng: random.Random, sc: Scenario) -> bytes:
    """A frame that is not an IPv4 packet whose header holds together."""
    good = _to_sender(sc)
    pick = rng.randrange(8)
    if pick == 0:
        return rng.randbytes(rng.randrange(20))                       # short, or empty
    if pick == 1:
        return good[:rng.randrange(20, len(good))]                    # truncated
    if pick == 2:
        return good + rng.randbytes(rng.randrange(1, 30))             # bytes past tot_len
    if pick == 3:
        return bytes([rng.choice([0x05, 0x65, 0x00, 0xF5]), *good[1:]])  # IP version
    if pick == 4:
        return bytes([0x40 | rng.randrange(5), *good[1:]])            # IHL below 5
    if pick == 5:
        return bytes([0x4F, *good[1:]])                               # IHL past the frame
    if pick == 6:                                                     # beyond any IPv4
        return good + bytes(rng.randrange(65536, 70000) - len(good))
    return bytes([0x45]) + rng.randbytes(rng.randrange(19, 80))       # noise after 0x45


def _fit_for_tun(rng: random.Random, sc: Scenario) -> tuple[str, bytes]:
    """A frame of sound shape that is still wrong: the namespace's kernel judges it."""
    pick = rng.randrange(3)
    if pick == 0:  # a flow the sender does not have: its kernel answers with a RST
        return "unknown_flow", _to_sender(sc, sport=rng.randrange(1, 40000),
                                          dport=rng.randrange(1, 40000))
    frame = bytearray(_to_sender(sc, payload=rng.randbytes(rng.randrange(1, 100))))
    if pick == 1:  # TcpInCsumErrors there
        frame[-1] ^= 1 + rng.randrange(255)
        return "bad_checksum", bytes(frame)
    frame[9] = rng.choice([1, 17, 47, 253])  # not TCP (and its checksums off)
    return "not_tcp", bytes(frame)


def _for_tunwire(rng: random.Random, pick: int, sc: Scenario) -> Hostile:
    """What a hostile nic could hand the wire: one frame per message, or lists that do
    not match the frames (refused whole, before any frame is written)."""
    if pick <= 1:
        return Hostile("unfit_frame", kind=msg.WIRE,
                       body={"frames": [_unfit_for_tun(rng, sc)]})
    if pick == 2:
        what, frame = _fit_for_tun(rng, sc)
        return Hostile(what, kind=msg.WIRE, body={"frames": [frame]})
    frames = [_to_sender(sc)] * rng.randrange(1, 4)
    if rng.random() < 0.5:
        return Hostile("bad_ids", kind=msg.WIRE,
                       body={"frames": frames, "ids": _ids(rng, len(frames))})
    gso = rng.choice([[1] * (len(frames) + 1), [-1] * len(frames)])
    return Hostile("bad_gso", kind=msg.WIRE, body={"frames": frames, "gso": gso})


def hostile_messages(role: str, real: str, sc: Scenario, forged: list[str],
                     n: int = MESSAGES) -> list[Hostile]:
    """``n`` hostile messages for ``role``, the same ones for the same arguments."""
    rng = random.Random(f"hostile:{role}")
    out = [Hostile("oversized", (b"\x00" * (DEFAULT_MAX_MESSAGE_BYTES + 1),))] * OVERSIZED
    while len(out) < n:
        r = rng.random()
        if r >= FROM_LAUNCHER:
            out.append(_raw(rng, forged))
        elif r < FROM_LAUNCHER / 4:
            out.append(_common(rng, real))
        else:
            out.append(_for_role(rng, role, sc))
    rng.shuffle(out)
    return out


def test_generation_is_seeded() -> None:
    sc = scenario()
    a = hostile_messages("stack", "stack", sc, ["nic"], 500)
    assert a == hostile_messages("stack", "stack", sc, ["nic"], 500)
    assert a != hostile_messages("nic", "nic", sc, ["nic"], 500)
    assert len({h.what for h in a}) > 15


# --- against real actors -----------------------------------------------------------------------


def _dig(d: dict[str, Any], path: tuple[str, ...]) -> int:
    for key in path:
        d = d.get(key) or {}
    return int(d) if isinstance(d, int) else 0


def counted(role: str, stats: dict[str, Any]) -> int:
    rejected = sum((stats["transport"].get("rejected_messages") or {}).values())
    return rejected + sum(_dig(stats["role"], p) for p in ROLE_COUNTERS[role])


def stats_of(launcher: Launcher, name: str) -> dict[str, Any]:
    stats = launcher.request_stats([name], timeout_s=WAIT_S)
    assert name in stats, f"{name} did not answer a stats request"
    return stats[name]


def intruder(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, INTRUDER.encode())
    sock.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))  # a wedged actor fails, never hangs
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


@functools.cache
def _why_no_tun() -> str | None:
    """Why the tunwire cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace and a TUN device"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    return None


@contextlib.contextmanager
def tunwire_netns() -> Iterator[str]:
    """A namespace of the test's own (its guard removes it, and what runs in it, however
    the test ends), with IPv6 off: the device carries no neighbour discovery, only what
    the test and the namespace's answers to it put there."""
    why = _why_no_tun()
    if why is not None:
        pytest.skip(f"tunwire: {why}")
    with run_netns() as netns:
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"],
                       check=True, capture_output=True, timeout=10)
        yield netns


@pytest.fixture
def launched(run_dir: Path) -> Iterator[Callable[[str], Launcher]]:
    """Starts one role's topology; stops it (every child, and the tunwire's namespace)
    whatever happens."""
    with contextlib.ExitStack() as cleanup:

        def start(real: str) -> Launcher:
            netns = cleanup.enter_context(tunwire_netns()) if real == TUNWIRE else None
            launcher = Launcher(topology(scenario(), real, netns), run_dir / real,
                                ready_timeout_s=60)
            cleanup.callback(launcher.__exit__, None, None, None)
            return launcher.__enter__()

        yield start


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(150)
@pytest.mark.parametrize("role", list(ROLES))
def test_role_counts_every_hostile_message_and_keeps_serving(
        role: str, launched: Callable[[str], Launcher]) -> None:
    real = ROLES[role]
    sc = scenario()
    launcher = launched(real)
    forged = [LAUNCHER, real, *(n for n in launcher.names if n != real)]
    batch = hostile_messages(role, real, sc, forged)
    before = stats_of(launcher, real)
    base = counted(role, before)
    handled_before = before["runtime"]["messages_handled"]
    ctx = zmq.Context()
    sock = intruder(ctx, launcher.endpoints[real].connect)
    try:
        for i, h in enumerate(batch):
            if h.kind:
                assert h.body is not None
                launcher.send(real, h.kind, h.body)
            else:
                try:
                    sock.send_multipart(list(h.raw))
                except zmq.Again:
                    pytest.fail(f"{real} stopped reading after {i} messages (exited: "
                                f"{launcher.exited()}): {launcher.output_tail(real)}")
            if i % 500 == 0:
                launcher.poll(0)  # take in what the actor answers, so it never blocks
                assert not launcher.exited(), f"{real} exited: {launcher.output_tail(real)}"
        # The intruder's frames travel on their own connection: wait until all are in.
        deadline = time.monotonic() + WAIT_S
        while True:
            stats = stats_of(launcher, real)
            if counted(role, stats) - base >= len(batch) or time.monotonic() > deadline:
                break
    finally:
        sock.close(linger=0)
        ctx.term()
    assert not launcher.exited(), f"{real} exited: {launcher.output_tail(real)}"
    reasons = stats["transport"]["rejected_messages"]
    n = counted(role, stats) - base
    print(f"{role}: sent {len(batch)}, counted {n}, crashes 0, rejected {reasons}")
    assert n == len(batch), (role, reasons, {p: _dig(stats["role"], p)
                                             for p in ROLE_COUNTERS[role]})
    # Nothing hostile was taken as work: handled messages are the role counters' ones.
    handled = stats["runtime"]["messages_handled"] - handled_before
    assert handled == sum(_dig(stats["role"], p) - _dig(before["role"], p)
                          for p in ROLE_COUNTERS[role])
    for reason in ("oversized", "not_msgpack", "truncated", "unknown_kind", "bad_frames",
                   "sender_mismatch", "unknown_sender", "rejected_by_handler"):
        assert reasons.get(reason), (reason, reasons)
    if role == "tunwire":  # both ways a frame is counted were taken
        assert _dig(stats["role"], ("bad_frames",)) > _dig(before["role"], ("bad_frames",))
        assert _dig(stats["role"], ("frames_out",)) > _dig(before["role"], ("frames_out",))
    # And it still answers: a stats request, with the same counts.
    again = stats_of(launcher, real)
    assert counted(role, again) - base == len(batch)
    assert launcher.exit_codes().get(real) is None


# --- the tunwire's TUN device ------------------------------------------------------------------

# Frames injected at a time: below the device's queue (txqueuelen 500), which drops what
# the tunwire has not read yet.
TUN_CHUNK = 200

# Runs in the namespace: sends each frame it is given onto the TUN device through a packet
# socket (as if the namespace's kernel transmitted it: the tunwire reads it from its fd)
# and answers with how many went. Input: a 4-byte count, then each frame length-prefixed.
_INJECTOR = """
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((sys.argv[1], 0))
inp, out = sys.stdin.buffer, sys.stdout
while head := inp.read(4):
    sent = 0
    for _ in range(struct.unpack("!I", head)[0]):
        frame = inp.read(struct.unpack("!I", inp.read(4))[0])
        try:
            s.send(frame)
            sent += 1
        except OSError as exc:
            print("refused", len(frame), exc, file=sys.stderr, flush=True)
    print(sent, flush=True)
"""


def hostile_tun_frames(sc: Scenario, n: int = MESSAGES) -> list[bytes]:
    """``n`` frames a hostile namespace could put on the device (any bytes from 1 to the
    MTU: a packet socket takes them), the same ones every time."""
    rng = random.Random("hostile:tun")
    src, sport, dst, dport = sc.four_tuple("f1")
    sound = encode(Segment(src, sport, dst, dport, seq=1, flags=TcpFlags.ACK, payload=b"z"))
    out: list[bytes] = []
    while len(out) < n:
        pick = rng.randrange(7)
        frame: bytes | bytearray
        if pick == 0:
            frame = rng.randbytes(rng.randrange(1, TUN_MTU + 1))      # anything at all
        elif pick == 1:
            frame = sound[:rng.randrange(1, len(sound))]              # cut short
        elif pick == 2:  # IPv4, protocol TCP, and the rest noise (a header that lies)
            frame = bytearray(rng.randbytes(rng.randrange(20, 120)))
            frame[0], frame[9] = 0x40 | rng.randrange(16), 6
        elif pick == 3:  # a sound IPv4 header around a broken TCP header or checksum
            frame = bytearray(sound + rng.randbytes(rng.randrange(0, 40)))
            frame[20 + rng.randrange(len(frame) - 20)] = rng.randrange(256)
        elif pick == 4:
            frame = bytearray(sound)
            frame[9] = rng.choice([1, 17, 41, 0, 255])                # IPv4, not TCP
        elif pick == 5:
            frame = bytes([0x60 | rng.randrange(16)]) + rng.randbytes(rng.randrange(39, 200))
        else:
            frame = sound                                             # of a flow nobody has
        out.append(bytes(frame))
    return out


def _tun_read(stats: dict[str, Any]) -> tuple[int, int]:
    role = stats["role"]
    return int(role["frames_in"]), int(role["ignored"])


@pytest.mark.integration
@pytest.mark.chaos
@pytest.mark.timeout(240)
def test_tunwire_counts_every_hostile_frame_from_its_tun_device_and_keeps_serving(
        launched: Callable[[str], Launcher]) -> None:
    launcher = launched(TUNWIRE)
    netns = launcher.topology["actors"][TUNWIRE]["config"]["tunwire"]["netns"]
    frames = hostile_tun_frames(scenario())
    in0, ignored0 = _tun_read(stats_of(launcher, TUNWIRE))
    injector = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _INJECTOR, TUN_DEVICE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert injector.stdin is not None and injector.stdout is not None
    sent = 0
    try:
        for i in range(0, len(frames), TUN_CHUNK):
            chunk = frames[i:i + TUN_CHUNK]
            injector.stdin.write(struct.pack("!I", len(chunk)) + b"".join(
                struct.pack("!I", len(f)) + f for f in chunk))
            injector.stdin.flush()
            ready, _, _ = select.select([injector.stdout], [], [], WAIT_S)
            assert ready, f"the injector did not answer (exit {injector.poll()})"
            sent += int(injector.stdout.readline())
            # Before the next chunk, the tunwire has read this one (a full device queue
            # would drop frames before they reach it, uncounted by anyone here).
            deadline = time.monotonic() + WAIT_S
            while True:
                frames_in, ignored = _tun_read(stats_of(launcher, TUNWIRE))
                if frames_in - in0 + ignored - ignored0 >= sent:
                    break
                assert not launcher.exited(), launcher.output_tail(TUNWIRE)
                assert time.monotonic() < deadline, (sent, frames_in - in0, ignored - ignored0)
    finally:
        injector.stdin.close()
        try:
            injector.wait(timeout=10)
        except subprocess.TimeoutExpired:
            injector.kill()
            injector.wait()
        assert injector.stderr is not None
        refused = injector.stderr.read().decode(errors="replace")
        injector.stdout.close()
        injector.stderr.close()
    assert sent == len(frames), refused[-500:]
    # Every frame counted once, the way frame_for_nic says: to the nic, or ignored.
    frames_in, ignored = _tun_read(stats_of(launcher, TUNWIRE))
    to_nic = sum(frame_for_nic(f) for f in frames)
    print(f"tun: injected {sent}, to the nic {frames_in - in0}, ignored {ignored - ignored0}")
    assert (frames_in - in0, ignored - ignored0) == (to_nic, len(frames) - to_nic)
    assert 0 < to_nic < len(frames)
    # And it still answers, and runs.
    assert _tun_read(stats_of(launcher, TUNWIRE)) == (frames_in, ignored)
    assert not launcher.exited() and launcher.exit_codes().get(TUNWIRE) is None


# --- the tunwire's frame checks under hypothesis -------------------------------------------------


def _frame_checks_hold(frame: bytes) -> None:
    for_nic, problem = frame_for_nic(frame), frame_problem(frame)
    assert isinstance(for_nic, bool)
    if problem is None:  # what is written is an IPv4 packet exactly as long as it says
        assert frame[0] >> 4 == 4 and 20 <= (frame[0] & 0xF) * 4 <= len(frame)
        assert struct.unpack_from("!H", frame, 2)[0] == len(frame)
    else:
        assert isinstance(problem, str) and problem
    if for_nic:  # what goes to the nic meets the wire decoder: a Segment or its typed error
        _decodes_or_malformed(frame)


# --- the wire decoder under hypothesis -----------------------------------------------------------

_SEG = Segment("10.0.0.1", 40001, "10.0.0.2", 5001, seq=7, ack=9, flags=TcpFlags.ACK,
               window=512, payload=b"payload",
               options=TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 2)))
VALID_FRAMES = [encode(_SEG), encode(replace(_SEG, options=TcpOptions(timestamp=(3, 4)))),
                encode(replace(_SEG, payload=b"", flags=TcpFlags.SYN))]


def _fix_ip_checksum(frame: bytearray) -> bytes:
    """Make the IPv4 header checksum right again, so a mutation reaches the TCP checks."""
    if len(frame) >= 20 and 20 <= (frame[0] & 0xF) * 4 <= len(frame):
        hlen = (frame[0] & 0xF) * 4
        frame[10:12] = b"\0\0"
        total = sum(struct.unpack(f"!{hlen // 2}H", frame[:hlen]))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        frame[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(frame)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 6))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        frame = frame[:draw(st.integers(0, len(frame)))]
    if draw(st.booleans()):
        frame += draw(st.binary(max_size=40))
    return _fix_ip_checksum(frame) if draw(st.booleans()) else bytes(frame)


def _decodes_or_malformed(frame: bytes) -> None:
    for verify in (True, False):
        try:
            seg = decode(frame, verify_checksum=verify)
        except MalformedPacket:
            continue
        assert isinstance(seg, Segment)
    try:
        pkt = decode_ipv4(memoryview(frame))
    except MalformedPacket:
        return
    try:
        seg = decode_tcp(pkt, verify_checksum=False)
    except MalformedPacket:
        return
    assert seg.header_len >= 20


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120))
def test_wire_decoder_raises_only_malformed_packet_on_arbitrary_bytes(frame: bytes) -> None:
    _decodes_or_malformed(frame)
    parse_options(frame[:40])  # never raises: bad options stop parsing, as in Linux
    for linktype in LINKTYPES:
        inner = link_ipv4(linktype, frame)
        assert inner is None or inner[0] >> 4 == 4


@settings(max_examples=2000, deadline=None)
@given(mutated_frames())
def test_wire_decoder_raises_only_malformed_packet_on_mutated_frames(frame: bytes) -> None:
    _decodes_or_malformed(frame)
    if len(frame) > 20:
        parse_options(frame[40:60])


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120) | mutated_frames())
def test_tunwire_frame_checks_never_raise(frame: bytes) -> None:
    _frame_checks_hold(frame)


@settings(max_examples=500, deadline=None)
@given(segments(default_options() | explicit_options()))
def test_tunwire_writes_every_frame_the_stack_builds(seg: Segment) -> None:
    frame = encode(seg)
    assert frame_problem(frame) is None
    assert frame_for_nic(frame)


def test_tunwire_refuses_each_kind_of_unfit_frame() -> None:
    sc = scenario()
    rng = random.Random("unfit")
    unfit = [_unfit_for_tun(rng, sc) for _ in range(400)]
    assert all(frame_problem(f) is not None for f in unfit)
    assert frame_problem(_to_sender(sc)) is None
    for _ in range(100):
        assert frame_problem(_fit_for_tun(rng, sc)[1]) is None


_CAPTURE_DIR = tempfile.TemporaryDirectory(prefix="rxhostile")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=24), st.binary(max_size=200),
       st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1"]))
def test_capture_reader_raises_only_pcap_error(header: bytes, body: bytes,
                                               magic: bytes) -> None:
    path = Path(_CAPTURE_DIR.name) / "c.pcap"
    for data in (header + body, magic + header[4:] + body):
        path.write_bytes(data)
        try:
            linktype, records = read_capture(path)
        except PcapError:
            continue
        assert linktype in LINKTYPES
        for rec in records:
            link_ipv4(linktype, rec.data)
