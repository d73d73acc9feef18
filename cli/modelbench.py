"""The kernel model alone, in-process: how many segments/s the sans-I/O stack handles.

No processes, no sockets, no wire encoding: one accepted connection, segments built
beforehand (1448-byte payloads with timestamps, as the default peer sends them), a
virtual clock advancing 10 us per segment with every due timer fired, and a
non-blocking ``read()`` of everything queued after every 16 segments, through the same
``tcp_recvmsg`` step machine the reader processes run. The bytes read are checked
against the stream, so a fast wrong model cannot pass.
"""

from __future__ import annotations

import random
import time

from actors.profiles import Profile
from actors.reader.tcp_recvmsg import RecvFlags, SpendCpu, StepDriver, tcp_recvmsg
from actors.stack.tcp_ipv4 import Stack
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.sockops import Accepted, InetAccept, SockOp, SockOpResult

LOCAL, REMOTE = "10.0.0.2", "10.0.0.1"
PORT, SPORT, ISN = 5001, 40001, 1_000_000
MSS = 1448  # 1460 less the aligned timestamp option
TICK_NS = 10_000
READ_EVERY = 16


_PATTERN = bytes(range(256)) * (MSS // 256 + 2)


def _payload(offset: int, n: int) -> bytes:
    """Stream bytes ``offset`` .. ``offset + n`` (n <= MSS): byte k of the stream is k & 0xFF."""
    start = offset & 0xFF
    return _PATTERN[start:start + n]


def _intact(received: bytes, total: int) -> bool:
    if len(received) != total:
        return False
    return all(received[off:off + MSS] == _payload(off, min(MSS, total - off))
               for off in range(0, total, MSS))


class _Bench:
    def __init__(self, profile: Profile) -> None:
        self.stack = Stack(profile, profile.default_sysctls, seed=1)
        self.now = 0
        lsn = self.stack.listen(LOCAL, PORT, 0)
        syn = Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT, seq=ISN,
                      flags=TcpFlags.SYN, window=65535,
                      options=TcpOptions(mss=1460, sack_permitted=True, wscale=7,
                                         timestamp=(1, 0)))
        self.stack.tcp_v4_rcv(syn, 0)
        synack = next(o.segment for o in self.stack.take_outputs()
                      if hasattr(o, "segment"))
        self.iss = synack.seq
        self.tsecr = synack.options.timestamp[0] if synack.options.timestamp else 0
        self.stack.tcp_v4_rcv(self._seg(0, b""), 0)
        self.stack.take_outputs()
        res = self._op(InetAccept(lsn))
        assert isinstance(res, Accepted), res
        self.sock = res.sock
        self.received = bytearray()

    def _seg(self, offset: int, data: bytes) -> Segment:
        return Segment(src=REMOTE, sport=SPORT, dst=LOCAL, dport=PORT,
                       seq=(ISN + 1 + offset) & 0xFFFFFFFF, ack=(self.iss + 1) & 0xFFFFFFFF,
                       flags=TcpFlags.ACK, window=1000, payload=data,
                       options=TcpOptions(timestamp=(2 + offset // MSS, self.tsecr)))

    def _op(self, op: SockOp) -> SockOpResult:
        res = self.stack.sock_op("bench", op, self.now)
        if res is None:
            raise RuntimeError(f"model bench: {op} would sleep on a non-blocking read")
        return res

    def read(self) -> None:
        driver = StepDriver(tcp_recvmsg(self.stack.profile, self.stack.sysctls, self.sock,
                                        1 << 22, RecvFlags(dontwait=True)))
        while not driver.done:
            step = driver.next
            assert step is not None
            if isinstance(step, SpendCpu):
                driver.feed(SockOpResult())
                continue
            driver.feed(self._op(step))
        assert driver.result is not None
        self.received += driver.result.data

    def run(self, segments: list[Segment]) -> float:
        stack = self.stack
        t0 = time.perf_counter()
        for i, seg in enumerate(segments):
            self.now += TICK_NS
            stack.tcp_v4_rcv(seg, self.now)
            deadline = stack.next_deadline()
            if deadline is not None and deadline <= self.now:
                stack.run_timers(self.now)
            stack.take_outputs()
            if i % READ_EVERY == READ_EVERY - 1:
                self.read()
        self.read()
        return time.perf_counter() - t0


def _stream(n: int) -> list[tuple[int, bytes]]:
    return [(i * MSS, _payload(i * MSS, MSS)) for i in range(n)]


def _disorder(pieces: list[tuple[int, bytes]], share: float, rng: random.Random,
              ) -> list[tuple[int, bytes]]:
    """About ``share`` of the segments moved a few places later or sent twice."""
    out = list(pieces)
    i = 0
    while i < len(out) - 4:
        r = rng.random()
        if r < share / 2:
            j = i + rng.randint(1, 3)
            out[i], out[j] = out[j], out[i]
            i = j + 1
            continue
        if r < share:
            out.insert(i + rng.randint(1, 3), out[i])
        i += 1
    return out


def run_model_benchmark(profile: Profile, segments: int = 50_000, *,
                        seed: int = 7) -> dict[str, float]:
    """Segments/s of the model in order, and with 30% reordered or duplicated."""
    result: dict[str, float] = {}
    for name, share in (("in_order", 0.0), ("ofo", 0.3)):
        bench = _Bench(profile)
        pieces = _stream(segments)
        if share:
            pieces = _disorder(pieces, share, random.Random(seed))
        segs = [bench._seg(off, data) for off, data in pieces]
        elapsed = bench.run(segs)
        expected = segments * MSS
        if not _intact(bytes(bench.received), expected):
            raise RuntimeError(f"model bench ({name}): the reader got "
                               f"{len(bench.received)} of {expected} bytes, or wrong ones")
        result[name] = len(segs) / elapsed
    return result
