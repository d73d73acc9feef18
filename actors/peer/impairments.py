"""Seeded wire impairments between the peer and the NIC (like netem on the path).

:class:`WireImpairments` takes an encoded frame and the current time and returns the
copies to deliver and when: loss, duplication, reordering (a frame held back by
``reorder_gap_ns`` so later frames overtake it), delay with jitter, and corruption of a
byte after the checksum was computed, so the receiver's checksum check catches it.
Random decisions come from an internal ``random.Random(seed)``; every frame consumes
the same number of draws whatever the configuration, so two runs with one seed make the
same decisions, and changing one rate does not reshuffle the others.

:class:`ScriptedEvent` forces a given case deterministically (drop, duplicate, corrupt,
delay or hold back the k-th data frame of a flow), so a scenario can reach one receive
path on purpose. The same class serves the reverse (ACK) path: make a second instance.

:class:`WireLink` is one direction of the wire: it runs each frame through its
impairments and keeps the frames whose delivery time has not come, so its user only
ever gets what is due now and asks :meth:`WireLink.next_deadline` when to come back.
"""

from __future__ import annotations

import heapq
import itertools
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

FlowKey = tuple[str, int, str, int]
Delivery = tuple[int, bytes]
EventAction = Literal["drop", "duplicate", "corrupt", "delay", "hold"]

_ETH_HEADER_LEN = 14
_ETHERTYPE_IPV4 = b"\x08\x00"
_IPPROTO_TCP = 6


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What the impairments need to know about a frame: its flow and where its payload is."""

    flow: FlowKey | None
    payload_start: int  # index in the frame of the first TCP payload byte
    payload_end: int  # index one past the last byte of the IP datagram's TCP payload

    @property
    def payload_len(self) -> int:
        return self.payload_end - self.payload_start


def parse_frame(frame: bytes) -> FrameInfo:
    """Find the 4-tuple and the TCP payload of an IPv4/TCP frame (bare or behind Ethernet).

    Anything unparseable gets ``flow=None`` and an empty payload at the frame's end.
    """
    end = len(frame)
    unknown = FrameInfo(None, end, end)
    if end >= 20 and frame[0] >> 4 == 4:
        ip = 0
    elif end >= _ETH_HEADER_LEN + 20 and frame[12:14] == _ETHERTYPE_IPV4:
        ip = _ETH_HEADER_LEN
    else:
        return unknown
    ihl = (frame[ip] & 0x0F) * 4
    total_len = struct.unpack_from("!H", frame, ip + 2)[0]
    if ihl < 20 or frame[ip + 9] != _IPPROTO_TCP or ip + total_len > end:
        return unknown
    tcp = ip + ihl
    if tcp + 20 > ip + total_len:
        return unknown
    sport, dport = struct.unpack_from("!HH", frame, tcp)
    doff = (frame[tcp + 12] >> 4) * 4
    datagram_end = ip + total_len
    payload_start = min(tcp + doff, datagram_end)
    src = socket.inet_ntoa(frame[ip + 12:ip + 16])
    dst = socket.inet_ntoa(frame[ip + 16:ip + 20])
    return FrameInfo((src, sport, dst, dport), payload_start, datagram_end)


@dataclass(frozen=True, slots=True)
class ScriptedEvent:
    """A deterministic impairment applied to the ``nth`` matching frame of a flow.

    ``match="data"`` counts frames carrying TCP payload (retransmissions included, in
    the order they reach the wire); ``"any"`` counts every frame (use it on the ACK path).
    ``flow=None`` applies the event to every flow, each flow counted separately.
    ``hold`` keeps the frame back until ``hold_segments`` later matching frames of the
    same flow have passed (or ``max_hold_ns`` elapsed, when given), then delivers it
    right after the frame that released it.
    """

    action: EventAction
    nth: int
    flow: FlowKey | None = None
    match: Literal["data", "any"] = "data"
    hold_segments: int = 0
    delay_ns: int = 0
    max_hold_ns: int | None = None

    def __post_init__(self) -> None:
        if self.nth < 1:
            raise ValueError("ScriptedEvent.nth counts from 1")
        if self.action not in ("drop", "duplicate", "corrupt", "delay", "hold"):
            raise ValueError(f"unknown scripted action {self.action!r}")
        if self.match not in ("data", "any"):
            raise ValueError(f"unknown match {self.match!r}")


# The counters that say what the wire did to a frame (see WireImpairments.decisions).
_DECISIONS = ("lost", "scripted_dropped", "duplicated", "scripted_duplicated", "corrupted",
              "scripted_corrupted", "reordered", "scripted_delayed", "held")


@dataclass(slots=True)
class _Held:
    flow: FlowKey | None
    match: str
    remaining: int
    release_at: int | None
    earliest: int  # the deliver time it would have had, had it not been held
    frames: list[bytes] = field(default_factory=list)


@dataclass
class WireImpairments:
    """Loss, reordering, duplication, delay/jitter and corruption on one direction of the wire.

    Rates are probabilities per frame. Jitter is uniform in ``[-jitter_ns, +jitter_ns]``
    around ``delay_ns`` (never before ``now``), and like netem it can reorder frames.
    A reordered frame is delivered ``reorder_gap_ns`` later than it would have been.
    Callers must deliver frames with equal times in the order they were returned.
    """

    loss: float = 0.0
    reorder: float = 0.0
    reorder_gap_ns: int = 1_000_000
    duplicate: float = 0.0
    delay_ns: int = 0
    jitter_ns: int = 0
    corrupt: float = 0.0
    seed: int = 0
    events: tuple[ScriptedEvent, ...] = ()

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        for name in ("reorder_gap_ns", "delay_ns", "jitter_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        self.events = tuple(self.events)
        self._rng = random.Random(self.seed)
        self._counts: Counter[str] = Counter()
        self._seen: dict[tuple[FlowKey | None, str], int] = {}
        self._fired: set[tuple[int, FlowKey | None]] = set()
        self._held: list[_Held] = []
        # (time, frame, what happened) of each frame not passed through untouched, for a
        # trace to show; None (the default) records nothing.
        self.decisions: list[tuple[int, bytes, tuple[str, ...]]] | None = None

    @classmethod
    def ack_path(cls, loss: float = 0.0, delay_ns: int = 0, jitter_ns: int = 0,
                 seed: int = 0, events: tuple[ScriptedEvent, ...] = ()) -> WireImpairments:
        """An instance for the reverse path, where losing ACKs is what matters."""
        return cls(loss=loss, delay_ns=delay_ns, jitter_ns=jitter_ns, seed=seed, events=events)

    @property
    def active(self) -> bool:
        """False when every frame passes straight through (a fast path for callers)."""
        return bool(self.loss or self.reorder or self.duplicate or self.delay_ns
                    or self.jitter_ns or self.corrupt or self.events or self._held)

    def apply(self, frame: bytes, now: int) -> list[Delivery]:
        """Impair one frame sent at ``now``: returns ``(deliver_at_ns, frame)`` pairs."""
        rng = self._rng
        # A fixed number of draws per frame keeps decisions aligned across configurations.
        u_loss, u_dup, u_reorder, u_corrupt, u_corrupt_dup, u_jitter, u_pos = (
            rng.random() for _ in range(7))
        mask = rng.randrange(1, 256)
        counts = self._counts
        counts["frames_in"] += 1
        before = [counts[k] for k in _DECISIONS] if self.decisions is not None else None

        info = parse_frame(frame)
        if info.flow is None:
            self._counts["unparsed"] += 1
        kinds = ("data", "any") if info.payload_len > 0 else ("any",)
        ordinals = {}
        for kind in kinds:
            key = (info.flow, kind)
            ordinals[kind] = self._seen.get(key, 0) + 1
            self._seen[key] = ordinals[kind]
        actions = self._scripted_actions(info.flow, ordinals)

        # Older held frames of this flow count this frame as one that passed them.
        released = self._count_down_held(info.flow, kinds)

        out: list[Delivery] = []
        if "drop" in actions:
            self._counts["scripted_dropped"] += 1
        elif u_loss < self.loss:
            self._counts["lost"] += 1
        else:
            out = self._deliveries(frame, info, now, actions, u_dup, u_reorder, u_corrupt,
                                   u_corrupt_dup, u_jitter, u_pos, mask)
        if "hold" in actions and out:
            event = actions["hold"]
            self._held.append(_Held(
                flow=info.flow, match=event.match, remaining=event.hold_segments,
                release_at=None if event.max_hold_ns is None else now + event.max_hold_ns,
                earliest=out[0][0], frames=[f for _, f in out]))
            self._counts["held"] += 1
            out = []
        if released:
            after = max((t for t, _ in out), default=now + self.delay_ns)
            for held in released:
                at = max(after, held.earliest)
                out.extend((at, f) for f in held.frames)
                self._counts["released"] += 1
        self._counts["frames_out"] += len(out)
        if before is not None and self.decisions is not None:
            what = tuple(k for k, n in zip(_DECISIONS, before, strict=True) if counts[k] > n)
            if what:
                self.decisions.append((now, frame, what))
        return out

    def next_deadline(self) -> int | None:
        """When a held frame must be released even if no later frame releases it."""
        times = [h.release_at for h in self._held if h.release_at is not None]
        return min(times) if times else None

    def on_timer(self, now: int) -> list[Delivery]:
        """Release held frames whose ``max_hold_ns`` has elapsed."""
        due = [h for h in self._held if h.release_at is not None and h.release_at <= now]
        return self._release(due, now)

    def flush(self, now: int) -> list[Delivery]:
        """Release every held frame (end of a run)."""
        return self._release(list(self._held), now)

    def stats(self) -> dict[str, int]:
        """Counts of frames seen and of every impairment applied."""
        keys = ("frames_in", "frames_out", "lost", "duplicated", "reordered", "delayed",
                "corrupted", "scripted_dropped", "scripted_duplicated", "scripted_corrupted",
                "scripted_delayed", "held", "released", "unparsed")
        out = {k: self._counts.get(k, 0) for k in keys}
        out["holding"] = sum(len(h.frames) for h in self._held)
        return out

    # -- internals -----------------------------------------------------------------------

    def _scripted_actions(self, flow: FlowKey | None,
                          ordinals: dict[str, int]) -> dict[str, ScriptedEvent]:
        actions: dict[str, ScriptedEvent] = {}
        for index, event in enumerate(self.events):
            if event.flow is not None and event.flow != flow:
                continue
            if ordinals.get(event.match) != event.nth:
                continue
            fired_key = (index, flow)
            if fired_key in self._fired:
                continue
            self._fired.add(fired_key)
            actions.setdefault(event.action, event)
        return actions

    def _deliveries(self, frame: bytes, info: FrameInfo, now: int,
                    actions: dict[str, ScriptedEvent], u_dup: float, u_reorder: float,
                    u_corrupt: float, u_corrupt_dup: float, u_jitter: float, u_pos: float,
                    mask: int) -> list[Delivery]:
        copies = [frame]
        if "duplicate" in actions:
            self._counts["scripted_duplicated"] += 1
            copies.append(frame)
        elif u_dup < self.duplicate:
            self._counts["duplicated"] += 1
            copies.append(frame)

        corrupted = []
        for i, copy in enumerate(copies):
            scripted = i == 0 and "corrupt" in actions
            if scripted or (u_corrupt if i == 0 else u_corrupt_dup) < self.corrupt:
                copy = _flip_byte(copy, info, u_pos, mask)
                self._counts["scripted_corrupted" if scripted else "corrupted"] += 1
            corrupted.append(copy)

        delay = self.delay_ns
        if self.jitter_ns:
            delay += round((2.0 * u_jitter - 1.0) * self.jitter_ns)
        if u_reorder < self.reorder:
            self._counts["reordered"] += 1
            delay += self.reorder_gap_ns
        if "delay" in actions:
            self._counts["scripted_delayed"] += 1
            delay += actions["delay"].delay_ns
        delay = max(delay, 0)
        if delay:
            self._counts["delayed"] += 1
        return [(now + delay, c) for c in corrupted]

    def _count_down_held(self, flow: FlowKey | None, kinds: tuple[str, ...]) -> list[_Held]:
        released = []
        for held in self._held:
            if held.flow == flow and held.match in kinds:
                held.remaining -= 1
                if held.remaining <= 0:
                    released.append(held)
        for held in released:
            self._held.remove(held)
        return released

    def _release(self, due: list[_Held], now: int) -> list[Delivery]:
        out: list[Delivery] = []
        for held in due:
            self._held.remove(held)
            out.extend((max(now, held.earliest), f) for f in held.frames)
            self._counts["released"] += 1
        self._counts["frames_out"] += len(out)
        return out


def _flip_byte(frame: bytes, info: FrameInfo, u_pos: float, mask: int) -> bytes:
    """XOR one byte with a non-zero mask: in the TCP payload when there is one, else the
    last byte of the datagram. A single changed byte always breaks the Internet checksum."""
    if info.payload_len > 0:
        pos = info.payload_start + min(int(u_pos * info.payload_len), info.payload_len - 1)
    else:
        pos = (info.payload_end if info.flow is not None else len(frame)) - 1
    if pos < 0:
        return frame
    data = bytearray(frame)
    data[pos] ^= mask
    return bytes(data)


class WireLink:
    """One direction of the wire: impairments, then the frames in flight, delivered in
    (time, send order). The only place a frame waits for its delivery time."""

    __slots__ = ("_due", "_order", "delayed", "delivered", "impairments")

    def __init__(self, impairments: WireImpairments | None = None) -> None:
        self.impairments = impairments if impairments is not None else WireImpairments()
        self._due: list[tuple[int, int, bytes]] = []  # (deliver at, order, frame) heap
        self._order = itertools.count()
        self.delivered = 0  # frames the impairments let through (now or later)
        self.delayed = 0  # of those, frames that had to wait

    def send(self, frame: bytes, now: int, out: list[bytes]) -> None:
        """Put ``frame`` on the wire at ``now``; append to ``out`` every frame due now."""
        imp = self.impairments
        if not imp.active and not self._due:
            self.delivered += 1
            out.append(frame)
            return
        self._queue(imp.apply(frame, now), now)
        self._pop_due(now, out)

    def due(self, now: int, out: list[bytes]) -> None:
        """Append to ``out`` the frames whose time has come (held frames released too)."""
        if self.impairments.active:
            self._queue(self.impairments.on_timer(now), now)
        self._pop_due(now, out)

    def next_deadline(self) -> int | None:
        held = self.impairments.next_deadline()
        if self._due and (held is None or self._due[0][0] < held):
            return self._due[0][0]
        return held

    def flush(self, now: int) -> list[bytes]:
        """Everything still on this wire, held frames included, in delivery order."""
        self._queue(self.impairments.flush(now), now)
        out = [f for _, _, f in sorted(self._due)]
        self._due.clear()
        return out

    def __len__(self) -> int:
        return len(self._due)

    def _queue(self, deliveries: list[Delivery], now: int) -> None:
        due = self._due
        order = self._order
        for at, frame in deliveries:
            if at > now:
                self.delayed += 1
            heapq.heappush(due, (at, next(order), frame))
        self.delivered += len(deliveries)

    def _pop_due(self, now: int, out: list[bytes]) -> None:
        due = self._due
        while due and due[0][0] <= now:
            out.append(heapq.heappop(due)[2])
