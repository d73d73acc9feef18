"""Properties of the whole model: any arrival order, loss, duplication and any interleaving
of reader steps and lock ownership leave the reader with exactly the bytes sent, and every
arriving segment ends delivered, consumed, queued, or dropped for a named reason."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.profiles import MS
from actors.reader.tcp_recvmsg import ReaderCosts, RecvFlags
from actors.stack.net import CONSUMED, DELIVERED, DROP_REASONS
from actors.stack.skb import rx_truesize
from actors.stack.tcp_input import PAGE_SIZE
from actors.stack.tcp_timer import next_deadline, scan_deadline
from protocol.seq import seq_sub
from protocol.sockops import LockSock, ReleaseSock
from tests.stack_harness import Conn, Reader, connect

MAX_SEG = 1448  # the MSS with timestamps: a real sender never sends more


class Harness:
    def __init__(self, conn: Conn, stream: bytes, rng: random.Random) -> None:
        self.conn = conn
        self.stream = stream
        self.rng = rng
        self.got = bytearray()
        self.reader: Reader | None = None
        self.holder_owns = False
        self.holder_waiting = False
        self.max_truesize = 0
        self.ids: list[int] = []

    # the peer -----------------------------------------------------------------
    def acked(self) -> int:
        ack = self.conn.last_ack
        return seq_sub(ack.ack, self.conn.seq(0)) if ack else 0

    def window(self) -> int:
        ack = self.conn.last_ack
        if ack is None:
            return 14600
        return ack.window << self.conn.sk.rx_opt.rcv_wscale

    def send(self, start: int, length: int) -> None:
        start = max(0, min(start, len(self.stream) - 1))
        end = min(len(self.stream), start + max(1, length))
        seg = self.conn.segment(start, self.stream[start:end])
        self.max_truesize = max(self.max_truesize, rx_truesize(34 + 20 + end - start))
        self.ids.append(self.conn.deliver(seg))

    # the reader and a lock holder ----------------------------------------------
    def reader_step(self, flags: RecvFlags, length: int, timeo_ns: int | None) -> None:
        if self.reader is None:
            self.reader = Reader(self.conn, "reader", length, flags, timeo_ns=timeo_ns,
                                 costs=ReaderCosts())
        self.reader.step()
        self._collect_read()

    def _collect_read(self) -> None:
        r = self.reader
        if r is not None and r.result is not None:
            assert r.result.ret >= 0 or r.result.ret == -11, r.result
            self.got += r.result.data
            for off, chunk in r.result.chunks:  # each piece knows where it belongs
                assert self.stream[off:off + len(chunk)] == chunk
            self.reader = None

    def holder_toggle(self) -> None:
        stack = self.conn.stack
        if self.holder_waiting:
            if self.conn.done.pop("holder", None) is not None:
                self.holder_waiting = False
                self.holder_owns = True
            return
        if self.holder_owns:
            stack.sock_op("holder", ReleaseSock(self.conn.sock), self.conn.now)
            self.holder_owns = False
        else:
            res = stack.sock_op("holder", LockSock(self.conn.sock), self.conn.now)
            self.holder_owns = res is not None
            self.holder_waiting = res is None
        self.conn.collect()

    def check_invariants(self) -> None:
        sk = self.conn.sk
        # Linux lets rmem pass rcvbuf by the one skb admitted while it was still under,
        # and header prediction by what the prepaid quota (under a page) still covers.
        assert sk.rmem_alloc <= sk.rcvbuf + self.max_truesize + PAGE_SIZE, \
            (sk.rmem_alloc, sk.rcvbuf)
        assert sk.rmem_alloc == sum(s.truesize for s in sk.receive_queue if s.charged) + \
            sum(s.truesize for s in sk.ofo if s.charged)
        assert seq_sub(sk.rcv_nxt, sk.copied_seq) >= 0
        # the timer heap finds the same earliest deadline as visiting every socket
        net = self.conn.stack.net
        assert next_deadline(net) == scan_deadline(net)

    def finish(self) -> None:
        """Stop the chaos: the peer retransmits in order until the reader has everything."""
        conn = self.conn
        for _ in range(3_000):
            if self.holder_waiting:
                self.holder_toggle()
            if self.holder_owns:
                self.holder_toggle()
            if len(self.got) == len(self.stream) and self.reader is None:
                return
            nxt = seq_sub(conn.sk.rcv_nxt, conn.seq(0))
            room = self.acked() + self.window() - nxt
            if nxt < len(self.stream) and room > 0:
                self.send(nxt, min(1000, room))
            elif nxt == len(self.stream):
                # FIN ends any read still waiting for more than the stream holds.
                self.ids.append(conn.deliver(conn.segment(nxt, b"", fin=True)))
            elif room <= 0:
                # A zero-window probe as Linux sends it: no data, one byte below rcv_nxt.
                self.ids.append(conn.deliver(conn.segment(nxt - 1, b"")))
            if self.reader is None:
                self.reader = Reader(conn, "reader", 4096, RecvFlags(dontwait=True))
            self.reader.run()
            self._collect_read()
            conn.advance(50 * MS)
            self.check_invariants()
        sk = conn.sk
        raise AssertionError(
            f"stalled: read {len(self.got)} of {len(self.stream)}; rcv_nxt at "
            f"{seq_sub(sk.rcv_nxt, conn.seq(0))}, copied at {seq_sub(sk.copied_seq, conn.seq(0))},"
            f" acked {self.acked()} window {self.window()} rcv_wnd {sk.rcv_wnd} rmem "
            f"{sk.rmem_alloc}/{sk.rcvbuf} ofo {len(sk.ofo)} rq {len(sk.receive_queue)} owner "
            f"{sk.owner} waiters {sk.waiters} ucopy {sk.ucopy.task} clamp {sk.window_clamp} "
            f"ssthresh {sk.rcv_ssthresh} rcv_mss {sk.icsk_ack.rcv_mss} ratio {sk.scaling_ratio} "
            f"rcvbuf {sk.rcvbuf} reader "
            f"{self.reader and self.reader.driver.next} {dict(conn.stack.net.mib.nonzero())}")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), profile=st.sampled_from(["legacy", "modern"]),
       ts=st.booleans(), sack=st.booleans(),
       rcvbuf=st.sampled_from([None, None, 2500, 6000, 20000]),
       low_latency=st.sampled_from([0, 1]),
       total=st.integers(1, 30_000), seed=st.integers(0, 2**32 - 1))
def test_any_order_loss_duplication_and_interleaving_delivers_the_stream(
        data: st.DataObject, profile: str, ts: bool, sack: bool, rcvbuf: int | None,
        low_latency: int, total: int, seed: int) -> None:
    rng = random.Random(seed)
    stream = rng.randbytes(total)
    conn = connect(profile, ts=ts, sack=sack, rcvbuf=rcvbuf, tcp_low_latency=low_latency)
    h = Harness(conn, stream, rng)
    steps = data.draw(st.integers(10, 150), label="steps")
    for _ in range(steps):
        action = data.draw(st.sampled_from(
            ["send", "send", "send", "dup", "read", "read", "hold", "time"]), label="action")
        if action == "send":
            base = h.acked()
            start = base + data.draw(st.integers(-3000, h.window() + 2000), label="start")
            h.send(start, data.draw(st.integers(1, MAX_SEG), label="len"))
        elif action == "dup" and h.ids:
            at = data.draw(st.integers(0, max(0, h.acked() - 1)), label="dup_at")
            h.send(at, data.draw(st.integers(1, MAX_SEG), label="dup_len"))
        elif action == "read":
            flags = data.draw(st.sampled_from([
                RecvFlags(), RecvFlags(dontwait=True), RecvFlags(waitall=True),
                RecvFlags(peek=True, dontwait=True)]), label="flags")
            length = data.draw(st.integers(1, 9000), label="read_len")
            if flags.peek:
                if not conn.sk.owned:  # a peek that cannot block: the lock is free
                    r = Reader(conn, "peeker", length, flags)
                    res = r.run()
                    assert res is not None
                    if res.ret > 0:
                        off = seq_sub(conn.sk.copied_seq, conn.seq(0))
                        assert res.data == stream[off:off + res.ret]
            else:
                timeo = data.draw(st.sampled_from([None, 20 * MS, 0]), label="timeo")
                h.reader_step(flags, length, timeo)
        elif action == "hold":
            h.holder_toggle()
        elif action == "time":
            conn.advance(data.draw(st.integers(1, 300), label="ms") * MS)
        h.check_invariants()
    h.finish()

    assert bytes(h.got) == stream
    net = conn.stack.net
    sk = conn.sk
    assert sk.inq() == 0
    queued = {i for q in (sk.receive_queue, sk.ofo, sk.backlog, sk.ucopy.prequeue)
              for skb in q for i in skb.ids}
    # every arrival is accounted for: delivered, consumed, still queued or dropped
    for sid in h.ids:
        fate = net.fates.get(sid)
        if sid in queued:
            continue
        assert fate is not None, f"segment {sid} has no fate"
        assert fate in (DELIVERED, CONSUMED) or fate.startswith("drop:"), fate
        if fate.startswith("drop:"):
            assert fate[5:] in DROP_REASONS, f"unnamed drop reason {fate}"
    for reason in net.drop_counts:
        counters = [c for c in DROP_REASONS[reason] if c not in net.profile.absent_counters]
        if counters:  # a reason two sites share moves one of its counters
            assert any(net.mib[c] > 0 for c in counters), (reason, counters)
    assert sk.sk_drops == sum(net.drop_counts.values())
    if profile == "modern":
        assert "TcpExtTCPPrequeued" not in dict(net.mib.nonzero())


@pytest.mark.parametrize("profile", ["legacy", "modern"])
def test_prequeue_is_used_only_by_legacy(profile: str) -> None:
    conn = connect(profile)
    r = Reader(conn, "reader", 5000, RecvFlags(waitall=True))
    r.run()
    for k in range(5):
        conn.deliver(conn.segment(k * 1000, bytes(1000)))
        r.run()
    assert r.result is not None and r.result.ret == 5000
    mib = dict(conn.stack.net.mib.nonzero())
    if profile == "legacy":
        assert mib.get("TcpExtTCPPrequeued", 0) > 0
    else:
        assert "TcpExtTCPPrequeued" not in mib
