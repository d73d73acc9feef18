"""The NIC as a pure state machine: RSS, RX descriptor rings with credits, IRQ coalescing/masking.

The RX rings live in host memory (the cpu actors). The NIC only knows how many
descriptors the host has posted and it has not yet filled: one *credit* per free
descriptor. A frame that finds no credit on its queue is dropped by the hardware
and counted as ``rx_missed_errors`` / ``rx_no_buffer_count``; it never reaches the
host, so it never shows in softnet_stat.

Interrupts follow MSI-X auto-masking: raising a queue's interrupt masks it in
the same step (no window between raise and mask), and only the host's unmask
(after ``napi_complete_done``) re-enables it. Frames DMA'd while masked are
*pending*; an unmask with pending frames raises again at once, as hardware does.

Coalescing follows the ethtool definitions: ``rx_usecs`` delays the interrupt
that many microseconds after the first unsignalled frame arrived, ``rx_frames``
raises as soon as that many frames are unsignalled; 0 disables a criterion.
``rx_usecs == 0`` (or ``rx_frames == 1``) means interrupt immediately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from actors.cpu.napi import Spend
from actors.profiles import US
from protocol.envelope import MalformedMessage
from protocol.messages import check_gso

# The key from Microsoft's "Verifying the RSS Hash Calculation"; drivers default to it
# (or to a random key), and its published vectors let the hash be tested exactly.
MICROSOFT_RSS_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
RSS_INDIR_SIZE = 128  # ETH_RSS_INDIR default table size used by ethtool_rxfh_indir_default

_IPPROTO_TCP = 6
_IP_MF = 0x2000
_IP_OFFSET = 0x1FFF
_VIHL_PLAIN = 0x45  # IPv4 with a 20-byte header: every frame a TCP sender writes
_TOEPLITZ_MEMO_MAX = 4096


# ----------------------------------------------------------------------------------------------
# Toeplitz hash


class Toeplitz:
    """The Toeplitz hash with a fixed key, table-driven (one XOR per input byte)."""

    __slots__ = ("_key", "_memo", "_tables")

    def __init__(self, key: bytes, max_input: int = 36) -> None:
        if len(key) < max_input + 4:
            raise ValueError(f"RSS key of {len(key)} bytes is too short for {max_input}-byte input")
        self._key = bytes(key)
        key_int = int.from_bytes(key, "big")
        key_bits = len(key) * 8
        tables: list[tuple[int, ...]] = []
        for pos in range(max_input):
            # The 32-bit key window that input bit (pos*8 + b) selects.
            windows = [
                (key_int >> (key_bits - 32 - (pos * 8 + b))) & 0xFFFFFFFF for b in range(8)
            ]
            table = []
            for value in range(256):
                acc = 0
                for b in range(8):
                    if value & (0x80 >> b):
                        acc ^= windows[b]
                table.append(acc)
            tables.append(tuple(table))
        self._tables = tuple(tables)
        # A run has a handful of 4-tuples and every frame of a flow hashes the same
        # input: remember the results (bounded: garbage frames must not grow it forever).
        self._memo: dict[bytes, int] = {}

    @property
    def key(self) -> bytes:
        return self._key

    def hash(self, data: bytes) -> int:
        memo = self._memo
        hashable = type(data) is bytes
        if hashable:
            known = memo.get(data)
            if known is not None:
                return known
        if len(data) > len(self._tables):
            raise ValueError(f"Toeplitz input of {len(data)} bytes exceeds {len(self._tables)}")
        result = 0
        for table, byte in zip(self._tables, data, strict=False):
            result ^= table[byte]
        if hashable:
            if len(memo) >= _TOEPLITZ_MEMO_MAX:
                memo.clear()
            memo[data] = result
        return result


def toeplitz_hash(key: bytes, data: bytes) -> int:
    """One-off Toeplitz hash of ``data`` under ``key`` (bit-serial reference form)."""
    key_int = int.from_bytes(key, "big")
    key_bits = len(key) * 8
    if key_bits < len(data) * 8 + 32:
        raise ValueError("RSS key too short for the input")
    result = 0
    for i, byte in enumerate(data):
        for b in range(8):
            if byte & (0x80 >> b):
                result ^= (key_int >> (key_bits - 32 - (i * 8 + b))) & 0xFFFFFFFF
    return result


def rss_input(frame: bytes) -> bytes | None:
    """The bytes the NIC hashes for an IPv4 frame, or None if it is not parsable IPv4.

    TCP (not fragmented, ports present): src ip, dst ip, src port, dst port.
    Other IPv4 (another protocol, a fragment, a truncated TCP header): src ip, dst ip,
    as NICs do with the default hash fields.
    """
    if (len(frame) >= 24 and frame[0] == _VIHL_PLAIN and frame[9] == _IPPROTO_TCP
            and not frame[6] & 0x3F and not frame[7]):
        return frame[12:24]  # unfragmented TCP behind a plain header: addresses and ports
    if len(frame) < 20 or frame[0] >> 4 != 4:
        return None
    ihl = (frame[0] & 0x0F) * 4
    if ihl < 20 or len(frame) < ihl:
        return None
    addrs = frame[12:20]
    frag = int.from_bytes(frame[6:8], "big")
    if frame[9] == _IPPROTO_TCP and not frag & (_IP_MF | _IP_OFFSET) and len(frame) >= ihl + 4:
        return addrs + frame[ihl:ihl + 4]
    return addrs


# ----------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True, slots=True)
class Dma:
    """The NIC wrote ``frame`` into a descriptor of ``queue``'s ring, owned by ``cpu``."""

    queue: int
    cpu: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class RaiseIrq:
    """The NIC raised ``queue``'s MSI-X vector (and masked it: auto-mask)."""

    queue: int
    cpu: int


@dataclass(frozen=True, slots=True)
class RxDrop:
    """The NIC dropped a frame: no descriptor was free on ``queue`` (rx_missed_errors)."""

    queue: int
    cpu: int
    length: int
    reason: str = "rx_missed_errors"


NicOutput = Dma | RaiseIrq | RxDrop


@dataclass(frozen=True, slots=True)
class DmaWrite:
    """Frames of one burst DMA'd into ``queue``'s ring, in arrival order: one message to
    ``cpu``. ``ids`` are their trace ids, when the burst had them; ``gso`` their GSO
    sizes (0: none), when the burst had any."""

    queue: int
    cpu: int
    frames: list[bytes]
    ids: list[int] | None = None
    gso: list[int] | None = None


@dataclass(frozen=True, slots=True)
class WireTx:
    """Frames the NIC puts on the wire towards the remote host (its TX)."""

    frames: list[bytes]
    ids: list[int] | None = None
    # When the stack transmitted them (its TX message's send time): the moment a real
    # device would see them leave, before this emulator's own hops.
    xmit_ns: int | None = None


# What the message-level entry points return: DMA writes before the interrupts they
# announce (one socket per cpu keeps that order), the burst's emulated cost first.
NicAction = Spend | DmaWrite | RaiseIrq | WireTx


class NicObserver(Protocol):
    """What a trace of the NIC hears (called only when one is set)."""

    def rx_burst(self, frames: int, dma_ids: list[int], missed_ids: list[int], irqs: int,
                 now: int) -> None: ...

    def rings(self, queues: Sequence[RxQueue], now: int) -> None: ...

    def tx(self, ids: list[int], now: int) -> None: ...


# ----------------------------------------------------------------------------------------------
# Per-queue state


@dataclass(slots=True)
class RxQueue:
    index: int
    cpu: int
    ring_size: int
    credits: int  # descriptors posted by the host and still free
    masked: bool = False
    pending: int = 0  # frames DMA'd since the last interrupt (not yet signalled)
    first_pending_at: int | None = None  # arrival time of the oldest unsignalled frame
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_drops: int = 0
    irqs: int = 0


class Nic:
    """A multi-queue NIC: RSS to RX queues, descriptor credits, coalesced auto-masked IRQs."""

    def __init__(
        self,
        num_queues: int,
        ring_size: int,
        rx_usecs: int = 0,
        rx_frames: int = 0,
        rss_key: bytes = MICROSOFT_RSS_KEY,
        queue_to_cpu: Sequence[int] | None = None,
        cost_per_frame_ns: int = 0,
        observer: NicObserver | None = None,
    ) -> None:
        if num_queues < 1:
            raise ValueError("a NIC needs at least one RX queue")
        if ring_size < 1:
            raise ValueError("ring_size must be at least 1")
        if rx_usecs < 0 or rx_frames < 0:
            raise ValueError("rx_usecs and rx_frames must be >= 0")
        if rx_usecs == 0 and rx_frames > 1:
            # ethtool: usecs=0 disables the time limit, so a lone frame would wait forever.
            raise ValueError("rx_frames > 1 needs rx_usecs > 0: a lone frame would never interrupt")
        if queue_to_cpu is None:
            queue_to_cpu = list(range(num_queues))
        if len(queue_to_cpu) != num_queues:
            raise ValueError("queue_to_cpu must give one cpu per queue")
        self.num_queues = num_queues
        self.ring_size = ring_size
        self.rx_usecs = rx_usecs
        self.rx_frames = rx_frames
        self._toeplitz = Toeplitz(rss_key)
        # ethtool_rxfh_indir_default: entry i -> queue i % n.
        self.indirection_table: tuple[int, ...] = tuple(
            i % num_queues for i in range(RSS_INDIR_SIZE)
        )
        self.queues: list[RxQueue] = [
            RxQueue(index=q, cpu=cpu, ring_size=ring_size, credits=ring_size)
            for q, cpu in enumerate(queue_to_cpu)
        ]
        self.rx_packets = 0
        self.rx_bytes = 0
        self.rx_missed_errors = 0
        self.rx_no_buffer_count = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        # Refills that would push a queue above its ring size (a message from a host ring
        # that was reset meanwhile); clamped and counted rather than trusted.
        self.stale_refills = 0
        self.cpu_resets = 0
        self.cost_per_frame_ns = cost_per_frame_ns  # emulated work per received frame
        self.observer = observer

    # -- RSS --------------------------------------------------------------------------------

    @property
    def rss_key(self) -> bytes:
        return self._toeplitz.key

    def rss_hash(self, frame: bytes) -> int | None:
        data = rss_input(frame)
        return None if data is None else self._toeplitz.hash(data)

    def rss_queue(self, frame: bytes) -> int:
        """The RX queue RSS picks: indirection_table[hash & 127]; unparsable frames -> 0."""
        h = self.rss_hash(frame)
        if h is None:
            return 0
        return self.indirection_table[h & (RSS_INDIR_SIZE - 1)]

    def queues_of_cpu(self, cpu: int) -> list[int]:
        return [q.index for q in self.queues if q.cpu == cpu]

    # -- RX ---------------------------------------------------------------------------------

    def rx_frame(self, frame: bytes, now: int) -> list[NicOutput]:
        """A frame arrives from the wire: drop it, or DMA it and maybe raise the IRQ."""
        q, taken, irq = self._receive(frame, now)
        if not taken:
            return [RxDrop(q.index, q.cpu, len(frame))]
        out: list[NicOutput] = [Dma(q.index, q.cpu, frame)]
        if irq is not None:
            out.append(irq)
        return out

    def _receive(self, frame: bytes, now: int) -> tuple[RxQueue, bool, RaiseIrq | None]:
        """One frame's effect on the NIC: its queue, whether a descriptor took it (else
        it was dropped, rx_missed_errors), and the interrupt it raised, if any."""
        q = self.queues[self.rss_queue(frame)]
        if q.credits <= 0:
            self.rx_missed_errors += 1
            self.rx_no_buffer_count += 1
            q.rx_drops += 1
            return q, False, None
        n = len(frame)
        q.credits -= 1
        q.rx_packets += 1
        q.rx_bytes += n
        self.rx_packets += 1
        self.rx_bytes += n
        q.pending += 1
        if q.first_pending_at is None:
            q.first_pending_at = now
        if not q.masked and self._irq_due(q, now):
            return q, True, self._raise(q)
        return q, True, None

    def rx_burst(self, frames: Sequence[bytes], now: int,
                 ids: Sequence[int] | None = None,
                 gso: Sequence[int] | None = None) -> list[NicAction]:
        """Frames arriving from the wire together: each goes through :meth:`rx_frame`;
        returns the burst's cost, then one DMA write per ring, then the interrupts.

        ``gso``: each frame's GSO size (0: none), as a tun device's writer gives it;
        it stays with its frame into the ring. A list that does not give one size per
        frame raises MalformedMessage before anything is received."""
        check_gso(gso, len(frames))
        out: list[NicAction] = []
        if self.cost_per_frame_ns and frames:
            out.append(Spend(self.cost_per_frame_ns * len(frames)))
        writes: dict[int, DmaWrite] = {}
        irqs: list[NicAction] = []
        obs = self.observer
        tagged = obs is not None and ids is not None and len(ids) == len(frames)
        missed: list[int] = []
        dma_ids: list[int] = []
        receive = self._receive
        for i, frame in enumerate(frames):
            q, taken, irq = receive(frame, now)
            if taken:
                w = writes.get(q.index)
                if w is None:
                    w = writes[q.index] = DmaWrite(q.index, q.cpu, [],
                                                   [] if tagged else None,
                                                   None if gso is None else [])
                w.frames.append(frame)
                if gso is not None:
                    assert w.gso is not None
                    w.gso.append(gso[i])
                if tagged:
                    assert ids is not None and w.ids is not None
                    w.ids.append(ids[i])
                    dma_ids.append(ids[i])
                if irq is not None:
                    irqs.append(irq)
            elif tagged:
                assert ids is not None
                missed.append(ids[i])
        if gso is not None:
            # A ring that got only plain frames is told nothing about GSO.
            out.extend(w if any(w.gso or ()) else DmaWrite(w.queue, w.cpu, w.frames, w.ids)
                       for w in writes.values())
        else:
            out.extend(writes.values())
        out.extend(irqs)
        if obs is not None:
            obs.rx_burst(len(frames), dma_ids, missed, len(irqs), now)
            obs.rings(self.queues, now)
        return out

    def tx_burst(self, frames: list[bytes], now: int, ids: list[int] | None = None,
                 xmit_ns: int | None = None) -> list[NicAction]:
        """Frames from the stack leave on the wire, in order."""
        for frame in frames:
            self.tx_frame(frame, now)
        if self.observer is not None and ids is not None:
            self.observer.tx(ids, now)
        return [WireTx(frames, ids if self.observer is not None else None, xmit_ns)]

    def _queue(self, queue: int) -> RxQueue:
        if not 0 <= queue < self.num_queues:
            raise MalformedMessage("bad_queue", f"the NIC has no RX queue {queue}")
        return self.queues[queue]

    def refill(self, queue: int, n: int, now: int) -> list[NicOutput]:
        """The host posted ``n`` fresh descriptors on ``queue`` (credits back)."""
        if n < 0:
            raise MalformedMessage("bad_refill", f"refill count {n} must be >= 0")
        q = self._queue(queue)
        room = q.ring_size - q.credits
        if n > room:
            self.stale_refills += 1
            n = room
        q.credits += n
        if self.observer is not None:
            self.observer.rings(self.queues, now)
        return []

    def unmask(self, queue: int, now: int) -> list[NicOutput]:
        """The host re-enabled the queue's vector; unsignalled frames raise it again."""
        q = self._queue(queue)
        q.masked = False
        # Frames DMA'd while masked left the vector's pending bit set: unless coalescing
        # still holds them back (then the timer raises), the unmask delivers it at once.
        # Without this a frame that lands after the last poll read the ring would wait
        # for the next arrival.
        if q.pending and self._irq_due(q, now):
            return [self._raise(q)]
        return []

    def mask(self, queue: int) -> None:
        """Explicit mask (drivers without auto-mask, or a host going down)."""
        self.queues[queue].masked = True

    def reset_queue(self, queue: int) -> None:
        """The host that owns ``queue`` restarted: its ring is fresh and fully posted."""
        q = self.queues[queue]
        q.credits = q.ring_size
        q.masked = False
        q.pending = 0
        q.first_pending_at = None

    def reset_cpu(self, cpu: int) -> None:
        """The host ``cpu`` restarted: every ring it owns is fresh and fully posted."""
        self.cpu_resets += 1
        for index in self.queues_of_cpu(cpu):
            self.reset_queue(index)

    # -- coalescing timer -------------------------------------------------------------------

    def _deadline(self, q: RxQueue) -> int | None:
        if q.masked or not q.pending or self.rx_usecs == 0 or q.first_pending_at is None:
            return None
        return q.first_pending_at + self.rx_usecs * US

    def next_deadline(self) -> int | None:
        """When the earliest held (coalesced) interrupt is due, if any."""
        deadlines = [d for q in self.queues if (d := self._deadline(q)) is not None]
        return min(deadlines) if deadlines else None

    def on_timer(self, now: int) -> list[NicOutput]:
        out: list[NicOutput] = []
        for q in self.queues:
            deadline = self._deadline(q)
            if deadline is not None and now >= deadline:
                out.append(self._raise(q))
        return out

    def _irq_due(self, q: RxQueue, now: int) -> bool:
        if self.rx_usecs == 0 or self.rx_frames == 1:
            return True
        if self.rx_frames > 1 and q.pending >= self.rx_frames:
            return True
        assert q.first_pending_at is not None
        return now >= q.first_pending_at + self.rx_usecs * US

    def _raise(self, q: RxQueue) -> RaiseIrq:
        q.masked = True  # MSI-X auto-mask: the raise itself masks the vector
        q.pending = 0
        q.first_pending_at = None
        q.irqs += 1
        return RaiseIrq(q.index, q.cpu)

    # -- TX ---------------------------------------------------------------------------------

    def tx_frame(self, frame: bytes, now: int) -> None:
        """A frame (an ACK from the stack) leaves on the wire."""
        self.tx_packets += 1
        self.tx_bytes += len(frame)

    # -- introspection ----------------------------------------------------------------------

    def credits(self, queue: int) -> int:
        return self.queues[queue].credits

    def masked(self, queue: int) -> bool:
        return self.queues[queue].masked

    def pending(self, queue: int) -> int:
        return self.queues[queue].pending

    def stats(self) -> dict[str, object]:
        """ethtool -S plus the model's own counters."""
        return {"ethtool": self.ethtool_stats(), "cpu_resets": self.cpu_resets,
                "stale_refills": self.stale_refills}

    def ethtool_stats(self) -> dict[str, int]:
        """Counters as ``ethtool -S`` names them (device totals, then per queue)."""
        stats = {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "rx_missed_errors": self.rx_missed_errors,
            "rx_no_buffer_count": self.rx_no_buffer_count,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
        }
        for q in self.queues:
            stats[f"rx_queue_{q.index}_packets"] = q.rx_packets
            stats[f"rx_queue_{q.index}_bytes"] = q.rx_bytes
            stats[f"rx_queue_{q.index}_drops"] = q.rx_drops
            stats[f"rx_queue_{q.index}_irqs"] = q.irqs
        return stats
