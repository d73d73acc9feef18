"""Replaying a capture: which frames go to the NIC, when, and how they are rewritten.

Pure: a pcap's records in, a :class:`ReplayPlan` out; :class:`FlowReplay` rewrites one
flow's segments once the emulated stack's SYN-ACK is known.

**Connections and flows.** A connection is a client 4-tuple whose SYN (without ACK) is
in the capture and which sends at least one data byte towards the server. Connections
map onto the scenario's flows: first every connection already aimed at a flow (to
``stack.address:listen_port`` from that flow's ``sport``), then the others in the order
of their first SYN onto the remaining flows in scenario order. Segments of other
4-tuples (connections with no SYN in the capture, beyond the scenario's flows, or with
no data) are counted as ``other_tuple``; the capture's server-to-client segments of a
mapped connection as ``outbound`` (the emulated stack makes its own). Neither is sent.

**Rewriting.** The emulated stack picks its own ISN and TSval clock, so the captured
client's ACK numbers and timestamp echoes refer to the original server's. Once the
stack's SYN-ACK is seen, each inbound segment's ``ack`` is moved by (stack ISN -
original ISN), never beyond what the stack has sent (an ACK of data or a FIN the
original server sent and this one did not becomes an ACK of what it did send), and its
TSecr by (stack SYN-ACK TSval - original SYN-ACK TSval). The original ISN and TSval are
the capture's SYN-ACK's, or, when the capture holds only the inbound direction, what the
client's first ACK acknowledges and echoes. SACK blocks stay as they are: on inbound
segments they would describe data the server sent. Addresses and ports become the
scenario's (``peer.address:sport`` -> ``stack.address:listen_port``). The IPv4 and TCP
checksums of a rewritten segment are computed afresh; one that was wrong in the capture
(corrupted on the way: the original receiver dropped it) is made wrong again, and its
bytes are not part of the flow's stream. Only when every inbound segment of a
connection has a wrong TCP checksum is it taken for a capture at the sender with
checksum offload (unfilled checksums) and all of them are sent correct.
"""

from __future__ import annotations

import bisect
import hashlib
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol.pcap import PcapRecord, link_ipv4
from protocol.seq import after, seq_add, seq_sub
from protocol.wire import (
    MalformedPacket,
    decode_ipv4,
    internet_checksum,
    tcp_checksum,
    tcp_checksum_ok,
)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_TIMESTAMP = 0, 1, 8
_IPPROTO_TCP = 6
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

Tuple4 = tuple[str, int, str, int]  # (src, sport, dst, dport)


@dataclass(frozen=True, slots=True)
class FlowTarget:
    """Where a flow's segments go in this scenario."""

    name: str
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True, slots=True)
class Parsed:
    """The header fields of a captured IPv4 TCP segment the replay needs."""

    tuple4: Tuple4
    flags: int
    seq: int
    ack: int
    payload: bytes
    tsval: int | None
    tsecr: int | None


def _ts_offset(tcp: bytes) -> int | None:
    """Offset in the TCP header of the timestamp option's TSval, if there is one."""
    hlen = (tcp[12] >> 4) * 4
    i = 20
    while i < hlen:
        kind = tcp[i]
        if kind == TCPOPT_EOL:
            return None
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= hlen or tcp[i + 1] < 2:
            return None
        if kind == TCPOPT_TIMESTAMP and tcp[i + 1] == 10 and i + 10 <= hlen:
            return i + 2
        i += tcp[i + 1]
    return None


def parse(packet: bytes) -> Parsed | str:
    """The TCP fields of an IPv4 packet, or why it is not replayed (``not_tcp``,
    ``truncated``)."""
    if len(packet) < 20:
        return "truncated"
    ihl = (packet[0] & 0xF) * 4
    total = _U16.unpack_from(packet, 2)[0]
    if packet[9] != _IPPROTO_TCP or _U16.unpack_from(packet, 6)[0] & 0x3FFF:
        return "not_tcp"  # another protocol, or a fragment (the stack does not reassemble)
    if ihl < 20 or total > len(packet) or total < ihl + 20:
        return "truncated"
    tcp = packet[ihl:total]
    hlen = (tcp[12] >> 4) * 4
    if hlen < 20 or hlen > len(tcp):
        return "truncated"
    sport, dport, seq, ack = struct.unpack_from("!HHII", tcp)
    ts = _ts_offset(tcp)
    tsval, tsecr = struct.unpack_from("!II", tcp, ts) if ts is not None else (None, None)
    src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    return Parsed((src, sport, dst, dport), tcp[13], seq, ack, tcp[hlen:], tsval, tsecr)


def checksums_ok(packet: bytes) -> bool:
    """Whether the IPv4 header and TCP checksums of ``packet`` are right."""
    try:
        return tcp_checksum_ok(decode_ipv4(packet))
    except MalformedPacket:
        return False


def rewrite(packet: bytes, target: FlowTarget, *, ack: int | None = None,
            tsecr: int | None = None, corrupt: bool = False) -> bytes:
    """``packet`` with the target's addresses and ports, ``ack`` and TSecr replaced when
    given, and both checksums computed afresh (the TCP one off by one if ``corrupt``)."""
    ihl = (packet[0] & 0xF) * 4
    total = _U16.unpack_from(packet, 2)[0]
    ip = bytearray(packet[:ihl])
    ip[12:16] = socket.inet_aton(target.src)
    ip[16:20] = socket.inet_aton(target.dst)
    ip[10:12] = b"\0\0"
    ip[10:12] = _U16.pack(internet_checksum(bytes(ip)))
    tcp = bytearray(packet[ihl:total])
    tcp[0:4] = struct.pack("!HH", target.sport, target.dport)
    if ack is not None:
        tcp[8:12] = _U32.pack(ack)
    if tsecr is not None:
        ts = _ts_offset(bytes(tcp))
        if ts is not None:
            tcp[ts + 4:ts + 8] = _U32.pack(tsecr)
    tcp[16:18] = b"\0\0"
    # Flipping the low bit changes the sum by one: never an equivalent ones'-complement value.
    tcp[16:18] = _U16.pack(tcp_checksum(target.src, target.dst, bytes(tcp)) ^ int(corrupt))
    return bytes(ip) + bytes(tcp)


class Stream:
    """A byte stream rebuilt from segments by sequence number; the first copy wins."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.covered: list[tuple[int, int]] = []  # sorted, disjoint, merged [start, end)

    def add(self, off: int, data: bytes) -> None:
        if off < 0:
            data, off = data[-off:], 0
        end = off + len(data)
        if not data:
            return
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        pos = off
        i = bisect.bisect_left(self.covered, (off, off))
        if i and self.covered[i - 1][1] > off:
            i -= 1
        for a, b in self.covered[i:]:
            if a >= end:
                break
            if a > pos:
                self.buf[pos:a] = data[pos - off:a - off]
            pos = max(pos, b)
        if pos < end:
            self.buf[pos:end] = data[pos - off:]
        self.covered.append((off, end))
        self.covered.sort()
        merged: list[tuple[int, int]] = []
        for a, b in self.covered:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.covered = merged

    def contiguous(self) -> bytes:
        """The bytes from offset 0 up to the first hole: what a reader can get."""
        if not self.covered or self.covered[0][0] != 0:
            return b""
        return bytes(self.buf[:self.covered[0][1]])


@dataclass
class FlowPlan:
    """One mapped connection: what to send (due ns after the replay starts, packet)."""

    target: FlowTarget
    capture_tuple: Tuple4
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    corrupt: set[int] = field(default_factory=set)  # frames sent with a wrong checksum
    orig_iss: int | None = None    # the original server's ISN
    orig_tsval: int | None = None  # the TSval of its SYN-ACK
    stream: bytes = b""            # the client's bytes, up to the first hole
    holes: int = 0                 # gaps in the captured stream (the replay stops at the first)
    fin: bool = False              # the capture's stream ends in a FIN right after it

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.stream).hexdigest()


@dataclass
class ReplayPlan:
    flows: list[FlowPlan]
    counts: dict[str, int]
    connections: int  # connections found in the capture (mapped or not)


def plan(linktype: int, records: Sequence[PcapRecord],
         targets: Sequence[FlowTarget]) -> ReplayPlan:
    """Map the capture's connections onto ``targets`` and schedule their inbound frames."""
    counts = {"frames": len(records), "not_ipv4": 0, "not_tcp": 0, "truncated": 0,
              "other_tuple": 0, "outbound": 0, "inbound": 0, "bad_checksum": 0,
              "offloaded_flows": 0}
    parsed: list[tuple[int, bytes, Parsed]] = []
    for r in records:
        packet = link_ipv4(linktype, r.data)
        if packet is None:
            counts["not_ipv4"] += 1
            continue
        p = parse(packet) if not r.truncated else "truncated"
        if isinstance(p, str):
            counts[p] += 1
            continue
        parsed.append((r.ts_ns, packet, p))
    # Connections: client tuples with a SYN, in order of first SYN, that carry data.
    syn_order: list[Tuple4] = []
    has_data: set[Tuple4] = set()
    for _, _, p in parsed:
        if p.flags & SYN and not p.flags & ACK and p.tuple4 not in syn_order:
            syn_order.append(p.tuple4)
        elif p.payload:
            has_data.add(p.tuple4)
    conns = [t for t in syn_order if t in has_data]
    mapping: dict[Tuple4, FlowTarget] = {}
    free = list(targets)
    for t in conns:
        exact = [f for f in free if (t[2], t[3], t[1]) == (f.dst, f.dport, f.sport)]
        if exact:
            mapping[t] = exact[0]
            free.remove(exact[0])
    for t in conns:
        if t not in mapping and free:
            mapping[t] = free.pop(0)
    order = [f for f in targets if f in mapping.values()]
    plans = {t: FlowPlan(f, t) for t, f in mapping.items()}
    reverse = {(t[2], t[3], t[0], t[1]): t for t in mapping}
    streams = {t: Stream() for t in mapping}
    isn: dict[Tuple4, int] = {}
    fin_at: dict[Tuple4, int] = {}
    data: dict[Tuple4, list[tuple[int, Parsed, bool]]] = {t: [] for t in mapping}
    t0: int | None = None
    for ts, packet, p in parsed:
        fp = plans.get(p.tuple4)
        if fp is None:
            back = reverse.get(p.tuple4)
            if back is None:
                counts["other_tuple"] += 1
                continue
            counts["outbound"] += 1
            if p.flags & SYN and p.flags & ACK and plans[back].orig_iss is None:
                plans[back].orig_iss, plans[back].orig_tsval = p.seq, p.tsval
            continue
        is_syn = bool(p.flags & SYN and not p.flags & ACK)
        if p.tuple4 not in isn and not is_syn:
            counts["other_tuple"] += 1  # before its SYN: an earlier use of the same 4-tuple
            continue
        counts["inbound"] += 1
        t0 = ts if t0 is None else t0
        ok = checksums_ok(packet)
        if not ok:
            fp.corrupt.add(len(fp.frames))
        fp.frames.append((max(0, ts - t0), packet))
        if is_syn:
            isn.setdefault(p.tuple4, p.seq)
            continue
        if fp.orig_iss is None and p.flags & ACK:
            fp.orig_iss, fp.orig_tsval = (p.ack - 1) & 0xFFFFFFFF, p.tsecr
        off = seq_sub(p.seq, seq_add(isn[p.tuple4], 1))
        data[p.tuple4].append((off, p, ok))
    for t, fp in plans.items():
        offloaded = len(fp.corrupt) == len(fp.frames)
        if offloaded:
            fp.corrupt.clear()
            counts["offloaded_flows"] += 1
        counts["bad_checksum"] += len(fp.corrupt)
        for off, q, ok in data[t]:
            if ok or offloaded:
                streams[t].add(off, q.payload)
                if q.flags & FIN:
                    fin_at.setdefault(t, off + len(q.payload))
        s = streams[t]
        fp.stream = s.contiguous()
        fp.holes = len(s.covered) - (1 if s.covered and s.covered[0][0] == 0 else 0)
        fp.fin = fin_at.get(t) == len(fp.stream)
    return ReplayPlan([plans[next(t for t in mapping if mapping[t] is f)] for f in order],
                      counts, len(conns))


class FlowReplay:
    """One flow during the replay: the learned offsets and the rewriting."""

    def __init__(self, fp: FlowPlan) -> None:
        self.plan = fp
        self.target = fp.target
        self.stack_iss: int | None = None
        self.ack_delta = 0
        self.ts_delta: int | None = None
        self.snd_nxt: int | None = None  # one past the highest sequence the stack sent
        self.c = {"sent": 0, "held": 0, "rewritten": 0, "ack_clamped": 0}

    @property
    def established(self) -> bool:
        return self.stack_iss is not None

    def on_stack_segment(self, flags: int, seq: int, end_seq: int, tsval: int | None) -> bool:
        """A segment the stack sent on this flow; True if it is the SYN-ACK just learned."""
        learned = False
        if flags & SYN and flags & ACK and self.stack_iss is None:
            learned = True
            self.stack_iss = seq
            orig = self.plan.orig_iss if self.plan.orig_iss is not None else seq
            self.ack_delta = seq_sub(seq, orig)
            if tsval is not None and self.plan.orig_tsval is not None:
                self.ts_delta = (tsval - self.plan.orig_tsval) & 0xFFFFFFFF
        if self.snd_nxt is None or after(end_seq, self.snd_nxt):
            self.snd_nxt = end_seq
        return learned

    def waits(self, packet: bytes) -> bool:
        """Whether ``packet`` must wait for the stack's SYN-ACK: anything but the SYN
        (a real client sends nothing else before the handshake)."""
        if self.established:
            return False
        p = parse(packet)
        return isinstance(p, Parsed) and not (p.flags & SYN and not p.flags & ACK)

    def outgoing(self, packet: bytes, corrupt: bool = False) -> bytes:
        """``packet`` as this scenario's stack must see it (see the module docstring)."""
        p = parse(packet)
        assert isinstance(p, Parsed)
        ack = tsecr = None
        if p.flags & ACK and self.established:
            ack = (p.ack + self.ack_delta) & 0xFFFFFFFF
            if self.snd_nxt is not None and after(ack, self.snd_nxt):
                ack = self.snd_nxt
                self.c["ack_clamped"] += 1
            if self.ts_delta is not None and p.tsecr:
                tsecr = (p.tsecr + self.ts_delta) & 0xFFFFFFFF
        out = rewrite(packet, self.target, ack=ack, tsecr=tsecr, corrupt=corrupt)
        self.c["sent"] += 1
        if out != packet:
            self.c["rewritten"] += 1
        return out
