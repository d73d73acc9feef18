"""The mailbox transport with real ZeroMQ sockets in one process: delivery, per-link
numbering, rejects, blocking back-pressure, wake fds, link resets."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from actors.runtime.mailbox import Mailbox
from protocol import messages as msg
from protocol.envelope import BUNDLE, EnvelopeCodec, MalformedMessage
from tests.runtime_roles import TEST_TICK

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short: ipc paths are limited to 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="rxmb", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def endpoints(d: Path, *names: str) -> dict[str, str]:
    return {n: f"ipc://{d}/{n}" for n in names}


def receive(mb: Mailbox, count: int, timeout_s: float = 10.0) -> None:
    """Poll until ``count`` messages are queued on ``mb.inbound`` (or fail at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while len(mb.inbound) < count:
        assert time.monotonic() < deadline, f"only {len(mb.inbound)} of {count} arrived"
        mb.poll(50)


def wait_rejected(mb: Mailbox, reason: str, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while mb.counters.rejected_messages.get(reason, 0) < count:
        assert time.monotonic() < deadline, mb.counters.rejected_messages
        mb.poll(50)


def test_messages_arrive_in_order_with_per_link_numbers(sockdir: Path) -> None:
    eps = endpoints(sockdir, "a", "b")
    a, b = Mailbox("a", eps), Mailbox("b", eps)
    try:
        a.bind()
        b.bind()
        for i in range(5):
            assert a.send("b", msg.STATS_REQUEST, {"request_id": i})
        a.send("a", msg.STATS_REQUEST, {"request_id": 99})  # to itself: its own link
        receive(b, 5)
        receive(a, 1)
        got = list(b.inbound)
        assert [e.body["request_id"] for e in got] == list(range(5))
        assert [e.seq for e in got] == list(range(5))
        assert {e.sender for e in got} == {"a"}
        assert a.inbound[0].seq == 0
        assert a.counters.messages_out == 6 and b.counters.messages_in == 5
        assert b.counters.bytes_in == sum(
            len(EnvelopeCodec().encode(msg.STATS_REQUEST, "a", i, e.ts_ns, e.body))
            for i, e in enumerate(got))
        assert b.counters.transport_lost == 0
    finally:
        a.close()
        b.close()


def test_bad_frames_are_counted_and_dropped_without_raising(sockdir: Path) -> None:
    eps = endpoints(sockdir, "b")
    b = Mailbox("b", eps)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    try:
        b.bind()
        raw.setsockopt(zmq.ROUTING_ID, b"intruder")
        raw.connect(eps["b"])
        codec = EnvelopeCodec()
        raw.send_multipart([b"one", b"two"])
        wait_rejected(b, "bad_frames", 1)
        raw.send(b"\xc1 not msgpack")
        wait_rejected(b, "not_msgpack", 1)
        raw.send(msgpack.packb([1, "no_such_kind", "intruder", 0, 0, {}]))
        wait_rejected(b, "unknown_kind", 1)
        # Claims to be "a" on the connection of "intruder".
        raw.send(codec.encode(msg.STATS_REQUEST, "a", 0, 0, {"request_id": 1}))
        wait_rejected(b, "sender_mismatch", 1)
        assert not b.inbound and b.counters.messages_in == 0
        # Well formed, but nobody could answer it: "intruder" has no endpoint.
        raw.send(codec.encode(msg.STATS_REQUEST, "intruder", 0, 0, {"request_id": 2}))
        wait_rejected(b, "unknown_sender", 1)
        assert not b.inbound
        assert b.counters.rejected_messages == {"bad_frames": 1, "not_msgpack": 1,
                                                "unknown_kind": 1, "sender_mismatch": 1,
                                                "unknown_sender": 1}
    finally:
        raw.close(linger=0)
        ctx.term()
        b.close()


def test_a_full_link_blocks_the_sender_and_loses_nothing(sockdir: Path) -> None:
    eps = endpoints(sockdir, "a", "b")
    a = Mailbox("a", eps, hwm=2)
    b = Mailbox("b", eps, hwm=2)
    pad = b"p" * 65536
    try:
        b.bind()  # bound, but nobody reads it yet
        a.send_deadline_ns = time.monotonic_ns() + 300_000_000
        sent = 0
        while a.send("b", TEST_TICK, {"n": sent, "pad": pad}):
            sent += 1
            assert sent < 1000, "the link never filled up"
        assert a.counters.send_blocked >= 1 and a.counters.unsent == 1
        assert a.counters.send_blocked_ns > 0
        # The abandoned message did not take a sequence number: the next one follows on.
        a.send_deadline_ns = None
        receive(b, sent)
        assert a.send("b", TEST_TICK, {"n": sent, "pad": b""})
        receive(b, sent + 1)
        assert [e.body["n"] for e in b.inbound] == list(range(sent + 1))
        assert b.counters.transport_lost == 0
    finally:
        a.close()
        b.close()


def test_two_blocked_senders_keep_reading_and_do_not_deadlock(sockdir: Path) -> None:
    eps = endpoints(sockdir, "a", "b")
    count = 1500
    results: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    boxes = {n: Mailbox(n, eps, hwm=2) for n in eps}
    for box in boxes.values():
        box.bind()

    def run(name: str, other: str) -> None:
        box = boxes[name]
        try:
            # Only sending: the mailbox must read its own inbox while a send is blocked.
            for i in range(count):
                assert box.send(other, TEST_TICK, {"n": i, "pad": b"q" * 4096})
            receive(box, count, timeout_s=30)
            results[name] = [e.body["n"] for e in box.inbound]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("a", "b")),
               threading.Thread(target=run, args=("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=45)
    try:
        assert not any(t.is_alive() for t in threads), "deadlocked"
        assert not errors, errors
        assert results == {"a": list(range(count)), "b": list(range(count))}
        assert sum(box.counters.send_blocked for box in boxes.values()) > 0
        assert all(box.counters.transport_lost == 0 for box in boxes.values())
    finally:
        for box in boxes.values():
            box.close()


def test_reset_link_numbers_from_zero_again(sockdir: Path) -> None:
    eps = endpoints(sockdir, "a", "b")
    a, b = Mailbox("a", eps), Mailbox("b", eps)
    try:
        b.bind()
        for i in range(3):
            a.send("b", msg.STATS_REQUEST, {"request_id": i})
        receive(b, 3)
        a.reset_link("b")
        a.send("b", msg.STATS_REQUEST, {"request_id": 3})
        receive(b, 4)
        assert [e.seq for e in b.inbound] == [0, 1, 2, 0]
        assert (b.counters.transport_seq_restarts, b.counters.transport_lost) == (1, 0)
    finally:
        a.close()
        b.close()


def test_a_restarted_receiver_adopts_links_mid_stream(sockdir: Path) -> None:
    eps = endpoints(sockdir, "a", "b")
    a, b = Mailbox("a", eps), Mailbox("b", eps)
    b2 = Mailbox("b", eps, adopt_first_seq=True)
    try:
        b.bind()
        for i in range(2):
            a.send("b", msg.STATS_REQUEST, {"request_id": i})
        receive(b, 2)
        b.close()
        b2.bind()  # same endpoint: a's DEALER reconnects to the new process
        a.send("b", msg.STATS_REQUEST, {"request_id": 2})
        receive(b2, 1)
        assert b2.inbound[0].seq == 2
        c = b2.counters
        assert (c.transport_lost, c.transport_seq_adopted) == (0, 1)
    finally:
        a.close()
        b.close()
        b2.close()


def test_wake_fds_run_their_callback_until_removed(sockdir: Path) -> None:
    box = Mailbox("a", endpoints(sockdir, "a"))
    r, w = os.pipe()
    calls: list[bytes] = []
    try:
        box.bind()
        box.add_wake_fd(r, lambda: calls.append(os.read(r, 100)))
        os.write(w, b"x")
        assert box.poll(5000) == 0
        assert calls == [b"x"]
        box.remove_wake_fd(r)
        os.write(w, b"y")
        box.poll(20)
        assert calls == [b"x"]
    finally:
        os.close(r)
        os.close(w)
        box.close()


def test_unknown_destination_is_an_error(sockdir: Path) -> None:
    box = Mailbox("a", endpoints(sockdir, "a"))
    try:
        with pytest.raises(ValueError, match="no endpoint"):
            box.send("nobody", msg.STATS_REQUEST, {"request_id": 1})
    finally:
        box.close()


def test_send_many_arrives_as_single_messages_under_one_link_seq(sockdir: Path) -> None:
    eps = endpoints(sockdir, "a", "b")
    a, b = Mailbox("a", eps), Mailbox("b", eps)
    try:
        b.bind()
        assert a.send("b", TEST_TICK, {"n": 0, "pad": b""})
        assert a.send_many("b", TEST_TICK, [{"n": i, "pad": b"x"} for i in (1, 2, 3)])
        assert a.send_many("b", TEST_TICK, [{"n": 4, "pad": b""}])  # one: a plain message
        assert a.send_many("b", TEST_TICK, [])                      # none: nothing sent
        receive(b, 5)
        got = list(b.inbound)
        assert [e.kind for e in got] == [TEST_TICK] * 5
        assert [e.body["n"] for e in got] == [0, 1, 2, 3, 4]
        assert [e.seq for e in got] == [0, 1, 1, 1, 2]  # the bundle took one seq
        assert (a.counters.messages_out, a.counters.bundles_out) == (5, 1)
        assert (b.counters.messages_in, b.counters.bundles_in) == (5, 1)
        assert b.counters.transport_lost == 0 and not b.counters.rejected_messages
        with pytest.raises(MalformedMessage):  # every body is checked before anything goes
            a.send_many("b", TEST_TICK, [{"n": 5, "pad": b""}, {"n": "six", "pad": b""}])
        assert a.send("b", TEST_TICK, {"n": 5, "pad": b""})
        receive(b, 6)
        assert b.inbound[-1].seq == 3 and b.counters.transport_lost == 0
    finally:
        a.close()
        b.close()


def test_a_hostile_bundle_is_counted_body_by_body(sockdir: Path) -> None:
    eps = endpoints(sockdir, "b", "intruder")  # a known sender: its bodies are looked at
    b = Mailbox("b", eps)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    try:
        b.bind()
        raw.setsockopt(zmq.ROUTING_ID, b"intruder")
        raw.connect(eps["b"])
        good, bad = {"n": 1, "pad": b""}, {"n": 2, "pad": b"", "extra": 1}
        raw.send(msgpack.packb([1, BUNDLE, "intruder", 0, 0,
                                {"kind": TEST_TICK, "bodies": [good, bad, {"n": True}]}]))
        raw.send(msgpack.packb([1, BUNDLE, "intruder", 1, 0,
                                {"kind": BUNDLE, "bodies": [{}]}]))
        raw.send(msgpack.packb([1, BUNDLE, "intruder", 2, 0,
                                {"kind": "no_such_kind", "bodies": [{}, {}]}]))
        raw.send(msgpack.packb([1, BUNDLE, "intruder", 3, 0, {"kind": TEST_TICK}]))
        wait_rejected(b, "missing_field", 1)  # the last one: a bundle without bodies
        assert [e.body for e in b.inbound] == [good]
        assert b.counters.rejected_messages == {
            "unexpected_field": 1, "bad_field_type": 1, "bad_shape": 1, "unknown_kind": 2,
            "missing_field": 1}
        assert b.counters.transport_lost == 0
    finally:
        raw.close(linger=0)
        ctx.term()
        b.close()
