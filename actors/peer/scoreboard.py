"""The sender's retransmission queue and SACK scoreboard.

Every segment sent and not yet cumulatively acknowledged is a :class:`TxSkb` in the
queue, as stream offsets, with the flags Linux keeps in ``TCP_SKB_CB(skb)->sacked``.
:class:`Scoreboard` keeps the queue and the counts ``tcp_packets_in_flight`` needs
(``sacked_out``, ``lost_out``, ``retrans_out``) in step with those flags:

* SACKed ranges are kept as intervals (:class:`IntervalSet`); blocks beyond ``snd_nxt``
  or below ``snd_una`` are ignored, and a DSACK (first block below the cumulative ACK,
  or inside the second block, RFC 2883) is counted, never taken as a sign of loss;
* RFC 6675 ``IsLost``: a hole with ``dupack_threshold`` SACKed segments above it is lost;
* without SACK each duplicate ACK counts as one packet that left the network, as
  ``tcp_add_reno_sack`` does;
* a timeout marks everything not SACKed lost (``tcp_timeout_mark_lost``), and clears
  every SACK mark when the head is SACKed (the receiver reneged).

Which segment to retransmit when, and what counts as a duplicate ACK, is the sender's.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass


class IntervalSet:
    """Disjoint half-open integer ranges, merged on insertion (the SACK scoreboard)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __contains__(self, point: object) -> bool:
        if not isinstance(point, int):
            return False
        i = bisect_right(self._starts, point) - 1
        return i >= 0 and point < self._ends[i]

    def add(self, start: int, end: int) -> list[tuple[int, int]]:
        """Insert ``[start, end)``; returns the sub-ranges that were not covered before."""
        if start >= end:
            return []
        lo = bisect_left(self._ends, start)  # first range that ends at or after start
        hi = bisect_right(self._starts, end)  # ranges before hi start at or before end
        fresh: list[tuple[int, int]] = []
        cursor = start
        for i in range(lo, hi):
            s, e = self._starts[i], self._ends[i]
            if s > cursor:
                fresh.append((cursor, min(s, end)))
            cursor = max(cursor, e)
        if cursor < end:
            fresh.append((cursor, end))
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]
        return fresh

    def trim_below(self, point: int) -> None:
        """Forget everything below ``point`` (cumulatively acknowledged)."""
        i = bisect_right(self._ends, point)
        del self._starts[:i]
        del self._ends[:i]
        if self._starts and self._starts[0] < point:
            self._starts[0] = point

    def highest(self) -> int | None:
        return self._ends[-1] if self._ends else None


@dataclass(slots=True)
class TxSkb:
    """One segment in the retransmission queue, as stream offsets ``[start, end)``.

    The flags mirror ``TCP_SKB_CB(skb)->sacked``: SACKED_ACKED, LOST, SACKED_RETRANS
    (retransmitted and that retransmission not yet acked) and EVER_RETRANS (Karn).
    """

    start: int
    end: int  # exclusive; includes the FIN's sequence number when ``fin``
    fin: bool
    psh: bool
    sent_at: int  # first transmission
    sacked: bool = False
    lost: bool = False
    retrans: bool = False
    ever_retrans: bool = False
    probe: bool = False  # a one-byte zero-window probe ("data" style)


def skb_start(skb: TxSkb) -> int:
    return skb.start


class Scoreboard:
    """The retransmission queue of one flow and its SACK/loss/retransmission marks.

    ``counters`` is the sender's counter dict (SACK and reneging events are counted
    there); ``total_bytes`` locates the FIN (offset ``total_bytes``).
    """

    __slots__ = ("counters", "dupack_threshold", "head", "lost_high", "lost_out",
                 "probe_out", "retrans_out", "retx_hint", "rtx", "sack_ok", "sacked_out",
                 "sacked_ranges", "total_bytes")

    def __init__(self, total_bytes: int, dupack_threshold: int,
                 counters: dict[str, int]) -> None:
        self.total_bytes = total_bytes
        self.dupack_threshold = dupack_threshold
        self.counters = counters
        self.sack_ok = False  # negotiated in the handshake
        self.rtx: list[TxSkb] = []
        self.head = 0  # index of the first unacked skb in rtx
        self.sacked_ranges = IntervalSet()
        self.sacked_out = 0  # SACK: skbs SACKed; Reno: duplicate ACKs counted as SACKs
        self.lost_out = 0
        self.retrans_out = 0
        self.probe_out = 0
        self.lost_high = 0  # non-SACKed skbs below this offset are marked lost
        self.retx_hint = 0  # no lost, unretransmitted skb starts below this offset

    # -- the queue ---------------------------------------------------------------------------

    @property
    def packets_out(self) -> int:
        return len(self.rtx) - self.head

    @property
    def in_flight(self) -> int:
        """``tcp_packets_in_flight``: packets sent and believed still in the network."""
        # packets_out spelled out: this runs for every segment sent.
        return len(self.rtx) - self.head - (self.sacked_out + self.lost_out) + self.retrans_out

    def head_skb(self) -> TxSkb | None:
        return self.rtx[self.head] if self.head < len(self.rtx) else None

    def append(self, skb: TxSkb) -> None:
        self.rtx.append(skb)

    def payload_len(self, skb: TxSkb) -> int:
        return min(skb.end, self.total_bytes) - skb.start

    def clean(self, ack: int) -> tuple[int, int | None, bool]:
        """Drop fully acked skbs and trim a partly acked head (``tcp_clean_rtx_queue``).

        Returns (skbs acked, send time of the oldest newly acked never-retransmitted skb,
        whether retransmitted data was acked) for the sender's RTT sample.
        """
        q = self.rtx
        i = self.head
        acked = 0
        first_sent: int | None = None
        retrans_acked = False
        while i < len(q) and q[i].end <= ack:
            skb = q[i]
            if skb.sacked:
                if self.sack_ok:
                    self.sacked_out -= 1
            elif skb.ever_retrans:
                retrans_acked = True
            elif first_sent is None:
                first_sent = skb.sent_at
            self.forget(skb)
            acked += 1
            i += 1
        if i < len(q) and q[i].start < ack:
            q[i].start = ack  # tcp_trim_head
        self.head = i
        if self.head > 64 and self.head * 2 > len(q):
            del q[:self.head]
            self.head = 0
        self.sacked_ranges.trim_below(ack)
        self.lost_high = max(self.lost_high, ack)
        self.retx_hint = max(self.retx_hint, ack)
        if not self.sack_ok:
            self.remove_reno_sacks(acked)
        return acked, first_sent, retrans_acked

    def forget(self, skb: TxSkb) -> None:
        """Take an skb leaving the queue (or merged away) out of the counters."""
        if skb.lost:
            self.lost_out -= 1
        if skb.retrans:
            self.retrans_out -= 1
        if skb.probe:
            self.probe_out -= 1

    def split(self, i: int, at: int) -> None:
        """``tcp_fragment``: split skb ``i`` at offset ``at`` (flags copied to both)."""
        skb = self.rtx[i]
        assert skb.start < at < skb.end
        tail = TxSkb(start=at, end=skb.end, fin=skb.fin, psh=skb.psh, sent_at=skb.sent_at,
                     sacked=skb.sacked, lost=skb.lost, retrans=skb.retrans,
                     ever_retrans=skb.ever_retrans, probe=skb.probe)
        skb.end, skb.fin, skb.psh = at, False, False
        self.rtx.insert(i + 1, tail)
        if tail.sacked and self.sack_ok:
            self.sacked_out += 1
        if tail.lost:
            self.lost_out += 1
        if tail.retrans:
            self.retrans_out += 1
        if tail.probe:
            self.probe_out += 1

    def collapse(self, i: int, j: int) -> None:
        """Merge skbs ``i..j-1`` (all lost, not SACKed, not retransmitted) into one."""
        q = self.rtx
        first, last = q[i], q[j - 1]
        for skb in q[i + 1:j]:
            self.forget(skb)
            first.ever_retrans |= skb.ever_retrans
            first.sent_at = min(first.sent_at, skb.sent_at)
        if first.probe:
            first.probe = False
            self.probe_out -= 1
        first.end, first.fin, first.psh = last.end, last.fin, last.psh
        del q[i + 1:j]

    def reshape_for_retransmit(self, i: int, mss: int, resegment: bool) -> None:
        """Cut the skb at ``i`` to at most one MSS; with ``resegment``, first merge it with
        the lost skbs after it so the retransmission is a full MSS from its start."""
        q = self.rtx
        if resegment:
            j = i + 1
            size = self.payload_len(q[i])
            while (j < len(q) and size < mss and q[j].lost and not q[j].sacked
                   and not q[j].retrans):
                size += self.payload_len(q[j])
                j += 1
            if j > i + 1:
                self.collapse(i, j)
        if self.payload_len(q[i]) > mss:
            self.split(i, q[i].start + mss)

    # -- SACK --------------------------------------------------------------------------------

    def sacktag(self, ranges: list[tuple[int, int]], ack: int, snd_una: int,
                snd_nxt: int) -> int:
        """``tcp_sacktag_write_queue`` with the blocks as stream offsets: mark SACKed skbs;
        returns how many became SACKed."""
        cnt = self.counters
        first_is_dsack = ranges[0][0] < ack or (
            len(ranges) > 1 and ranges[1][0] <= ranges[0][0] and ranges[0][1] <= ranges[1][1])
        if first_is_dsack:
            cnt["dsacks"] += 1
            ranges = ranges[1:]
        if not ranges:
            return 0
        cnt["sacks"] += 1
        newly = 0
        for start, end in ranges:
            if start >= end or end > snd_nxt:
                cnt["sack_blocks_invalid"] += 1
                continue
            start = max(start, snd_una)
            if start >= end:
                continue  # wholly below snd_una: old news
            for s, e in self.sacked_ranges.add(start, end):
                newly += self._tag_range(s, e)
        return newly

    def _tag_range(self, start: int, end: int) -> int:
        """Mark every skb inside ``[start, end)`` SACKed, splitting those it cuts."""
        q = self.rtx
        i = bisect_right(q, start, lo=self.head, key=skb_start) - 1
        i = max(i, self.head)
        newly = 0
        while i < len(q) and q[i].start < end:
            skb = q[i]
            if skb.end <= start:
                i += 1
                continue
            if skb.start < start:
                self.split(i, start)
                i += 1
                continue
            if skb.end > end:
                self.split(i, end)
                skb = q[i]
            if not skb.sacked:
                skb.sacked = True
                self.sacked_out += 1
                if skb.lost:
                    skb.lost = False
                    self.lost_out -= 1
                if skb.retrans:
                    skb.retrans = False
                    self.retrans_out -= 1
                newly += 1
            i += 1
        return newly

    def mark_lost_by_sack(self) -> None:
        """RFC 6675 IsLost: a hole with ``dupack_threshold`` SACKed skbs above it is lost."""
        q = self.rtx
        highest = self.sacked_ranges.highest()
        if highest is None:
            return
        i = bisect_left(q, highest, lo=self.head, key=skb_start) - 1
        count = 0
        boundary: int | None = None
        while i >= self.head:
            skb = q[i]
            if skb.start < self.lost_high:
                break
            if skb.sacked:
                count += 1
                if count >= self.dupack_threshold:
                    boundary = skb.start
                    break
            i -= 1
        if boundary is None:
            return
        j = bisect_left(q, self.lost_high, lo=self.head, key=skb_start)
        j = max(j - 1, self.head)
        while j < len(q) and q[j].start < boundary:
            self.mark_lost(q[j])
            j += 1
        self.lost_high = max(self.lost_high, boundary)

    def mark_lost(self, skb: TxSkb) -> None:
        if skb.sacked or skb.lost:
            return
        skb.lost = True
        self.lost_out += 1
        if skb.start < self.retx_hint:
            self.retx_hint = skb.start

    def timeout_mark_lost(self, snd_una: int, snd_nxt: int) -> None:
        """``tcp_timeout_mark_lost``: everything not SACKed is lost; a SACKed head means the
        receiver reneged, so every SACK mark goes and the SACKed data is sent again."""
        head = self.head_skb()
        reneged = head is not None and head.sacked
        if reneged:
            self.counters["sack_reneging"] += 1
            self.sacked_ranges = IntervalSet()
        if not self.sack_ok or reneged:
            self.sacked_out = 0
        for skb in itertools.islice(self.rtx, self.head, None):
            skb.retrans = False
            if reneged:
                skb.sacked = False
            if not skb.sacked and not skb.lost:
                skb.lost = True
                self.lost_out += 1
        self.retrans_out = 0
        self.lost_high = snd_nxt
        self.retx_hint = snd_una

    # -- Reno duplicate-ACK accounting --------------------------------------------------------

    def add_reno_sack(self) -> None:
        """``tcp_add_reno_sack``: a duplicate ACK means one more packet left the network."""
        self.sacked_out += 1
        holes = min(max(self.lost_out, 1), self.packets_out)
        if self.sacked_out + holes > self.packets_out:
            self.sacked_out = max(self.packets_out - holes, 0)

    def remove_reno_sacks(self, acked: int) -> None:
        """One acked packet filled the hole; the others were already counted as dupacks."""
        if acked > 0:
            self.sacked_out -= min(acked - 1, self.sacked_out)
        self.sacked_out = min(self.sacked_out, max(self.packets_out - 1, 0))

    # -- debugging aid -----------------------------------------------------------------------

    def check_invariants(self, snd_una: int, snd_nxt: int) -> None:
        """Recount the scoreboard from the queue and compare (used by tests)."""
        live = self.rtx[self.head:]
        for a, b in itertools.pairwise(live):
            assert a.end == b.start, (a, b)
        if live:
            assert live[0].start == snd_una, (live[0], snd_una)
            assert live[-1].end == snd_nxt
        else:
            assert snd_una == snd_nxt
        assert self.lost_out == sum(s.lost for s in live)
        assert self.retrans_out == sum(s.retrans for s in live)
        assert self.probe_out == sum(s.probe for s in live)
        if self.sack_ok:
            assert self.sacked_out == sum(s.sacked for s in live)
        assert 0 <= self.in_flight <= self.packets_out
        for s in live:
            assert s.start < s.end and s.fin == (s.end == self.total_bytes + 1)
            assert not (s.sacked and (s.lost or s.retrans))
            assert s.lost or not s.retrans
            if self.sack_ok:
                covered = any(a <= s.start and s.end <= b for a, b in self.sacked_ranges)
                assert s.sacked == covered, (s, list(self.sacked_ranges))
