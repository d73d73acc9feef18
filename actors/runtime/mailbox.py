"""The transport under every actor: one ROUTER inbox, one DEALER per peer.

- Each actor *binds* one ROUTER socket, its inbox, at its own endpoint.
- To reach a peer it *connects* a DEALER to the peer's inbox; the DEALER's routing id
  is the sender's own name, so the receiver's ROUTER sees ``[sender, payload]``.
- Messages are one-way.  Request/reply is two messages tied by a ``request_id`` in
  the body.
- Sends block when the high-water mark is reached (back-pressure, never a drop): no
  SNDTIMEO.  While a send is blocked the mailbox keeps reading its own inbox into
  :attr:`Mailbox.inbound` (up to ``inbound_limit``), so two actors sending to each
  other cannot deadlock on full queues.  Only after a stop is requested does a
  blocked send give up, at :attr:`Mailbox.send_deadline_ns`, counted as ``unsent``.
- LINGER is set to 0 only when closing, which callers do after an explicit
  end-of-stream handshake, never relying on LINGER to flush.

Received frames are decoded, checked (frame count, sender == routing id, a sender in
the address book, envelope and schema) and sequence-tracked per link; a bad one is
counted under ``rejected_messages[reason]``, logged (rate-limited), and dropped; nothing
raises.

A routing id is whatever the client set, so on a CURVE inbox (tcp://, see
:mod:`actors.runtime.curve`) the sender must also be the name of the key its connection
authenticated with: the ZAP handler returns that name as the connection's user id, which
libzmq attaches to every message as its ``User-Id`` property. Each envelope is checked
(a restarted or handed-over connection can carry the same routing id under another key),
and a mismatch is ``sender_key_mismatch``. ipc:// inboxes have no user id; their
directory is private instead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import zmq

from actors.runtime.addressing import Endpoint
from protocol.envelope import BUNDLE, Envelope, EnvelopeCodec, LinkSeqTracker, MalformedMessage

DEFAULT_HWM = 1000
RECONNECT_IVL_MS = 20          # peers start in parallel; retry a not-yet-bound ipc quickly
RECONNECT_IVL_MAX_MS = 1000
_BLOCKED_POLL_MS = 100         # how often a blocked send re-checks deadlines and hooks
_LOG_FIRST_REJECTS = 20        # per reason, then every 1000th
WakeCallback = Callable[[], object]  # its result is ignored

# Per message, the socket calls go straight to the compiled socket methods: the Python
# wrappers around them (flag enums, routing-id/group checks, recv_multipart's list and
# getsockopt) cost more than the calls themselves.
_raw_send = zmq.backend.Socket.send
_raw_recv = zmq.backend.Socket.recv
_raw_get = zmq.backend.Socket.get
_raw_get_int = cast(Callable[[zmq.Socket, int], int], _raw_get)  # an int option (EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_USER_ID = b"User-Id"     # the property ZAP's user id becomes (bytes: no encode per call)
_monotonic_ns = time.monotonic_ns


def make_inbox(ctx: zmq.Context, endpoint: Endpoint | str, *, hwm: int = DEFAULT_HWM
               ) -> zmq.Socket:
    """A bound ROUTER inbox."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.SNDHWM, hwm)
    # We never send through a ROUTER; if anyone does, fail loudly instead of dropping.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A restarted peer reconnecting under the same routing id takes over its old slot.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.bind(Endpoint.from_obj(endpoint).bind)
    return sock


def make_outbox(ctx: zmq.Context, own_name: str, endpoint: Endpoint | str, *,
                hwm: int = DEFAULT_HWM) -> zmq.Socket:
    """A DEALER connected to a peer's inbox, identified by ``own_name``."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, own_name.encode())
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.connect(Endpoint.from_obj(endpoint).connect)
    return sock


@dataclass
class TransportCounters:
    """What the transport did; ``transport_lost`` is never an emulated drop."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected_messages: dict[str, int] = field(default_factory=dict)
    transport_lost: int = 0
    transport_seq_restarts: int = 0
    transport_seq_adopted: int = 0  # links a restarted actor joined mid-stream
    send_blocked: int = 0         # sends that found the HWM reached and had to wait
    send_blocked_ns: int = 0      # total time spent waiting in those sends
    unsent: int = 0               # sends abandoned at the stop deadline
    inbound_max: int = 0          # deepest the local inbound queue got
    bundles_out: int = 0          # send_many bundles sent (messages_out counts each body)
    bundles_in: int = 0           # bundle envelopes received (messages_in counts each body)

    def snapshot(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["rejected_messages"] = dict(self.rejected_messages)
        return d


class Mailbox:
    """An actor's sockets, codec, per-link sequence numbers and transport counters."""

    def __init__(self, name: str, endpoints: Mapping[str, Endpoint | str], *,
                 codec: EnvelopeCodec | None = None, hwm: int = DEFAULT_HWM,
                 inbound_limit: int = 100_000, ctx: zmq.Context | None = None,
                 log: Any = None, adopt_first_seq: bool = False) -> None:
        self.name = name
        self.endpoints = {n: Endpoint.from_obj(e) for n, e in endpoints.items()}
        self.codec = codec or EnvelopeCodec()
        self.hwm = hwm
        self.inbound_limit = inbound_limit
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.log = log
        self.inbox: zmq.Socket | None = None
        # True once the inbox is a CURVE server: each sender is checked against its key.
        self.authenticated = False
        self.outboxes: dict[str, zmq.Socket] = {}
        self.inbound: deque[Envelope] = deque()
        self.counters = TransportCounters()
        self.tracker = LinkSeqTracker(adopt_first=adopt_first_seq)
        # The tracker's own table, read directly on the per-message fast path.
        self._expected = self.tracker.expected_table
        self._seq_out: dict[str, int] = {}
        self._ids: dict[bytes, str] = {}
        self._wake: dict[int, WakeCallback] = {}
        self.poller = zmq.Poller()
        self._blocked_pollers: dict[tuple[zmq.Socket, bool], zmq.Poller] = {}
        # Called for each accepted envelope as it arrives, before it is queued (e.g. to
        # notice a stop while a send is blocked).
        self.on_arrival: Callable[[Envelope], None] | None = None
        # Set (monotonic ns) once a stop is requested: blocked sends give up after it.
        self.send_deadline_ns: int | None = None

    # --- sockets --------------------------------------------------------------------

    def bind(self) -> None:
        self.inbox = make_inbox(self.ctx, self.endpoints[self.name], hwm=self.hwm)
        self.authenticated = bool(self.inbox.getsockopt(zmq.CURVE_SERVER))
        self.poller.register(self.inbox, zmq.POLLIN)

    def input_waiting(self) -> bool:
        """Is a message queued or ready to be received? Cheap (no system call beyond
        reading the socket's event flags), so a role can ask between two work items."""
        if self.inbound:
            return True
        inbox = self.inbox
        return inbox is not None and bool(_raw_get_int(inbox, _EVENTS) & _POLLIN)

    def add_wake_fd(self, fd: int, callback: WakeCallback) -> None:
        """Poll a plain fd too (e.g. a signal wakeup pipe); ``callback`` runs when readable."""
        self._wake[fd] = callback
        self.poller.register(fd, zmq.POLLIN)
        self._blocked_pollers.clear()

    def remove_wake_fd(self, fd: int) -> None:
        if self._wake.pop(fd, None) is not None:
            self.poller.unregister(fd)
            self._blocked_pollers.clear()

    def outbox(self, dest: str) -> zmq.Socket:
        sock = self.outboxes.get(dest)
        if sock is None:
            try:
                endpoint = self.endpoints[dest]
            except KeyError:
                raise ValueError(f"{self.name}: no endpoint for destination {dest!r}") from None
            sock = self.outboxes[dest] = make_outbox(self.ctx, self.name, endpoint,
                                                     hwm=self.hwm)
        return sock

    def reset_link(self, dest: str) -> None:
        """Start the link to ``dest`` afresh (after ``dest`` was restarted): drop whatever
        is still queued for the old process and number the next message 0 again."""
        sock = self.outboxes.pop(dest, None)
        if sock is not None and not sock.closed:
            sock.close(linger=0)
        self._seq_out.pop(dest, None)
        self._blocked_pollers = {k: v for k, v in self._blocked_pollers.items()
                                 if k[0] is not sock}

    def close(self) -> None:
        """Close everything at once (LINGER 0: call after the end-of-stream handshake)."""
        for sock in [*self.outboxes.values(), self.inbox]:
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        self.outboxes.clear()
        self._blocked_pollers.clear()
        self.inbox = None
        if self._own_ctx:
            self.ctx.term()

    # --- sending --------------------------------------------------------------------

    def send(self, dest: str, kind: str, body: Mapping[str, Any]) -> bool:
        """Send one message; blocks while ``dest``'s queue is full.

        Returns False only if the send was abandoned at :attr:`send_deadline_ns`.
        Raises MalformedMessage if ``body`` does not fit ``kind``'s schema.
        """
        seq = self._seq_out.get(dest, 0)
        payload = self.codec.encode(kind, self.name, seq, _monotonic_ns(), body)
        return self._send_payload(dest, seq, payload, 1)

    def send_many(self, dest: str, kind: str, bodies: Sequence[Mapping[str, Any]]) -> bool:
        """Send several messages of one kind to ``dest`` as one envelope (a ``bundle``)
        and one ZeroMQ message; the receiver's mailbox hands them to its actor one by one,
        in order, as if each had come alone.

        The bundle takes one sequence number on the link (its inner messages carry it), so
        the receiver's loss/restart accounting works per envelope as before.  It occupies
        one slot of the link's high-water mark: back-pressure still blocks (never drops)
        when the link is full, just ``len(bodies)`` messages at a time.  Each body is
        checked against ``kind``'s schema; a bundle above the codec's size limit raises
        MalformedMessage (``oversized``) and nothing is sent.  One body, or none, is sent
        as a plain message (none: nothing at all).  Returns False only if abandoned at
        :attr:`send_deadline_ns` (then none of them went).
        """
        if len(bodies) <= 1:
            return self.send(dest, kind, bodies[0]) if bodies else True
        seq = self._seq_out.get(dest, 0)
        payload = self.codec.encode_many(kind, self.name, seq, _monotonic_ns(), bodies)
        if not self._send_payload(dest, seq, payload, len(bodies)):
            return False
        self.counters.bundles_out += 1
        return True

    def _send_payload(self, dest: str, seq: int, payload: bytes, messages: int) -> bool:
        sock = self.outboxes.get(dest)
        if sock is None:
            sock = self.outbox(dest)
        try:
            _raw_send(sock, payload, _NOBLOCK)
        except zmq.Again:
            if not self._send_blocked(sock, payload):
                return False
        self._seq_out[dest] = seq + 1
        c = self.counters
        c.messages_out += messages
        c.bytes_out += len(payload)
        return True

    def _blocked_poller(self, sock: zmq.Socket, reading: bool) -> zmq.Poller:
        """The poller of a send blocked on ``sock``, kept until the wake fds change."""
        key = (sock, reading)
        poller = self._blocked_pollers.get(key)
        if poller is None:
            poller = self._blocked_pollers[key] = zmq.Poller()
            poller.register(sock, zmq.POLLOUT)
            for fd in self._wake:
                poller.register(fd, zmq.POLLIN)
            if reading:
                poller.register(self.inbox, zmq.POLLIN)
        return poller

    def _send_blocked(self, sock: zmq.Socket, payload: bytes) -> bool:
        c = self.counters
        c.send_blocked += 1
        t0 = _monotonic_ns()
        try:
            while True:
                deadline = self.send_deadline_ns
                now = _monotonic_ns()
                if deadline is not None and now >= deadline:
                    c.unsent += 1
                    return False
                # Keep our own inbox moving while we wait, up to the inbound limit.
                reading = self.inbox is not None and len(self.inbound) < self.inbound_limit
                poller = self._blocked_poller(sock, reading)
                timeout = _BLOCKED_POLL_MS
                if deadline is not None:
                    timeout = max(0, min(timeout, -(-(deadline - now) // 1_000_000)))
                events = dict(poller.poll(timeout))
                if self._wake:
                    for fd, cb in list(self._wake.items()):
                        if fd in events:
                            cb()
                if events.get(sock, 0) & zmq.POLLOUT:
                    try:
                        _raw_send(sock, payload, _NOBLOCK)
                        return True
                    except zmq.Again:
                        pass
                if reading and self.inbox in events:
                    self.receive_available(self.inbound_limit - len(self.inbound))
        finally:
            c.send_blocked_ns += _monotonic_ns() - t0

    # --- receiving ------------------------------------------------------------------

    def poll(self, timeout_ms: int, burst: int = 256) -> int:
        """Wait up to ``timeout_ms`` for input; queue up to ``burst`` messages on
        :attr:`inbound` and run wake callbacks.  Returns how many were queued."""
        events = self.poller.poll(timeout_ms)
        if not events:
            return 0
        if self._wake:
            ready = dict(events)
            for fd, cb in list(self._wake.items()):
                if fd in ready:
                    cb()
        # Whether or not the inbox showed up: reading it costs one failed recv.
        return self.receive_available(burst)

    def receive_available(self, limit: int) -> int:
        """Queue up to ``limit`` envelopes already waiting on the inbox, without
        blocking (a bundle counts once and may queue more messages than that)."""
        inbox = self.inbox
        if inbox is None:
            return 0
        if self.authenticated:
            return self._receive_authenticated(inbox, limit)
        taken = 0
        while taken < limit:
            try:
                ident = _raw_recv(inbox, _NOBLOCK)
            except zmq.Again:
                break
            taken += 1
            # ZeroMQ delivers a message whole, and a ROUTER always puts the routing id
            # before at least one frame the peer sent.
            payload = _raw_recv(inbox, _NOBLOCK)
            if _raw_get(inbox, _RCVMORE):
                self._reject_extra_frames(inbox, ident)
                continue
            self._accept(ident, payload)
            # Asking whether more is waiting costs half the zmq.Again a recv would raise.
            if not _raw_get_int(inbox, _EVENTS) & _POLLIN:
                break
        return taken

    def _receive_authenticated(self, inbox: zmq.Socket, limit: int) -> int:
        """:meth:`receive_available` on a CURVE inbox: the routing id frame is taken as a
        Frame (copy=False) to read its ``User-Id``, the name of the connection's key; the
        payload is copied as usual."""
        taken = 0
        while taken < limit:
            try:
                frame = _raw_recv(inbox, _NOBLOCK, False)
            except zmq.Again:
                break
            taken += 1
            try:
                user_id = frame.get(_USER_ID)
            except zmq.ZMQError:  # no user id (a ZAP handler that gave none): no match
                user_id = ""
            ident = frame.bytes
            payload = _raw_recv(inbox, _NOBLOCK)
            if _raw_get(inbox, _RCVMORE):
                self._reject_extra_frames(inbox, ident)
                continue
            self._accept(ident, payload, user_id)
        return taken

    def _reject_extra_frames(self, inbox: zmq.Socket, ident: bytes) -> None:
        n = 2
        while _raw_get(inbox, _RCVMORE):
            _raw_recv(inbox, _NOBLOCK)
            n += 1
        self.reject("bad_frames", f"{n} frames", ident)

    def accept(self, frames: list[bytes]) -> Envelope | None:
        """Check one received ``[routing id, payload]``; queue and return it (a bundle:
        its last message), or count the rejection and return None."""
        if len(frames) != 2:
            self.reject("bad_frames", f"{len(frames)} frames",
                        frames[0] if frames else b"")
            return None
        return self._accept(frames[0], frames[1])

    def _accept(self, ident: bytes, payload: bytes,
                user_id: str | None = None) -> Envelope | None:
        """``user_id``: the name of the key the connection authenticated with (CURVE
        inboxes), which the envelope's sender must be."""
        c = self.counters
        c.bytes_in += len(payload)
        try:
            env = self.codec.decode(payload)
        except MalformedMessage as exc:
            self.reject(exc.reason, exc.detail, ident)
            return None
        sender = env.sender
        if user_id is not None and user_id != sender:
            self.reject("sender_key_mismatch",
                        f"envelope says {sender!r}, the key is {user_id!r}'s", ident)
            return None
        if self._ids.get(ident) != sender:
            if ident != sender.encode():
                self.reject("sender_mismatch", f"envelope says {sender!r}", ident)
                return None
            # Checked once per connection: every actor of the topology is in the book, and
            # a reply to anyone else (stats, end_of_stream_ack, sock_op_done) could not go.
            if sender not in self.endpoints:
                self.reject("unknown_sender", f"{sender!r} has no endpoint", ident)
                return None
            self._ids[ident] = sender
        expected = self._expected
        seq = env.seq
        if expected.get(sender) == seq:  # the usual case: next in line on this link
            expected[sender] = seq + 1
        else:
            self._observe_seq(sender, seq)
        if env.kind == BUNDLE:
            return self._accept_bundle(env, ident)
        c.messages_in += 1
        if self.on_arrival is not None:
            self.on_arrival(env)
        inbound = self.inbound
        inbound.append(env)
        if len(inbound) > c.inbound_max:
            c.inbound_max = len(inbound)
        return env

    def _accept_bundle(self, bundle: Envelope, ident: bytes) -> Envelope | None:
        envs, rejects = self.codec.unbundle(bundle)
        for exc in rejects:
            self.reject(exc.reason, exc.detail, ident)
        c = self.counters
        c.bundles_in += 1
        c.messages_in += len(envs)
        on_arrival = self.on_arrival
        if on_arrival is not None:
            for env in envs:
                on_arrival(env)
        inbound = self.inbound
        inbound.extend(envs)
        if len(inbound) > c.inbound_max:
            c.inbound_max = len(inbound)
        return envs[-1] if envs else None

    def _observe_seq(self, sender: str, seq: int) -> None:
        """A seq that is not the next one of its link (or a link's first): let the
        tracker decide between a first message, a loss and a restart."""
        tracker = self.tracker
        gap = tracker.observe(sender, seq)
        c = self.counters
        c.transport_lost = tracker.lost
        c.transport_seq_restarts = tracker.restarts
        c.transport_seq_adopted = tracker.adopted
        if gap and self.log is not None:
            self.log.warning("transport_lost", sender=sender, seq=seq, gap=gap)

    def reject(self, reason: str, detail: str = "", ident: bytes | str = b"") -> None:
        """Count (and, rate-limited, log) one rejected message."""
        counts = self.counters.rejected_messages
        n = counts[reason] = counts.get(reason, 0) + 1
        if self.log is not None and (n <= _LOG_FIRST_REJECTS or n % 1000 == 0):
            if isinstance(ident, bytes):
                ident = ident.decode("utf-8", errors="replace")
            self.log.warning("message_rejected", reason=reason, detail=detail[:200],
                             peer=ident[:64], count=n)
